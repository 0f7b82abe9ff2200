"""Checkpoints that rebuild their model alone, can never run code, and are verified at load.

A checkpoint is a dict of plain values and tensors: the registry name, the constructor
arguments, the state dict, metadata, and SHA-256 checksums of the weights, of the model's
description and of the metadata. :func:`read` loads it with
``torch.load(weights_only=True)``, which refuses any pickled object other than tensors
and containers, so a malicious file raises instead of executing its payload; then it
checks every field and the checksums. :func:`load` then rebuilds the model, first on
the ``meta`` device (no memory), compares every weight's name and shape with the file,
refuses NaN or Inf weights and a normalization std that is not > 0, and only then builds
the model for real. A checksum is not a signature: anyone can recompute it, so these
checks stand on their own.

A model named by a spec (:mod:`robustkit.models.foreign`) is rebuilt the same way:
``torchvision:NAME`` and ``timm:NAME`` with their stored options (never downloading
weights). A ``package.module:factory`` model is built by importing and calling code that
the file names, so :func:`load` refuses it unless the caller trusts that factory by name
(``trust=[...]``, ``--trust-factory`` at the command line).

Checkpoints of format version 1 (written before checksums) still load, with a warning
that they cannot be verified.

Example:
    >>> m = create("logistic")                              # doctest: +SKIP
    >>> save(m, "m.pt", dataset="mnist-5k", test_accuracy=0.91)   # doctest: +SKIP
    >>> load("m.pt").training                               # doctest: +SKIP
    False
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustkit.core import pick_device, versions, write_atomic
from robustkit.errors import RobustkitError
from robustkit.models import foreign
from robustkit.models.normalize import Normalize
from robustkit.models.zoo import _plain, check_spec, construct

FORMAT = "robustkit-checkpoint"
#: 2 added the checksums; version 1 files still load, with a warning.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: The fields that describe the model (the arguments of :func:`robustkit.models.create`).
SPEC_KEYS = ("name", "in_shape", "num_classes", "mean", "std", "options")
#: Fields a model's description holds only when they are set (a foreign model's
#: ``output``), so the checksums of checkpoints written before them stay the same.
OPTIONAL_SPEC_KEYS = ("output",)


def save(model: nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write ``model`` and ``metadata`` to ``path`` atomically (temporary file, then rename).

    Args:
        model: a module made by :func:`robustkit.models.create` or
            :func:`robustkit.models.build`, or one of those wrapped by
            :func:`robustkit.models.wrap`.
        path: the destination file.
        metadata: plain values (numbers, strings, lists, dicts), e.g. dataset, train size,
            seed, epochs, test accuracy. Versions and the git commit are added.

    Returns:
        The path written.

    Raises:
        RobustkitError: the model was not made by ``create``, a metadata value is not
            plain, or the file cannot be written (the message names the path).
    """
    spec = getattr(model, "robustkit_spec", None)
    if spec is None:
        raise RobustkitError(
            "save needs a model made by robustkit.models.create or robustkit.models.build "
            "(or one of those wrapped by robustkit.models.wrap), which describes how to build "
            "it again; for a torchvision model use robustkit.models.build('torchvision:NAME', "
            "...) with weights=FILE")
    meta = {**versions(), **_plain(metadata)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                               **{k: spec[k] for k in SPEC_KEYS},
                               **{k: spec[k] for k in OPTIONAL_SPEC_KEYS
                                  if spec.get(k) is not None},
                               "state_dict": state, "metadata": meta}
    payload["checksum"] = checksums(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomic(path, buffer.getvalue())


def checksums(payload: Mapping[str, Any]) -> dict[str, str]:
    """SHA-256 checksums of a checkpoint's weights, model description and metadata.

    The weights' checksum runs over every tensor in name order: its name, dtype, shape and
    bytes. The description's (name, in_shape, num_classes, mean, std, options, and output
    where the payload has one) and the metadata's run over their JSON with sorted keys.

    Returns:
        ``{"algorithm": "sha256", "weights": hex, "spec": hex, "metadata": hex}``.
    """
    return {"algorithm": "sha256", "weights": _weights_digest(payload["state_dict"]),
            "spec": _json_digest({k: payload[k] for k in (*SPEC_KEYS, *OPTIONAL_SPEC_KEYS)
                                  if k in payload}),
            "metadata": _json_digest(payload["metadata"])}


def _weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        header = json.dumps([name, str(t.dtype).removeprefix("torch."),
                             list(state[name].shape)])
        digest.update(header.encode() + b"\0")
        digest.update(t.view(torch.uint8).numpy().data)  # the raw bytes, whatever the dtype
    return digest.hexdigest()


def _json_digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=lambda v: f"<{type(v).__name__}>")
    return hashlib.sha256(text.encode()).hexdigest()


def torch_load(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure one
    :class:`RobustkitError` naming ``what`` and the path.

    A file holding a Python object other than tensors and containers is refused as one
    that could run code; anything else that fails is corrupt. torch's own messages are
    never passed on whole: they advise turning ``weights_only`` off, which would run the
    code.
    """
    try:
        with warnings.catch_warnings():
            # torch's notes on pickle protocols, which speak of weights_only
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = _plain_text(err, whole=True)
        if "GLOBAL" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            held = found.group(1) if found else "a Python object"
            raise RobustkitError(f"{what} {path} cannot be read: it holds {held}, which could "
                                 f"run code when loaded; refused") from None
        raise RobustkitError(f"{what} {path} cannot be read: it is corrupt or not a {what} "
                             f"({_reason(err)})") from None
    except Exception as err:  # noqa: BLE001 - an untrusted file may fail in any way
        raise RobustkitError(f"{what} {path} cannot be read: it is corrupt or truncated "
                             f"({_reason(err)})") from None


def _plain_text(err: BaseException, whole: bool = False) -> str:
    """An error message without terminal colour codes (its first line unless ``whole``)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return text if whole else (text.splitlines()[0] if text else "")


def _reason(err: BaseException) -> str:
    """A short, safe reason for a failed load: the error's type and the first sentence of
    its detail, unless that detail is torch's advice about ``weights_only``."""
    text = _plain_text(err, whole=True)
    found = re.search(r"WeightsUnpickler error: *(\S[^\n]*)", text)
    detail = found.group(1) if found else (text.splitlines()[0] if text else "")
    detail = detail.split(". ")[0].strip().rstrip(".")
    if re.search(r"weights_only|torch\.load|trust|safe_globals", detail, re.IGNORECASE):
        detail = ""
    if not detail and isinstance(err, EOFError):
        detail = "the file ends too early"
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's payload (a dict), its fields and checksums verified.

    Raises:
        RobustkitError: the file is missing, a folder, unreadable, corrupt, holds code,
            is of another format or version, lacks a field, or does not match its
            checksums. A version 1 file (no checksums) gets a warning instead.
    """
    return _read(Path(path), stacklevel=3)


def _read(p: Path, stacklevel: int) -> dict[str, Any]:
    if not p.exists():
        raise RobustkitError(f"checkpoint {p} does not exist")
    if p.is_dir():
        raise RobustkitError(f"checkpoint {p} is a folder, not a checkpoint file")
    payload = torch_load(p, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RobustkitError(f"{p} is not a robustkit checkpoint (no '{FORMAT}' header)")
    version = payload.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise RobustkitError(
            f"checkpoint {p} has format version {version!r}, this robustkit reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}")
    _check_fields(p, payload)
    stored = payload.get("checksum")
    if stored is None and version == 1:
        warnings.warn(f"checkpoint {p} was written before checkpoints held checksums "
                      f"(format version 1): its weights cannot be verified; save it again "
                      f"to add them", stacklevel=stacklevel)
        return payload
    if not isinstance(stored, dict):
        raise RobustkitError(f"checkpoint {p} has no checksum (damaged or edited)")
    actual = checksums(payload)
    for part, what in (("weights", "its weights do not match their checksum"),
                       ("spec", "its model description (name, shapes, normalization, "
                                "options) does not match its checksum"),
                       ("metadata", "its metadata do not match their checksum")):
        if stored.get(part) != actual[part]:
            raise RobustkitError(f"checkpoint {p}: {what} (damaged or edited)")
    return payload


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fields(p: Path, payload: dict[str, Any]) -> None:
    """Every field a checkpoint needs, of the right kind; else one error naming it."""
    fields = {
        "name": (lambda v: isinstance(v, str), "a model name"),
        "in_shape": (lambda v: isinstance(v, list) and len(v) == 3
                     and all(isinstance(s, int) and not isinstance(s, bool) for s in v),
                     "a list of three integers (C, H, W)"),
        "num_classes": (lambda v: isinstance(v, int) and not isinstance(v, bool),
                        "an integer"),
        "mean": (lambda v: v is None or isinstance(v, list) and all(map(_is_number, v)),
                 "a list of numbers"),
        "std": (lambda v: v is None or isinstance(v, list) and all(map(_is_number, v)),
                "a list of numbers"),
        "options": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                    "a table of options"),
        "state_dict": (lambda v: isinstance(v, dict) and all(
            isinstance(k, str) and isinstance(t, torch.Tensor) and t.layout == torch.strided
            and not t.is_quantized for k, t in v.items()), "a table of dense tensors"),
        "metadata": (lambda v: isinstance(v, dict), "a table"),
    }
    for key, (ok, kind) in fields.items():
        if key not in payload or not ok(payload[key]):
            raise RobustkitError(f"checkpoint {p} is damaged: its {key!r} is missing or not "
                                 f"{kind}")
    output = payload.get("output")
    if "output" in payload and (isinstance(output, bool) or not isinstance(output, (str, int))):
        raise RobustkitError(f"checkpoint {p} is damaged: its 'output' is not a key or an index")


def load(path: str | os.PathLike, device: str | torch.device = "auto", *,
         trust: Collection[str] = ()) -> nn.Module:
    """Rebuild the model saved at ``path``, on ``device``, in eval mode.

    The file is read and verified by :func:`read`. The model is first built on the
    ``meta`` device, so options that would allocate terabytes cost nothing; every weight's
    name and shape must match the file's, every weight must be finite and every
    normalization std > 0 before the model is built for real.

    Args:
        path: the checkpoint file.
        device: where the model goes: ``auto`` (default: CUDA, then MPS, then the CPU),
            ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or a ``torch.device``.
        trust: ``package.module:factory`` specs that may be imported and called to build
            the model; a checkpoint of a factory model not listed is refused (the file
            names the code, so loading it would run whatever the file says).

    Returns:
        The module, with ``robustkit_metadata`` holding the saved metadata.

    Raises:
        RobustkitError: as :func:`read`, or the weights do not fit the model its
            description builds, hold NaN or Inf, or hold a std that is not > 0, or the
            model is built by a factory that ``trust`` does not name.
    """
    p = Path(path)
    payload = _read(p, stacklevel=3)
    _check_trusted(p, payload["name"], trust)
    name, options, output = payload["name"], payload["options"], payload.get("output")
    shape, classes, mean, std = (payload[k] for k in ("in_shape", "num_classes", "mean", "std"))
    try:
        check_spec(payload["name"])  # a factory's module is imported here, not on meta
        with torch.device("meta"):  # shapes only: nothing is allocated
            skeleton = construct(name, shape, classes, mean, std, options, output)
        if foreign.is_foreign(payload["name"]):
            foreign.check_forward(skeleton, payload["in_shape"], payload["num_classes"],
                                  f"model {payload['name']!r}")
    except RobustkitError as err:
        raise RobustkitError(f"checkpoint {p}: {err}") from None
    except Exception as err:  # noqa: BLE001 - options from an untrusted file
        raise RobustkitError(f"checkpoint {p}: model {payload['name']!r} cannot be built "
                             f"from its stored options ({_reason(err)})") from None
    state = payload["state_dict"]
    _check_fit(p, payload["name"], skeleton, state)
    _check_values(p, skeleton, state)
    model = construct(name, shape, classes, mean, std, options, output)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RobustkitError(f"checkpoint {p}: weights do not fit the model "
                             f"({_plain_text(err)})") from None
    model.robustkit_metadata = payload["metadata"]
    return model.to(pick_device(device)).eval()


def _check_trusted(p: Path, name: str, trust: Collection[str]) -> None:
    """Refuse, before importing anything, a factory model that the caller does not trust."""
    try:
        kind = foreign.parse(name)[0]
    except RobustkitError as err:
        raise RobustkitError(f"checkpoint {p}: {err}") from None
    if kind == "factory" and name not in set(trust):
        raise RobustkitError(
            f"checkpoint {p}: its model is built by calling {name}, code that the file "
            f"names; loading it would import and run that code, so it is refused unless you "
            f"trust it: --trust-factory {name} (robustkit.models.load(path, "
            f"trust=[{name!r}]))")


def _check_fit(p: Path, name: str, skeleton: nn.Module, state: dict[str, torch.Tensor]
               ) -> None:
    """Every tensor of the model built from the description is in the file, with its
    shape and kind of dtype; the file holds no other."""
    check_state_fits(skeleton.state_dict(), state,
                     f"checkpoint {p}: weights do not fit the model {name!r} its options "
                     f"describe")


def check_state_fits(expected: Mapping[str, torch.Tensor], named: Mapping[str, torch.Tensor],
                     where: str, *, shown: Mapping[str, str] | None = None,
                     as_file: Mapping[str, str] | None = None,
                     optional: Collection[str] = ()) -> None:
    """Refuse weights ``named`` (the model's names -> tensors) that do not fit the model's
    ``expected`` state dict: a missing tensor (unless ``optional``), another shape or kind
    of dtype, or a tensor the model has not. ``shown`` and ``as_file`` give the names the
    messages use (the file's own names, where they differ)."""
    shown = shown or {k: k for k in expected}
    as_file = as_file or {k: k for k in named}
    for key, t in expected.items():
        if key not in named:
            if key in optional:
                continue
            missing = [shown[k] for k in expected if k not in named and k not in optional]
            raise RobustkitError(f"{where}: {shown[key]} is missing from the file"
                                 + (f" ({len(missing)} weights missing in all)"
                                    if len(missing) > 1 else ""))
        stored = named[key]
        if tuple(stored.shape) != tuple(t.shape):
            raise RobustkitError(f"{where}: {shown[key]} is {tuple(stored.shape)} in the file "
                                 f"but {tuple(t.shape)} in the model")
        if stored.is_floating_point() != t.is_floating_point():
            raise RobustkitError(f"{where}: {shown[key]} is {stored.dtype} in the file but "
                                 f"{t.dtype} in the model")
    extra = [k for k in named if k not in expected]
    if extra:
        raise RobustkitError(f"{where}: the file holds {as_file[extra[0]]}, which the model "
                             f"has not"
                             + (f" ({len(extra)} such weights)" if len(extra) > 1 else ""))


def _check_values(p: Path, skeleton: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Finite weights, and every ``Normalize`` std > 0: else every output is meaningless."""
    for key, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
            raise RobustkitError(
                f"checkpoint {p}: its weights {key} hold NaN or Inf; refused (the model's "
                f"outputs, and any accuracy or attack on it, would be meaningless)")
    for name, module in skeleton.named_modules():
        if isinstance(module, Normalize):
            key = f"{name}.std" if name else "std"
            std = state[key]
            if not (std > 0).all():
                raise RobustkitError(
                    f"checkpoint {p}: {key} (the normalization's std) is "
                    f"{std.flatten().tolist()}; it must be > 0 (dividing by it gives Inf or "
                    f"NaN)")
