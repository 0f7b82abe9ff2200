"""DeepFool: the smallest L2 step to the nearest decision boundary, linearized, repeated."""

from __future__ import annotations

import torch
from torch import nn

from robustkit.attacks.base import (borrowed, check_eps, check_result,
                                    check_values,
                                    prepare)
from robustkit.attacks.threat import flat_norm
from robustkit.core.cost import charge

Tensor = torch.Tensor


def deepfool(model: nn.Module, x: Tensor, y: Tensor, *, steps: int = 50,
             overshoot: float = 0.02, candidates: int | None = None) -> Tensor:
    """DeepFool (L2): step to the closest linearized class boundary until the label flips.

    Moosavi-Dezfooli, Fawzi and Frossard 2016, "DeepFool: a simple and accurate method to
    fool deep neural networks", arXiv 1511.04599.

    Each iteration takes one forward pass and one backward pass per candidate class, for
    the still-unbroken examples only; an example stops as soon as its label changes.

    Args:
        model: returns logits (N, K) for images in [0, 1].
        x: images (N, C, H, W) in [0, 1].
        y: true labels (N,).
        steps: at most this many linearization steps.
        overshoot: the total perturbation is scaled by ``1 + overshoot`` to cross the boundary.
        candidates: consider only the classes with the top logits at the start (default all).

    Returns:
        Adversarial images (N, C, H, W) in [0, 1]; unbroken examples after ``steps`` hold
        the last iterate. No eps bound: DeepFool measures how far the boundary is.

    Example:
        >>> x_adv = deepfool(model, x, y, steps=50, overshoot=0.02)     # doctest: +SKIP
        >>> (x_adv - x).flatten(1).norm(dim=1).median()                # doctest: +SKIP
    """
    check_values("deepfool", steps=steps, overshoot=overshoot, candidates=candidates)
    overshoot = check_eps(overshoot, "deepfool", "overshoot")
    x0, y0 = prepare(model, x, y, "deepfool")
    n = len(x0)
    with borrowed(model, "deepfool", fast_layout=True):
        with torch.no_grad():
            start_logits = model(x0)
            k_all = start_logits.shape[1]
            k = k_all if candidates is None else max(2, min(int(candidates), k_all))
        charge(n, forward=1)
        # Candidate classes per example: the true label first, then the top other logits.
        others = start_logits.scatter(1, y0[:, None], float("-inf")).topk(k - 1, dim=1).indices
        classes = torch.cat([y0[:, None], others], dim=1)  # (N, k)
        r_total = torch.zeros_like(x0)  # (N, C, H, W)
        x_adv = x0.clone()
        active = torch.arange(n, device=x0.device)
        for _ in range(steps):
            xa = x_adv[active].detach().requires_grad_(True)
            logits = model(xa)  # (A, K)
            charge(n, rows=active, forward=1)
            ca = classes[active]  # (A, k)
            still = logits.argmax(1) == ca[:, 0]
            if not still.all():
                active, xa, logits, ca = active[still], xa[still], logits[still], ca[still]
                if len(active) == 0:
                    break
                xa = xa.detach().requires_grad_(True)
                logits = model(xa)
                charge(n, rows=active, forward=1)
            picked = logits.gather(1, ca)  # (A, k): true class first
            grads = [torch.autograd.grad(picked[:, j].sum(), xa, retain_graph=j < k - 1)[0]
                     for j in range(k)]
            g = torch.stack(grads, 1)  # (A, k, C, H, W)
            charge(n, rows=active, backward=k)  # one input gradient per candidate class
            w = g[:, 1:] - g[:, :1]  # (A, k-1, C, H, W)
            f = (picked[:, 1:] - picked[:, :1]).detach()  # (A, k-1), < 0 while unbroken
            w_norm = flat_norm(w.flatten(0, 1), 2).view(len(active), k - 1).clamp_min(1e-8)
            dist = f.abs() / w_norm  # (A, k-1): linearized distance to each boundary
            best = dist.argmin(1)
            idx = torch.arange(len(active), device=x0.device)
            step = ((dist[idx, best] + 1e-4) / w_norm[idx, best]).view(-1, 1, 1, 1) * w[idx, best]
            r_total[active] += step
            x_adv[active] = (x0[active] + (1 + overshoot) * r_total[active]).clamp(0, 1)
    return check_result(x_adv.detach(), x0, eps=None, norm=None, what="deepfool")
