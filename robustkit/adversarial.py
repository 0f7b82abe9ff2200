"""Adversarial training: each batch's inner maximization, the outer loss, and the guard.

Three methods, chosen by :class:`robustkit.config.AdversarialConfig.method`:

- ``fgsm-rs``: Wong, Rice and Kolter 2020, "Fast is better than free: revisiting adversarial
  training", arXiv 2001.03994. One signed-gradient step of ``1.25 * eps`` from a uniformly
  random point of the eps-ball, projected back; the weights are trained on the result.
- ``pgd``: Madry, Makelov, Schmidt, Tsipras and Vladu 2017, "Towards Deep Learning Models
  Resistant to Adversarial Attacks", arXiv 1706.06083. ``steps`` projected steps of
  ``2.5 * eps / steps`` from a random start; the weights are trained on the result only.
- ``trades``: Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan 2019, "Theoretically Principled
  Trade-off between Robustness and Accuracy", arXiv 1901.08573. The loss is
  ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x'))``, where ``x'`` maximizes the KL
  term by PGD started at ``x`` plus Gaussian noise of scale 0.001 (their code's start: the
  KL gradient is zero at ``x`` itself).

The inner attack runs with the model in eval mode by default, as Madry lab's
``robustness`` library and the TRADES code do: dropout does not randomize the attack and
BatchNorm running statistics never see the attack's intermediate iterates (robustkit's
models have no BatchNorm by default, so for them only dropout differs). Wong et al.'s code
attacks in train mode; ``attack_mode = "train"`` does that. Either way each submodule's
mode is given back before the weight update, which runs in train mode. Gradients for the
attack are taken with respect to the input only (``torch.autograd.grad``), so no weight
gradient is computed or left behind.

Eps (and the step size with it) grows linearly over the first ``eps_warmup`` of the
training steps (default 1/8): at eps 0.3 from the first step, alexnet sometimes never left
chance accuracy.

The catastrophic-overfitting guard (Wong et al. 2020, section 5.3) holds out part of the
*training* split (never the test split), measures PGD accuracy on it after every epoch and,
on a collapse, restores the best epoch's weights (and optimizer state), warns, and records
a ``guard`` event in the history. It can only give back robustness that training once had.

Example:
    >>> from robustkit import data, models, fit                                # doctest: +SKIP
    >>> x, y = data.load_tensors("mnist-5k")                                    # doctest: +SKIP
    >>> m = models.create("alexnet")                                            # doctest: +SKIP
    >>> h = fit(m, (x, y), config=adversarial_training("alexnet"),
    ...         adversarial={"method": "pgd", "eps": 0.3})                      # doctest: +SKIP
    >>> h.guard                                                                 # doctest: +SKIP
    []
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks.threat import THREATS
from robustkit.config import AdversarialConfig, TrainConfig, from_dict
from robustkit.errors import RobustkitError

Tensor = torch.Tensor
Autocast = Callable[[], contextlib.AbstractContextManager]

#: Training settings for adversarial training, per registered model, where they differ from
#: the model's standard defaults (:func:`robustkit.models.default_training`). Chosen on a
#: validation split of the training data (``benchmarks/robust_training.py tune``), never on
#: the test split.
ADVERSARIAL_DEFAULTS: dict[str, TrainConfig] = {
    # Chosen for PGD-5 at Linf eps 0.3 (eps warm-up 1/8) on 3,200 training images, scored by
    # PGD-20 on 800 validation images of the training split (benchmarks/robust_training.py
    # tune). Random affine augmentation and a 0.003 peak rate gave 98.0% clean / 91.0%
    # PGD-20 (mean of seeds 0-2) against 98.0% / 88.3% without augmentation; 30 epochs
    # gave 97.5% / 89.2%, a peak rate of 0.002 98.1% / 88.6% (seed 1). Without
    # augmentation, 7 steps instead of 5 gained nothing (98.1% / 90.0% against 98.5% /
    # 89.8%, seed 0). Without the eps warm-up a peak rate of 0.004, or affine
    # augmentation, stayed at chance for all 30 epochs. PGD-20 could not see what the
    # step count did: AutoAttack later showed PGD-5 masking gradients, and the inner attack
    # now takes 10 steps (AdversarialConfig.steps); these settings were kept.
    "alexnet": TrainConfig(epochs=40, batch_size=64, lr=0.003, optimizer="adam",
                           weight_decay=0.0, augment="affine", label_smoothing=0.0),
    # The 512-256 MLP gets little robustness at eps 0.3 whatever the settings: 94.4% clean /
    # 35.1% PGD-20 here, against 90.9% / 33.5% at 0.001, 90.8% / 32.1% with SGD and
    # 61.4% / 28.8% with affine augmentation.
    "mlp": TrainConfig(epochs=40, batch_size=64, lr=0.002, optimizer="adam",
                       weight_decay=0.0, augment="none", label_smoothing=0.0),
}


def adversarial_training(model_name: str) -> TrainConfig:
    """The training settings model ``model_name`` uses for adversarial training.

    Those of :data:`ADVERSARIAL_DEFAULTS` where the model has an entry, else its standard
    defaults. Unknown names raise :class:`RobustkitError` listing the registered models.
    """
    from robustkit import models

    standard = models.default_training(model_name)  # refuses unknown names
    return ADVERSARIAL_DEFAULTS.get(model_name, standard)


def as_config(value: AdversarialConfig | Mapping[str, Any] | None) -> AdversarialConfig | None:
    """An :class:`AdversarialConfig` from a config, a plain mapping (TOML, JSON) or None."""
    if value is None or isinstance(value, AdversarialConfig):
        return value
    if isinstance(value, Mapping):
        return from_dict(AdversarialConfig, dict(value), "adversarial")
    raise RobustkitError(
        f"adversarial must be an AdversarialConfig, a dict or None, got {type(value).__name__}"
    )


def describe(cfg: AdversarialConfig) -> dict[str, Any]:
    """The config as plain values, with ``steps`` and ``alpha`` resolved (for metadata)."""
    return {**dataclasses.asdict(cfg), "steps": cfg.attack_steps, "alpha": cfg.attack_alpha}


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train or eval mode, then give each submodule its own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def perturb(model: nn.Module, x: Tensor, y: Tensor, cfg: AdversarialConfig, *,
            generator: torch.Generator | None = None,
            autocast: Autocast = contextlib.nullcontext, scale: float = 1.0) -> Tensor:
    """The inner maximization of ``cfg.method``: adversarial images for one batch.

    Args:
        model: maps (N, C, H, W) in [0, 1] to (N, K) logits.
        x: clean images (N, C, H, W) in [0, 1], on the model's device.
        y: labels (N,).
        cfg: the method, threat model, steps and step size.
        generator: draws the random start (a CPU generator; None: the global RNG).
        autocast: a context-manager factory for the forward passes (mixed precision).
        scale: multiplies eps and alpha, in (0, 1] (the eps warm-up).

    Returns:
        Detached images (N, C, H, W) inside the (``scale * eps``)-ball around ``x`` and
        inside [0, 1].
        For ``fgsm-rs`` and ``pgd`` they ascend the cross-entropy; for ``trades`` the KL
        divergence from the clean prediction.
    """
    tm = THREATS.get(cfg.norm)
    eps = torch.tensor(cfg.eps * scale, dtype=x.dtype, device=x.device)
    alpha = torch.tensor(cfg.attack_alpha * scale, dtype=x.dtype, device=x.device)
    x = x.detach()
    with _mode(model, cfg.attack_mode == "train"):
        if cfg.method == "trades":
            with torch.no_grad(), autocast():
                p_clean = model(x).float().softmax(1)  # (N, K), the fixed reference

            def objective(logits: Tensor) -> Tensor:
                return F.kl_div(logits.float().log_softmax(1), p_clean, reduction="sum")

            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x_adv = tm.project(x + 0.001 * noise, x, eps)
        else:
            def objective(logits: Tensor) -> Tensor:
                # Summed, so one example's step never depends on the batch's size.
                return F.cross_entropy(logits.float(), y, reduction="sum")

            x_adv = tm.random_start(x, eps, generator)
        for _ in range(cfg.attack_steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with autocast():
                logits = model(x_adv)  # (N, K)
            (grad,) = torch.autograd.grad(objective(logits), x_adv)
            x_adv = tm.project(tm.step(x_adv.detach(), grad, alpha), x, eps)
    return x_adv.detach()


class AdversarialLoss:
    """The training loss of one batch under ``cfg``: ``(model, x, y) -> (loss, logits)``.

    ``logits`` are those of the adversarial images (N, K), for the training accuracy the
    history reports. The model must be in train mode; the inner attack borrows it in
    ``cfg.attack_mode`` and gives it back. ``scale`` (in (0, 1], set by the caller before
    each batch) shrinks eps and alpha during the warm-up.
    """

    def __init__(self, cfg: AdversarialConfig,
                 criterion: Callable[[Tensor, Tensor], Tensor], *,
                 generator: torch.Generator | None = None,
                 autocast: Autocast = contextlib.nullcontext,
                 attack_autocast: Autocast | None = None) -> None:
        self.cfg = cfg
        self.criterion = criterion
        self.generator = generator
        self.autocast = autocast
        self.attack_autocast = autocast if attack_autocast is None else attack_autocast
        self.scale = 1.0

    def warm_up(self, step: int, total_steps: int) -> None:
        """Set ``scale`` for optimizer step ``step`` (0-based) of ``total_steps``: the first
        ``cfg.eps_warmup`` of them ramp eps up linearly."""
        ramp = self.cfg.eps_warmup * total_steps
        self.scale = 1.0 if step + 1 >= ramp else (step + 1) / ramp

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 forward: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        # forward: what computes the training loss (a DistributedDataParallel wrapper of
        # model); the attack always runs on model itself.
        x_adv = perturb(model, x, y, self.cfg, generator=self.generator,
                        autocast=self.attack_autocast, scale=self.scale)
        net = model if forward is None else forward
        if self.cfg.method != "trades":
            with self.autocast():
                logits = net(x_adv)
                return self.criterion(logits, y), logits
        # One forward pass over clean and adversarial images together: (2N, K).
        with self.autocast():
            both = net(torch.cat([x, x_adv]))
        clean, adv = both[:len(x)], both[len(x):]
        natural = self.criterion(clean, y)
        # KL(p_clean || p_adv), averaged over examples, as in TRADES' code ("batchmean").
        robust = F.kl_div(adv.float().log_softmax(1), clean.float().softmax(1),
                          reduction="batchmean")
        return natural + self.cfg.trades_beta * robust, adv


def guard_accuracy(model: nn.Module, x: Tensor, y: Tensor, cfg: AdversarialConfig,
                   seed: int = 0) -> float:
    """PGD accuracy of ``model`` on held-out images at the training radius (the guard's probe).

    PGD with ``cfg.guard_steps`` steps of ``2.5 * eps / steps`` from a random start, in float32
    and eval mode, seeded, so that every epoch is probed the same way. An example counts
    when it is classified correctly clean and attacked.
    """
    from robustkit.attacks import pgd

    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    x_adv = pgd(model, x, y, eps=cfg.eps, steps=cfg.guard_steps, norm=cfg.norm, seed=seed)
    with torch.no_grad():
        adv_ok = model(x_adv).argmax(1) == y
    return (clean_ok & adv_ok).float().mean().item()


def single_step_accuracy(model: nn.Module, x: Tensor, y: Tensor, cfg: AdversarialConfig
                         ) -> float:
    """Accuracy of ``model`` on held-out images under one full step of size eps from the
    image itself (FGSM for Linf): beside :func:`guard_accuracy`, a large gap is the
    signature of catastrophic overfitting (Wong et al. 2020)."""
    from robustkit.attacks import pgd

    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    x_adv = pgd(model, x, y, eps=cfg.eps, steps=1, alpha=cfg.eps, random_start=False,
                norm=cfg.norm)
    with torch.no_grad():
        adv_ok = model(x_adv).argmax(1) == y
    return (clean_ok & adv_ok).float().mean().item()


class Guard:
    """Catastrophic-overfitting guard: probe after every epoch, restore on a collapse.

    FGSM training can suddenly lose all robustness to PGD within an epoch while its
    FGSM accuracy rises (Wong et al. 2020, section 5.3, "catastrophic overfitting"). After
    each epoch :meth:`check` measures :func:`guard_accuracy` on held-out training images.
    An epoch collapses when that accuracy is more than ``guard_drop`` below the best so far,
    or below ``guard_floor`` after an earlier epoch reached the floor. The weights and
    optimizer state of the best epoch so far (ties: the later) are kept as the last good
    ones, and restored on a collapse. Wong et al. keep the epoch just before the collapse
    instead; but a collapse can start gently (here 0.42, 0.23, then 0.15 under PGD), and
    the epoch before the one that crosses the threshold is then already half gone.

    Args:
        cfg: the adversarial config (threshold and action).
        x, y: held-out images (N, C, H, W) and labels (N,), on the model's device.
        seed: seeds the probe's random start.
    """

    def __init__(self, cfg: AdversarialConfig, x: Tensor, y: Tensor, seed: int = 0) -> None:
        self.cfg = cfg
        self.x, self.y = x, y
        self.seed = seed
        self.best: float | None = None
        self.good_epoch: int | None = None
        self.single_step: float | None = None  # the last epoch's single-step accuracy
        self.signature: int | None = None  # the epoch the overfitting signature showed
        self._weights: dict[str, Tensor] | None = None
        self._optimizer: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The guard's memory (best probe accuracy, last good epoch, weights and optimizer
        state), for :mod:`robustkit.snapshot`."""
        return {"best": self.best, "good_epoch": self.good_epoch, "weights": self._weights,
                "optimizer": self._optimizer, "signature": self.signature}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned."""
        self.best, self.good_epoch = state["best"], state["good_epoch"]
        self._weights, self._optimizer = state["weights"], state["optimizer"]
        self.signature = state["signature"]

    def check(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int
              ) -> tuple[float, dict[str, Any] | None]:
        """Probe the model after ``epoch``; on a collapse restore the last good state.

        The model must be in eval mode. Returns the probe's accuracy and the event (a dict
        with ``epoch``, ``pgd_accuracy``, ``best_accuracy``, ``restored_epoch``, ``action``)
        or None when the epoch is good.
        """
        acc = guard_accuracy(model, self.x, self.y, self.cfg, self.seed)
        self.single_step = single_step_accuracy(model, self.x, self.y, self.cfg)
        if self.signature is None and self.single_step - acc > self.cfg.guard_gap:
            self.signature = epoch
            peak = (f"its best so far is {self.best:.3f} (epoch {self.good_epoch})"
                    if self.best is not None else "this is its first probe")
            warnings.warn(
                f"adversarial training ({self.cfg.method}): after epoch {epoch} the "
                f"{len(self.y)} held-out training images resist a single step "
                f"({self.single_step:.3f}) far better than PGD ({acc:.3f}): the signature of "
                f"catastrophic overfitting (Wong et al. 2020). PGD accuracy is what counts; "
                f"{peak}. Multi-step training (method='pgd') does not overfit this way.",
                stacklevel=3)
        best = self.best
        collapsed = best is not None and (
            acc < best - self.cfg.guard_drop
            or (acc < self.cfg.guard_floor <= best)
        )
        if not collapsed:
            if best is None or acc >= best:
                self.best = acc
                self.good_epoch = epoch
                self._weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                self._optimizer = copy.deepcopy(optimizer.state_dict())
            return acc, None
        assert self._weights is not None and self._optimizer is not None  # set with best
        model.load_state_dict(self._weights)
        optimizer.load_state_dict(self._optimizer)
        event = {"epoch": epoch, "pgd_accuracy": acc, "best_accuracy": best,
                 "restored_epoch": self.good_epoch, "action": self.cfg.guard_action,
                 "held_out": len(self.y)}
        then = ("stopped training" if self.cfg.guard_action == "stop"
                else "continuing from them")
        warnings.warn(
            f"adversarial training ({self.cfg.method}): PGD accuracy on {len(self.y)} held-out "
            f"training images fell to {acc:.3f} after epoch {epoch} (best {best:.3f}): "
            f"catastrophic overfitting; restored the weights of epoch {self.good_epoch} and "
            f"{then}",
            stacklevel=3,
        )
        return acc, event


def checkpoint_metadata(history: Any) -> dict[str, Any]:
    """What a checkpoint records about how it was trained, from a :class:`History`.

    ``training_method`` (``standard``, ``fgsm-rs``, ``pgd`` or ``trades``), and for
    adversarial training the ``threat_model`` (norm and eps), the resolved ``adversarial``
    config, the ``guard`` events and the number of ``held_out`` training images.
    """
    adv = getattr(history, "adversarial", None)
    if not adv:
        return {"training_method": "standard", "threat_model": None}
    return {"training_method": adv["method"],
            "threat_model": {"norm": adv["norm"], "eps": adv["eps"]},
            "adversarial": adv, "guard": list(history.guard),
            "held_out": history.held_out}
