"""Accuracy, attack success, and how perceptible a perturbation is.

Example:
    >>> norms = perturbation_norms(x, x_adv)          # doctest: +SKIP
    >>> norms["linf"].max() <= 0.3                    # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from robustkit.core import check_inputs, predict
from robustkit.errors import RobustkitError

Tensor = torch.Tensor


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of images ``x`` (N, C, H, W) in [0, 1] that ``model`` labels ``y`` (N,)."""
    check_inputs(x, y, what="accuracy")
    return (predict(model, x, batch_size).argmax(1) == y.cpu()).float().mean().item()


def success_rate(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *,
                 targeted: bool = False, batch_size: int = 1000) -> float:
    """Attack success among the examples that can count.

    Untargeted: the fraction of the examples classified correctly on ``x`` that are
    misclassified on ``x_adv`` (``y`` are the true labels). Targeted: the fraction of
    ``x_adv`` labelled ``y`` (the targets), over examples whose clean label is not the
    target. Returns NaN when no example counts.
    """
    check_inputs(x, y, what="success_rate")
    check_inputs(x_adv, y, what="success_rate")
    _same_shape(x, x_adv, "success_rate")
    clean = predict(model, x, batch_size).argmax(1)
    adv = predict(model, x_adv, batch_size).argmax(1)
    y = y.cpu()
    if targeted:
        counts = clean != y
        hit = adv == y
    else:
        counts = clean == y
        hit = adv != y
    if not counts.any():
        return float("nan")
    return hit[counts].float().mean().item()


def perturbation_norms(x: Tensor, x_adv: Tensor, tol: float = 1e-6) -> dict[str, Tensor]:
    """Per-example sizes of ``x_adv - x``: L0 (elements changed by more than ``tol``), L2, Linf.

    Args:
        x, x_adv: (N, C, H, W).
    Returns:
        ``{"l0": (N,), "l2": (N,), "linf": (N,)}`` on the CPU.
    """
    _same_shape(x, x_adv, "perturbation_norms")
    delta = (x_adv.detach().float().cpu() - x.detach().float().cpu()).flatten(1)  # (N, D)
    return {
        "l0": (delta.abs() > tol).sum(1).float(),
        "l2": delta.norm(p=2, dim=1),
        "linf": delta.abs().amax(1),
    }


def psnr(x: Tensor, x_adv: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per example (N,), data range 1; inf when identical."""
    _same_shape(x, x_adv, "psnr")
    mse = (x_adv.detach().float().cpu() - x.detach().float().cpu()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)  # mse 0 -> inf


def ssim(x: Tensor, x_adv: Tensor) -> Tensor:
    """Structural similarity per example (N,), from torchmetrics (Wang et al. 2004), data range 1.

    Uses torchmetrics' Gaussian 11x11 window; 1.0 for identical images.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _same_shape(x, x_adv, "ssim")
    a = x_adv.detach().float().cpu()
    b = x.detach().float().cpu()
    value = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    assert isinstance(value, torch.Tensor)  # a tuple only with return_full_image=True
    return value.reshape(-1)


def _same_shape(x: Tensor, x_adv: Tensor, what: str) -> None:
    if x.shape != x_adv.shape:
        raise RobustkitError(f"{what}: shapes differ: {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    if x.ndim != 4:
        raise RobustkitError(f"{what}: expected (N, C, H, W), got shape {tuple(x.shape)}")
