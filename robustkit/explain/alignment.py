"""How much an attribution map looks like the image it explains.

Tsipras, Santurkar, Engstrom, Turner and Madry 2019 ("Robustness May Be at Odds with
Accuracy", ICLR 2019, arXiv 1805.12152) show that the input gradients of adversarially
trained models are perceptually aligned: on MNIST they trace the digit's strokes, where a
standard model's gradient looks like noise. :func:`alignment` puts two numbers on that,
per example:

- ``spearman``: the Spearman rank correlation between the absolute pixel map and the
  image's own intensities (summed over channels), in [-1, 1]. Ties share their mean rank,
  which matters on MNIST, whose background is one large tie of zeros.
- ``ink_share``: the share of the total |attribution| that lies on the digit's pixels
  (channel-mean intensity above ``threshold``), beside ``area_share``, the share of the
  pixels that are ink, which is what a uniform map gets. A map aligned with the digit puts
  more than the ink's share of the area on it.

Example:
    >>> a = explain.attribute(model, x, y, method="saliency")   # doctest: +SKIP
    >>> explain.alignment(a, x).to_dict()                      # doctest: +SKIP
    {'spearman': 0.41, 'ink_share': 0.38, 'area_share': 0.19, 'n': 16, 'threshold': 0.5}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from robustkit.errors import RobustkitError
from robustkit.explain.compare import pixel_map, spearman

Tensor = torch.Tensor

METRICS = ("spearman", "ink_share", "area_share")


@dataclass(frozen=True)
class Alignment:
    """Per-example alignment of attribution maps with their images; every tensor is (N,).

    Attributes:
        spearman: Spearman correlation of |map| with the image's intensities, in [-1, 1];
            0 for a constant map (it ranks nothing).
        ink_share: share of the |map| mass on ink pixels, in [0, 1]; an all-zero map
            counts as uniform and gets ``area_share``.
        area_share: share of the pixels that are ink, in [0, 1]: a uniform map's
            ``ink_share``.
        threshold: the channel-mean intensity above which a pixel is ink.
    """

    spearman: Tensor
    ink_share: Tensor
    area_share: Tensor
    threshold: float

    def means(self) -> dict[str, float]:
        """The mean of each metric over the examples."""
        return {m: getattr(self, m).mean().item() for m in METRICS}

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        """Means, ``n`` and ``threshold`` as plain JSON values; with ``per_example``, also
        ``{"per_example": {metric: [N floats]}}``."""
        out: dict[str, Any] = {**self.means(), "n": len(self.spearman),
                               "threshold": self.threshold}
        if per_example:
            out["per_example"] = {m: getattr(self, m).tolist() for m in METRICS}
        return out


def alignment(attributions: Tensor, x: Tensor, *, threshold: float = 0.5) -> Alignment:
    """How much each attribution map looks like its image (Tsipras et al. 2019).

    Args:
        attributions: maps shaped like ``x``, (N, C, H, W), finite, any sign (the absolute
            value is summed over channels).
        x: the images the maps explain, (N, C, H, W) in [0, 1]. To judge a map computed on
            an attacked image against the digit itself, pass the clean image.
        threshold: a pixel is ink when its channel-mean intensity exceeds this, in [0, 1).

    Returns:
        An :class:`Alignment` with ``spearman``, ``ink_share`` and ``area_share``, each (N,)
        on the CPU; ``.to_dict()`` gives the means for JSON.

    Example:
        >>> a = explain.attribute(model, x, y, method="saliency")   # doctest: +SKIP
        >>> r = explain.alignment(a, x)                             # doctest: +SKIP
        >>> r.spearman.shape, r.means()["ink_share"] > r.means()["area_share"]  # doctest: +SKIP
        (torch.Size([16]), True)
    """
    _check(attributions, x, threshold)
    m = pixel_map(attributions, absolute=True)  # (N, H, W)
    ink = x.detach().float().cpu().mean(1) > threshold  # (N, H, W)
    total = m.sum((1, 2))  # (N,)
    area_share = ink.float().mean((1, 2))
    on_ink = (m * ink).sum((1, 2)) / total.clamp_min(torch.finfo(m.dtype).tiny)
    return Alignment(
        # pixel_map of x with absolute=True is its channel sum, since x >= 0.
        spearman=spearman(attributions, x, absolute=True),
        ink_share=torch.where(total > 0, on_ink, area_share),
        area_share=area_share,
        threshold=float(threshold),
    )


def _check(attributions: Any, x: Any, threshold: Any) -> None:
    """Refuse what would give meaningless numbers, naming the problem."""
    what = "alignment"
    for name, t in (("attributions", attributions), ("x", x)):
        if not isinstance(t, torch.Tensor):
            raise RobustkitError(f"{what}: {name} must be a tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise RobustkitError(f"{what}: {name} must have rank 4 (N, C, H, W), got shape "
                                 f"{tuple(t.shape)}")
        if len(t) == 0:
            raise RobustkitError(f"{what}: {name} is an empty batch")
        if not torch.isfinite(t).all():
            raise RobustkitError(f"{what}: {name} contains NaN or Inf")
    if attributions.shape != x.shape:
        raise RobustkitError(f"{what}: attributions and x differ in shape: "
                             f"{tuple(attributions.shape)} vs {tuple(x.shape)}")
    if not x.is_floating_point():
        raise RobustkitError(f"{what}: x must be floating point in [0, 1], got dtype {x.dtype}")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise RobustkitError(f"{what}: x must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold) or not 0 <= threshold < 1):
        raise RobustkitError(f"{what}: threshold must be a number in [0, 1), got {threshold!r}")
