"""Momentum iterative FGSM, optionally with input diversity: attacks built to transfer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks.base import (borrowed, check_eps, check_result,
                                    check_values,
                                    generator, per_example, prepare)
from robustkit.core.seeding import ExampleSeeds
from robustkit.attacks.threat import THREATS, flat_norm
from robustkit.core.cost import charge

Tensor = torch.Tensor


def diverse_inputs(x: Tensor, prob: float, scale: float,
                   gen: torch.Generator | ExampleSeeds | None) -> Tensor:
    """Input diversity: with probability ``prob``, shrink the batch to a random size in
    [(1 - scale) H, H] and zero-pad it back to H x W at a random offset.

    Xie et al. use resize-then-pad to a larger canvas, which needs a model that accepts
    any size; shrinking keeps the input size, so fixed-size models work too. With
    :class:`ExampleSeeds` each example draws its own transform from its own stream (the
    result does not depend on the batch it is in).

    Args:
        x: (N, C, H, W).
    """
    if isinstance(gen, ExampleSeeds):
        return torch.cat([diverse_inputs(x[i:i + 1], prob, scale, g)
                          for i, g in enumerate(gen.generators)])
    if prob <= 0 or torch.rand((), generator=gen).item() >= prob:
        return x
    n, c, h, w = x.shape
    low = max(1, int(round(h * (1 - scale))))
    size = int(torch.randint(low, h + 1, (), generator=gen))
    if size == h:
        return x
    size_w = max(1, round(size * w / h))
    small = F.interpolate(x, size=(size, size_w), mode="nearest")  # (N, C, size, size_w)
    top = int(torch.randint(0, h - size + 1, (), generator=gen))
    left = int(torch.randint(0, w - size_w + 1, (), generator=gen))
    return F.pad(small, (left, w - size_w - left, top, h - size - top))


def mifgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float | None = None,
           steps: int = 10, decay: float = 1.0, diversity_prob: float = 0.0,
           diversity_scale: float = 0.1, targeted: bool = False,
           seed: int | ExampleSeeds | None = None, amp: bool = False) -> Tensor:
    """MI-FGSM: Linf iterative steps along the sign of an accumulated, L1-normalized gradient.

    Dong et al. 2018, "Boosting Adversarial Attacks with Momentum", arXiv 1710.06081;
    with ``diversity_prob > 0``, DI-MI-FGSM from Xie et al. 2019, "Improving Transferability
    of Adversarial Examples with Input Diversity", arXiv 1803.06978.

    Args:
        model: returns logits (N, K) for images in [0, 1].
        x: images (N, C, H, W) in [0, 1].
        y: true labels (N,), or target labels when ``targeted``.
        eps: Linf radius, >= 0.
        alpha: step size; default ``eps / steps`` (the paper's choice).
        steps: iterations.
        decay: momentum factor mu (1.0 in the paper).
        diversity_prob: probability of transforming the input at each step (0.5 in Xie et al.).
        diversity_scale: largest relative shrink of the diverse input.
        seed: seeds the input-diversity draws (an :class:`ExampleSeeds`: each example
            from its own stream).
        amp: gradients in mixed precision (float16 on CUDA, bfloat16 on the CPU).

    Returns:
        Adversarial images (N, C, H, W) inside the Linf eps-ball and [0, 1].

    Example:
        >>> x_adv = mifgsm(model, x, y, eps=0.2, diversity_prob=0.5, seed=0)  # doctest: +SKIP
    """
    check_values("mifgsm", eps=eps, alpha=alpha, steps=steps, decay=decay,
                 diversity_prob=diversity_prob, diversity_scale=diversity_scale,
                 targeted=targeted, seed=seed, amp=amp)
    eps = check_eps(eps, "mifgsm")
    alpha = eps / steps if alpha is None else check_eps(alpha, "mifgsm", "alpha")
    x0, y0 = prepare(model, x, y, "mifgsm")
    tm = THREATS.get("linf")
    gen = generator(seed)
    e = per_example(eps, len(x0), x0)
    a = per_example(alpha, len(x0), x0)
    sign = -1.0 if targeted else 1.0
    with borrowed(model, "mifgsm", fast_layout=True, amp=amp):
        x_adv = x0
        momentum = torch.zeros_like(x0)  # (N, C, H, W)
        for _ in range(steps):
            x_var = x_adv.detach().requires_grad_(True)
            logits = model(diverse_inputs(x_var, diversity_prob, diversity_scale, gen))
            loss = sign * F.cross_entropy(logits, y0, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_var)
            charge(len(x0), forward=1, backward=1)
            l1 = flat_norm(grad, 1).clamp_min(1e-12).view(-1, 1, 1, 1)
            momentum = decay * momentum + grad / l1
            x_adv = tm.project(tm.step(x_adv, momentum, a), x0, e)
    return check_result(x_adv, x0, eps=eps, norm="linf", what="mifgsm")
