"""How explanations change under attack (Ghorbani, Abid and Zou 2019, "Interpretation of
Neural Networks is Fragile").

Ghorbani et al. show that perturbations too small to change the label can move a saliency
map far. Given clean images and their adversarial versions, :func:`explanation_shift`
compares the two maps of every example, for the same target class, and splits the
examples by whether the model's predicted label flipped or held: a large shift where the
label held means the explanation is fragile, not merely following a new decision.

Example:
    >>> x_adv = attacks.pgd(model, x, y, eps=0.1, steps=20, seed=0)        # doctest: +SKIP
    >>> s = explanation_shift(model, x, x_adv, y, "saliency")              # doctest: +SKIP
    >>> s["held"]["top_k_intersection"], s["flipped"]["n"]                 # doctest: +SKIP
    (0.41, 87)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustkit.core import check_inputs
from robustkit.errors import RobustkitError
from robustkit.explain import compare
from robustkit.explain.attribution import Target, attribute
from robustkit.core import predict

Tensor = torch.Tensor


def explanation_shift(model: nn.Module, x: Tensor, x_adv: Tensor, target: Target,
                      method: str = "saliency", *, k: int | None = None,
                      **options: Any) -> dict[str, Any]:
    """Similarity of ``method``'s maps on ``x`` and on ``x_adv``, split by label flipped/held.

    Args:
        model: a classifier (N, C, H, W) in [0, 1] -> (N, K) logits; state kept as found.
        x, x_adv: clean and perturbed images (N, C, H, W) in [0, 1].
        target: the class both maps explain, an int or (N,) class indices (e.g. the labels).
        method: a registered method name.
        k: pixels in the top-k intersection (default: a tenth of the pixels, at least 1).
        options: the method's own options.

    Returns:
        ``{"all" | "flipped" | "held": {"n": count, METRIC: mean (None when n is 0)},
        "per_example": {METRIC: [N], "flipped": [N] bools}, "k": k}``, METRIC in
        ``top_k_intersection`` (in [0, 1]), ``spearman_abs`` and ``spearman`` (in
        [-1, 1]), ``ssim`` (1 when identical) and ``centre_of_mass_shift`` (pixels).
    """
    what = "explanation_shift"
    check_inputs(x, None, what=what)
    check_inputs(x_adv, None, what=what)
    if x.shape != x_adv.shape:
        raise RobustkitError(f"{what}: x and x_adv differ in shape: {tuple(x.shape)} vs "
                             f"{tuple(x_adv.shape)}")
    pixels = x.shape[-2] * x.shape[-1]
    k = max(1, math.ceil(pixels / 10)) if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= pixels:
        raise RobustkitError(f"{what}: k must be an integer in [1, {pixels}], got {k!r}")
    a = attribute(model, x, target, method=method, **options)
    b = attribute(model, x_adv, target, method=method, **options)
    flipped = predict(model, x).argmax(1) != predict(model, x_adv).argmax(1)  # (N,)
    per = {
        "top_k_intersection": compare.top_k_intersection(a, b, k),
        "spearman_abs": compare.spearman(a, b, absolute=True),
        "spearman": compare.spearman(a, b, absolute=False),
        "ssim": compare.ssim(a, b),
        "centre_of_mass_shift": compare.centre_of_mass_shift(a, b),
    }

    def means(keep: Tensor) -> dict[str, Any]:
        n = int(keep.sum())
        return {"n": n, **{m: (v[keep].mean().item() if n else None) for m, v in per.items()}}

    return {"all": means(torch.ones_like(flipped)), "flipped": means(flipped),
            "held": means(~flipped), "k": k,
            "per_example": {**{m: v.tolist() for m, v in per.items()},
                            "flipped": flipped.tolist()}}
