"""Training: ``fit(model, train, test, ...) -> History``, and ``train_and_save``.

:func:`fit` is three steps: :func:`setup` checks the data and the model and builds a
:class:`TrainingRun` (device, precision, optimizer, schedule, scaler, adversarial loss,
guard, resumed state); :func:`run_epoch` trains and scores one epoch and returns its
record; :func:`epoch_line` formats it. :func:`train_and_save` is the one train-then-save
that the CLI and the experiment runner share.

Mini-batch SGD (Nesterov momentum) or Adam under a one-cycle learning-rate schedule
(Smith and Topin 2017), with random shifts and label smoothing as regularizers. On CUDA
it uses mixed precision (float16 autocast + gradient scaling) and non-blocking copies; on a
CPU with native bfloat16 (AVX512-BF16 or AMX) it autocasts to bfloat16, which roughly
doubles convolution throughput; elsewhere it trains in float32. On the CPU the same seed
gives the same weights bit for bit.

Data. :func:`fit` takes ``(x, y)`` tensors, a ``TensorDataset``, any map-style ``Dataset``
of ``(image, label)`` or a ``DataLoader``:

- Tensors (and a plain ``TensorDataset``) are checked whole before the first step and
  train as they always have.
- A ``Dataset`` is read one batch at a time: fit draws its order from ``seed`` as it does
  for tensors (a Dataset holding the same tensors trains to the same weights and history,
  bit for bit on the CPU) and collates its items with a ``DataLoader`` in this process
  (pass a DataLoader for worker processes).
- A ``DataLoader`` is iterated as given every epoch: its batch size, order and workers
  are the user's (``batch_size`` is then unused), and ``sampler.set_epoch(epoch - 1)`` is
  called when the sampler has it (a ``DistributedSampler``).
- Streamed batches are checked as they are read, with the messages tensors get (the
  spans quoted are the batch's): the first batch before the first step, a later bad
  batch stops training there. Memory follows the batch, except the guard's held-out
  images (``guard_size`` of them, read once; a DataLoader cannot give them, so the guard
  is refused there) and, for a Dataset without a ``targets`` attribute, one pass that
  reads its labels to stratify them.
- Resuming is bit for bit with tensors and a Dataset. With a DataLoader it is bit for
  bit when its order can be replayed: fit stores the state of the global generator
  (which an unseeded ``shuffle=True`` draws from) and of the loader's own ``generator``;
  a loader whose order comes from elsewhere must be seeded by the user. The resume
  fingerprint tells data apart by its size and class (for a DataLoader also its number
  of batches), not by its contents.

Many processes. Inside an initialized process group of several processes (``torchrun
--nproc-per-node N -m robustkit train ...``, or a user's ``init_process_group``), :func:`fit`
trains with ``DistributedDataParallel``:

- Every rank draws the same seeded order as one process and cuts it into the same batches
  of ``batch_size`` images; rank ``r`` trains on rows ``r, r + N, ...`` of each (about
  ``batch_size / N`` images). A last batch with fewer images than processes joins the one
  before it. Each rank's mean loss is weighted by its share of the batch before DDP
  averages the gradients, so a step's gradient is that of the whole batch, the learning
  rate and its schedule mean what they mean in one process, and ``batch_size`` stays the
  batch per optimizer step. Augmentation draws are made for the whole batch (the same
  draws one process makes) and each rank keeps its rows. Dropout and the adversarial
  random starts draw from a stream of each rank's own (rank 0's is the one-process
  stream). What differs from one process is the order of floating-point sums (and
  dropout masks): weights agree closely, not bit for bit.
- The inner attack of adversarial training runs on the model itself; the DDP wrapper only
  computes the training loss. BatchNorm running statistics are rank 0's (sent to every
  rank after each epoch); no SyncBatchNorm.
- Losses and accuracies are summed over the ranks, the test split is scored in shards and
  summed, and the guard probes the same held-out images on every rank: every rank holds
  the same history. After the last epoch the ranks compare their weights and refuse to go
  on if they differ. The model comes back unwrapped.
- Rank 0 alone writes the resume file (with every rank's random generators; every rank
  reads it, and it is refused under another number of processes) and, in
  :func:`train_and_save`, the checkpoint. Rank 0 alone shows progress.
- A DataLoader of the user's is iterated as given on every rank (give it a
  ``DistributedSampler``; fit warns otherwise), with plain DDP averaging; every rank
  must give the same number of batches.

Example:
    >>> from robustkit import data, models
    >>> x, y = data.load_tensors("mnist-5k")                     # doctest: +SKIP
    >>> m = models.create("logistic")                            # doctest: +SKIP
    >>> h = fit(m, (x, y), epochs=2, batch_size=64, lr=0.05)     # doctest: +SKIP
    >>> h.epochs[-1]["train_accuracy"] > 0.8                     # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import functools
import hashlib
import itertools
import json
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (BatchSampler, DataLoader, Dataset, DistributedSampler,
                              IterableDataset, RandomSampler, Sampler, SequentialSampler, Subset,
                              TensorDataset, default_collate)
from tqdm.auto import tqdm

from robustkit import data, models, snapshot
from robustkit.adversarial import (AdversarialLoss, Guard, adversarial_training, as_config,
                                   checkpoint_metadata, describe)
from robustkit.config import AdversarialConfig, TrainConfig
from robustkit.core import distributed, stream
from robustkit.core import (accuracy_of, amp_dtype_for, check_inputs, check_labels,
                            check_positive_int, check_writable, model_contract, model_dtype,
                            pick_device, predict)
from robustkit.core.seeding import example_seed
from robustkit.errors import RobustkitError
from robustkit.models.zoo import check_options

#: What :func:`fit` trains and scores on: ``(x, y)`` tensors, a ``TensorDataset``, a
#: map-style ``Dataset`` of ``(image, label)`` or a ``DataLoader`` of ``(x, y)`` batches.
Split = tuple[torch.Tensor, torch.Tensor] | Dataset | DataLoader


@dataclass
class History:
    """Per-epoch records of a :func:`fit` run.

    Each entry of ``epochs`` has ``epoch``, ``loss`` (mean training loss), ``train_accuracy``
    (on the augmented batches, in train mode; under adversarial training on the adversarial
    batches), ``test_accuracy`` (None without test data), ``lr`` (at the epoch's end) and
    ``seconds``. Under adversarial training with the guard on, each entry also has
    ``guard_accuracy`` (PGD accuracy on the held-out training images, measured before any
    restore) and ``restored`` (the epoch whose weights were restored, or None).

    ``adversarial`` is the adversarial config (steps and alpha resolved) or None; ``guard``
    lists the guard's events (see :class:`robustkit.adversarial.Guard`); ``held_out`` is
    the number of training images the guard kept out of training; ``processes`` the
    number of processes that trained it (DistributedDataParallel when more than 1).
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    amp: str | None = None  # "float16", "bfloat16" or None (float32)
    adversarial: dict[str, Any] | None = None
    guard: list[dict[str, Any]] = field(default_factory=list)
    held_out: int = 0
    processes: int = 1

    @property
    def final_test_accuracy(self) -> float | None:
        return self.epochs[-1]["test_accuracy"] if self.epochs else None

    @property
    def seconds(self) -> float:
        return sum(e["seconds"] for e in self.epochs)


def _accepted(what: str, split: object) -> str:
    got = (f"a {type(split).__name__} of {len(split)}" if isinstance(split, (tuple, list))
           else type(split).__name__)
    return (f"{what} must be an (x, y) pair of tensors, a TensorDataset, a map-style Dataset "
            f"of (image, label) or a DataLoader, got {got}")


def _is_tensors(split: object) -> bool:
    """Held whole as tensors (checked at once) rather than read batch by batch: a pair or
    list, or a plain ``TensorDataset`` (a subclass may change its items, so it streams)."""
    return isinstance(split, (tuple, list)) or type(split) is TensorDataset


def _as_dataset(split: Split, what: str) -> TensorDataset:
    """``split`` as a ``TensorDataset`` of checked images (N, C, H, W) in [0, 1] and
    integer labels (N,); anything else is a :class:`RobustkitError` naming ``what``."""
    if isinstance(split, TensorDataset):
        if len(split.tensors) != 2:
            raise RobustkitError(f"{what}: a TensorDataset of (x, y), got "
                                 f"{len(split.tensors)} tensors")
        split = split.tensors
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise RobustkitError(_accepted(what, split))
    x, y = split
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise RobustkitError(f"{what} must be (x, y) tensors")
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise RobustkitError(f"{what}: x must be (N, C, H, W) and y (N,), got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) == 0:
        raise RobustkitError(f"{what} is empty")
    check_inputs(x, y, what=f"fit: {what}")
    return TensorDataset(x, y)


def _stream(split: Split, what: str) -> Dataset | DataLoader:
    """A map-style Dataset or a DataLoader of known length, else a :class:`RobustkitError`."""
    if isinstance(split, DataLoader):
        try:
            n = len(split)
        except TypeError:
            raise RobustkitError(
                f"fit: {what}: a DataLoader of unknown length (an IterableDataset without "
                f"__len__); fit needs the number of batches per epoch for its learning-rate "
                f"schedule") from None
    elif isinstance(split, Dataset) and not isinstance(split, IterableDataset) \
            and hasattr(split, "__len__") and hasattr(split, "__getitem__"):
        n = len(split)
    elif isinstance(split, IterableDataset):
        raise RobustkitError(f"fit: {what}: an IterableDataset has no order fit can draw; "
                             f"pass it in a DataLoader")
    else:
        raise RobustkitError(_accepted(what, split))
    if n == 0:
        raise RobustkitError(f"{what} is empty")
    return split


def _pair(item: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch ``(x, y)`` from a Dataset or a DataLoader; labels become a tensor."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        got = (f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list))
               else type(item).__name__)
        raise RobustkitError(f"fit: {what}: the data must give (image, label) pairs, got {got}")
    x, y = item
    if not isinstance(x, torch.Tensor):
        raise RobustkitError(
            f"fit: {what}: images must be tensors in [0, 1], got {type(x).__name__} (a "
            f"torchvision dataset needs transform=torchvision.transforms.ToTensor())")
    return x, torch.as_tensor(y)


def _first_batch(split: Dataset | DataLoader, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A small first batch of ``split``, read cheaply: a Dataset's first item, or a
    DataLoader's first item collated as the loader would (no workers started, no random
    state drawn); a loader of another kind gives its first batch."""
    if not isinstance(split, DataLoader):
        item = split[0]
        _pair(item, what)  # a clear message before collating it
        return _pair(default_collate([item]), what)
    sampler = split.sampler
    if split.batch_sampler is not None and isinstance(sampler, (SequentialSampler,
                                                                RandomSampler)) \
            and not isinstance(split.dataset, IterableDataset):
        return _pair(split.collate_fn([split.dataset[0]]), what)
    for batch in split:
        return _pair(batch, what)
    raise RobustkitError(f"{what} is empty")


def _checked_batch(xb: torch.Tensor, yb: torch.Tensor, num_classes: int,
                   dtype: torch.dtype | None, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One streamed batch, checked as whole tensors are (the same messages), in ``dtype``
    with int64 labels."""
    check_inputs(xb, yb, what=f"fit: {what}")
    check_labels(yb, num_classes, f"fit: {what}")
    return (xb.to(dtype) if dtype is not None else xb), yb.long()


def _labels_of(ds: Dataset, what: str) -> np.ndarray:
    """Every label of a map-style Dataset (N,): from ``TensorDataset.tensors``, a
    ``targets`` attribute (torchvision's datasets, :class:`robustkit.data.ImageFolderData`)
    or a ``Subset`` of those; else read item by item (one pass over the data)."""
    def cheap(d: Dataset) -> np.ndarray | None:
        if isinstance(d, TensorDataset) and len(d.tensors) >= 2:
            return d.tensors[1].cpu().numpy()
        if isinstance(d, Subset):
            parent = cheap(d.dataset)
            return parent[np.asarray(d.indices, dtype=np.int64)] if parent is not None else None
        targets = getattr(d, "targets", None)
        if targets is not None and len(targets) == len(d):  # type: ignore[arg-type]
            return torch.as_tensor(targets).cpu().numpy()
        return None

    labels = cheap(ds)
    if labels is None:
        labels = torch.stack([_pair(ds[i], what)[1] for i in range(len(ds))]).numpy()  # type: ignore[arg-type]
    if labels.ndim != 1:
        raise RobustkitError(f"fit: {what}: y must have rank 1 (N,), got shape {labels.shape}")
    return labels


def batches(dataset: TensorDataset, batch_size: int, shuffle: bool,
            generator: torch.Generator | None, pin_memory: bool = False) -> DataLoader:
    """A DataLoader that indexes whole batches at once (one tensor gather, no per-item collate).

    The sampler yields lists of indices; swap it for a distributed sampler to shard.
    """
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(base, batch_size, drop_last=False),
                      batch_size=None, pin_memory=pin_memory)


def _train_loader(train: Dataset | DataLoader, batch_size: int, generator: torch.Generator,
                  pin_memory: bool) -> DataLoader:
    """The training batches of an epoch: for tensors :func:`batches`; for a Dataset a
    DataLoader over it in an order drawn from ``generator`` (the same order as tensors of
    the same examples); a user's DataLoader as it is."""
    if isinstance(train, DataLoader):
        return train
    if type(train) is TensorDataset:
        return batches(train, batch_size, shuffle=True, generator=generator,
                       pin_memory=pin_memory)
    return DataLoader(train, batch_size=batch_size,
                      sampler=RandomSampler(train, generator=generator),  # type: ignore[arg-type]
                      pin_memory=pin_memory)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in each direction, zero-filled.

    Args:
        x: (N, C, H, W).
    Returns:
        (N, C, H, W), each image shifted by its own random offset.
    """
    off = torch.randint(0, 2 * max_shift + 1, (2, len(x)), generator=generator)
    return _shifted(x, max_shift, off)


def _shifted(x: torch.Tensor, max_shift: int, off: torch.Tensor) -> torch.Tensor:
    """:func:`random_shift` with its draws given: ``off`` (2, N) offsets in [0, 2 s]."""
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # (N, C, H + 2s, W + 2s)
    off = off.to(x.device)
    rows = (torch.arange(h, device=x.device)[None] + off[0][:, None])  # (N, H)
    cols = (torch.arange(w, device=x.device)[None] + off[1][:, None])  # (N, W)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def random_affine(x: torch.Tensor, generator: torch.Generator, degrees: float = 10.0,
                  scale: float = 0.1, shift: float = 2.0) -> torch.Tensor:
    """Rotate, scale and translate each image by its own random amount (bilinear, zero-filled).

    Args:
        x: (N, C, H, W).
        degrees: largest rotation either way.
        scale: largest relative zoom either way.
        shift: largest translation in pixels either way.
    Returns:
        (N, C, H, W).
    """
    u = torch.rand(4, len(x), generator=generator).mul_(2).sub_(1)  # U(-1, 1), (4, N)
    return _affined(x, u, degrees, scale, shift)


def _affined(x: torch.Tensor, u: torch.Tensor, degrees: float = 10.0, scale: float = 0.1,
             shift: float = 2.0) -> torch.Tensor:
    """:func:`random_affine` with its draws given: ``u`` (4, N) in [-1, 1]."""
    n, _, h, w = x.shape
    u = u.to(x.device)
    angle = u[0] * degrees * torch.pi / 180
    zoom = 1 + u[1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([
        torch.stack([cos, -sin, u[2] * 2 * shift / w], 1),
        torch.stack([sin, cos, u[3] * 2 * shift / h], 1),
    ], 1)  # (N, 2, 3), in the normalized [-1, 1] coordinates of affine_grid
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def loss_function(name: str, num_classes: int, label_smoothing: float = 0.0
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``cross_entropy`` or ``mse``: the quadratic cost between softmax(logits) and one-hot y."""
    if name == "cross_entropy":
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if name == "mse":
        def quadratic(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            target = F.one_hot(y, num_classes).to(logits.dtype)  # (N, K)
            # Summed over classes, averaged over examples: the course notes' quadratic cost.
            return (logits.float().softmax(1) - target).pow(2).sum(1).mean()
        return quadratic
    raise RobustkitError(f"loss must be cross_entropy or mse, got {name!r}")


class TrainingDiverged(RobustkitError):
    """The training loss or the weights became NaN or Inf; training stopped there.

    The resume state of the bad epoch is not written, and :func:`train_and_save` writes no
    checkpoint: a diverged model is never saved as if it were fine.
    """


@dataclass
class TrainingRun:
    """Everything one :func:`fit` call trains with, built by :func:`setup` before any step.

    Besides the model, data (``train_ds`` and ``test_ds``: a ``TensorDataset`` made of
    checked tensors, or the Dataset or DataLoader given) and settings it holds the
    optimizer, the learning-rate schedule, the gradient scaler, the shuffling and
    augmentation ``generator``, the adversarial loss and guard (None under standard
    training), the resume file and its fingerprint, and the counters a resumed run takes
    back: ``done`` epochs, ``step`` optimizer steps and ``stopped`` (the guard ended
    training early). Under DistributedDataParallel ``ddp`` wraps ``model`` (which the
    rest uses as it is) and ``batch_sizes`` holds each step's batch size across the ranks
    (None for a user's DataLoader, or in one process).
    """

    model: nn.Module
    cfg: TrainConfig
    adv: AdversarialConfig | None
    device: torch.device
    amp_dtype: torch.dtype | None
    train_ds: Dataset | DataLoader  # a TensorDataset when tensors were given
    test_ds: Dataset | DataLoader | None
    loader: DataLoader
    generator: torch.Generator
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    history: History
    adv_loss: AdversarialLoss | None = None
    guard: Guard | None = None
    resume: Path | None = None
    fingerprint: dict[str, Any] | None = None
    done: int = 0
    step: int = 0
    stopped: bool = False
    resumed: bool = False
    num_classes: int = 0
    dtype: torch.dtype | None = None  # the model's: streamed batches are cast to it
    ddp: nn.Module | None = None
    batch_sizes: list[int] | None = None

    @property
    def streamed(self) -> bool:
        """Whether the training batches are read (and checked) one at a time."""
        return type(self.train_ds) is not TensorDataset

    def autocast(self) -> torch.autocast:
        """The mixed-precision context of a forward pass (a no-op in float32)."""
        return _autocast_for(self.device, self.amp_dtype)()


def fit(
    model: nn.Module,
    train: Split,
    test: Split | None = None,
    *,
    config: TrainConfig | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    loss: str | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None,
    label_smoothing: float | None = None,
    augment: str | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    amp: bool | None = None,
    eval_every: int = 1,
    quiet: bool = False,
    adversarial: AdversarialConfig | dict[str, Any] | None = None,
    resume: str | Path | None = None,
) -> History:
    """Train ``model`` in place and return its per-epoch history.

    Checked before the first step: images finite and in [0, 1], labels integers in [0, K)
    for the model's K logits, finite logits (:func:`robustkit.core.model_contract`). A loss
    or weights that become NaN or Inf stop training with :class:`TrainingDiverged`, which
    names the epoch and batch; that epoch's resume state is not written.

    Data of any size: tensors are checked whole; a Dataset or DataLoader is read and
    checked batch by batch (memory follows the batch), as the module docstring's "Data"
    says, with what holds for the order and for resuming.

    Args:
        model: any classifier mapping (N, C, H, W) in [0, 1] to (N, K) logits.
        train: ``(x, y)`` with x float (N, C, H, W) in [0, 1] and y integer (N,) in
            [0, K); a ``TensorDataset`` of the two; a map-style ``Dataset`` whose items are
            ``(image (C, H, W) in [0, 1], integer label)`` (e.g. :func:`robustkit.data.dataset`);
            or a ``DataLoader`` of ``(x, y)`` batches.
        test: the same, evaluated after each epoch (optional; the order does not matter).
        config: a :class:`TrainConfig`; the keyword arguments below override its fields.
        epochs, batch_size, lr, loss, optimizer, weight_decay, label_smoothing, augment:
            see :class:`TrainConfig`.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
        seed: seeds initialization-independent randomness (shuffling, shifts, dropout).
        amp: mixed precision. None (default): float16 on CUDA, bfloat16 on a CPU with
            native bfloat16, off elsewhere. True forces it, False trains in float32.
        eval_every: score ``test`` every this many epochs (and always after the last);
            other epochs record None. 0 scores after the last epoch only.
        quiet: no progress bar.
        adversarial: train on adversarial examples (:mod:`robustkit.adversarial`): an
            :class:`AdversarialConfig` or a dict of its fields, e.g.
            ``{"method": "pgd", "eps": 0.3}``. None (default) trains on clean images. With
            its guard on, ``guard_size`` stratified, seeded training images are held out
            (not from a DataLoader: set ``guard`` to false, or pass its Dataset).
        resume: a file for the training state (:mod:`robustkit.snapshot`), written after
            every epoch. If it exists, training goes on after its epoch (same configuration
            required) and ends as an uninterrupted run would; the caller deletes it once
            the model is saved.

    Returns:
        A :class:`History`. The model ends in eval mode, on ``device``. Every rank of a
        process group calls fit alike: DistributedDataParallel ("Many processes" above).

    Example:
        >>> h = fit(models.create("logistic"), (x, y), epochs=2, quiet=True)  # doctest: +SKIP
    """
    overrides: dict[str, Any] = {k: v for k, v in dict(
        epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, optimizer=optimizer,
        weight_decay=weight_decay, label_smoothing=label_smoothing, augment=augment,
    ).items() if v is not None}
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    check_positive_int(eval_every, "fit", "eval_every", minimum=0)
    quiet = quiet or not distributed.is_main()  # rank 0 alone shows progress
    run = setup(model, train, test, cfg, as_config(adversarial), device=device, seed=seed,
                amp=amp, resume=resume)
    if run.resumed and not quiet:
        print(f"resuming from {resume}: {run.done} of {cfg.epochs} epochs done", flush=True)
    _train_epochs(run, eval_every, quiet)
    return run.history


def _train_epochs(run: TrainingRun, eval_every: int, quiet: bool) -> None:
    """The epochs after ``run.done``: train, log, store the resume state; leave the model
    in eval mode without gradients, also on error."""
    cfg = run.cfg
    bar = tqdm(total=cfg.epochs * len(run.loader), initial=run.done * len(run.loader),
               disable=quiet, unit="batch", leave=False, desc="train")
    try:
        for epoch in range(run.done + 1, (run.done if run.stopped else cfg.epochs) + 1):
            record, stop = run_epoch(run, epoch, eval_every, bar)
            if not quiet:
                bar.write(epoch_line(record, cfg.epochs))
            if run.resume is not None:
                state = _training_state(run, epoch, stop)  # every rank's generators
                resume = run.resume
                distributed.on_main(lambda: snapshot.save(resume, state),
                                    f"writing the resume file {resume}")
            if stop:
                break
        if run.ddp is not None:
            _check_same_weights(run)
    finally:
        bar.close()
        run.model.eval()
        run.optimizer.zero_grad(set_to_none=True)
        if run.ddp is not None:
            # Destroy DDP's reducer now, while the process group lives: collected later (at
            # exit, after destroy_process_group) it aborted the process now and then
            # ("terminate called without an active exception").
            run.ddp = None
            gc.collect()


def setup(model: nn.Module, train: Split, test: Split | None, cfg: TrainConfig,
          adv: AdversarialConfig | None, *, device: str | torch.device = "auto", seed: int = 0,
          amp: bool | None = None, resume: str | Path | None = None) -> TrainingRun:
    """Check the data and the model, and build everything :func:`run_epoch` needs.

    Moves ``model`` to the device (channels-last); when ``resume`` names a stored state of
    the same configuration, the weights, optimizer, schedule, scaler and every random
    generator are taken back from it. Inside a process group of several processes it
    wraps the model in DistributedDataParallel (``run.ddp``) and gives this rank its rows
    of every batch. Arguments as in :func:`fit`.

    Returns:
        A :class:`TrainingRun` with ``done`` epochs already trained (0 on a fresh start).
    """
    dev = pick_device(device)
    amp_dtype = amp_dtype_for(dev, amp)
    train_ds, test_ds, num_classes = _checked_data(model, train, test)
    held_out = None
    if adv is not None and adv.guard:
        train_ds, held_out = _hold_out(train_ds, adv.guard_size, seed, model, num_classes)

    shared = distributed.active()  # DistributedDataParallel
    if shared:
        _check_backend(dev)
    torch.manual_seed(_rank_seed(seed))  # dropout: each rank its own stream
    gen = torch.Generator().manual_seed(seed)  # the order and augmentation: shared
    model.to(dev)
    # Channels-last convolutions ran 1.4x faster here in float32 and 1.9x with bfloat16.
    model.to(memory_format=torch.channels_last)
    criterion = loss_function(cfg.loss, num_classes, cfg.label_smoothing)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader, sizes = (_rank_loader(train_ds, cfg.batch_size, gen, dev.type == "cuda") if shared
                     else (_train_loader(train_ds, cfg.batch_size, gen, dev.type == "cuda"),
                           None))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        # At least 5 steps: OneCycleLR divides by its warm-up length, zero below 5 steps.
        opt, max_lr=cfg.lr, total_steps=max(5, cfg.epochs * len(loader) + 1), pct_start=0.25,
        anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0,
        cycle_momentum=cfg.optimizer == "sgd",
    )
    run = TrainingRun(
        model=model, cfg=cfg, adv=adv, device=dev, amp_dtype=amp_dtype, train_ds=train_ds,
        test_ds=test_ds, loader=loader, generator=gen, criterion=criterion, optimizer=opt,
        scheduler=sched,
        # Gradient scaling guards float16's small range; bfloat16 has float32's range.
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        history=History(device=str(dev),
                        amp=str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
                        processes=distributed.world()),
        num_classes=num_classes, dtype=model_dtype(model), batch_sizes=sizes)
    if adv is not None:
        _adversarial(run, adv, held_out, seed)
    if resume is not None:
        run.resume = Path(resume)
        run.fingerprint = _fingerprint(model, cfg, adv, seed, train_ds, test_ds, amp_dtype)
        state = snapshot.load(run.resume, run.fingerprint)
        if state is not None:
            _restore(run, state)
    if shared:
        _distribute(run)
    return run


def _rank_seed(seed: int) -> int:
    """``seed`` on rank 0 (and in one process); another well-mixed seed on each other rank,
    so the ranks' dropout masks and random starts are not copies of each other."""
    r = distributed.rank()
    return seed if r == 0 else example_seed(seed, r)


def _check_backend(dev: torch.device) -> None:
    """Refuse a device the process group's backend cannot reduce gradients on."""
    backend = str(torch.distributed.get_backend()).lower()
    if backend == "nccl" and dev.type != "cuda":
        raise RobustkitError(f"fit: the process group uses NCCL, which reduces gradients on "
                             f"CUDA only, but training would run on {dev}; use device 'cuda' "
                             f"(or a gloo process group)")


class _RankBatches(Sampler[list[int]]):
    """This rank's rows of every batch one process would train on: the batches of ``base``
    (drawn from a generator seeded alike on every rank, so the same on every rank), rows
    ``rank, rank + world, ...`` of each. A last batch with fewer rows than processes joins
    the one before it, so every rank has rows in every step (DDP needs each rank's
    backward pass at every step).

    Args:
        base: one process's batches (lists of indices).
        n: the number of examples.
        batch_size: the batch of one step across every rank.
        shard: this rank and the number of ranks.
    """

    def __init__(self, base: BatchSampler, n: int, batch_size: int, shard: stream.Shard) -> None:
        self.base, self.shard = base, shard
        sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
        if len(sizes) > 1 and sizes[-1] < shard.world:
            sizes[-2:] = [sizes[-2] + sizes[-1]]
        #: Each step's batch size across every rank.
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[list[int]]:
        # Walked as one process's loop walks it, so the sampler draws from the shared
        # generator at the same moments between the augmentation draws.
        batches = iter(self.base)
        for size in self.sizes:
            batch = list(next(batches))
            while len(batch) < size:  # the last batch, joined to the one before
                batch += next(batches)
            yield batch[self.shard.rank::self.shard.world]
        for _ in batches:  # the end of the order (the sampler may draw there too)
            pass


def _rank_loader(train: Dataset | DataLoader, batch_size: int, generator: torch.Generator,
                 pin_memory: bool) -> tuple[DataLoader, list[int] | None]:
    """Under DistributedDataParallel: this rank's training batches and each step's batch
    size across the ranks (None for a user's DataLoader, iterated as given)."""
    shard = distributed.current_shard()
    if isinstance(train, DataLoader):
        lengths = distributed.exchange(len(train))
        if len(set(lengths)) > 1:
            raise RobustkitError(
                f"fit: train: the ranks' DataLoaders give different numbers of batches "
                f"({', '.join(map(str, lengths))}); DistributedDataParallel needs the same "
                f"number on every rank (a DistributedSampler gives it)")
        samplers = (train.sampler, getattr(train.batch_sampler, "sampler", None))
        if not any(isinstance(s, DistributedSampler) for s in samplers):
            warnings.warn(
                "fit: train: a DataLoader without a DistributedSampler under "
                f"DistributedDataParallel: each of the {shard.world} processes trains on "
                "every batch of it (pass its Dataset, or give it a DistributedSampler)",
                stacklevel=4)
        return train, None
    n = len(train)  # type: ignore[arg-type]
    if n < shard.world or batch_size < shard.world:
        raise RobustkitError(
            f"fit: {shard.world} processes need at least as many training images ({n}) and "
            f"as large a batch_size ({batch_size}): each rank trains on part of every batch")
    base = BatchSampler(RandomSampler(train, generator=generator),  # type: ignore[arg-type]
                        batch_size, drop_last=False)
    rows = _RankBatches(base, n, batch_size, shard)
    if type(train) is TensorDataset:  # one tensor gather per batch, as in one process
        return DataLoader(train, sampler=rows, batch_size=None, pin_memory=pin_memory), \
            rows.sizes
    return DataLoader(train, batch_sampler=rows, pin_memory=pin_memory), rows.sizes


def _distribute(run: TrainingRun) -> None:
    """Wrap the model in DistributedDataParallel (which gives every rank rank 0's weights),
    once every rank has the same resumed state."""
    done = distributed.exchange((run.done, run.step))
    if len(set(done)) > 1:
        raise RobustkitError(
            f"fit: the ranks resumed from different states (epoch, step: "
            f"{', '.join(map(str, done))}); every rank must read the same resume file "
            f"{run.resume}")
    dev = run.device
    index = (dev.index if dev.index is not None else torch.cuda.current_device()) \
        if dev.type == "cuda" else None
    run.ddp = DistributedDataParallel(run.model, device_ids=None if index is None else [index])


def _checked_data(model: nn.Module, train: Split, test: Split | None
                  ) -> tuple[Dataset | DataLoader, Dataset | DataLoader | None, int]:
    """Both splits checked against the model: ``(train, test, number of classes)``.

    Images must be finite and in [0, 1]; labels integers in [0, K) for the model's K
    logits (they become int64, as the losses need). Images of another floating dtype are
    cast to the model's. Tensors are checked whole and come back as a ``TensorDataset``;
    a Dataset or DataLoader comes back as it is, its first batch checked here and every
    batch when it is read (:func:`_checked_batch`).
    """
    dtype = model_dtype(model)
    train_ds: Dataset | DataLoader
    if _is_tensors(train):
        x, y = _as_dataset(train, "train").tensors
        num_classes = model_contract(model, x, "fit")  # it casts its probe to the model's dtype
        train_ds = _labelled(x, y, dtype, num_classes, "train")
    else:
        train_ds = _stream(train, "train")
        x, y = _first_batch(train_ds, "train")
        check_inputs(x, y, what="fit: train")
        num_classes = model_contract(model, x, "fit")
        check_labels(y, num_classes, "fit: train")
    if test is None:
        return train_ds, None, num_classes
    test_ds: Dataset | DataLoader
    if _is_tensors(test):
        x_test, y_test = _as_dataset(test, "test").tensors
    else:
        test_ds = _stream(test, "test")
        x_test, y_test = _first_batch(test_ds, "test")
        check_inputs(x_test, y_test, what="fit: test")
    if x_test.shape[1:] != x.shape[1:]:
        raise RobustkitError(f"fit: test images are {tuple(x_test.shape[1:])} (C, H, W) but "
                             f"training images {tuple(x.shape[1:])}")
    if _is_tensors(test):
        test_ds = _labelled(x_test, y_test, dtype, num_classes, "test")
    else:
        check_labels(y_test, num_classes, "fit: test")
    return train_ds, test_ds, num_classes


def _labelled(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None, num_classes: int,
              what: str) -> TensorDataset:
    """``(x, y)`` with labels checked against ``num_classes``, x in ``dtype``, y int64."""
    check_labels(y, num_classes, f"fit: {what}")
    return TensorDataset(x.to(dtype) if dtype is not None else x, y.long())


def _adversarial(run: TrainingRun, adv: AdversarialConfig,
                 held_out: tuple[torch.Tensor, torch.Tensor] | None, seed: int) -> None:
    """Give ``run`` its adversarial loss and, with held-out images, its guard."""
    if run.cfg.label_smoothing > 0:
        # Smoothed targets cap the logit margins the loss asks for, which flattens the
        # cross-entropy's input gradient: PGD on cross-entropy then overstates robustness
        # (Croce and Hein 2020, arXiv 2003.01690, section 5; Mosbach et al. 2018,
        # arXiv 1810.12042). robustkit's adversarial defaults use none.
        warnings.warn(
            f"fit: label smoothing {run.cfg.label_smoothing:g} with adversarial training is a "
            f"known cause of gradient masking; evaluate the model with AutoAttack "
            f"(robustkit.evaluate.autoattack), not PGD alone, or train with "
            f"label_smoothing = 0", stacklevel=4)
    autocast = _autocast_for(run.device, run.amp_dtype)
    # Its own generator for the random starts, so the shuffling and augmentation draws
    # are those of a standard run with the same seed.
    run.adv_loss = AdversarialLoss(
        adv, run.criterion, generator=torch.Generator().manual_seed(_rank_seed(seed + 1)),
        autocast=autocast,
        attack_autocast=autocast if adv.attack_amp else contextlib.nullcontext)
    run.history.adversarial = describe(adv)
    if held_out is not None:
        run.guard = Guard(adv, held_out[0].to(run.device), held_out[1].to(run.device),
                          seed=seed)
        run.history.held_out = len(held_out[1])


def _autocast_for(dev: torch.device, amp_dtype: torch.dtype | None
                  ) -> Callable[[], torch.autocast]:
    """A factory of autocast contexts: ``amp_dtype`` on ``dev``, or disabled when None."""
    return functools.partial(torch.autocast, dev.type, dtype=amp_dtype or torch.float32,
                             enabled=amp_dtype is not None)


def _restore(run: TrainingRun, state: dict[str, Any]) -> None:
    """Take back a stored training state (:mod:`robustkit.snapshot`) into ``run``."""
    run.done, run.step, run.stopped = state["epoch"], state["step"], state["stopped"]
    run.resumed = True
    run.history = History(**state["history"])
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.guard is not None:
        run.guard.load_state_dict(state["guard"])
    # Under DistributedDataParallel each rank takes back its own generators (the file's
    # processes match: the fingerprint has them).
    mine = state["ranks"][distributed.rank()] if state.get("ranks") else state
    torch.set_rng_state(mine["rng"])
    run.generator.set_state(mine["generator"])
    if run.device.type == "cuda" and mine["rng_cuda"] is not None:
        torch.cuda.set_rng_state(mine["rng_cuda"], run.device)
    if run.adv_loss is not None and run.adv_loss.generator is not None:
        run.adv_loss.generator.set_state(mine["adversarial_generator"])
    stored = mine.get("loader_generators") or []
    for g, g_state in zip(_loader_generators(run), stored):
        g.set_state(g_state)


def _training_state(run: TrainingRun, epoch: int, stop: bool) -> dict[str, Any]:
    """What :func:`_restore` takes back, after ``epoch``. Under DistributedDataParallel
    every rank calls it: ``ranks`` holds every rank's random generators (the top-level
    ones are rank 0's)."""
    generators = _generators(run)
    state = {
        "fingerprint": run.fingerprint, "epoch": epoch, "step": run.step, "stopped": stop,
        "history": dataclasses.asdict(run.history), "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "guard": run.guard.state_dict() if run.guard is not None else None, **generators}
    if run.ddp is not None:
        state["ranks"] = distributed.exchange(generators)
    return state


def _generators(run: TrainingRun) -> dict[str, Any]:
    """The states of this process's random generators (see :func:`_training_state`)."""
    dev = run.device
    return {
        "rng": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
        "generator": run.generator.get_state(),
        "adversarial_generator": (run.adv_loss.generator.get_state()
                                  if run.adv_loss is not None and run.adv_loss.generator
                                  is not None else None),
        "loader_generators": [g.get_state() for g in _loader_generators(run)]}


def _check_same_weights(run: TrainingRun) -> None:
    """Refuse to go on when the ranks' weights differ after DistributedDataParallel
    training (a bug, or a rank that changed its model on its own): every rank must
    return the same model."""
    digest = hashlib.sha256()
    for name, value in run.model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    found = distributed.exchange(digest.hexdigest())
    if len(set(found)) > 1:
        raise RobustkitError(f"fit: after training, the weights differ between the ranks "
                             f"(rank {found.index(next(f for f in found if f != found[0]))} "
                             f"differs from rank 0); nothing can be saved")


def _loader_generators(run: TrainingRun) -> list[torch.Generator]:
    """The generators of a user's DataLoader (its own and its sampler's), once each: their
    states go into the resume file, so that a resumed run draws the same order."""
    if run.loader is not run.train_ds:
        return []
    found: list[torch.Generator] = []
    for g in (run.loader.generator, getattr(run.loader.sampler, "generator", None)):
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def run_epoch(run: TrainingRun, epoch: int, eval_every: int = 1, bar: tqdm | None = None
              ) -> tuple[dict[str, Any], bool]:
    """Train epoch ``epoch``, probe it with the guard, score the test split; record it.

    Args:
        run: from :func:`setup`.
        epoch: 1-based.
        eval_every: as in :func:`fit`.
        bar: a progress bar advanced once per batch (optional).

    Returns:
        ``(record, stop)``: the epoch's record (also appended to ``run.history``; keys as in
        :class:`History`) and whether the guard ended training.

    Raises:
        TrainingDiverged: the loss or the weights became NaN or Inf.
    """
    start = time.perf_counter()
    record = _train_batches(run, epoch, bar)
    stop = False
    if run.guard is not None and run.adv is not None:
        # Before scoring the test split, so its score is that of the weights kept.
        run.model.eval()
        record["guard_accuracy"], event = run.guard.check(run.model, run.optimizer, epoch)
        record["guard_single_step_accuracy"] = run.guard.single_step
        record["restored"] = event["restored_epoch"] if event else None
        if event:
            run.history.guard.append(event)
            stop = run.adv.guard_action == "stop"
    last = epoch == run.cfg.epochs or stop
    scored = run.test_ds is not None and (last or (eval_every and epoch % eval_every == 0))
    if scored and run.ddp is not None and run.test_ds is not None:
        record["test_accuracy"] = _shared_accuracy(run, run.test_ds)
    elif scored and type(run.test_ds) is TensorDataset:
        x_test, y_test = run.test_ds.tensors
        record["test_accuracy"] = accuracy_of(run.model, x_test, y_test)
    elif scored and run.test_ds is not None:
        record["test_accuracy"] = _streamed_accuracy(run, run.test_ds)
    else:
        record["test_accuracy"] = None
    record["lr"] = run.optimizer.param_groups[0]["lr"]
    record["seconds"] = time.perf_counter() - start
    run.history.epochs.append(record)
    return record, stop


def _streamed_accuracy(run: TrainingRun, test: Dataset | DataLoader) -> float:
    """Accuracy on a Dataset or DataLoader, one checked batch at a time.

    A Dataset is walked by :func:`robustkit.core.stream.batches`, which draws no random
    numbers (a DataLoader would draw its seed from the global generator, and so change
    the dropout of the next epoch).
    """
    source: Any = test if isinstance(test, DataLoader) else (
        (b.x, b.y) for b in stream.batches(test, 1000, what="fit: test"))
    correct = seen = 0
    for batch in source:
        xb, yb = _checked_batch(*_pair(batch, "test"), run.num_classes, run.dtype, "test")
        logits = predict(run.model, xb, batch_size=len(xb))  # (B, K) on the CPU
        correct += int((logits.argmax(1) == yb.cpu()).sum())
        seen += len(yb)
    if seen == 0:
        raise RobustkitError("fit: test: the DataLoader gave no batches")
    # In float32, as accuracy_of computes it: the same examples give the same number.
    return torch.tensor(correct, dtype=torch.float32).div(seen).item()


def _shared_accuracy(run: TrainingRun, test: Dataset | DataLoader) -> float:
    """Accuracy on the test split under DistributedDataParallel, the same on every rank:
    each rank scores its blocks of tensors or a Dataset (:class:`robustkit.core.stream.Shard`)
    or a DataLoader as given (a DistributedSampler's part, or all of it), and the counts
    are summed over the ranks."""
    source: Any
    if isinstance(test, DataLoader):
        source = test
    else:
        data_: Any = test.tensors if type(test) is TensorDataset else test
        source = ((b.x, b.y) for b in stream.batches(data_, 1000,
                                                     shard=distributed.current_shard(),
                                                     what="fit: test"))
    counts = torch.zeros(2, dtype=torch.float64, device=run.device)  # correct, seen
    for batch in source:
        xb, yb = _checked_batch(*_pair(batch, "test"), run.num_classes, run.dtype, "test")
        logits = predict(run.model, xb, batch_size=len(xb))  # (B, K) on the CPU
        counts[0] += int((logits.argmax(1) == yb.cpu()).sum())
        counts[1] += len(yb)
    torch.distributed.all_reduce(counts)
    if counts[1] == 0:
        raise RobustkitError("fit: test: the DataLoader gave no batches")
    # In float32, as accuracy_of computes it: the same examples give the same number.
    return torch.tensor(int(counts[0]), dtype=torch.float32).div(int(counts[1])).item()


def _train_batches(run: TrainingRun, epoch: int, bar: tqdm | None) -> dict[str, Any]:
    """One pass over the training batches; the epoch's mean loss and training accuracy."""
    dev = run.device
    run.model.train()
    total_loss = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    # Each batch's loss, checked once at the end of the epoch: a check per batch would
    # wait for the GPU at every step.
    losses: list[torch.Tensor] = []
    seen = 0
    expected = len(run.loader)
    counts: list[int] = []
    set_epoch = getattr(getattr(run.loader, "sampler", None), "set_epoch", None)
    if run.loader is run.train_ds and callable(set_epoch):  # a user's DistributedSampler
        set_epoch(epoch - 1)
    for i, batch in enumerate(run.loader):
        if i == expected:
            raise RobustkitError(f"fit: train: the DataLoader gave more than the {expected} "
                                 f"batches its len() promised")
        xb, yb = _pair(batch, "train") if run.streamed else batch
        if run.streamed:  # checked as it is read, on the CPU: no wait for the GPU
            xb, yb = _checked_batch(xb, yb, run.num_classes, run.dtype, "train")
        total = run.batch_sizes[i] if run.batch_sizes is not None else None
        batch_loss, logits, yb = _train_step(run, xb, yb, total)
        losses.append(batch_loss)
        counts.append(len(yb))
        total_loss += batch_loss * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
        if bar is not None:
            bar.update()
    if seen == 0:
        raise RobustkitError(f"fit: train: the DataLoader gave no batches in epoch {epoch}")
    if run.ddp is not None:
        return _across_ranks(run, epoch, losses, counts, correct)
    _check_diverged(run, epoch, torch.stack(losses))  # (batches,)
    return {"epoch": epoch, "loss": total_loss.item() / seen,
            "train_accuracy": correct.item() / seen}


def _across_ranks(run: TrainingRun, epoch: int, losses: list[torch.Tensor], counts: list[int],
                  correct: torch.Tensor) -> dict[str, Any]:
    """The epoch's record under DistributedDataParallel, the same on every rank: each
    batch's loss over every rank's rows (checked for divergence), the mean loss and the
    training accuracy; then rank 0's buffers (BatchNorm statistics) on every rank."""
    n = torch.tensor(counts, dtype=torch.float64, device=run.device)  # (batches,)
    # (2 * batches + 1,): each batch's loss summed over its rows, its rows, correct rows.
    packed = torch.cat([torch.stack(losses).double() * n, n, correct.double().reshape(1)])
    torch.distributed.all_reduce(packed)
    b = len(counts)
    sums, rows = packed[:b], packed[b:2 * b]
    _check_diverged(run, epoch, sums / rows)  # (batches,), the same on every rank
    for buffer in run.model.buffers():
        torch.distributed.broadcast(buffer, 0)
    return {"epoch": epoch, "loss": (sums.sum() / rows.sum()).item(),
            "train_accuracy": (packed[-1] / rows.sum()).item()}


def _train_step(run: TrainingRun, xb: torch.Tensor, yb: torch.Tensor, total: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch: ``(loss, logits, labels)``, detached, on the device.

    ``total``: under DistributedDataParallel, the batch's size across every rank (``xb``
    holds this rank's rows ``rank, rank + world, ...`` of it); None otherwise.
    """
    cfg = run.cfg
    if run.adv_loss is not None:
        run.adv_loss.warm_up(run.step, cfg.epochs * len(run.loader))
    run.step += 1
    xb = xb.to(run.device, non_blocking=True)  # (B, C, H, W)
    yb = yb.to(run.device, non_blocking=True)  # (B,)
    xb = _augment(run, xb, total)
    net = run.ddp if run.ddp is not None else run.model  # DDP only computes the loss
    if run.adv_loss is not None:
        batch_loss, logits = run.adv_loss(run.model, xb, yb, forward=net)
    else:
        with run.autocast():
            logits = net(xb)  # (B, K)
            batch_loss = run.criterion(logits, yb)
    # DDP averages the ranks' gradients: weighing each rank's mean loss by its share of the
    # batch makes that average the gradient of the whole batch's mean loss.
    weight = len(yb) * distributed.world() / total if total is not None else 1.0
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(batch_loss * weight if weight != 1.0 else batch_loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return batch_loss.detach(), logits.detach(), yb


def _augment(run: TrainingRun, xb: torch.Tensor, total: int | None) -> torch.Tensor:
    """``xb`` (B, C, H, W) augmented as ``run.cfg.augment`` says. With ``total`` (this
    rank's rows of a batch of ``total`` under DistributedDataParallel) the draws are made
    for the whole batch, as one process makes them, and this rank's rows kept: the shared
    generator stays in step on every rank, so every rank draws the same next order."""
    augment = run.cfg.augment
    if augment not in ("shift", "affine"):
        return xb
    if total is None:
        return (random_shift(xb, 2, run.generator) if augment == "shift"
                else random_affine(xb, run.generator))
    rows = slice(distributed.rank(), None, distributed.world())
    if augment == "shift":  # offsets in [0, 2 * 2], as random_shift(xb, 2, ...) draws them
        return _shifted(xb, 2, torch.randint(0, 5, (2, total), generator=run.generator)[:, rows])
    u = torch.rand(4, total, generator=run.generator)[:, rows].mul_(2).sub_(1)  # (4, B)
    return _affined(xb, u)


def _check_diverged(run: TrainingRun, epoch: int, losses: torch.Tensor) -> None:
    """Raise :class:`TrainingDiverged` when a batch's loss, or a weight, is NaN or Inf."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        batch = int(bad[0, 0])
        value = losses[batch].item()
        what = "NaN" if value != value else ("Inf" if value > 0 else "-Inf")
        raise TrainingDiverged(
            f"training diverged: the loss is {what} at epoch {epoch}, batch {batch + 1} of "
            f"{len(losses)}; lower the learning rate (now {run.cfg.lr:g}); nothing was saved "
            f"for this epoch")
    for name, p in itertools.chain(run.model.named_parameters(), run.model.named_buffers()):
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise TrainingDiverged(
                f"training diverged: the weights {name} became NaN or Inf during epoch "
                f"{epoch}; lower the learning rate (now {run.cfg.lr:g}); nothing was saved "
                f"for this epoch")


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line of progress for an epoch's record: loss, accuracies, held-out PGD, time.

    Example:
        >>> epoch_line({"epoch": 1, "loss": 0.5, "train_accuracy": 0.9, "test_accuracy": None,
        ...             "seconds": 1.0}, 3)
        'epoch   1/3  loss 0.5000  train acc 0.9000  1.0s'
    """
    guard = ""
    if record.get("guard_accuracy") is not None:
        guard = f"  held-out pgd acc {record['guard_accuracy']:.4f}"
        if record.get("guard_single_step_accuracy") is not None:
            guard += f" (single step {record['guard_single_step_accuracy']:.4f})"
    test = (f"  test acc {record['test_accuracy']:.4f}"
            if record.get("test_accuracy") is not None else "")
    return (f"epoch {record['epoch']:3d}/{epochs}  loss {record['loss']:.4f}  "
            f"train acc {record['train_accuracy']:.4f}{guard}{test}  {record['seconds']:.1f}s")


def train_and_save(
    arch: str,
    dataset: str,
    out: str | Path,
    *,
    config: TrainConfig | None = None,
    seed: int = 0,
    train_size: int | None = None,
    options: Mapping[str, Any] | None = None,
    adversarial: AdversarialConfig | Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    amp: bool | None = None,
    eval_every: int = 0,
    quiet: bool = True,
    root: str | Path | None = None,
    download: bool = False,
    fresh: bool = False,
    test: Split | None = None,
    log: Callable[[str], None] | None = None,
    output: str | int | None = None,
) -> tuple[nn.Module, History]:
    """Train a model named by a spec on a registered dataset and save its checkpoint at ``out``.

    The one train-then-save (the CLI's ``train`` and the experiment runner use it). Checked
    before training: ``out`` and its resume file can be written; the model, its options
    and the dataset exist. An interrupted run resumes from ``OUT.resume``, deleted once the
    checkpoint is saved (and first, with ``fresh``). A run that diverges
    (:class:`TrainingDiverged`) saves nothing and deletes its resume file.

    Args:
        arch: a model spec (:func:`robustkit.models.zoo.construct`): a registered name
            (``logistic``, ``mlp``, ``alexnet``, ``preact_resnet18``, ...),
            ``torchvision:NAME``, ``timm:NAME`` or ``package.module:factory``. A foreign
            model gets the dataset's ``Normalize`` in front and trains with
            :data:`robustkit.models.zoo.FOREIGN_TRAINING` unless ``config`` is given; the
            checkpoint of a factory model loads only with ``trust``
            (:func:`robustkit.models.load`).
        dataset: a registered dataset name (e.g. ``mnist-5k``, ``cifar10``) or
            ``imagefolder:PATH``.
        out: the checkpoint file to write.
        config: the training settings; default: the model's own
            (:func:`robustkit.models.default_training`), or
            :func:`robustkit.adversarial.adversarial_training` with ``adversarial``.
        seed: seeds the initialization, the training subset and :func:`fit`.
        train_size: train on a stratified, seeded subset of this many images.
        options: the model's own options (e.g. ``{"hidden": [64]}``).
        adversarial, device, amp, eval_every, quiet: as in :func:`fit`.
        root, download: where torchvision datasets live, and whether to fetch them.
        fresh: delete a stored resume state and train from the start.
        test: the test split to score (as in :func:`fit`); default: the dataset's whole
            test split. Image folders (``imagefolder:PATH``) are streamed, never loaded whole.
        log: called before training with the lines that describe the model, data and
            settings (e.g. ``print``).
        output: for a foreign model whose output is a dict, a tuple or an object, where
            the logits are: a key or an index (:func:`robustkit.models.wrap`); the
            checkpoint records it. A registered model returns its logits (refused).

    Returns:
        ``(model, history)``: the trained model (eval mode) and its :class:`History`.

    Example:
        >>> m, h = train_and_save("logistic", "mnist-5k", "m.pt", train_size=500)  # doctest: +SKIP
        >>> m, h = train_and_save("mypkg.nets:small_cnn", "cifar10", "c.pt",       # doctest: +SKIP
        ...                       output="logits")
    """
    # long function: 18 keyword arguments, each documented above; the body is 20 lines.
    out = check_writable(out, "checkpoint")
    resume = check_writable(f"{out}.resume", "resume file")
    ds = data.spec(dataset)
    options = check_options(arch, options or {})
    adv = as_config(adversarial)
    cfg = config or (adversarial_training(arch) if adv else models.default_training(arch))
    train, test_ds, n_train = _dataset_splits(dataset, root, download, train_size, seed, test)
    torch.manual_seed(seed)
    # output picks a foreign model's logits: fit and the checkpoint see a logits model.
    model = models.zoo.construct(arch, ds.in_shape, ds.num_classes, ds.mean, ds.std, options,
                                 output)
    if log is not None:
        log(_describe(arch, model, dataset, n_train, _size(test_ds), seed, cfg, adv))
    if fresh:
        resume.unlink(missing_ok=True)
    history = _fit_resumably(model, train, test_ds, resume, config=cfg, device=device,
                             seed=seed, amp=amp, eval_every=eval_every, quiet=quiet,
                             adversarial=adv)
    save_trained(model, out, history, cfg, dataset=dataset, train_size=n_train, seed=seed)
    resume.unlink(missing_ok=True)
    return model, history


def _fit_resumably(model: nn.Module, train: Split, test: Split, resume: Path,
                   **options: Any) -> History:
    """:func:`fit` with its state in ``resume``; a diverged run deletes it (resuming would
    only diverge again) and raises."""
    try:
        return fit(model, train, test, resume=resume, **options)
    except TrainingDiverged:
        resume.unlink(missing_ok=True)
        raise


def _describe(arch: str, model: nn.Module, dataset: str, n_train: int, n_test: int | None,
              seed: int, cfg: TrainConfig, adv: AdversarialConfig | None) -> str:
    """The lines :func:`train_and_save` logs before training."""
    n_params = sum(p.numel() for p in model.parameters())
    return (f"training {arch} ({n_params:,} parameters) on {dataset} ({n_train} train / "
            f"{'?' if n_test is None else n_test} test), seed {seed}: "
            f"{json.dumps(dataclasses.asdict(cfg))}"
            + (f"\nadversarial training: {json.dumps(describe(adv))}" if adv else ""))


def _dataset_splits(dataset: str, root: str | Path | None, download: bool,
                    train_size: int | None, seed: int, test: Split | None
                    ) -> tuple[Split, Dataset | DataLoader, int]:
    """``(train, test, number of training images)`` of a dataset for :func:`train_and_save`:
    image folders read batch by batch (:func:`robustkit.data.dataset`), the rest as tensors."""
    load = data.dataset if data.spec(dataset).open is not None else data.load_tensors
    train: Split = load(dataset, "train", root=root, download=download,
                        train_size=train_size, seed=seed)
    if test is None:
        test = load(dataset, "test", root=root, download=download)
    test_ds = _as_dataset(test, "test") if _is_tensors(test) else _stream(test, "test")
    n_train = len(train[1]) if isinstance(train, tuple) else len(train)  # type: ignore[arg-type]
    return train, test_ds, n_train


def save_trained(model: nn.Module, out: str | Path, history: History, cfg: TrainConfig, *,
                 dataset: str, train_size: int, seed: int) -> Path:
    """Save a model that :func:`fit` trained, with what produced it: dataset, train size,
    seed, epochs, training settings, test accuracy, device, precision, time, the history
    and the adversarial training (:func:`robustkit.adversarial.checkpoint_metadata`).

    Inside a process group of several processes every rank calls it and rank 0 alone
    writes (its error, if any, is raised on every rank); the number of processes is
    recorded as ``processes``.

    Example:
        >>> save_trained(model, "m.pt", history, cfg, dataset="mnist-5k", train_size=500,
        ...              seed=0)                                     # doctest: +SKIP
    """
    extra = {"processes": history.processes} if history.processes > 1 else {}
    return distributed.on_main(lambda: models.save(
        model, out, dataset=dataset, train_size=train_size, seed=seed, epochs=cfg.epochs,
        training=dataclasses.asdict(cfg), test_accuracy=history.final_test_accuracy,
        device=history.device, amp=history.amp, train_seconds=history.seconds,
        history=history.epochs, **checkpoint_metadata(history), **extra),
        f"saving the checkpoint {out}")


def _fingerprint(model: nn.Module, cfg: TrainConfig, adv: AdversarialConfig | None, seed: int,
                 train_ds: Dataset | DataLoader, test_ds: Dataset | DataLoader | None,
                 amp_dtype: torch.dtype | None) -> dict[str, Any]:
    """What must match for a stored training state to be resumed, as plain JSON values.

    Data is told apart by its size; a Dataset or DataLoader also by its class (and a
    DataLoader by its number of batches), under ``train_data`` and ``test_data``, keys
    that tensors do not have (so their fingerprints are those of earlier versions). Under
    DistributedDataParallel ``processes`` holds the number of processes: a state of
    another number cannot be resumed (each rank's rows and generators would differ).
    """
    found = {
        "training": dataclasses.asdict(cfg), "adversarial": describe(adv) if adv else None,
        "seed": seed, "train_size": _size(train_ds),
        "test_size": _size(test_ds) if test_ds is not None else 0,
        "amp": str(amp_dtype), "model": type(model).__name__,
        "shapes": [[k, list(v.shape)] for k, v in model.state_dict().items()]}
    if distributed.world() > 1:  # a key one process does not have (earlier files match)
        found["processes"] = distributed.world()
    for what, split in (("train", train_ds), ("test", test_ds)):
        if split is not None and type(split) is not TensorDataset:
            found[f"{what}_data"] = _kind(split)
    return json.loads(json.dumps(found))


def _size(split: Dataset | DataLoader) -> int | None:
    """The number of examples (None: a DataLoader over data of unknown length)."""
    if isinstance(split, DataLoader):
        try:
            return len(split.dataset)  # type: ignore[arg-type]
        except TypeError:
            return None
    return len(split)  # type: ignore[arg-type]


def _kind(split: Dataset | DataLoader) -> str:
    """The class of the data, e.g. ``DataLoader of robustkit.data.ImageFolderData, 40
    batches`` or ``torch.utils.data.dataset.Subset of ...``."""
    name = f"{type(split).__module__}.{type(split).__qualname__}"
    if isinstance(split, DataLoader):
        return f"{name} of {_kind(split.dataset)}, {len(split)} batches"
    if isinstance(split, Subset):
        return f"{name} of {_kind(split.dataset)}"
    return name


def _hold_out(ds: Dataset | DataLoader, n: int, seed: int, model: nn.Module, num_classes: int
              ) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor]]:
    """Split ``n`` stratified, seeded examples off ``ds``: ``(rest, (x_held, y_held))``.

    Tensors are split into two ``TensorDataset``s; a Dataset into a ``Subset`` (the rest,
    in its order) and the held-out images read into tensors (checked, in the model's
    dtype). A DataLoader is refused: its batches are the user's to draw.
    """
    if isinstance(ds, DataLoader):
        raise RobustkitError(
            "fit: adversarial training's guard holds out training images, which fit cannot "
            "take out of a DataLoader; pass its Dataset instead (fit then holds out "
            "guard_size images itself), or set adversarial guard = false")
    if type(ds) is TensorDataset:
        x, y = ds.tensors
        labels = y.cpu().numpy()
    else:
        labels = _labels_of(ds, "train")
    if n >= len(labels) // 2:
        raise RobustkitError(
            f"adversarial.guard_size: {n} held-out images would leave too few of the "
            f"{len(labels)} training images to train on (use fewer, or guard = false)")
    held_index = data.stratified_indices(labels, n, seed=seed)  # sorted
    if type(ds) is TensorDataset:
        held = torch.zeros(len(y), dtype=torch.bool)
        held[torch.from_numpy(held_index)] = True
        return TensorDataset(x[~held], y[~held]), (x[held], y[held])
    rest = np.setdiff1d(np.arange(len(labels)), held_index)
    x_held, y_held = _checked_batch(
        *_pair(default_collate([ds[int(i)] for i in held_index]), "train"), num_classes,
        model_dtype(model), "train")
    return Subset(ds, rest.tolist()), (x_held, y_held)
