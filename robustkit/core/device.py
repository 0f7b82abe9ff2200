"""Device selection: CUDA when present, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

from robustkit.errors import RobustkitError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to the fastest available device; check an explicit one exists.

    Example:
        >>> pick_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = str(device).split(":")[0]
    if kind not in DEVICES:
        raise RobustkitError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RobustkitError("device 'cuda' was asked for, but torch sees no CUDA GPU")
    mps = getattr(torch.backends, "mps", None)
    if kind == "mps" and not (mps is not None and mps.is_available()):
        raise RobustkitError("device 'mps' was asked for, but MPS is not available")
    return torch.device(device)


def amp_dtype_for(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype for ``device``: float16 on CUDA, bfloat16 on a capable CPU, or None."""
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        if amp is None and not cpu_has_native_bf16():
            return None
        return torch.bfloat16
    if amp:
        raise RobustkitError(f"mixed precision is not supported on {device.type}")
    return None


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 or AMX), so autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
