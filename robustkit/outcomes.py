"""Per-example outcomes of an attack over data of any size: the loop every evaluation shares.

:func:`outcomes` walks the data batch by batch (:func:`robustkit.core.stream.batches`),
checks each batch, scores the clean images, attacks them with a bound attack (each
example's randomness seeded by its global index), scores the adversarial images on every
scorer, and drops them: memory stays proportional to the batch. Inside a process group
each rank takes its shard of the examples and the records of every rank are gathered, in
example order (:mod:`robustkit.core.distributed`).

Example:
    >>> out = outcomes((x, y), {"model": model}, bind("pgd", model, eps=0.3))  # doctest: +SKIP
    >>> out.robust("model").float().mean()                                    # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from robustkit.attacks.binding import BoundAttack
from robustkit.core import check_inputs, check_labels, model_contract, model_device, predict
from robustkit.core.cost import metering, pgd40_equivalents
from robustkit.core.distributed import current_shard, gather
from robustkit.core.resume import BlockStore
from robustkit.core.stream import Data, batches, is_tensor_pair, size
from robustkit.errors import RobustkitError

Tensor = torch.Tensor

#: Per-example cost records of the attack (:mod:`robustkit.core.cost`).
COST_KEYS = ("forward", "backward", "queries")


class Accuracy(float):
    """A robust accuracy (a float in [0, 1]) with what it must be read beside.

    Attributes:
        clean_accuracy: the model's accuracy on the clean images, on the same examples.
        n: the number of examples.
    """

    clean_accuracy: float
    n: int

    def __new__(cls, value: float, clean_accuracy: float, n: int) -> Accuracy:
        out = super().__new__(cls, value)
        out.clean_accuracy = clean_accuracy
        out.n = n
        return out

    def __repr__(self) -> str:
        return f"{float(self)!r} (clean {self.clean_accuracy!r}, n={self.n})"


def warn_if_near_chance(clean_accuracy: float, num_classes: int, n: int, what: str) -> None:
    """Warn when clean accuracy is near chance: the usual sign of a forgotten normalization
    (a model trained on normalized images, fed [0, 1] images) or of wrong labels."""
    chance = 1.0 / num_classes
    if n >= 20 and clean_accuracy <= 1.5 * chance:
        warnings.warn(
            f"{what}: clean accuracy {clean_accuracy:.3f} on {n} examples is near chance "
            f"({chance:.3f} for {num_classes} classes): is the model's normalization inside "
            f"it (robustkit.models.wrap(model, mean=..., std=...))? Robust accuracy means "
            f"little here", stacklevel=3)


@dataclass
class Outcomes:
    """What happened to each example, in example order.

    Attributes:
        index: (N,) global indices, ascending.
        label: (N,) labels.
        clean: scorer name -> (N,) bool: the scorer labels the clean image correctly.
        adv: scorer name -> (N,) bool: the scorer labels the adversarial image correctly
            (the clean outcome where the example was not attacked).
        attacked: (N,) bool: the attack ran on the example.
        measures: name -> (N,) float: each ``measure`` of (clean, adversarial) image pairs
            (NaN where the example was not attacked).
        costs: ``forward``, ``backward``, ``queries`` -> (N,) int64: what the attack cost
            per example (0 where it was not attacked; see :meth:`cost`).
    """

    index: Tensor
    label: Tensor
    clean: dict[str, Tensor] = field(default_factory=dict)
    adv: dict[str, Tensor] = field(default_factory=dict)
    attacked: Tensor | None = None
    measures: dict[str, Tensor] = field(default_factory=dict)
    costs: dict[str, Tensor] = field(default_factory=dict)

    def cost(self) -> dict[str, float] | None:
        """What the attack cost over all examples: forward and backward passes, queries
        (:mod:`robustkit.core.cost`; attacks that do not count, such as torchattacks
        objects or user functions, show 0), and PGD-40 equivalents per attacked example.
        None without an attack."""
        if "forward" not in self.costs:
            return None
        c = self.costs
        f, b = int(c["forward"].sum()), int(c["backward"].sum())
        attacked = int(self.attacked.sum()) if self.attacked is not None else 0
        return {"forward": f, "backward": b, "queries": int(c["queries"].sum()),
                "pgd40_per_example": float(pgd40_equivalents(f, b)) / max(attacked, 1)}

    def robust(self, name: str) -> Tensor:
        """(N,) bool: correct both clean and attacked (never more than clean accuracy)."""
        return self.clean[name] & self.adv[name]


def as_data(x: object, y: object, what: str) -> Data:
    """``(x, y)`` when ``x`` is a tensor of images; else ``x`` itself (a Dataset or a
    DataLoader), which carries its labels, so ``y`` must be None."""
    if isinstance(x, torch.Tensor):
        if not isinstance(y, torch.Tensor):
            raise RobustkitError(f"{what}: y must be a tensor of labels, got "
                                 f"{type(y).__name__} (with a Dataset or DataLoader, pass "
                                 f"it as x and the attack by keyword)")
        check_inputs(x, y, what=what)
        return (x, y)
    if y is not None:
        raise RobustkitError(f"{what}: a Dataset or DataLoader carries its labels; give no y "
                             f"(got {type(y).__name__}; pass the attack by keyword)")
    return x


def check_batch(models: Mapping[str, nn.Module], xb: Tensor, yb: Tensor, what: str) -> None:
    """The model contract of every model on the first batch, and its labels."""
    for name, model in models.items():
        k = model_contract(model, xb, f"{what}: {name}" if len(models) > 1 else what)
        check_labels(yb, k, what)


def outcomes(data: Data, scorers: Mapping[str, nn.Module], attack: BoundAttack | None = None,
             *, batch_size: int = 500, progress: bool = False, what: str = "evaluate",
             only: Tensor | Callable[[Tensor], Tensor] | None = None, clean: bool = True,
             measure: Mapping[str, Callable[[Tensor, Tensor], Tensor]] | None = None,
             resume: BlockStore | None = None) -> Outcomes:
    """Score ``data`` clean and under ``attack`` on every scorer, batch by batch.

    Args:
        data: ``(x, y)`` tensors, a Dataset or a DataLoader (see
            :func:`robustkit.core.stream.batches`); images in [0, 1].
        scorers: name -> model whose accuracy is measured.
        attack: a bound attack (its model is the one attacked), or None (clean only).
        batch_size: the most images per attack call.
        progress: show a progress bar.
        what: the entry point, for messages.
        only: attack only these examples: a bool mask (N,) by global index, or a function
            of the batch's indices returning one; the others keep their clean outcome.
        clean: also score the clean images (False: ``clean`` is empty).
        measure: name -> ``f(x, x_adv) -> (B,)``, per-example measures of the perturbation
            (norms, PSNR), taken before the adversarial images are dropped.
        resume: where finished blocks are kept (:class:`robustkit.core.resume.BlockStore`):
            each block is stored when done, and a block found there is read back instead
            of computed, so a killed run goes on where it was.

    Returns:
        :class:`Outcomes`, gathered over every rank of a process group.
    """
    shard = current_shard()
    total = size(data)
    device = model_device(next(iter(scorers.values())))
    bar = tqdm(total=None if total is None else len(range(shard.rank, total, shard.world)),
               disable=not progress, unit="img", desc=attack.name if attack else what,
               leave=False)
    # Every key from the start: a rank with no examples still sends each of them.
    keys = ["index", "label", "attacked", *(f"clean:{n}" for n in scorers if clean),
            *(f"adv:{n}" for n in scorers if attack), *(f"measure:{n}" for n in measure or {}),
            *(COST_KEYS if attack else ())]
    mine = None if total is None else sum(b - a for a, b in shard.blocks(total, batch_size))
    records = Records(keys, mine)
    checked = False
    try:
        for b in batches(data, batch_size, shard=shard, what=what):
            if not is_tensor_pair(data):  # tensors were checked whole, once
                check_inputs(b.x, b.y, what=what)
            # Moved to the model's device once: the clean pass, the attack and the scoring
            # of every scorer all read this copy.
            x = b.x.to(device, non_blocking=True)
            y = b.y.long().to(device, non_blocking=True)
            if not checked:
                check_batch({**scorers, **({"attacked model": attack.model}
                                        if attack is not None and attack.model is not None
                                        else {})}, x, y, what)
                checked = True
            start = int(b.index[0])
            done = resume.get(start) if resume is not None else None
            if done is not None and set(done) == set(keys) and len(done["index"]) == len(y):
                records.add(done)
            else:
                row = _score_batch(scorers, attack, b.index, x, y, only, clean, measure or {})
                records.add(row)
                if resume is not None:
                    resume.put(start, row)
            bar.update(len(y))
    finally:
        bar.close()
    if not checked and shard.world == 1:
        raise RobustkitError(f"{what}: the data holds no examples")
    joined = gather(records.finish())
    return Outcomes(joined["index"], joined["label"],
                    {k[6:]: v for k, v in joined.items() if k.startswith("clean:")},
                    {k[4:]: v for k, v in joined.items() if k.startswith("adv:")},
                    joined["attacked"],
                    {k[8:]: v for k, v in joined.items() if k.startswith("measure:")},
                    {k: joined[k] for k in COST_KEYS if k in joined})


def _dtype(key: str) -> torch.dtype:
    if key.startswith("measure:"):
        return torch.float32
    return torch.long if key in ("index", "label", *COST_KEYS) else torch.bool


class Records:
    """Per-example records, written into buffers allocated once when the number of
    examples is known. Small tensors kept from every batch would sit between the batches'
    large ones on the heap and keep the allocator from returning them: with glibc's
    default allocator a DataLoader of 50,000 images grew the process by 137 MiB that way."""

    def __init__(self, keys: list[str], capacity: int | None,
                 dtype: Callable[[str], torch.dtype] = _dtype) -> None:
        self.filled = 0
        self.capacity = capacity
        self.dtype = dtype
        self.lists: dict[str, list[Tensor]] = {k: [] for k in keys}
        self.buffers = ({k: torch.empty(capacity, dtype=dtype(k)) for k in keys}
                        if capacity is not None else None)

    def add(self, values: dict[str, Tensor]) -> None:
        n = len(values["index"])
        if self.buffers is not None and self.filled + n <= len(self.buffers["index"]):
            for k, v in values.items():
                self.buffers[k][self.filled:self.filled + n] = v
        else:  # more examples than announced (or unknown): keep the batches
            for k, v in values.items():
                self.lists[k].append(v)
        self.filled += n

    def finish(self) -> dict[str, Tensor]:
        out = {}
        for k, parts in self.lists.items():
            head = ([self.buffers[k][:min(self.filled, len(self.buffers[k]))]]
                    if self.buffers is not None else [])
            joined = head + parts
            out[k] = torch.cat(joined) if joined else torch.empty(0, dtype=self.dtype(k))
        return out


def _score_batch(scorers: Mapping[str, nn.Module], attack: BoundAttack | None,
                 index: Tensor, x: Tensor, y: Tensor,
                 only: Tensor | Callable[[Tensor], Tensor] | None, clean: bool,
                 measure: Mapping[str, Callable[[Tensor, Tensor], Tensor]]
                 ) -> dict[str, Tensor]:
    """One batch's records: clean and adversarial correctness per scorer, the measures."""
    row: dict[str, Tensor] = {"index": index, "label": y.cpu()}
    y_cpu = y.cpu()
    clean_ok = {}
    for name, scorer in scorers.items():
        clean_ok[name] = predict(scorer, x).argmax(1) == y_cpu  # (B,)
        if clean:
            row[f"clean:{name}"] = clean_ok[name]
    if attack is None:
        row["attacked"] = torch.zeros(len(y), dtype=torch.bool)
        return row
    if only is None:
        mask = torch.ones(len(y), dtype=torch.bool)
    elif callable(only):
        mask = only(index)
    else:
        mask = only[index]
    row["attacked"] = mask
    row.update({k: torch.zeros(len(y), dtype=torch.long) for k in COST_KEYS})
    adv_ok = {name: ok.clone() for name, ok in clean_ok.items()}
    values = {name: torch.full((len(y),), float("nan")) for name in measure}
    if mask.any():
        sel = mask.nonzero().squeeze(1)
        with warnings.catch_warnings():
            # The model contract warned once for the first batch; not again per batch.
            warnings.filterwarnings("ignore", message=".*look like probabilities.*")
            with metering(len(sel)) as bill:
                x_adv = attack(x[sel], y[sel], index=index[sel])
        sel_cpu = sel.cpu()
        row["forward"][sel_cpu], row["backward"][sel_cpu] = bill.forward, bill.backward
        row["queries"][sel_cpu] = bill.queries
        for name, scorer in scorers.items():
            adv_ok[name][sel] = predict(scorer, x_adv).argmax(1) == y_cpu[sel.cpu()]
        x_cpu = x[sel].detach().float().cpu()
        for name, fn in measure.items():
            values[name][sel] = fn(x_cpu, x_adv.detach().float().cpu()).float()
    row.update({f"measure:{name}": value for name, value in values.items()})
    row.update({f"adv:{name}": ok for name, ok in adv_ok.items()})
    return row
