"""An experiment's TOML config, validated into dataclasses.

Every section is optional except ``models``; a section that is absent is not run.
Unknown keys and wrong types are refused with the field's dotted path
(``experiment.attacks[1].eps[0]: expected a number``).

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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustkit.config import AdversarialConfig, TrainConfig, from_dict, load_toml
from robustkit.errors import RobustkitError


@dataclass(frozen=True)
class ModelEntry:
    """A model of the run: trained by the run (``arch``) or read from ``checkpoint``.

    Attributes:
        name: the model's name in the results and the report (unique).
        arch: a registered model name; default ``name``.
        checkpoint: an existing checkpoint to use instead of training (then ``seeds``
            does not apply: the checkpoint is the same for every seed).
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
    train_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    adversarial: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", f"must be a non-empty name, got {self.name!r}")
        _require(self.train_size is None or self.train_size > 0, "train_size",
                 f"must be positive, got {self.train_size}")

    @property
    def architecture(self) -> str:
        return self.arch or self.name


@dataclass(frozen=True)
class AttackEntry:
    """One attack, run on every listed model at every eps (one unit per eps).

    Attributes:
        attack: a registered attack name (``fgsm``, ``pgd``, ``mifgsm`` ...).
        eps: the radii.
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
        _require(len(self.eps) > 0 and all(e >= 0 for e in self.eps), "eps",
                 f"must hold at least one radius >= 0, got {self.eps}")

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
        _require(len(self.eps) > 0 and all(e >= 0 for e in self.eps), "eps",
                 f"must hold at least one radius >= 0, got {self.eps}")


@dataclass(frozen=True)
class ExamplesSection:
    """Imperceptibility: a grid of clean, amplified perturbation and adversarial images."""

    attack: str = "pgd"
    eps: float = 0.2
    options: dict[str, Any] = field(default_factory=dict)
    n: int = 8
    models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.n > 0, "n", f"must be positive, got {self.n}")
        _require(self.eps >= 0, "eps", f"must be >= 0, got {self.eps}")


@dataclass(frozen=True)
class MinimalSection:
    """Minimal targeted perturbations: class (row) to target class (column).

    Attributes:
        n: test images (class-balanced).
        norms: ``l2`` and/or ``linf``.
        steps: gradient steps per search.
        target: only this target class ("turn every digit into a 3"); default every class.
        models: default all.
    """

    n: int = 20
    norms: list[str] = field(default_factory=lambda: ["l2"])
    steps: int = 100
    target: int | None = None
    models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.n > 0, "n", f"must be positive, got {self.n}")
        _require(all(n in ("l2", "linf") for n in self.norms) and self.norms, "norms",
                 f"must be l2 and/or linf, got {self.norms}")


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
        _require(self.n > 0, "n", f"must be positive, got {self.n}")


@dataclass(frozen=True)
class ValiditySection:
    """Carlini et al. 2019's checks on each listed model."""

    eps: float = 0.3
    steps: int = 20
    norm: str = "linf"
    n: int = 200
    models: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reference:
    """A published figure the report sets beside ours.

    Attributes:
        claim: what it measures, in words.
        value: the published number (a fraction for rates, as ours are stored).
        source: the paper and where in it.
        model, attack, eps, metric: which of our records to compare with (metric is a
            field of an attack record, e.g. ``error_rate`` or ``mean_confidence``).
    """

    claim: str
    value: float
    source: str
    model: str = ""
    attack: str = ""
    eps: float | None = None
    metric: str = ""


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
        _require(bool(self.name) and "/" not in self.name, "name",
                 f"must be a non-empty name without '/', got {self.name!r}")
        _require(len(self.models) > 0, "models", "must list at least one model")
        _require(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds), "seeds",
                 f"must be distinct and at least one, got {self.seeds}")
        _require(self.n_test > 0, "n_test", f"must be positive, got {self.n_test}")
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

    def _model_lists(self):
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


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise RobustkitError(f"{field_name}: {message}")


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment config; errors name the file and the field."""
    raw = load_toml(path)
    try:
        config = from_dict(ExperimentConfig, raw, "experiment")
        for i, m in enumerate(config.models):  # the training overrides are a TrainConfig
            train_config(m, where=f"experiment.models[{i}].train")
            adversarial_config(m, where=f"experiment.models[{i}].adversarial")
    except RobustkitError as err:
        raise RobustkitError(f"{path}: {err}") from None
    return config


def train_config(entry: ModelEntry, where: str = "train") -> TrainConfig:
    """The model's default training settings with the entry's overrides applied."""
    from robustkit import models
    from robustkit.adversarial import adversarial_training

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
