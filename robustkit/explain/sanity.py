"""Sanity checks for saliency maps (Adebayo et al. 2018): do the maps depend on the model?

Model parameter randomization: re-initialize the layers of a copy of the model, from the
output down, and measure how similar each method's maps stay to the original ones. A
method whose maps survive the destruction of the weights explains the input, not the
model. Cascading randomizes progressively (after step k the top k layers are random);
independent randomizes one layer at a time. Similarity is the Spearman rank correlation
of the absolute and of the signed maps and the SSIM of the normalized absolute maps
(:mod:`robustkit.explain.compare`), averaged over the images; the same numbers for
random maps are the floor.

Data randomization (optional): retrain a re-initialized copy on permuted labels, so the
model can only memorize, and compare its maps with the original ones.

Example:
    >>> r = sanity_check(model, x, y, ["saliency", "guided_backprop"])    # doctest: +SKIP
    >>> r["saliency"][-1]["layer"], r["saliency"][-1]["spearman_abs"]     # doctest: +SKIP
    ('conv1', 0.05)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustkit.core import borrowed, check_inputs, model_device
from robustkit.errors import RobustkitError
from robustkit.explain import compare
from robustkit.explain.attribution import Target, attribute
from robustkit.explain.methods import EXPLAINERS
from robustkit.explain.probe import probe
from robustkit.explain.rng import seeded

Tensor = torch.Tensor
#: The similarities of every step, in table and figure order.
SIMILARITIES = ("spearman_abs", "spearman", "ssim")


class SanityResult(dict):
    """``{method: [step, ...]}``, one step per randomization, plus the floors.

    Each step is ``{"layer": name, "spearman_abs": mean, "spearman": mean, "ssim": mean}``
    with ``*_std`` spreads over the images; in cascading mode the last step has every
    layer randomized.

    Attributes:
        mode: ``"cascading"`` or ``"independent"``.
        layers: the randomized layers, output first.
        baseline: ``{method: similarities}`` of the original maps with random maps.
        data_randomization: ``{method: similarities}`` of the maps of a model retrained on
            permuted labels (plus its ``train_accuracy``), or None.
    """

    def __init__(self, steps: dict[str, list[dict[str, Any]]], *, mode: str, layers: list[str],
                 baseline: dict[str, dict[str, float]],
                 data_randomization: dict[str, dict[str, float | None]] | None = None
                 ) -> None:
        super().__init__(steps)
        self.mode = mode
        self.layers = layers
        self.baseline = baseline
        self.data_randomization = data_randomization

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain values, for JSON."""
        return {"mode": self.mode, "layers": self.layers, "steps": dict(self),
                "random_baseline": self.baseline, "data_randomization": self.data_randomization}

    def table(self, metric: str = "spearman_abs") -> str:
        """A Markdown table of ``metric``: one row per randomized layer, one column per
        method, then the random-map floor (and data randomization, if run)."""
        methods = list(self)
        head = "cumulative randomization" if self.mode == "cascading" else "randomized layer"
        lines = [f"| {head} | " + " | ".join(methods) + " |",
                 "|---|" + "---:|" * len(methods)]
        for i, layer in enumerate(self.layers):
            label = f"up to {layer}" if self.mode == "cascading" else layer
            lines.append(f"| {label} | " + " | ".join(f"{self[m][i][metric]:.3f}"
                                                       for m in methods) + " |")
        extra: list[tuple[str, Any]] = [("random maps", self.baseline)]
        if self.data_randomization:
            extra.append(("data randomization", self.data_randomization))
        for label, rows in extra:
            lines.append(f"| {label} | " + " | ".join(f"{rows[m][metric]:.3f}"
                                                      for m in methods) + " |")
        return "\n".join(lines)


def similarities(original: Tensor, other: Tensor) -> dict[str, float]:
    """Mean and standard deviation over images of each similarity of two map batches."""
    values = {"spearman_abs": compare.spearman(original, other, absolute=True),
              "spearman": compare.spearman(original, other, absolute=False),
              "ssim": compare.ssim(original, other)}
    out: dict[str, float] = {}
    for name, v in values.items():
        out[name] = v.mean().item()
        out[f"{name}_std"] = v.std().item() if len(v) > 1 else 0.0
    return out


def parameter_layers(model: nn.Module, x1: Tensor) -> list[str]:
    """Names of the modules holding parameters of their own, from the output down
    (reverse order of execution, as one forward pass of ``x1`` (1, C, H, W) shows)."""
    modules = dict(model.named_modules())
    ran = list(dict.fromkeys(reversed(probe(model, x1).order)))  # last run first, unique
    return [n for n in ran if any(True for _ in modules[n].parameters(recurse=False))]


def randomize(module: nn.Module) -> None:
    """Re-initialize ``module``'s own parameters from the global generator: its
    ``reset_parameters`` (PyTorch's default initialization) where it has one, else a
    normal draw with the trained parameters' standard deviation."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.normal_(0.0, float(p.std()) if p.numel() > 1 else 1.0)


def sanity_check(model: nn.Module, x: Tensor, target: Target, methods: Sequence[str], *,
                 mode: str = "cascading", seed: int = 0, data_randomization: bool = False,
                 train: tuple[Tensor, Tensor] | None = None,
                 fit_options: Mapping[str, Any] | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 batch_size: int | None = None) -> SanityResult:
    """Model parameter (and optionally data) randomization test of each method.

    Works on deep copies: ``model`` itself is never changed (its modes are restored).

    Args:
        model: a classifier (N, C, H, W) in [0, 1] -> (N, K) logits.
        x: images (N, C, H, W) in [0, 1].
        target: the explained class, an int or (N,) class indices; the same for every
            randomized model.
        methods: registered method names.
        mode: ``"cascading"`` (from the output down, cumulatively) or ``"independent"``
            (one layer at a time, the others trained).
        seed: seeds the re-initializations, the random maps and data randomization.
        data_randomization: also retrain a re-initialized copy on ``train`` with its labels
            permuted (:func:`robustkit.fit` with ``fit_options``) and compare its maps.
        train: ``(x, y)`` training data for data randomization.
        fit_options: keyword arguments of :func:`robustkit.fit` (e.g. ``epochs``).
        options: per-method options, e.g. ``{"integrated_gradients": {"n_steps": 20}}``.
        batch_size: rows per forward pass (default: sized by memory).

    Returns:
        A :class:`SanityResult`.
    """
    what = "sanity_check"
    check_inputs(x, None, what=what)
    if mode not in ("cascading", "independent"):
        raise RobustkitError(f"{what}: mode must be cascading or independent, got {mode!r}")
    if not methods:
        raise RobustkitError(f"{what}: give at least one method")
    for m in methods:
        EXPLAINERS.get(m)  # unknown names fail before any work
    if data_randomization and train is None:
        raise RobustkitError(f"{what}: data randomization needs train=(x, y)")
    options = options or {}

    with borrowed(model, what=what):
        work = copy.deepcopy(model)  # in eval mode, like the borrowed original
    dev = model_device(work, x)

    def maps(net: nn.Module) -> dict[str, Tensor]:
        return {m: attribute(net, x, target, method=m, batch_size=batch_size,
                             **options.get(m, {})).cpu() for m in methods}

    original = maps(work)
    trained_state = copy.deepcopy(work.state_dict())
    layers = parameter_layers(work, x[:1].to(dev))
    modules = dict(work.named_modules())
    steps: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for index, name in enumerate(layers):
        if mode == "independent":
            work.load_state_dict(trained_state)
        with seeded(seed + index, dev):
            randomize(modules[name])
        for m, a in maps(work).items():
            steps[m].append({"layer": name, **similarities(original[m], a)})

    with seeded(seed, dev):
        noise = torch.randn(x.shape)
    baseline = {m: similarities(original[m], noise) for m in methods}
    data = None
    if data_randomization:
        assert train is not None  # refused above when missing
        data = _data_randomization(work, trained_state, layers, original, maps, train,
                                   dict(fit_options or {}), seed)
    return SanityResult(steps, mode=mode, layers=layers, baseline=baseline,
                        data_randomization=data)


def _data_randomization(work: nn.Module, trained_state: dict[str, Tensor], layers: list[str],
                        original: dict[str, Tensor],
                        maps: Callable[[nn.Module], dict[str, Tensor]],
                        train: tuple[Tensor, Tensor],
                        fit_options: dict[str, Any], seed: int
                        ) -> dict[str, dict[str, float | None]]:
    """Re-initialize ``work``, fit it on ``train`` with permuted labels, compare its maps."""
    from robustkit.train import fit

    x_train, y_train = train
    y_perm = y_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))]
    work.load_state_dict(trained_state)
    modules = dict(work.named_modules())
    with seeded(seed, model_device(work, x_train)):
        for name in layers:
            randomize(modules[name])
    fit_options.setdefault("quiet", True)
    fit_options.setdefault("seed", seed)
    fit_options.setdefault("device", model_device(work, x_train))
    history = fit(work, (x_train, y_perm), **fit_options)
    accuracy = history.epochs[-1]["train_accuracy"] if history.epochs else None
    return {m: {**similarities(original[m], a), "train_accuracy": accuracy}
            for m, a in maps(work.eval()).items()}
