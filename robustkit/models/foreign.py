"""Models that robustkit does not define: ``torchvision:NAME``, ``timm:NAME`` and
``package.module:factory``.

A model spec is a string. Without a colon it is a registered name (``alexnet``); with one
it names a constructor elsewhere:

- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None, **options)``,
  one of torchvision's classification models (``num_classes`` is the data's unless the
  options give it; pretrained weights are never downloaded: give a state dict file
  instead);
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, **options)`` (``num_classes``
  and ``in_chans`` from the data unless given), when timm is installed
  (``pip install 'robustkit[timm]'``);
- ``package.module:factory``: a function returning an ``nn.Module``, called with the
  options (and ``num_classes`` / ``in_shape`` when it takes parameters of those names and
  the options do not give them).

:func:`check_forward` runs a model on the ``meta`` device (shapes only, nothing
allocated or computed) to refuse, before any data loads, a model that does not run on
the data's images, returns no logits tensor, or returns the wrong number of logits.

Example:
    >>> parse("torchvision:resnet18")
    ('torchvision', 'resnet18')
    >>> parse("mlp")
    ('registered', 'mlp')
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustkit.errors import RobustkitError

#: ``package.module:factory``, both sides Python names.
_IMPORT = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
#: The kinds of spec with a colon that are not ``package.module:factory``.
LIBRARIES = ("torchvision", "timm")
#: Options that would download pretrained weights: refused (weights come from a file).
DOWNLOADING = {"torchvision": ("weights", "weights_backbone", "pretrained", "progress"),
               "timm": ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                        "checkpoint_path")}
#: What the unknown-model message adds to the registered names.
SPEC_FORMS = "or torchvision:NAME, timm:NAME (with timm installed), package.module:factory"


def parse(spec: Any) -> tuple[str, str]:
    """``(kind, target)`` of a model spec: kind ``registered``, ``torchvision``, ``timm``
    or ``factory`` (target ``package.module:factory``).

    Raises:
        RobustkitError: not a string, empty, or a colon form that is none of these.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RobustkitError(f"a model is named by a non-empty string, got {spec!r}")
    if ":" not in spec:
        return "registered", spec
    prefix, _, name = spec.partition(":")
    if prefix in LIBRARIES:
        if not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
            raise RobustkitError(f"model {spec!r}: expected {prefix}:NAME (e.g. "
                                 f"{prefix}:resnet18)")
        return prefix, name
    if not _IMPORT.fullmatch(spec):
        raise RobustkitError(f"model {spec!r} is not a registered name, torchvision:NAME, "
                             f"timm:NAME or 'package.module:factory'")
    return "factory", spec


def is_foreign(spec: str) -> bool:
    """Whether ``spec`` names a model outside robustkit's registry."""
    return parse(spec)[0] != "registered"


def _timm() -> Any:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise RobustkitError("timm models need timm, which is not installed: pip install "
                             "'robustkit[timm]' (or pip install timm)") from None


def resolve(spec: str) -> Callable[..., Any]:
    """The constructor a foreign spec names (importing its module, once).

    Call it before building on the ``meta`` device: a module imported inside that
    context would create its module-level tensors there.

    Raises:
        RobustkitError: an unknown torchvision or timm name (close names suggested), timm
            missing (the message names the extra), a module that cannot be imported, or a
            factory that is missing or not callable.
    """
    kind, target = parse(spec)
    if kind == "torchvision":
        import torchvision.models as tvm

        known = tvm.list_models(module=tvm)  # classifiers (not detection, segmentation ...)
        if target not in known:
            close = difflib.get_close_matches(target, known, n=4)
            raise RobustkitError(f"unknown torchvision classification model {target!r}"
                                 + (f"; did you mean {', '.join(close)}?" if close else
                                    f"; {len(known)} names, e.g. resnet18, vit_b_16"))
        return tvm.get_model_builder(target)
    if kind == "timm":
        timm = _timm()
        if not timm.is_model(target):
            close = difflib.get_close_matches(target, timm.list_models(), n=4)
            raise RobustkitError(f"unknown timm model {target!r}"
                                 + (f"; did you mean {', '.join(close)}?" if close else ""))
        return timm.create_model
    if kind == "factory":
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise RobustkitError(f"model {spec!r}: cannot import {module_name!r} "
                                 f"({type(err).__name__}: {err})") from None
        factory = getattr(module, attr, None)
        if factory is None:
            raise RobustkitError(f"model {spec!r}: module {module_name!r} has no {attr!r}")
        if not callable(factory):
            raise RobustkitError(f"model {spec!r}: {attr!r} is a {type(factory).__name__}, "
                                 f"not a function returning an nn.Module")
        return factory
    raise RobustkitError(f"model {spec!r} is a registered name, not a foreign spec")


def valid_options(spec: str) -> dict[str, Any] | None:
    """The options a foreign spec's constructor takes, with their defaults; None where
    any keyword goes (torchvision's and timm's builders, a factory with ``**kwargs``)."""
    kind, _ = parse(spec)
    if kind != "factory":
        return None
    params = inspect.signature(resolve(spec)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name: p.default for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_options(spec: str, options: Mapping[str, Any]) -> None:
    """Refuse options a foreign constructor does not take (a factory's signature says
    which), and options that would download pretrained weights."""
    kind, _ = parse(spec)
    for key in DOWNLOADING.get(kind, ()):
        if key in options:
            raise RobustkitError(
                f"model {spec!r}: option {key!r} is not taken: robustkit never downloads "
                f"weights; give a state dict file (--weights FILE, weights=...)")
    valid = valid_options(spec)
    if valid is None:
        return
    unknown = sorted(str(k) for k in options if k not in valid)
    if unknown:
        raise RobustkitError(f"model {spec!r}: bad options {unknown}: it takes no option "
                             f"{unknown[0]!r}; valid options: {', '.join(valid) or '(none)'}")


def build(spec: str, in_shape: Sequence[int], num_classes: int,
          options: Mapping[str, Any]) -> nn.Module:
    """The bare foreign model (no normalization, no output picking), built with
    ``options`` on the current default device.

    Raises:
        RobustkitError: as :func:`resolve` and :func:`check_options`, the constructor
            refuses its options (the message quotes its first line), or it returns
            something other than an ``nn.Module``.
    """
    kind, target = parse(spec)
    check_options(spec, options)
    constructor = resolve(spec)
    kwargs = dict(options)
    if kind in LIBRARIES:
        kwargs.setdefault("num_classes", num_classes)
    if kind == "timm":
        kwargs.setdefault("in_chans", in_shape[0])
    if kind == "factory":
        takes = valid_options(spec)
        for name, value in (("num_classes", num_classes), ("in_shape", tuple(in_shape))):
            if takes is not None and name in takes:
                kwargs.setdefault(name, value)
    try:
        if kind == "torchvision":
            model = constructor(weights=None, **kwargs)
        elif kind == "timm":
            model = constructor(target, pretrained=False, **kwargs)
        else:
            model = constructor(**kwargs)
    except RobustkitError:
        raise
    except Exception as err:  # noqa: BLE001 - a constructor given options it cannot use
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RobustkitError(f"model {spec!r} cannot be built with options {dict(options)}: "
                             f"{type(err).__name__}: {text}") from None
    if not isinstance(model, nn.Module):
        raise RobustkitError(f"model {spec!r}: the factory returned a "
                             f"{type(model).__name__}, not an nn.Module")
    return model


def check_forward(model: nn.Module, in_shape: Sequence[int], num_classes: int,
                  what: str) -> None:
    """Run ``model`` on two images of ``in_shape`` on the ``meta`` device (shapes only)
    and refuse a model that cannot take them, returns no logits tensor, or returns other
    than ``num_classes`` logits.

    A model whose operations have no ``meta`` implementation (or that reads values), and
    one with lazy modules, is not checked here; the model contract checks it on the first
    real batch.

    Raises:
        RobustkitError: naming ``what``, the shapes and the way to fix it.
    """
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if any(nn.parameter.is_lazy(t) for t in tensors.values()):
        return  # lazy modules take their shapes from the first real batch
    fake = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
    x = torch.empty(2, *in_shape, device="meta")  # (2, C, H, W)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = torch.func.functional_call(model, fake, (x,), strict=False)
    except RobustkitError as err:  # an output that is not a logits tensor
        hint = (" (--output KEY, output=...)" if "wrap(model, output" in str(err) else "")
        raise RobustkitError(f"{what}: {err}{hint}") from None
    except NotImplementedError:
        return  # an operation without a meta kernel: the model contract checks it
    except Exception as err:  # noqa: BLE001 - whatever a user's forward raises
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "meta" in text.lower() or "data-dependent" in text.lower():
            return  # it reads values or mixes devices: checked on the first real batch
        raise RobustkitError(f"{what} cannot run on images of shape {tuple(in_shape)} "
                             f"(C, H, W): {type(err).__name__}: {text}") from None
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(out, torch.Tensor):
        raise RobustkitError(f"{what}: it returns {type(out).__name__}, not a tensor of "
                             f"logits (N, K)")
    if tuple(out.shape) != (2, num_classes):
        fix = (f"; give num_classes={num_classes} in its options" if out.ndim == 2 else
               "; it must return logits (N, K)")
        raise RobustkitError(f"{what} returns outputs of shape {tuple(out.shape[1:])} per "
                             f"image, but the data has {num_classes} classes{fix}")


__all__ = ["LIBRARIES", "SPEC_FORMS", "build", "check_forward", "check_options", "is_foreign",
           "parse", "resolve", "valid_options"]
