"""Explanations that can be trusted: captum attributions, sanity checks, faithfulness, and
how explanations change under attack.

- :func:`attribute` ``(model, x, target, method=...)``: attributions shaped like ``x`` by
  any registered method (:func:`names`), all computed by captum, with the model's state
  kept as found and captum's batching knobs chosen by memory.
- :func:`check_model`: refuses, naming the module, the patterns that make captum's
  hook-based methods silently wrong (reused activation modules, functional activations,
  ``nn.Flatten`` for LRP).
- :func:`plot`, :func:`plot_faithfulness`, :func:`plot_sanity`: matplotlib figures.
- :func:`sanity_check`: model and data randomization (Adebayo et al. 2018).
- :func:`faithfulness`: deletion and insertion curves (Samek et al. 2017; Petsiuk et al.
  2018) against random rankings.
- :func:`robustness`: captum's max-sensitivity and normalized infidelity (Yeh et al. 2019).
- :func:`explanation_shift`: how maps move under attack (Ghorbani et al. 2019).
- :func:`alignment`: how much maps look like the image itself, the perceptual alignment
  of robust models' gradients (Tsipras et al. 2019).

Example:
    >>> from robustkit import explain
    >>> a = explain.attribute(model, x, y, method="integrated_gradients")   # doctest: +SKIP
    >>> explain.faithfulness(model, x, y, a)["deletion"]["auc"]             # doctest: +SKIP
"""

from robustkit.explain.alignment import Alignment, alignment
from robustkit.explain.attribution import attribute, explaining
from robustkit.explain.checks import check_model
from robustkit.explain.deletion import faithfulness
from robustkit.explain.methods import EXPLAINERS, Explainer, names, register_explainer
from robustkit.explain.plotting import plot, plot_faithfulness, plot_sanity
from robustkit.explain.sanity import SanityResult, sanity_check
from robustkit.explain.shift import explanation_shift
from robustkit.explain.stability import robustness

__all__ = ["EXPLAINERS", "Alignment", "Explainer", "SanityResult", "alignment", "attribute",
           "check_model", "explaining", "explanation_shift", "faithfulness", "names", "plot",
           "plot_faithfulness", "plot_sanity", "register_explainer", "robustness",
           "sanity_check"]
