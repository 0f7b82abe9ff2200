"""Lending a model: eval mode and gradients for a block, the model's contract, predictions.

Attacks, evaluations and explainers borrow the user's model. :func:`borrowed` puts it in
eval mode for the block and gives every submodule its own mode back afterwards, also when
the block raises. :func:`model_contract` checks once per call what every attack assumes
of the model: it returns a tensor of finite logits (N, K), not probabilities, for inputs
of the shape it was built for. :func:`predict` returns logits in batches, in eval mode.

Example:
    >>> k = model_contract(model, x, "attack")        # doctest: +SKIP
    >>> with borrowed(model, "attack"):               # doctest: +SKIP
    ...     logits = model(x)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from robustkit.core.device import pick_device
from robustkit.core.layout import channels_last, nhwc
from robustkit.errors import RobustkitError

Tensor = torch.Tensor


def model_device(model: nn.Module, x: Tensor | None = None) -> torch.device:
    """The device of the model's first parameter or buffer, else the input's (else CPU)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return x.device if x is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter or buffer, or None."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return None


@contextmanager
def modes_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode; give each submodule its own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def autocast(model: nn.Module, amp: bool) -> Any:
    """Mixed precision for an attack's forward and backward passes when ``amp``: float16
    autocast on CUDA, bfloat16 elsewhere; otherwise nothing. The input, its gradient and
    every returned image stay in the model's dtype."""
    if not amp:
        return nullcontext()
    dev = model_device(model)
    return torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16)


@contextmanager
def borrowed(model: nn.Module, what: str = "attack", stacklevel: int = 4,
             fast_layout: bool = False, amp: bool = False) -> Iterator[nn.Module]:
    """Use ``model`` in eval mode and give each submodule its own mode back afterwards.

    Warns when the model arrives in train mode (dropout and BatchNorm would otherwise make
    the attack random and move the running statistics). Restores modes even on error.
    Gradients are enabled inside, so a caller's ``torch.no_grad()`` does not break it.
    ``stacklevel`` points the warning at the user's call (4: the function that enters
    this context manager directly). ``fast_layout`` also stores the convolution weights
    channels-last for the block (:func:`robustkit.core.layout.channels_last`; PGD on
    the alexnet ran 1.4x faster on 2 CPU cores), and gives the original storage back.
    ``amp`` runs the block under :func:`autocast` (mixed precision).
    """
    if model.training:
        warnings.warn(
            f"{what}: the model is in train mode; running it in eval mode and restoring "
            f"train mode afterwards (call model.eval() to silence this)",
            stacklevel=stacklevel,
        )
    with modes_kept(model):
        # Gradients on, also inside a caller's torch.no_grad() (an evaluation loop):
        # attacks and attributions differentiate with respect to the input.
        with torch.enable_grad(), channels_last(model) if fast_layout else nullcontext(), \
                autocast(model, amp):
            yield model


def as_logits(out: Any, what: str) -> Tensor:
    """The model's output if it is a tensor of logits (N, K); otherwise an error that
    says what came back and how to fix it."""
    if not isinstance(out, torch.Tensor):
        kind = type(out).__name__
        hint = (f" with keys {sorted(map(str, out))[:5]}" if isinstance(out, dict) else "")
        raise RobustkitError(
            f"{what}: the model returned a {kind}{hint}, not a tensor of logits (N, K); "
            f"pick the logits with robustkit.models.wrap(model, output=...) (a key, an "
            f"index or a function, e.g. output='logits')")
    if out.ndim != 2:
        raise RobustkitError(
            f"{what}: the model must return logits (N, K), got shape {tuple(out.shape)}")
    return out


def check_finite_logits(logits: Tensor, what: str) -> None:
    """Non-finite logits make every accuracy and attack meaningless: refuse them."""
    if not torch.isfinite(logits).all():
        raise RobustkitError(
            f"{what}: the model returned non-finite logits (NaN or Inf); check its weights "
            f"and its normalization (a std of 0 divides by zero)")


def model_contract(model: nn.Module, x: Tensor, what: str) -> int:
    """Check what attacks and evaluations assume of ``model`` on a few images of ``x``;
    return the number of classes K.

    The model must take ``x``'s shape (a robustkit model's ``in_shape``), return a tensor
    of finite logits (N, K) with K >= 2; probabilities (rows non-negative, summing to 1)
    get a warning, as AutoAttack gives: DeepFool's and C&W's distances and every margin
    loss assume logits. Runs in eval mode without gradients; the model's modes are kept.
    """
    spec = getattr(model, "robustkit_spec", None)
    if spec is not None and tuple(spec["in_shape"]) != tuple(x.shape[1:]):
        raise RobustkitError(
            f"{what}: the model ({spec['name']}) takes images of shape "
            f"{tuple(spec['in_shape'])} (C, H, W), but x has {tuple(x.shape[1:])}")
    probe = x[:2].to(model_device(model, x), dtype=model_dtype(model) or x.dtype)
    with modes_kept(model), torch.no_grad():
        try:
            out = model(probe)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RobustkitError(
                f"{what}: the model cannot run on images of shape {tuple(x.shape[1:])}: "
                f"{first}") from None
    return check_outputs(out, what).shape[1]


def check_outputs(out: Any, what: str) -> Tensor:
    """What attacks assume of a model's outputs ``out`` (N, K): a tensor of finite logits
    with K >= 2; probabilities get a warning. Returns the logits. Black-box attacks call it
    on their first query instead of probing the model (:func:`model_contract`), so that
    every forward pass they make is a counted query."""
    logits = as_logits(out, what)
    check_finite_logits(logits, what)
    if logits.shape[1] < 2:
        raise RobustkitError(f"{what}: the model returns {logits.shape[1]} logit per image; "
                             "a classifier needs at least 2")
    rows = logits.double()
    if (rows >= 0).all() and torch.allclose(rows.sum(1), torch.ones(len(rows), dtype=rows.dtype),
                                            atol=1e-4):
        warnings.warn(
            f"{what}: the model's outputs look like probabilities (non-negative, rows sum "
            f"to 1); attacks and their distances assume logits, so remove the final softmax "
            f"(robust accuracy and DeepFool/C&W sizes are unreliable on probabilities)",
            stacklevel=4)
    return logits


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1000,
            device: str | torch.device | None = None, what: str = "predict") -> Tensor:
    """Logits for ``x`` (N, C, H, W) in batches, in eval mode; the model's mode is restored.

    Returns:
        (N, K) float32 logits on the CPU. Non-finite logits and outputs that are not
        a logits tensor raise :class:`RobustkitError`.
    """
    dev = pick_device(device) if device is not None else model_device(model, x)
    dtype = model_dtype(model) or x.dtype
    out = []
    # Channels-last images and weights: the same values, faster convolutions (1.5-2x for
    # the alexnet on 2 CPU cores; robustkit.core.layout).
    with modes_kept(model), channels_last(model):
        for i in range(0, len(x), batch_size):
            xb = nhwc(x[i:i + batch_size].to(dev, dtype=dtype, non_blocking=True))
            logits = as_logits(model(xb), what)
            check_finite_logits(logits, what)
            out.append(logits.float().cpu())
    return torch.cat(out)  # (N, K)


def accuracy_of(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` that ``model`` labels ``y``."""
    return (predict(model, x, batch_size).argmax(1) == y.cpu()).float().mean().item()
