"""How similar two attribution maps are, per example, batched.

A map (N, C, H, W) is first reduced to one value per pixel (N, H, W): the sum over
channels for the signed map, the sum of absolute values for the absolute map (Adebayo
et al. 2018 compare both). All functions return one value per example (N,).

Example:
    >>> spearman(a, b, absolute=True)          # doctest: +SKIP
    tensor([0.93, 0.88, ...])
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def pixel_map(a: Tensor, absolute: bool) -> Tensor:
    """(N, C, H, W) -> (N, H, W): per-pixel relevance, signed or absolute, float32 on the CPU."""
    a = a.detach().float().cpu()
    return (a.abs() if absolute else a).sum(1)


def ranks(v: Tensor) -> Tensor:
    """Average ranks (0-based) of each row of ``v`` (N, D); ties share their mean rank.

    Ties matter here: ReLU'd maps (Grad-CAM, saliency of dead units) hold many equal zeros.
    """
    order = v.argsort(dim=1, stable=True)
    sorted_v = v.gather(1, order)
    n, d = v.shape
    pos = torch.arange(d).expand(n, d)
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    starts[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, 0).cummax(1).values  # first position of each tie group
    last = torch.where(ends, pos, d).flip(1).cummin(1).values.flip(1)  # and its last
    return torch.empty(n, d).scatter_(1, order, (first + last).float() / 2)


def spearman(a: Tensor, b: Tensor, absolute: bool) -> Tensor:
    """Spearman rank correlation of the pixel maps of ``a`` and ``b`` (N, C, H, W), per example.

    A map with no variation carries no ranking: it correlates 0 with any other map and 1
    with an identical one.
    """
    ra = ranks(pixel_map(a, absolute).flatten(1))  # (N, H*W)
    rb = ranks(pixel_map(b, absolute).flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    rho = (ra * rb).sum(1) / denom.clamp_min(1e-12)
    same = (ra == rb).all(1)
    return torch.where(denom > 0, rho, same.float())


def normalized(a: Tensor) -> Tensor:
    """Absolute pixel maps scaled to [0, 1] per example, as (N, 1, H, W); all-zero stays zero."""
    m = pixel_map(a, absolute=True)
    peak = m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (m / peak)[:, None]


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM (Wang et al. 2004, torchmetrics' 11x11 Gaussian window) of the normalized
    absolute maps of ``a`` and ``b``, per example; 1 for identical maps."""
    from robustkit.metrics import ssim as image_ssim

    return image_ssim(normalized(a), normalized(b))


def top_k_intersection(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Fraction of the ``k`` most relevant pixels (absolute map) that ``a`` and ``b`` share
    (Ghorbani, Abid and Zou 2019), per example, in [0, 1]."""
    ta = pixel_map(a, absolute=True).flatten(1).topk(k, dim=1).indices  # (N, k)
    tb = pixel_map(b, absolute=True).flatten(1).topk(k, dim=1).indices
    return (ta[:, :, None] == tb[:, None, :]).any(2).float().mean(1)


def centre_of_mass(a: Tensor) -> Tensor:
    """(row, column) centre of mass of the absolute pixel map, (N, 2), in pixels; the image
    centre for an all-zero map."""
    m = pixel_map(a, absolute=True)  # (N, H, W)
    h, w = m.shape[1:]
    rows = torch.arange(h, dtype=m.dtype)[None, :, None]
    cols = torch.arange(w, dtype=m.dtype)[None, None, :]
    mass = m.sum((1, 2))
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2]).expand(len(m), 2)
    com = torch.stack([(m * rows).sum((1, 2)), (m * cols).sum((1, 2))], 1) / mass.clamp_min(
        1e-12)[:, None]
    return torch.where((mass > 0)[:, None], com, centre)


def centre_of_mass_shift(a: Tensor, b: Tensor) -> Tensor:
    """Distance in pixels between the centres of mass of ``a`` and ``b``, per example."""
    return (centre_of_mass(a) - centre_of_mass(b)).norm(dim=1)
