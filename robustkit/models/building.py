"""Models by spec, with weights from a plain state dict: :func:`build`.

A spec is a registered name (``preact_resnet18``), ``torchvision:NAME``, ``timm:NAME`` or
``package.module:factory`` (:mod:`robustkit.models.foreign`). Weights come from a file
holding ``model.state_dict()``, read with ``torch.load(weights_only=True)``: a file that
holds anything but tensors (code, a whole pickled model, a training state) is refused.
Before the model is built for real it is built on the ``meta`` device (no memory), run
there on the data's shape (a foreign model), and every weight's name and shape is
compared with the file's.

A state dict saved from the bare model (``conv1.weight``, as a training script that
normalizes in its data pipeline saves it) and one saved from the wrapped model
(``normalize.mean``, ``model.conv1.weight``) both load; so does one saved from
DataParallel or DistributedDataParallel (``module.`` in front of every name). A file that
holds a normalization gives the model its mean and std, unless others are given: then
they must agree.

Example:
    >>> model = build("torchvision:resnet18", (3, 32, 32), 10,       # doctest: +SKIP
    ...               mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), weights="w.pt")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustkit.core import pick_device
from robustkit.errors import RobustkitError
from robustkit.models import foreign
from robustkit.models.checkpoint import FORMAT, _weights_digest, check_state_fits, torch_load
from robustkit.models.normalize import Normalize
from robustkit.models.wrap import Output, Wrapped
from robustkit.models.zoo import check_spec, construct

#: The outer normalization's buffers, in a robustkit model's and a wrapped one's state dict.
NORMALIZE_KEYS = ("normalize.mean", "normalize.std")


def build(
    spec: str,
    in_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    output: Output = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A model by spec, for images of ``in_shape`` and ``num_classes`` classes, with its
    weights from a state dict file.

    Args:
        spec: a registered name, ``torchvision:NAME`` (built with
            ``torchvision.models.get_model(NAME, weights=None, **options)``),
            ``timm:NAME`` (timm installed) or ``package.module:factory``.
        in_shape: (C, H, W) of the images, in [0, 1].
        num_classes: the number of classes (torchvision and timm models get
            ``num_classes`` from here unless the options give it).
        mean, std: the per-channel normalization the weights were trained with (both or
            neither). A registered model normalizes always (default: the file's, else 0.5);
            a foreign model gets ``Normalize`` in front when they are given or the file
            holds them, and takes the [0, 1] images as they are otherwise.
        options: the constructor's options (``{"num_classes": 10}``, ``{"width": 16}``).
        output: how to pick the logits from a foreign model's output: a key or an index.
        weights: a file holding a state dict (``torch.save(model.state_dict(), f)``);
            None: a new, randomly initialized model.
        device: where the model goes.

    Returns:
        The model, with a ``robustkit_spec`` (so :func:`robustkit.models.save` writes it
        as a checkpoint): in eval mode when weights were loaded (``robustkit_metadata``
        then names the file and the weights' SHA-256), in train mode when new.

    Raises:
        RobustkitError: an unknown spec or option, timm missing, a model that does not
            run on ``in_shape`` or gives another number of logits, an output that is not a
            logits tensor; a weights file that is missing, holds code or anything but a
            state dict, whose names or shapes do not fit the model (the first named),
            whose values are not finite, or whose normalization disagrees with the one
            given.

    Example:
        >>> m = build("preact_resnet18", (3, 32, 32), 10, options={"width": 8})
        >>> m(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    mean, std, state, path = _prepare(spec, in_shape, num_classes, mean, std, options, output,
                                      weights)
    model = construct(spec, in_shape, num_classes, mean, std, options, output)
    if state is None:
        return model.to(pick_device(device))
    result = model.load_state_dict(state, strict=False)
    left = [k for k in result.missing_keys if k not in NORMALIZE_KEYS] + result.unexpected_keys
    if left:  # _prepare compared the names already; this is a second look
        raise RobustkitError(f"weights {path} do not fit the model {spec!r}: {left[0]}")
    meta: Any = {"weights": str(path), "weights_sha256": _weights_digest(state)}
    model.robustkit_metadata = meta
    return model.to(pick_device(device)).eval()


def check(
    spec: str,
    in_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    output: Output = None,
    weights: str | os.PathLike | None = None,
) -> None:
    """Every check of :func:`build`, on the ``meta`` device: nothing is built for real.

    Configs call it at load, before anything trains.

    Raises:
        RobustkitError: as :func:`build`.
    """
    _prepare(spec, in_shape, num_classes, mean, std, options, output, weights)


def _prepare(spec: str, in_shape: Sequence[int], num_classes: int,
             mean: Sequence[float] | None, std: Sequence[float] | None,
             options: Mapping[str, Any] | None, output: Output,
             weights: str | os.PathLike | None
             ) -> tuple[Sequence[float] | None, Sequence[float] | None,
                        dict[str, torch.Tensor] | None, Path | None]:
    """Check the spec, read the weights, settle the normalization, and fit the weights to
    the model built on the ``meta`` device. Returns ``(mean, std, state, path)``."""
    kind = check_spec(spec)  # imports a factory's module here, not on the meta device
    state, path = None, None
    if weights is not None:
        path = Path(weights)
        state = read_weights(path)
        mean, std = _normalization(path, state, mean, std, int(list(in_shape)[0]))
        if kind == "registered" and mean is None:
            raise RobustkitError(
                f"weights {path} hold no normalization (normalize.mean, normalize.std) and "
                f"model {spec!r} normalizes its inputs: give the mean and std its weights "
                f"were trained with (--mean, --std)")
    with torch.device("meta"):  # shapes only: nothing is allocated
        skeleton = construct(spec, in_shape, num_classes, mean, std, options or {}, output)
    if kind != "registered":
        foreign.check_forward(skeleton, list(in_shape), num_classes, f"model {spec!r}")
    if state is not None and path is not None:
        state = _fit(path, spec, skeleton, state)
    return mean, std, state, path


def read_weights(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read with ``torch.load(weights_only=True)``, its values
    finite; a ``module.`` prefix on every name (DataParallel) is taken off.

    Raises:
        RobustkitError: the file is missing, a folder, corrupt, holds code or other
            Python objects, is a robustkit checkpoint (use :func:`robustkit.models.load`),
            or is not a table of names to dense tensors (a training state holding one is
            refused: save ``model.state_dict()`` alone).
    """
    p = Path(path)
    if p.is_dir():
        raise RobustkitError(f"{what} {p} is a folder, not a state dict file")
    if not p.exists():
        raise RobustkitError(f"{what} file {p} does not exist")
    obj = torch_load(p, what)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        raise RobustkitError(f"{what} {p} is a robustkit checkpoint, not a state dict: load it "
                             f"with --checkpoint (robustkit.models.load)")
    if not isinstance(obj, Mapping):
        raise RobustkitError(f"{what} {p} holds a {type(obj).__name__}, not a state dict "
                             f"(names to tensors); save model.state_dict()")
    others = [str(k) for k, v in obj.items()
              if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if others or not obj:
        held = f"{others[:4]}" + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise RobustkitError(
            f"{what} {p} is not a plain state dict (names to tensors): "
            + (f"it holds {held}, which are not tensors" if others else "it is empty")
            + "; save model.state_dict() alone")
    state: dict[str, torch.Tensor] = dict(obj)
    for k, t in state.items():
        if t.layout != torch.strided or t.is_quantized:
            raise RobustkitError(f"{what} {p}: {k} is a {t.layout} tensor; only dense tensors "
                                 f"are read")
        if (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
            raise RobustkitError(f"{what} {p}: {k} holds NaN or Inf; refused (every output "
                                 f"of the model would be meaningless)")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): t for k, t in state.items()}
    return state


def _float32_text(values: torch.Tensor) -> list[float]:
    """Stored float32 values as the shortest decimals that give them back (0.49, not
    0.49000000953674316)."""
    return [float(str(np.float32(v))) for v in values.detach().float().flatten().tolist()]


def _normalization(path: Path, state: Mapping[str, torch.Tensor],
                   mean: Sequence[float] | None, std: Sequence[float] | None,
                   channels: int) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """The mean and std the model gets: those given, else the file's (``normalize.mean``,
    ``normalize.std``); a file whose normalization differs from the one given is refused."""
    f_mean, f_std = (state.get(k) for k in NORMALIZE_KEYS)
    if (f_mean is None or f_std is None or not f_mean.is_floating_point()
            or f_mean.numel() != f_std.numel() or f_mean.numel() != channels):
        return mean, std
    stored = (_float32_text(f_mean), _float32_text(f_std))
    if mean is None and std is None:
        return stored
    if mean is None or std is None:
        return mean, std  # refused by the model's own check (both or neither)
    given = (torch.tensor([float(v) for v in mean], dtype=torch.float32),
             torch.tensor([float(v) for v in std], dtype=torch.float32))
    if (len(given[0]) != len(stored[0]) or len(given[1]) != len(stored[1])
            or not torch.allclose(given[0], f_mean.float().flatten(), rtol=1e-6, atol=1e-7)
            or not torch.allclose(given[1], f_std.float().flatten(), rtol=1e-6, atol=1e-7)):
        raise RobustkitError(
            f"weights {path} were saved with the normalization mean {stored[0]}, std "
            f"{stored[1]}, but mean {list(mean)}, std {list(std)} were given: leave mean "
            f"and std out to use the file's, or give the same")
    return mean, std


def _fit(path: Path, spec: str, skeleton: nn.Module, state: dict[str, torch.Tensor]
         ) -> dict[str, torch.Tensor]:
    """``state`` under the model's names (``model.`` added for a bare model's file), every
    name and shape checked: all of the model's weights in the file (its normalization may
    come from mean and std instead), no other."""
    expected = skeleton.state_dict()
    named = dict(state)
    as_file = {k: k for k in state}  # the model's name -> the file's, for the messages
    if isinstance(skeleton, Wrapped) and not any(k.startswith("model.") for k in state):
        inner = set(skeleton.model.state_dict())
        as_file = {(k if k in NORMALIZE_KEYS and k not in inner else f"model.{k}"): k
                   for k in state}
        named = {key: state[k] for key, k in as_file.items()}
    prefixed = any(key != k for key, k in as_file.items())
    shown = {k: as_file.get(k, k.removeprefix("model.") if prefixed else k) for k in expected}
    check_state_fits(expected, named, f"weights {path} do not fit the model {spec!r}",
                     shown=shown, as_file=as_file, optional=NORMALIZE_KEYS)  # from mean, std
    for name, module in skeleton.named_modules():
        key = f"{name}.std" if name else "std"
        if isinstance(module, Normalize) and key in named and not (named[key] > 0).all():
            raise RobustkitError(f"weights {path}: {key} (the normalization's std) is "
                                 f"{named[key].flatten().tolist()}; it must be > 0")
    return named
