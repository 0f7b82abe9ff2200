"""Fast gradient sign method: one Linf step of size eps."""

from __future__ import annotations

import torch
from torch import nn

from robustkit.attacks.base import (borrowed, check_eps, check_result, check_values, input_grad,
                                    per_example, prepare)
from robustkit.attacks.threat import THREATS
from robustkit.core.cost import charge


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
         targeted: bool = False, amp: bool = False) -> torch.Tensor:
    """FGSM: ``x + eps * sign(grad_x loss)``, clipped to [0, 1].

    Goodfellow, Shlens and Szegedy 2014, "Explaining and Harnessing Adversarial Examples",
    arXiv 1412.6572.

    Args:
        model: returns logits (N, K) for images in [0, 1].
        x: images (N, C, H, W) in [0, 1].
        y: true labels (N,), or target labels when ``targeted``.
        eps: Linf radius in pixel units, >= 0.
        targeted: step towards ``y`` instead of away from it.
        amp: take the gradient in mixed precision (float16 on CUDA, bfloat16 on the
            CPU); the image and its step stay float32.

    Returns:
        Adversarial images (N, C, H, W), within eps of ``x`` in Linf and inside [0, 1],
        on the model's device.

    Example:
        >>> x_adv = fgsm(model, x, y, eps=0.1)            # doctest: +SKIP
    """
    check_values("fgsm", eps=eps, targeted=targeted, amp=amp)
    eps = check_eps(eps, "fgsm")
    x0, y0 = prepare(model, x, y, "fgsm")
    tm = THREATS.get("linf")
    with borrowed(model, "fgsm", fast_layout=True, amp=amp):
        grad, _ = input_grad(model, x0, y0, targeted)
        charge(len(x0), forward=1, backward=1)
        e = per_example(eps, len(x0), x0)
        x_adv = tm.project(tm.step(x0, grad, e), x0, e)
    return check_result(x_adv, x0, eps=eps, norm="linf", what="fgsm")
