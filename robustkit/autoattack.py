"""AutoAttack: robust accuracy the way the field reports it, with each example's story.

Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv 2003.01690. The ``standard`` version runs, in order,
APGD-CE (100 steps), APGD-T on the targeted DLR loss (9 target classes, 100 steps each),
FAB-T (9 target classes) and Square (5,000 queries). Each attack runs only on the examples
still robust, from the clean image; an example is robust only if no attack fooled it,
so its result is the worst case over the attacks. ``rand`` (for models whose forward pass
is random) runs APGD-CE and APGD-DLR with gradients averaged over 20 draws (EoT);
``fast`` is robustkit's two white-box APGD runs of ``standard`` (APGD-CE, APGD-T) without
FAB-T and Square: a quick check, not a number to publish.

Every example's record says whether it is robust, which attack broke it, the size of the
perturbation that did (checked against eps), and what it cost (forward and backward passes
and queries, :mod:`robustkit.core.cost`). Flags, after AutoAttack's own checks, say when the
number may mislead: outputs that look like probabilities, a randomized forward pass, zero
input gradients, Square breaking examples the white-box attacks could not, and a large
gap between PGD-40 and AutoAttack.

The evaluation streams the data in blocks (memory does not grow with the data), shards
examples over the processes of a torch.distributed group (seeding each example by its
global index, so 1 and 2 processes give identical records) and can resume a killed run
from its finished blocks.

Example:
    >>> result = autoattack(model, (x, y), eps=0.3)                           # doctest: +SKIP
    >>> float(result.robust_accuracy), result.broken_by()[:3]                 # doctest: +SKIP
    (0.885, ['apgd-ce', None, 'apgd-t'])
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from robustkit.attacks.base import TOLERANCE, threat_model
from robustkit.attacks.binding import ATTACKS
from robustkit.core import borrowed, check_eps, check_inputs, model_device, predict
from robustkit.core.cost import metering, pgd40_equivalents
from robustkit.core.distributed import current_shard, gather
from robustkit.core.resume import BlockStore
from robustkit.core.seeding import ExampleSeeds, example_seed
from robustkit.core.stream import Data, batches, is_tensor_pair, size
from robustkit.errors import RobustkitError
from robustkit.outcomes import Accuracy, Records, check_batch, warn_if_near_chance

Tensor = torch.Tensor

VERSIONS = ("standard", "rand", "fast")
#: Points by which PGD-40 may exceed AutoAttack before the gap is flagged.
GAP_POINTS = 2.0
_FLOATS = ("norm",)
_BOOLS = ("clean", "robust", "pgd", "randomized", "zero_grad", "probabilities")


@dataclass(frozen=True)
class Stage:
    """One attack of the ensemble: its display name, registered attack and options."""

    name: str
    attack: str
    options: dict[str, Any]
    whitebox: bool = True


def stages(version: str, num_classes: int) -> list[Stage]:
    """The attacks of ``version`` for a model with ``num_classes`` classes, in order.

    Target classes are capped at ``num_classes - 1``; the targeted DLR loss needs 4
    classes, so APGD-T falls back to APGD on the untargeted DLR loss below that.
    """
    if version not in VERSIONS:
        raise RobustkitError(f"autoattack: version must be one of {', '.join(VERSIONS)}, "
                             f"got {version!r}")
    targets = min(9, num_classes - 1)
    apgd_t = (Stage("apgd-t", "apgd", {"loss": "dlr", "targeted": True,
                                       "target_classes": targets, "steps": 100})
              if num_classes >= 4 else Stage("apgd-dlr", "apgd", {"loss": "dlr", "steps": 100}))
    ce = Stage("apgd-ce", "apgd", {"loss": "ce", "steps": 100})
    if version == "fast":
        return [ce, apgd_t]
    if version == "rand":
        return [Stage("apgd-ce", "apgd", {"loss": "ce", "steps": 100, "eot": 20}),
                Stage("apgd-dlr", "apgd", {"loss": "dlr", "steps": 100, "eot": 20})]
    return [ce, apgd_t,
            Stage("fab-t", "fab", {"targeted": True, "target_classes": targets, "steps": 100}),
            Stage("square", "square", {"queries": 5000, "p_init": 0.8}, whitebox=False)]


@dataclass(frozen=True)
class Flag:
    """A reason to doubt the number: ``name`` (a short key) and a sentence saying why."""

    name: str
    message: str


@dataclass
class AutoAttackResult:
    """AutoAttack's outcome on every example, in example order.

    Attributes:
        robust_accuracy: the fraction of examples classified correctly and not fooled by
            any attack (an :class:`robustkit.outcomes.Accuracy`: it carries the clean
            accuracy and n beside it).
        eps, norm, version, seed: what was run.
        attacks: the stages' names, in order.
        records: name -> (N,) tensors: ``index``, ``label``, ``clean`` and ``robust``
            (bool), ``broken_by`` (-1 robust, 0 misclassified clean, i + 1 broken by stage
            i), ``norm`` (size of the perturbation that broke it, else 0), ``forward``,
            ``backward`` and ``queries`` (all it cost, the evaluation's own clean and check
            passes included) and the same per stage as ``"<stage>:forward"`` etc., ``pgd``
            (robust under PGD-40, when compared), ``randomized``, ``zero_grad`` and
            ``probabilities`` (the flags' evidence per example).
        flags: reasons to doubt the number (empty when none).
        pgd_accuracy: PGD-40's robust accuracy on the same examples, or None.
        seconds: this process's time per stage.
    """

    robust_accuracy: Accuracy
    eps: float
    norm: str
    version: str
    seed: int
    attacks: list[str]
    records: dict[str, Tensor]
    flags: list[Flag] = field(default_factory=list)
    pgd_accuracy: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        return self.robust_accuracy.clean_accuracy

    @property
    def n(self) -> int:
        return len(self.records["index"])

    def broken_by(self) -> list[str | None]:
        """Per example: the stage that broke it, ``"clean"`` if misclassified clean, or
        None if it is robust."""
        names = ["clean", *self.attacks]
        return [None if b < 0 else names[b] for b in self.records["broken_by"].tolist()]

    def split(self) -> dict[str, dict[str, float]]:
        """Per stage: examples it broke and what it cost (totals and PGD-40 equivalents
        per example evaluated)."""
        out = {}
        for i, name in enumerate(self.attacks):
            f = int(self.records[f"{name}:forward"].sum())
            b = int(self.records[f"{name}:backward"].sum())
            out[name] = {"broken": int((self.records["broken_by"] == i + 1).sum()),
                         "forward": f, "backward": b,
                         "queries": int(self.records[f"{name}:queries"].sum()),
                         "pgd40": float(pgd40_equivalents(f, b)) / max(self.n, 1),
                         "seconds": self.seconds.get(name, 0.0)}
        return out

    def cost(self) -> dict[str, float]:
        """The whole evaluation's passes, and PGD-40 equivalents per example."""
        f, b = int(self.records["forward"].sum()), int(self.records["backward"].sum())
        return {"forward": f, "backward": b, "queries": int(self.records["queries"].sum()),
                "pgd40_per_example": float(pgd40_equivalents(f, b)) / max(self.n, 1)}

    def summary(self) -> str:
        """A few lines for a terminal: the number, the clean accuracy beside it, the split
        of the broken examples and cost over the attacks, and every flag."""
        lines = [f"AutoAttack ({self.version}, {self.norm} eps {self.eps:g}) robust accuracy "
                 f"{100 * float(self.robust_accuracy):.2f}% on {self.n} examples (clean "
                 f"{100 * self.clean_accuracy:.2f}%)"]
        if self.pgd_accuracy is not None:
            lines.append(f"  PGD-40 on the same examples: {100 * self.pgd_accuracy:.2f}%")
        for name, row in self.split().items():
            lines.append(f"  {name:9s} broke {row['broken']:5d}  cost {row['pgd40']:.2f} "
                         f"PGD-40 per example  ({row['forward']} forward, {row['backward']} "
                         f"backward, {row['queries']} queries)")
        lines.append(f"  total cost {self.cost()['pgd40_per_example']:.2f} PGD-40 per example")
        lines += [f"  FLAG {f.name}: {f.message}" for f in self.flags]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON): the number, settings, split, cost, flags and every record."""
        return {"robust_accuracy": float(self.robust_accuracy),
                "clean_accuracy": self.clean_accuracy, "n": self.n, "eps": self.eps,
                "norm": self.norm, "version": self.version, "seed": self.seed,
                "attacks": self.attacks, "pgd_accuracy": self.pgd_accuracy,
                "split": self.split(), "cost": self.cost(),
                "flags": [{"name": f.name, "message": f.message} for f in self.flags],
                "examples": {"index": self.records["index"].tolist(),
                             "label": self.records["label"].tolist(),
                             "robust": self.records["robust"].tolist(),
                             "broken_by": self.broken_by(),
                             "norm": self.records["norm"].tolist(),
                             "forward": self.records["forward"].tolist(),
                             "backward": self.records["backward"].tolist(),
                             "queries": self.records["queries"].tolist()}}


def _dtype(key: str) -> torch.dtype:
    if key in _FLOATS:
        return torch.float32
    return torch.bool if key in _BOOLS else torch.long


def _keys(plan: list[Stage], compare_pgd: bool) -> list[str]:
    per_stage = [f"{s.name}:{kind}" for s in plan for kind in ("forward", "backward", "queries")]
    return ["index", "label", *_BOOLS[:2], "broken_by", "norm", "forward", "backward",
            "queries", *per_stage, *(["pgd"] if compare_pgd else []), *_BOOLS[3:]]


def _evidence(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Per example, from two clean forward passes and one input gradient: a randomized
    output, probability-like outputs, and an all-zero cross-entropy gradient."""
    a, b = predict(model, x), predict(model, x)  # (B, K) each, eval mode
    randomized = ~torch.isclose(a, b, rtol=1e-4, atol=1e-5).all(1)
    a64 = a.double()
    probabilities = (a64 >= 0).all(1) & ((a64.sum(1) - 1).abs() <= 1e-4)
    with borrowed(model, "autoattack"):
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    zero = (grad.flatten(1) == 0).all(1).cpu()
    return {"randomized": randomized, "probabilities": probabilities, "zero_grad": zero,
            "logits": a}


def _stage_seed(seed: int, stage: int) -> int:
    """Each stage's own seed, so two stages never replay the same random draws."""
    return example_seed(seed, 1_000_003 + stage) if stage >= 0 else seed


# long function: one block's whole cascade (clean pass, PGD comparison, every stage with
# its bill and checks) reads best as one sequence.
def _block(model: nn.Module, plan: list[Stage], x: Tensor, y: Tensor, index: Tensor, *,
           eps: float, norm: str, seed: int, compare_pgd: bool,
           seconds: dict[str, float], note: Callable[[str], None] = lambda stage: None
           ) -> dict[str, Tensor]:
    """The records of one block of examples (see :class:`AutoAttackResult`); ``note`` is
    told each stage as it starts (the progress bar shows it)."""
    n = len(y)
    y_cpu = y.cpu()
    ev = _evidence(model, x, y)
    clean = ev.pop("logits").argmax(1) == y_cpu
    row: dict[str, Tensor] = {"index": index.cpu(), "label": y_cpu, "clean": clean,
                              "robust": clean.clone(),
                              "broken_by": torch.where(clean, -1, 0).long(),
                              "norm": torch.zeros(n), **ev,
                              "forward": torch.full((n,), 3, dtype=torch.long),
                              "backward": torch.ones(n, dtype=torch.long),
                              "queries": torch.zeros(n, dtype=torch.long)}
    tm = threat_model(norm, "autoattack")
    with warnings.catch_warnings():
        # The model contract warned once (first block); the flags say it beside the number.
        warnings.filterwarnings("ignore", message=".*look like probabilities.*")
        if compare_pgd:
            note("pgd-40")
            row["pgd"] = clean.clone()
            idx = clean.nonzero().squeeze(1)
            if len(idx):
                x_pgd = ATTACKS.get("pgd")(model, x[idx], y[idx], eps=eps, norm=norm, steps=40,
                                           seed=ExampleSeeds(_stage_seed(seed, -1), index[idx]))
                row["pgd"][idx] = predict(model, x_pgd).argmax(1) == y_cpu[idx]
        for i, stage in enumerate(plan):
            for kind in ("forward", "backward", "queries"):
                row[f"{stage.name}:{kind}"] = torch.zeros(n, dtype=torch.long)
            idx = row["robust"].nonzero().squeeze(1)
            if len(idx) == 0:
                continue
            note(f"{stage.name} on {len(idx)}")
            start = time.perf_counter()
            with metering(len(idx)) as bill:
                x_adv = ATTACKS.get(stage.attack)(
                    model, x[idx], y[idx], eps=eps, norm=norm,
                    seed=ExampleSeeds(_stage_seed(seed, i), index[idx]), **stage.options)
            seconds[stage.name] = seconds.get(stage.name, 0.0) + time.perf_counter() - start
            hit = predict(model, x_adv).argmax(1) != y_cpu[idx]  # (M,)
            size = tm.norm(x_adv.detach().float().cpu() - x[idx].detach().float().cpu())
            if (size > eps * (1 + TOLERANCE) + TOLERANCE).any():
                raise RuntimeError(f"autoattack: {stage.name} returned a perturbation of "
                                   f"{float(size.max()):.4g} > eps {eps:g}")
            broke = idx[hit]
            row["robust"][broke] = False
            row["broken_by"][broke] = i + 1
            row["norm"][broke] = size[hit].float()
            for kind, counts in (("forward", bill.forward), ("backward", bill.backward),
                                 ("queries", bill.queries)):
                row[f"{stage.name}:{kind}"][idx] = counts
                row[kind][idx] += counts
            row["forward"][idx] += 1  # the evaluation's check of the attack's images
    return row


def _flags(rec: dict[str, Tensor], plan: list[Stage], version: str, robust: float,
           pgd: float | None) -> list[Flag]:
    """AutoAttack's checks (its ``checks.py``), from the per-example evidence."""
    flags = []
    n = len(rec["index"])
    if bool(rec["probabilities"].any()):
        flags.append(Flag("probabilities", "the model's outputs look like probabilities "
                          "(non-negative, summing to 1): remove the final softmax; the "
                          "attacks' losses assume logits and the number may be too high"))
    if bool(rec["randomized"].any()):
        advice = ("" if version == "rand" else "; use version='rand' (EoT), and read this "
                  "number as unreliable")
        flags.append(Flag("randomized", f"two forward passes of the same images gave "
                          f"different outputs for {int(rec['randomized'].sum())} of {n} "
                          f"examples: the model is randomized{advice}"))
    zero = int((rec["zero_grad"] & rec["clean"]).sum())
    if zero:
        flags.append(Flag("zero_gradients", f"the input gradient of the loss is exactly zero "
                          f"for {zero} of {int(rec['clean'].sum())} correctly classified "
                          f"examples: gradient masking makes white-box attacks fail there; "
                          f"trust the black-box results (Square) for them"))
    square = [i + 1 for i, s in enumerate(plan) if not s.whitebox]
    beaten = int(sum((rec["broken_by"] == i).sum() for i in square))
    if beaten:
        flags.append(Flag("square_beats_whitebox", f"Square broke {beaten} "
                          f"example{'' if beaten == 1 else 's'} the white-box attacks could "
                          f"not: a sign of gradient masking"))
    # 1e-9: a gap of exactly 2 points (0.91 - 0.89 in floats) is not more than 2.
    if pgd is not None and 100 * (pgd - robust) > GAP_POINTS + 1e-9:
        flags.append(Flag("pgd_gap", f"PGD-40 says {100 * pgd:.2f}% robust but AutoAttack "
                          f"{100 * robust:.2f}%: PGD overstates robustness by "
                          f"{100 * (pgd - robust):.2f} points (more than {GAP_POINTS:g}); "
                          f"report AutoAttack's number"))
    return flags


def autoattack(model: nn.Module, data: Data, *, eps: float, norm: str = "linf",
               version: str = "standard", seed: int = 0, batch_size: int = 500,
               compare_pgd: bool = True, progress: bool = False,
               resume: BlockStore | None = None) -> AutoAttackResult:
    """Robust accuracy under AutoAttack, with every example's record and the flags.

    Croce and Hein 2020, arXiv 2003.01690 (see the module docstring for the versions).

    Args:
        model: returns logits (N, K) for images in [0, 1]; left exactly as found.
        data: ``(x, y)`` tensors (x (N, C, H, W) in [0, 1], y (N,) in [0, K)), a Dataset
            or a non-shuffled DataLoader.
        eps: radius of the ``norm`` ball, >= 0 (MNIST Linf: 0.3; CIFAR-10 Linf: 8/255).
        norm: ``linf`` or ``l2``.
        version: ``standard``, ``rand`` or ``fast``.
        seed: seeds every random draw, per example (by its global index).
        batch_size: examples per block.
        compare_pgd: also run PGD-40 on cross-entropy and flag a gap of more than 2 points.
        progress: a progress bar with the running robust accuracy.
        resume: keeps finished blocks (:class:`robustkit.core.resume.BlockStore`).

    Returns:
        :class:`AutoAttackResult`; every flag is also issued as a warning.

    Example:
        >>> r = autoattack(model, (x, y), eps=0.3, version="standard")      # doctest: +SKIP
        >>> print(r.summary())                                                # doctest: +SKIP
    """
    # long function: half of it is the docstring; the loop is one streamed pass.
    what = "autoattack"
    eps = check_eps(eps, what)
    threat_model(norm, what)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RobustkitError(f"{what}: seed must be an integer, got {seed!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise RobustkitError(f"{what}: batch_size must be an integer >= 1, got {batch_size!r}")
    stages(version, 10)  # refuses an unknown version before any work
    if is_tensor_pair(data):
        check_inputs(data[0], data[1], what=what)
    shard = current_shard()
    total = size(data)
    seconds: dict[str, float] = {}
    plan: list[Stage] | None = None
    records: Records | None = None
    bar = tqdm(total=None if total is None else len(range(shard.rank, total, shard.world)),
               disable=not progress, unit="img", desc=f"autoattack ({version})", leave=False)
    device = model_device(model)
    robust_so_far = seen = classes = 0
    # Eval mode for the whole evaluation (one warning for a model in train mode, not one per
    # attack and block); each submodule's mode is given back at the end.
    with contextlib.ExitStack() as stack:
        stack.enter_context(borrowed(model, what))
        stack.callback(bar.close)
        for b in batches(data, batch_size, shard=shard, what=what):
            x = b.x.to(device)
            y = b.y.long().to(device)
            if plan is None:
                check_inputs(b.x, b.y, what=what)
                check_batch({"model": model}, x, y, what)
                classes = int(predict(model, x[:1]).shape[1])
                plan = stages(version, classes)
                _check_registered(plan)
                keys = _keys(plan, compare_pgd)
                mine = None if total is None else sum(e - s for s, e in
                                                      shard.blocks(total, batch_size))
                records = Records(keys, mine, _dtype)
            elif not is_tensor_pair(data):
                check_inputs(b.x, b.y, what=what)
            start = int(b.index[0])
            row = resume.get(start) if resume is not None else None
            if row is None or set(row) != set(keys) or len(row["index"]) != len(y):
                row = _block(model, plan, x, y, b.index, eps=eps, norm=norm, seed=seed,
                             compare_pgd=compare_pgd, seconds=seconds,
                             note=lambda stage: bar.set_postfix_str(stage))
                if resume is not None:
                    resume.put(start, row)
            assert records is not None
            records.add(row)
            robust_so_far += int(row["robust"].sum())
            seen += len(y)
            bar.update(len(y))
            bar.set_postfix(robust=f"{100 * robust_so_far / seen:.1f}%")
    return _result(records, plan, shard.world, what=what, eps=eps, norm=norm,
                   version=version, seed=seed, seconds=seconds, classes=classes)


def _check_registered(plan: list[Stage]) -> None:
    missing = [s.attack for s in plan if s.attack not in ATTACKS.names()]
    if missing:
        raise RobustkitError(f"autoattack: the attacks {', '.join(missing)} are not "
                             f"registered in this robustkit")


def _result(records: Records | None, plan: list[Stage] | None, world: int, *, what: str,
            eps: float, norm: str, version: str, seed: int, seconds: dict[str, float],
            classes: int) -> AutoAttackResult:
    """Gather the records of every rank and judge them."""
    if records is None or plan is None:
        if world == 1:
            raise RobustkitError(f"{what}: the data holds no examples")
        raise RobustkitError(f"{what}: this process received no examples; give at least "
                             f"as many examples as processes")
    rec = gather(records.finish())
    n = len(rec["index"])
    clean = float(rec["clean"].float().mean())
    robust = float(rec["robust"].float().mean())
    pgd = float(rec["pgd"].float().mean()) if "pgd" in rec else None
    warn_if_near_chance(clean, classes, n, what)
    flags = _flags(rec, plan, version, robust, pgd)
    for f in flags:
        warnings.warn(f"{what}: {f.message}", stacklevel=3)
    return AutoAttackResult(Accuracy(robust, clean, n), eps, norm, version, seed,
                            [s.name for s in plan], rec, flags, pgd, seconds)


__all__ = ["AutoAttackResult", "Flag", "GAP_POINTS", "Stage", "VERSIONS", "autoattack",
           "stages"]
