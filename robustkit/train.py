"""Training: ``fit(model, train, test, ...) -> History``.

Mini-batch SGD (Nesterov momentum) or Adam under a one-cycle learning-rate schedule
(Smith and Topin 2017), with random shifts and label smoothing as regularizers. On CUDA
it uses mixed precision (float16 autocast + gradient scaling) and non-blocking copies; on a
CPU with native bfloat16 (AVX512-BF16 or AMX) it autocasts to bfloat16, which roughly
doubles convolution throughput; elsewhere it trains in float32. On the CPU the same seed
gives the same weights bit for bit.

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
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from robustkit.adversarial import AdversarialLoss, Guard, as_config, describe
from robustkit.config import AdversarialConfig, TrainConfig
from robustkit.device import pick_device
from robustkit.errors import RobustkitError
from robustkit import snapshot
from robustkit.models.layout import channels_last, nhwc

Split = tuple[torch.Tensor, torch.Tensor] | TensorDataset


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
    the number of training images the guard kept out of training.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    amp: str | None = None  # "float16", "bfloat16" or None (float32)
    adversarial: dict[str, Any] | None = None
    guard: list[dict[str, Any]] = field(default_factory=list)
    held_out: int = 0

    @property
    def final_test_accuracy(self) -> float | None:
        return self.epochs[-1]["test_accuracy"] if self.epochs else None

    @property
    def seconds(self) -> float:
        return sum(e["seconds"] for e in self.epochs)


def _as_dataset(split: Split, what: str) -> TensorDataset:
    if isinstance(split, TensorDataset):
        return split
    if isinstance(split, (tuple, list)) and len(split) == 2:
        x, y = split
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise RobustkitError(f"{what} must be (x, y) tensors")
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise RobustkitError(
                f"{what}: x must be (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if len(x) == 0:
            raise RobustkitError(f"{what} is empty")
        return TensorDataset(x, y)
    raise RobustkitError(f"{what} must be an (x, y) pair of tensors or a TensorDataset")


def batches(dataset: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None,
            pin_memory: bool = False) -> DataLoader:
    """A DataLoader that indexes whole batches at once (one tensor gather, no per-item collate).

    The sampler yields lists of indices; swap it for a distributed sampler to shard.
    """
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(base, batch_size, drop_last=False),
                      batch_size=None, pin_memory=pin_memory)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in each direction, zero-filled.

    Args:
        x: (N, C, H, W).
    Returns:
        (N, C, H, W), each image shifted by its own random offset.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # (N, C, H + 2s, W + 2s)
    off = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
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
    n, _, h, w = x.shape
    u = torch.rand(4, n, generator=generator).mul_(2).sub_(1).to(x.device)  # U(-1, 1), (4, N)
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


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000,
            device: str | torch.device | None = None) -> torch.Tensor:
    """Logits for ``x`` (N, C, H, W) in batches, in eval mode; the model's mode is restored."""
    if device is not None:
        dev = pick_device(device)
    else:
        first = next(iter(model.parameters()), None)
        if first is None:
            first = next(iter(model.buffers()), None)
        dev = first.device if first is not None else x.device
    was_training = model.training
    model.eval()
    # Channels-last images and weights: the same values, faster convolutions (1.5-2x for
    # the alexnet on 2 CPU cores; robustkit.models.layout).
    try:
        with channels_last(model):
            out = [model(nhwc(x[i:i + batch_size].to(dev, non_blocking=True))).float().cpu()
                   for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)  # (N, K)


def accuracy_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` that ``model`` labels ``y``."""
    return (predict(model, x, batch_size).argmax(1) == y.cpu()).float().mean().item()


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

    Args:
        model: any classifier mapping (N, C, H, W) in [0, 1] to (N, K) logits.
        train: ``(x, y)`` with x float (N, C, H, W) in [0, 1] and y int64 (N,), or a
            ``TensorDataset`` of the two.
        test: the same, evaluated after each epoch (optional).
        config: a :class:`TrainConfig`; the keyword arguments below override its fields.
        epochs, batch_size, lr, loss, optimizer, weight_decay, label_smoothing, augment:
            see :class:`TrainConfig`.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
        seed: seeds initialization-independent randomness (shuffling, shifts, dropout).
        amp: mixed precision. None (default) picks it: float16 on CUDA, bfloat16 on a CPU
            with native bfloat16 support, off elsewhere. True forces it (float16 on CUDA,
            bfloat16 on the CPU), False trains in float32.
        eval_every: score ``test`` every this many epochs (and always after the last);
            other epochs record None. 0 scores after the last epoch only.
        quiet: no progress bar.
        adversarial: train on adversarial examples (:mod:`robustkit.adversarial`): an
            :class:`AdversarialConfig` or a dict of its fields, e.g.
            ``{"method": "pgd", "eps": 0.3}``. None (default) trains on clean images. With
            its guard on, ``guard_size`` stratified, seeded training images are held out of
            training to watch for catastrophic overfitting.
        resume: a file for the training state (:mod:`robustkit.snapshot`), written after
            every epoch. If it exists, training goes on after its epoch (same configuration
            required) and ends as an uninterrupted run would; the caller deletes it once
            the model is saved.

    Returns:
        A :class:`History`. The model ends in eval mode, on ``device``.
    """
    overrides = {k: v for k, v in dict(
        epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, optimizer=optimizer,
        weight_decay=weight_decay, label_smoothing=label_smoothing, augment=augment,
    ).items() if v is not None}
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    adv = as_config(adversarial)
    train_ds = _as_dataset(train, "train")
    test_ds = _as_dataset(test, "test") if test is not None else None
    dev = pick_device(device)
    amp_dtype = amp_dtype_for(dev, amp)
    held_out = None
    if adv is not None and adv.guard:
        train_ds, held_out = _hold_out(train_ds, adv.guard_size, seed)

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(dev)
    # Channels-last convolutions ran 1.4x faster here in float32 and 1.9x with bfloat16.
    model.to(memory_format=torch.channels_last)
    num_classes = _num_classes(model, train_ds, dev)
    criterion = loss_function(cfg.loss, num_classes, cfg.label_smoothing)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = batches(train_ds, cfg.batch_size, shuffle=True, generator=gen,
                     pin_memory=dev.type == "cuda")
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * len(loader) + 1, pct_start=0.25,
        anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0,
        cycle_momentum=cfg.optimizer == "sgd",
    )
    # Gradient scaling guards float16's small range; bfloat16 has float32's range.
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def autocast() -> torch.autocast:
        return torch.autocast(dev.type, dtype=amp_dtype or torch.float32,
                              enabled=amp_dtype is not None)

    history = History(device=str(dev),
                      amp=str(amp_dtype).removeprefix("torch.") if amp_dtype else None)
    adv_loss = guard = None
    if adv is not None:
        # Its own generator for the random starts, so the shuffling and augmentation
        # draws are those of a standard run with the same seed.
        adv_loss = AdversarialLoss(
            adv, criterion, generator=torch.Generator().manual_seed(seed + 1),
            autocast=autocast,
            attack_autocast=autocast if adv.attack_amp else contextlib.nullcontext)
        history.adversarial = describe(adv)
        if held_out is not None:
            guard = Guard(adv, held_out[0].to(dev), held_out[1].to(dev), seed=seed)
            history.held_out = len(held_out[1])
    done, step, stopped = 0, 0, False  # epochs and optimizer steps so far
    if resume is not None:
        fingerprint = _fingerprint(model, cfg, adv, seed, train_ds, test_ds, amp_dtype)
        state = snapshot.load(resume, fingerprint)
        if state is not None:
            done, step, stopped = state["epoch"], state["step"], state["stopped"]
            history = History(**state["history"])
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"])
            gen.set_state(state["generator"])
            if dev.type == "cuda" and state["rng_cuda"] is not None:
                torch.cuda.set_rng_state(state["rng_cuda"], dev)
            if adv_loss is not None:
                adv_loss.generator.set_state(state["adversarial_generator"])
            if guard is not None:
                guard.load_state_dict(state["guard"])
            if not quiet:
                print(f"resuming from {resume}: {done} of {cfg.epochs} epochs done", flush=True)
    bar = tqdm(total=cfg.epochs * len(loader), initial=done * len(loader), disable=quiet,
               unit="batch", leave=False, desc="train")
    try:
        for epoch in range(done + 1, (done if stopped else cfg.epochs) + 1):
            start = time.perf_counter()
            model.train()
            total_loss = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            seen = 0
            for xb, yb in loader:
                if adv_loss is not None:
                    adv_loss.warm_up(step, cfg.epochs * len(loader))
                step += 1
                xb = xb.to(dev, non_blocking=True)  # (B, C, H, W)
                yb = yb.to(dev, non_blocking=True)  # (B,)
                if cfg.augment == "shift":
                    xb = random_shift(xb, 2, gen)
                elif cfg.augment == "affine":
                    xb = random_affine(xb, gen)
                if adv_loss is not None:
                    batch_loss, logits = adv_loss(model, xb, yb)
                else:
                    with autocast():
                        logits = model(xb)
                        batch_loss = criterion(logits, yb)
                opt.zero_grad(set_to_none=True)
                scaler.scale(batch_loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                total_loss += batch_loss.detach() * len(yb)
                correct += (logits.argmax(1) == yb).sum()
                seen += len(yb)
                bar.update()
            record = {
                "epoch": epoch,
                "loss": total_loss.item() / seen,
                "train_accuracy": correct.item() / seen,
            }
            stop = False
            if guard is not None:
                # Before scoring the test split, so its score is that of the weights kept.
                model.eval()
                record["guard_accuracy"], event = guard.check(model, opt, epoch)
                record["guard_single_step_accuracy"] = guard.single_step
                record["restored"] = event["restored_epoch"] if event else None
                if event:
                    history.guard.append(event)
                    stop = adv.guard_action == "stop"
            last = epoch == cfg.epochs or stop
            record["test_accuracy"] = (accuracy_of(model, *test_ds.tensors)
                                       if test_ds and (last or (eval_every
                                                                and epoch % eval_every == 0))
                                       else None)
            record["lr"] = opt.param_groups[0]["lr"]
            record["seconds"] = time.perf_counter() - start
            history.epochs.append(record)
            if not quiet:
                test_txt = (f"  test acc {record['test_accuracy']:.4f}"
                            if record["test_accuracy"] is not None else "")
                guard_txt = (f"  held-out pgd acc {record['guard_accuracy']:.4f} "
                             f"(single step {record['guard_single_step_accuracy']:.4f})"
                             if "guard_accuracy" in record else "")
                bar.write(f"epoch {epoch:3d}/{cfg.epochs}  loss {record['loss']:.4f}  "
                          f"train acc {record['train_accuracy']:.4f}{guard_txt}{test_txt}  "
                          f"{record['seconds']:.1f}s")
            if resume is not None:
                snapshot.save(resume, {
                    "fingerprint": fingerprint, "epoch": epoch, "step": step, "stopped": stop,
                    "history": dataclasses.asdict(history), "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(), "rng": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                    "generator": gen.get_state(),
                    "adversarial_generator": (adv_loss.generator.get_state()
                                              if adv_loss is not None else None),
                    "guard": guard.state_dict() if guard is not None else None})
            if stop:
                break
    finally:
        bar.close()
        model.eval()
        opt.zero_grad(set_to_none=True)
    return history


def _fingerprint(model: nn.Module, cfg: TrainConfig, adv: AdversarialConfig | None, seed: int,
                 train_ds: TensorDataset, test_ds: TensorDataset | None,
                 amp_dtype: torch.dtype | None) -> dict[str, Any]:
    """What must match for a stored training state to be resumed, as plain JSON values."""
    return json.loads(json.dumps({
        "training": dataclasses.asdict(cfg), "adversarial": describe(adv) if adv else None,
        "seed": seed, "train_size": len(train_ds), "test_size": len(test_ds) if test_ds else 0,
        "amp": str(amp_dtype), "model": type(model).__name__,
        "shapes": [[k, list(v.shape)] for k, v in model.state_dict().items()]}))


def _hold_out(ds: TensorDataset, n: int, seed: int
              ) -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    """Split ``n`` stratified, seeded examples off ``ds``: ``(rest, (x_held, y_held))``."""
    from robustkit.data import stratified_indices

    x, y = ds.tensors
    if n >= len(y) // 2:
        raise RobustkitError(
            f"adversarial.guard_size: {n} held-out images would leave too few of the {len(y)} "
            f"training images to train on (use fewer, or guard = false)")
    held = torch.zeros(len(y), dtype=torch.bool)
    held[torch.from_numpy(stratified_indices(y.cpu().numpy(), n, seed=seed))] = True
    return TensorDataset(x[~held], y[~held]), (x[held], y[held])


def amp_dtype_for(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype for ``device``: float16 on CUDA, bfloat16 on a capable CPU, or None."""
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        if amp is None and not cpu_has_native_bf16():
            return None
        return torch.bfloat16
    if amp:
        raise RobustkitError(f"mixed precision is not supported on {device.type}")
    return None


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 or AMX), so autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _num_classes(model: nn.Module, ds: TensorDataset, dev: torch.device) -> int:
    """Number of logits, from one forward pass on a single example."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(ds.tensors[0][:1].to(dev)).shape[1])
    finally:
        model.train(was_training)
