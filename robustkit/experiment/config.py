"""An experiment's TOML config, validated into dataclasses.

Every section is optional except ``models``; a section that is absent is not run.
:func:`load_experiment` checks the whole config before anything trains, and refuses a
mistake with the field's dotted path (``experiment.attacks[1].options.steps: ...``):

- unknown keys and wrong types;
- numbers out of range: batch sizes, counts and steps > 0, radii finite and >= 0, seeds
  integers in [0, 2**32), the ``[minimal]`` target a class of the dataset;
- names that are not safe folder names (:func:`robustkit.core.check_name`: no ``.`` or
  ``..``, ``/``, NUL or control characters, at most 100 bytes), or repeated;
- unknown datasets, models (registered names and specs: ``torchvision:NAME``,
  ``timm:NAME``, ``package.module:factory``), explanation methods, devices, missing
  checkpoints and weights files (a state dict that does not fit its model);
- every ``options`` table, against the signature of what it configures: attacks (and
  their eps or eps grid) through :func:`robustkit.attacks.check_options`, models through
  their factory, training through :class:`~robustkit.config.TrainConfig`.

Example (``experiments/quickstart.toml``, shortened)::

    name = "quickstart"
    dataset = "mnist-5k"
    seeds = [0]

    [[models]]
    name = "mlp"

    [[attacks]]
    attack = "pgd"
    eps = [0.05, 0.1, 0.2]
    options = { steps = 10 }

    [transfer]
    sources = ["mlp"]
    targets = ["mlp"]
    eps = [0.1, 0.2]

A model of your own, by spec, with weights from a state dict (not trained by the run)::

    [[models]]
    name = "resnet18"
    arch = "torchvision:resnet18"
    options = { num_classes = 10 }
    weights = "w.pt"
    mean = [0.4914, 0.4822, 0.4465]
    std = [0.2470, 0.2435, 0.2616]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustkit import models
from robustkit.adversarial import adversarial_training
from robustkit.config import (NORMS, AdversarialConfig, Reference, TrainConfig, from_dict,
                              load_toml)
from robustkit.core import check_name
from robustkit.errors import RobustkitError
from robustkit.experiment import checks
from robustkit.models.foreign import parse as parse_spec
from robustkit.store import MAX_PART_BYTES, part

#: Seeds are integers in [0, MAX_SEED).
MAX_SEED = 2**32


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise RobustkitError(f"{field_name}: {message}")


def _positive(value: int, field_name: str) -> None:
    _require(value > 0, field_name, f"must be positive, got {value}")


def _radius(value: float, field_name: str, strict: bool = False) -> None:
    ok = math.isfinite(value) and (value > 0 if strict else value >= 0)
    _require(ok, field_name, f"must be a finite radius {'> 0' if strict else '>= 0'}, "
             f"got {value}")


def _radii(values: Sequence[float], field_name: str) -> None:
    """A non-empty list of radii, each finite and >= 0, each its own unit key."""
    _require(len(values) > 0, field_name, "must hold at least one radius")
    for i, e in enumerate(values):
        _radius(e, f"{field_name}[{i}]")
    labels = [f"{e:g}" for e in values]  # as the unit keys name them
    dup = sorted({label for label in labels if labels.count(label) > 1})
    _require(not dup, field_name, f"radii repeat (or agree to 6 digits, as the results name "
             f"them): {', '.join(dup)}")


def _distinct(values: Sequence[Any], field_name: str) -> None:
    dup = sorted({str(v) for v in values if list(values).count(v) > 1})
    _require(not dup, field_name, f"must not repeat, repeated: {', '.join(dup)}")


def _safe_name(name: str, field_name: str) -> None:
    """A safe folder name whose %-encoded form fits in a file name."""
    check_name(name, field_name)
    size = len(part(name).encode())
    _require(size <= MAX_PART_BYTES, field_name,
             f"{name[:20]!r}... takes {size} bytes as a file name (%-encoded); at most "
             f"{MAX_PART_BYTES}: use a shorter name")


@dataclass(frozen=True)
class ModelEntry:
    """A model of the run: trained by the run (``arch``), read from ``checkpoint``, or
    built by ``arch`` with ``weights`` from a state dict file.

    Attributes:
        name: the model's name in the results and the report (unique, a safe folder name).
        arch: a registered model name, ``torchvision:NAME``, ``timm:NAME`` or
            ``package.module:factory``; default ``name``. With ``checkpoint`` it may only
            name the factory a checkpoint of a factory model is built by (trusting it).
        checkpoint: an existing checkpoint to use instead of training (then ``seeds``
            does not apply: the checkpoint is the same for every seed, and ``options``,
            ``train``, ``adversarial`` and ``train_size`` must be left out).
        weights: a state dict file (``torch.save(model.state_dict(), f)``) to load into
            ``arch`` built with ``options`` instead of training (the same for every seed;
            ``train``, ``adversarial`` and ``train_size`` must be left out).
        mean, std: with ``weights``, the normalization the weights were trained with
            (a ``Normalize`` goes in front); default: the file's, else none for a foreign
            model. A model the run trains normalizes with the dataset's.
        output: with ``weights``, where the logits are in the model's output: a key or an
            index (``robustkit.models.wrap``).
        train_size: train on a stratified, seeded subset of this many examples.
        options: the architecture's options (``hidden``, ``activation``, ...).
        train: overrides of the architecture's default :class:`TrainConfig`.
        adversarial: adversarial training, as :class:`robustkit.config.AdversarialConfig`
            fields (``{ method = "pgd", eps = 0.3 }``); empty (default): standard training.
            With it, ``train`` overrides the architecture's adversarial defaults
            (:func:`robustkit.adversarial.adversarial_training`).
    """

    name: str
    arch: str = ""
    checkpoint: str | None = None
    weights: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    output: str | int | None = None
    train_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    adversarial: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _safe_name(self.name, "name")
        _require(self.train_size is None or self.train_size > 0, "train_size",
                 f"must be positive, got {self.train_size}")
        _require(self.checkpoint is None or self.weights is None, "weights",
                 "give a checkpoint or weights, not both")
        if self.checkpoint is not None:
            factory = bool(self.arch) and _names_factory(self.arch)
            for key in ("arch", "options", "train", "adversarial", "train_size"):
                _require(not getattr(self, key) or (key == "arch" and factory), key,
                         "does not apply to a model read from a checkpoint; remove it")
        if self.weights is not None:
            for key in ("train", "adversarial", "train_size"):
                _require(not getattr(self, key), key,
                         "does not apply to a model loaded from weights; remove it")
        else:
            for key in ("mean", "std", "output"):
                _require(getattr(self, key) is None, key,
                         "applies only with weights (a model the run trains normalizes with "
                         "the dataset's mean and std and returns its logits)")
        _require((self.mean is None) == (self.std is None), "mean" if self.mean is None
                 else "std", "give mean and std together")
        _require(not isinstance(self.output, str) or bool(self.output), "output",
                 "must not be empty")

    @property
    def architecture(self) -> str:
        return self.arch or self.name

    @property
    def loaded(self) -> bool:
        """Whether the run loads this model (a checkpoint or weights) instead of training it."""
        return self.checkpoint is not None or self.weights is not None


def _names_factory(arch: str) -> bool:
    """Whether ``arch`` is a ``package.module:factory`` spec."""
    try:
        return parse_spec(arch)[0] == "factory"
    except RobustkitError:
        return False


@dataclass(frozen=True)
class AttackEntry:
    """One attack, run on every listed model at every eps (one unit per eps).

    Attributes:
        attack: a registered attack name (``fgsm``, ``pgd``, ``mifgsm`` ...) or
            ``"package.module:function"`` (``function(model, x, y, *, eps, ...)``). Attacks
            that measure a distance (``deepfool``, ``cw_l2``) have no eps and are refused.
        eps: the radii (finite, >= 0).
        name: its name in the results; default ``attack``.
        options: the attack's keyword options (``steps``, ``norm``, ``alpha`` ...).
        models: the models to attack; default all.
    """

    attack: str
    eps: list[float]
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _radii(self.eps, "eps")
        _safe_name(self.label, "name" if self.name else "attack")
        _distinct(self.models, "models")

    @property
    def label(self) -> str:
        return self.name or self.attack


@dataclass(frozen=True)
class TransferSection:
    """The transfer matrix: every source attacked once per eps, scored on every target."""

    sources: list[str]
    targets: list[str]
    eps: list[float]
    attack: str = "pgd"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(len(self.sources) > 0, "sources", "must name at least one model")
        _require(len(self.targets) > 0, "targets", "must name at least one model")
        _distinct(self.sources, "sources")
        _distinct(self.targets, "targets")
        _radii(self.eps, "eps")


@dataclass(frozen=True)
class ExamplesSection:
    """Imperceptibility: a grid of clean, amplified perturbation and adversarial images."""

    attack: str = "pgd"
    eps: float = 0.2
    options: dict[str, Any] = field(default_factory=dict)
    n: int = 8
    models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _positive(self.n, "n")
        _radius(self.eps, "eps")
        _distinct(self.models, "models")


@dataclass(frozen=True)
class MinimalSection:
    """Minimal targeted perturbations: class (row) to target class (column).

    Attributes:
        n: test images (class-balanced).
        norms: ``l2`` and/or ``linf``.
        steps: gradient steps per search.
        target: only this target class ("turn every digit into a 3"), in
            [0, number of classes); default every class.
        models: default all.
    """

    n: int = 20
    norms: list[str] = field(default_factory=lambda: ["l2"])
    steps: int = 100
    target: int | None = None
    models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _positive(self.n, "n")
        _positive(self.steps, "steps")
        _require(all(n in NORMS for n in self.norms) and bool(self.norms), "norms",
                 f"must be l2 and/or linf, got {self.norms}")
        _distinct(self.norms, "norms")
        _require(self.target is None or self.target >= 0, "target",
                 f"must be a class >= 0, got {self.target}")
        _distinct(self.models, "models")


@dataclass(frozen=True)
class ExplainSection:
    """Attributions on clean and attacked images, their shift, faithfulness, sanity."""

    methods: list[str]
    n: int = 8
    attack: str = "pgd"
    eps: float = 0.2
    options: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    faithfulness: bool = True
    sanity: bool = True
    sanity_methods: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(len(self.methods) > 0, "methods", "must name at least one method")
        _distinct(self.methods, "methods")
        _distinct(self.sanity_methods, "sanity_methods")
        _positive(self.n, "n")
        _radius(self.eps, "eps")
        _distinct(self.models, "models")


@dataclass(frozen=True)
class ValiditySection:
    """Carlini et al. 2019's checks on each listed model (eps > 0: at 0 they test nothing)."""

    eps: float = 0.3
    steps: int = 20
    norm: str = "linf"
    n: int = 200
    models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _radius(self.eps, "eps", strict=True)
        _positive(self.steps, "steps")
        _require(self.norm in NORMS, "norm", f"must be one of {', '.join(NORMS)}, "
                 f"got {self.norm!r}")
        _positive(self.n, "n")
        _distinct(self.models, "models")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole run; see the module docstring for the TOML layout."""

    name: str
    models: list[ModelEntry]
    dataset: str = "mnist-5k"
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    n_test: int = 1000
    device: str = "auto"
    batch_size: int = 500
    attacks: list[AttackEntry] = field(default_factory=list)
    transfer: TransferSection | None = None
    examples: ExamplesSection | None = None
    minimal: MinimalSection | None = None
    explain: ExplainSection | None = None
    validity: ValiditySection | None = None
    references: list[Reference] = field(default_factory=list)

    def __post_init__(self) -> None:
        _safe_name(self.name, "name")
        _require(len(self.models) > 0, "models", "must list at least one model")
        _require(len(self.seeds) > 0, "seeds", "must hold at least one seed")
        for i, seed in enumerate(self.seeds):
            _require(0 <= seed < MAX_SEED, f"seeds[{i}]",
                     f"must be an integer in [0, 2**32), got {seed}")
        _distinct(self.seeds, "seeds")
        _positive(self.n_test, "n_test")
        _positive(self.batch_size, "batch_size")
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        _require(not dup, "models", f"names must be unique, repeated: {dup}")
        for where, listed in self._model_lists():
            for i, name in enumerate(listed):
                _require(name in names, f"{where}[{i}]",
                         f"unknown model {name!r}; the run's models: {', '.join(names)}")
        labels = [a.label for a in self.attacks]
        _require(len(set(labels)) == len(labels), "attacks",
                 f"names must be unique (set `name` to tell them apart): {labels}")
        for i, ref in enumerate(self.references):
            _require(not ref.model or ref.model in names, f"references[{i}].model",
                     f"unknown model {ref.model!r}; the run's models: {', '.join(names)}")
            _require(not ref.attack or ref.attack in labels, f"references[{i}].attack",
                     f"unknown attack {ref.attack!r}; the run's attacks: {', '.join(labels)}")

    def _model_lists(self) -> Iterator[tuple[str, list[str]]]:
        for i, a in enumerate(self.attacks):
            yield f"attacks[{i}].models", a.models
        if self.transfer:
            yield "transfer.sources", self.transfer.sources
            yield "transfer.targets", self.transfer.targets
        for section in ("examples", "minimal", "explain", "validity"):
            value = getattr(self, section)
            if value is not None:
                yield f"{section}.models", value.models

    def model_names(self, listed: list[str]) -> list[str]:
        """``listed``, or every model when it is empty."""
        return list(listed) or [m.name for m in self.models]


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and check an experiment config, all of it, before anything trains.

    Args:
        path: the TOML file.

    Returns:
        The :class:`ExperimentConfig`.

    Raises:
        RobustkitError: the file is missing or not TOML, or a field is wrong; the message
            names the file and the field's dotted path.

    Example:
        >>> load_experiment("experiments/quickstart.toml").name      # doctest: +SKIP
        'quickstart'
    """
    raw = load_toml(path)
    try:
        config = from_dict(ExperimentConfig, raw, "experiment")
        validate(config)
    except RobustkitError as err:
        raise RobustkitError(f"{path}: {err}") from None
    return config


def validate(cfg: ExperimentConfig) -> None:
    """The checks that need robustkit's registries (the dataclasses check the rest)."""
    ds = checks.dataset(cfg.dataset, "experiment.dataset")
    checks.device(cfg.device, "experiment.device")
    for i, m in enumerate(cfg.models):
        where = f"experiment.models[{i}]"
        if m.checkpoint is not None:
            checks.checkpoint(m.checkpoint, ds, f"{where}.checkpoint", trust=m.arch or None)
            continue
        if m.weights is not None:
            checks.model(m.architecture, m.options, ds, where, mean=m.mean, std=m.std,
                         output=m.output, weights=m.weights)
            continue
        checks.model(m.architecture, m.options, ds, where)
        train_config(m, where=f"{where}.train")
        adversarial_config(m, where=f"{where}.adversarial")
    for i, a in enumerate(cfg.attacks):
        checks.attack_options(a.attack, a.options, f"experiment.attacks[{i}]", grid=True)
    if cfg.transfer:
        checks.attack_options(cfg.transfer.attack, cfg.transfer.options, "experiment.transfer",
                              grid=True)
    for name in ("examples", "explain"):
        sec = getattr(cfg, name)
        if sec is not None:
            checks.attack_options(sec.attack, sec.options, f"experiment.{name}", eps=sec.eps)
    if cfg.explain:
        checks.methods(cfg.explain.methods, "experiment.explain.methods")
        checks.methods(cfg.explain.sanity_methods, "experiment.explain.sanity_methods")
    if cfg.minimal and cfg.minimal.target is not None:
        _require(cfg.minimal.target < ds.num_classes, "experiment.minimal.target",
                 f"must be a class of {ds.name}, in [0, {ds.num_classes}), "
                 f"got {cfg.minimal.target}")


def train_config(entry: ModelEntry, where: str = "train") -> TrainConfig:
    """The model's default training settings with the entry's overrides applied."""
    try:
        base = (adversarial_training(entry.architecture) if entry.adversarial
                else models.default_training(entry.architecture))
    except RobustkitError as err:
        raise RobustkitError(f"{where.rsplit('.', 1)[0]}.arch: {err}") from None
    merged = {**dataclasses.asdict(base), **entry.train}
    return from_dict(TrainConfig, merged, where)


def adversarial_config(entry: ModelEntry, where: str = "adversarial") -> AdversarialConfig | None:
    """The entry's adversarial training settings, or None for standard training."""
    if not entry.adversarial:
        return None
    return from_dict(AdversarialConfig, entry.adversarial, where)
