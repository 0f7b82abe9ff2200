"""Explanation robustness: captum's max-sensitivity and (normalized) infidelity.

Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations":

- max-sensitivity: the largest relative change of the explanation when the input moves
  uniformly within an L-inf ball of radius ``radius`` (lower is more stable);
- infidelity: the expected squared error between the attribution's prediction of the
  output change (perturbation . attribution) and the real change, under Gaussian
  perturbations of standard deviation ``noise``; ``normalize=True`` rescales the
  attribution optimally first, so maps of different scales compare (lower is more
  faithful).

Both are captum's (``captum.metrics.sensitivity_max``, ``captum.metrics.infidelity``),
run with the model borrowed as in :func:`robustkit.explain.attribute` and seeded.

Example:
    >>> r = robustness(model, x, y, "saliency")        # doctest: +SKIP
    >>> sorted(r)                                      # doctest: +SKIP
    ['infidelity', 'infidelity_per_example', 'sensitivity_max', 'sensitivity_max_per_example']
"""

from __future__ import annotations

from typing import Any

import torch
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from robustkit.core import check_eps, check_positive_int
from robustkit.explain.attribution import Target, explaining
from robustkit.explain.rng import seeded

Tensor = torch.Tensor


def robustness(model: nn.Module, x: Tensor, target: Target, method: str, *,
               radius: float = 0.02, noise: float = 0.1, n_perturb_samples: int = 10,
               seed: int = 0, batch_size: int | None = None, **options: Any) -> dict[str, Any]:
    """Max-sensitivity and normalized infidelity of ``method``'s explanations of ``x``.

    Args:
        model: a classifier (N, C, H, W) in [0, 1] -> (N, K) logits; state kept as found.
        x: images (N, C, H, W) in [0, 1].
        target: the explained class, an int or (N,) class indices.
        method: a registered method name.
        radius: L-inf radius of sensitivity's uniform perturbations (captum's 0.02).
        noise: standard deviation of infidelity's Gaussian perturbations.
        n_perturb_samples: perturbations per example for each metric.
        seed: seeds both metrics' perturbations (the caller's random state is left alone).
        batch_size: rows per forward pass (default: sized by memory).
        options: the method's own options (see :func:`robustkit.explain.attribute`).

    Returns:
        ``{"sensitivity_max": mean, "sensitivity_max_per_example": [N], "infidelity":
        mean, "infidelity_per_example": [N]}``.
    """
    what = "robustness"
    check_eps(radius, what, "radius")
    check_eps(noise, what, "noise")
    check_positive_int(n_perturb_samples, what, "n_perturb_samples")
    with explaining(model, x, target, method, batch_size=batch_size) as prep:
        # captum counts perturbed rows per batch, between one and all perturbations of
        # every example.
        n = len(prep.x)
        per_batch = min(max(prep.rows, n), n * n_perturb_samples)

        def explain(inputs: Tensor | tuple[Tensor], target: Tensor, **kw: Any
                    ) -> Tensor | tuple[Tensor]:
            # Like captum's own attribute methods: a tuple of inputs gives a tuple back.
            if isinstance(inputs, tuple):
                return (prep.run(inputs[0], target, **kw),)
            return prep.run(inputs, target, **kw)

        def gaussian(inputs: Tensor) -> tuple[Tensor, Tensor]:
            delta = torch.randn_like(inputs) * noise
            return delta, inputs - delta

        with seeded(seed, prep.x.device):
            sens = sensitivity_max(explain, prep.x, perturb_radius=radius,
                                   n_perturb_samples=n_perturb_samples,
                                   max_examples_per_batch=per_batch, target=prep.target,
                                   **options)
        attributions = prep.run(prep.x, prep.target, **options)
        with seeded(seed, prep.x.device), torch.no_grad():
            infid = infidelity(prep.model, gaussian, prep.x, attributions, target=prep.target,
                               n_perturb_samples=n_perturb_samples,
                               max_examples_per_batch=per_batch, normalize=True)
    return {"sensitivity_max": sens.mean().item(), "sensitivity_max_per_example": sens.tolist(),
            "infidelity": infid.mean().item(), "infidelity_per_example": infid.tolist()}
