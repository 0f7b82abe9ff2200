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

import numpy as np

from robustkit import data, models
from robustkit.adversarial import adversarial_training
from robustkit.blackbox.substitute import MAX_SET_VALUES, SUBSTITUTE_OPTIONS
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
        attack: a registered attack name (``fgsm``, ``pgd``, ``mifgsm`` ...),
            ``"package.module:function"`` (``function(model, x, y, *, eps, ...)``) or
            ``"autoattack"`` (:func:`robustkit.evaluate.autoattack`; options ``version``
            and ``norm``). Attacks that measure a distance (``deepfool``, ``cw_l2``) have
            no eps and are refused.
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


#: Who labels the seed images of ``[blackbox]``: the attacker (their own true labels, no
#: query; CleverHans' tutorial) or the oracle (``seed_n`` more queries).
SEED_LABELS = ("attacker", "oracle")


@dataclass(frozen=True)
class BlackboxSection:
    """Papernot et al. 2017's black-box attack (arXiv 1602.02697) on each listed model,
    reached only through a label oracle that counts its queries
    (:func:`robustkit.blackbox.substitute`, :func:`robustkit.blackbox.transfer_success`).

    The seeds are the test split's first ``seed_n`` images; the transfers are scored on
    the run's test subset (``n_test``) without them. The reference setup (the defaults):
    150 seeds labelled by the attacker, 6 rounds, lambda 0.1 changing sign every 3 rounds,
    FGSM: ``seed_n * (2^(rounds-1) - 1)`` = 4,650 label queries.

    Attributes:
        oracles: the models attacked (each through its own oracle); default all.
        seed_n: seed images (the test split's first ``seed_n``).
        seed_labels: ``attacker`` (the seeds' true labels, no query) or ``oracle``
            (``seed_n`` more queries).
        rounds, lam, flip_every, epochs: the substitute's rounds, augmentation step
            (> 0), sign change period and training epochs per round.
        arch: the substitute's model spec (a registered name or ``torchvision:NAME`` ...).
        arch_options: its options; default
            :data:`robustkit.blackbox.substitute.SUBSTITUTE_OPTIONS` for ``arch``, else the
            arch's own defaults.
        attack, options: the attack crafted on the substitute (any robustkit attack with
            an eps) and its options.
        eps: the radii of the transferred attack (one oracle query per image and radius).
        surrogate: also train a surrogate of the same arch on the true labels of as many
            training images as the substitute's final set (at most the training split).
        square_queries: query budgets per image for Square (Andriushchenko et al. 2020) on
            the oracle's scores at the largest eps (in ``options.norm``, default linf).
    """

    oracles: list[str] = field(default_factory=list)
    seed_n: int = 150
    seed_labels: str = "attacker"
    rounds: int = 6
    lam: float = 0.1
    flip_every: int = 3
    epochs: int = 10
    arch: str = "mlp"
    arch_options: dict[str, Any] | None = None
    attack: str = "fgsm"
    options: dict[str, Any] = field(default_factory=dict)
    eps: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3])
    surrogate: bool = True
    square_queries: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        _distinct(self.oracles, "oracles")
        for name in ("seed_n", "rounds", "flip_every", "epochs"):
            _positive(getattr(self, name), name)
        _require(self.seed_labels in SEED_LABELS, "seed_labels",
                 f"must be one of {', '.join(SEED_LABELS)}, got {self.seed_labels!r}")
        _radius(self.lam, "lam", strict=True)
        _radii(self.eps, "eps")
        _require(self.attack != checks.AUTOATTACK, "attack",
                 "autoattack gives robust accuracy, not adversarial images to transfer; "
                 "name an attack (fgsm, pgd, mifgsm ...)")
        for i, q in enumerate(self.square_queries):
            _require(q > 0, f"square_queries[{i}]", f"must be a query budget >= 1, got {q}")
        _distinct(self.square_queries, "square_queries")

    @property
    def models(self) -> list[str]:
        """The oracles (the name every other section gives its list of models)."""
        return self.oracles

    @property
    def substitute_options(self) -> dict[str, Any]:
        """``arch_options``, or the default for ``arch``."""
        if self.arch_options is not None:
            return dict(self.arch_options)
        return dict(SUBSTITUTE_OPTIONS.get(self.arch, {}))

    @property
    def norm(self) -> str:
        """The threat model of the transfer and of Square: ``options.norm``, else linf."""
        return str(self.options.get("norm", "linf"))


def blackbox_images(y: np.ndarray, n_test: int, seed_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the test split of a ``[blackbox]`` unit's seeds and scored images.

    The seeds are the split's first ``seed_n`` images; the scored images are the run's
    test subset (``n_test`` class-balanced images, the same as
    :meth:`robustkit.experiment.context.Context.test_set` takes) without the seeds.

    Args:
        y: the test split's labels (N,).
        n_test, seed_n: the run's ``n_test`` and the section's ``seed_n``.

    Returns:
        ``(seeds, scored)``: sorted int64 index arrays.

    Example:
        >>> blackbox_images(np.arange(20) % 2, 20, 5)[1].tolist()[:3]
        [5, 6, 7]
    """
    keep = data.stratified_indices(y, min(n_test, len(y)), seed=0)
    return np.arange(min(seed_n, len(y)), dtype=np.int64), keep[keep >= seed_n]


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
    blackbox: BlackboxSection | None = None
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
        if self.blackbox:
            yield "blackbox.oracles", self.blackbox.oracles

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
    if cfg.blackbox:
        _validate_blackbox(cfg, cfg.blackbox, ds)


def _validate_blackbox(cfg: ExperimentConfig, sec: BlackboxSection, ds: data.DatasetSpec
                       ) -> None:
    """``[blackbox]``'s substitute, attack and Square, the size its rounds grow the
    training set to, and (where the test split can be read now) its seeds and scored
    images."""
    where = "experiment.blackbox"
    try:
        checks.model(sec.arch, sec.substitute_options, ds, where)
    except RobustkitError as err:  # checks.model names a model's options "options"
        text = str(err)
        if text.startswith(f"{where}.options"):
            text = f"{where}.arch_options" + text[len(f"{where}.options"):]
        raise RobustkitError(text) from None
    checks.attack_options(sec.attack, sec.options, where, grid=True)
    if sec.square_queries:
        _require(sec.norm in NORMS, f"{where}.options.norm", f"Square runs in "
                 f"{' or '.join(NORMS)}, got {sec.norm!r}")
    # The set doubles every round: in logs, so that a huge rounds costs no huge integer.
    grown = math.log2(sec.seed_n) + sec.rounds - 1 + math.log2(math.prod(ds.in_shape))
    _require(grown <= math.log2(MAX_SET_VALUES), f"{where}.rounds",
             f"{sec.rounds} rounds from {sec.seed_n} seeds grow the substitute's training set "
             f"to {sec.seed_n} x 2^{sec.rounds - 1} images, more than memory holds "
             f"({MAX_SET_VALUES:,} values); lower rounds or seed_n")
    try:  # the run reads the split anyway; one that cannot be read now fails there
        _, y = data.load_tensors(cfg.dataset, "test")
    except RobustkitError:
        return
    _require(sec.seed_n < len(y), f"{where}.seed_n", f"the seeds are the first seed_n "
             f"images of {cfg.dataset}'s test split, which has {len(y)}: {sec.seed_n} leaves "
             f"none to score the transfers on")
    scored = len(blackbox_images(y.numpy(), cfg.n_test, sec.seed_n)[1])
    _require(scored > 0, f"{where}.seed_n", f"the run's n_test = {cfg.n_test} test images "
             f"all lie among the first {sec.seed_n} (the seeds): none is left to score the "
             f"transfers on; raise n_test or lower seed_n")


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
