"""``attribute(model, x, target, method=...)``: attributions shaped like the input.

The same promises as the attacks (:mod:`robustkit.attacks.base`): the input is checked
(float (N, C, H, W) in [0, 1], no NaN), the model is borrowed in eval mode and every
submodule's mode is given back afterwards, also when captum raises; the caller's tensor
is never written and keeps its ``requires_grad``; gradients are taken with respect to the
input only (captum uses ``torch.autograd.grad``), so parameters' ``.grad`` stay as they
were; a model in train mode draws a warning. Before a hook-based method runs, the model is
checked for the traps that make captum's hooks silently wrong
(:mod:`robustkit.explain.checks`).

Example:
    >>> a = attribute(model, x, y, method="integrated_gradients")   # doctest: +SKIP
    >>> a.shape == x.shape                                          # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustkit.core import (borrowed, check_inputs, check_labels, model_contract, model_device,
                            predict)
from robustkit.core.distributed import current_shard, gather
from robustkit.core.stream import Data, batches
from robustkit.errors import RobustkitError
from robustkit.explain.batching import chunks, rows_per_pass, split_options
from robustkit.explain.checks import refuse_traps
from robustkit.explain.methods import EXPLAINERS, Explainer
from robustkit.explain.probe import Probe, probe

Tensor = torch.Tensor
Target = int | Tensor


@dataclass
class Prepared:
    """A checked batch and a borrowed model, ready for one method (see :func:`explaining`).

    Attributes:
        model: the model, in eval mode for the duration of the block.
        explainer: the registered method.
        x: a detached copy of the images on the model's device (N, C, H, W).
        target: int64 class indices (N,) on the model's device.
        probe: what one forward pass revealed.
        rows: examples per forward pass (the memory budget, or the caller's batch size).
    """

    model: nn.Module
    explainer: Explainer
    x: Tensor
    target: Tensor
    probe: Probe
    rows: int

    def run(self, x: Tensor, target: Tensor, **options: Any) -> Tensor:
        """Attributions (n, C, H, W) of any images ``x`` for ``target`` (n,), in parts of
        at most ``rows`` examples; detached, on the model's device."""
        n = len(x)
        parts = []
        for part in chunks(n, self.rows):
            xi = x[part].detach().requires_grad_(True)
            out = self.explainer.run(self.model, xi, target[part], rows=self.rows,
                                     probe=self.probe, **split_options(options, part, n))
            parts.append(out.detach())
        return torch.cat(parts)


def targets(target: Target, n: int, num_classes: int, device: torch.device,
            what: str = "attribute") -> Tensor:
    """``target`` as int64 class indices (n,) on ``device``: an int or a 0-d tensor applies
    to every example, an (n,) tensor gives one class each; each must lie in [0, K)."""
    if isinstance(target, bool) or not isinstance(target, (int, torch.Tensor)):
        raise RobustkitError(f"{what}: target must be an int or an (N,) tensor of class "
                             f"indices, got {type(target).__name__}")
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise RobustkitError(f"{what}: target must hold integer class indices, got {t.dtype}")
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise RobustkitError(f"{what}: target must be an int or have shape ({n},), "
                             f"got {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.long)
    check_labels(t, num_classes, what)
    return t


@contextmanager
def explaining(model: nn.Module, x: Tensor, target: Target, method: str, *,
               batch_size: int | None = None) -> Iterator[Prepared]:
    """Check everything and borrow ``model`` for ``method``; modes restored on leaving.

    Args:
        model: a classifier mapping (N, C, H, W) in [0, 1] to (N, K) logits.
        x: images (N, C, H, W) in [0, 1].
        target: an int, or class indices (N,).
        method: a registered method name.
        batch_size: examples per forward pass; default from the memory budget
            (:func:`robustkit.explain.batching.rows_per_pass`).
    """
    explainer = EXPLAINERS.get(method)
    what = f"explain {method}"
    check_inputs(x, None, what=what)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise RobustkitError(f"{what}: batch_size must be a positive integer, got {batch_size!r}")
    dev = model_device(model, x)
    model_contract(model, x, what)
    with borrowed(model, what=what, stacklevel=6):  # the caller of attribute/robustness
        xs = x.detach().to(dev, copy=True)
        found = probe(model, xs[:1])
        t = targets(target, len(xs), found.num_classes, dev, what)
        if explainer.hooks:
            refuse_traps(model, found, explainer.hooks, method=method)
        yield Prepared(model, explainer, xs, t, found, batch_size or rows_per_pass(found, dev))


def attribute(model: nn.Module, x: Tensor | Data, target: Target | str = "label", *,
              method: str = "saliency", batch_size: int | None = None,
              **options: Any) -> Tensor:
    """Attributions of ``model``'s ``target`` logit to each input value, shaped like ``x``.

    Methods (see :func:`robustkit.explain.names`): ``saliency``, ``gradient``,
    ``input_x_gradient``, ``integrated_gradients``, ``smoothgrad``, ``guided_backprop``,
    ``deeplift``, ``gradcam`` (upsampled to the input), ``occlusion``; all computed by captum.

    Args:
        model: a classifier mapping (N, C, H, W) in [0, 1] to (N, K) logits; left in the
            modes it came in, its parameters and their ``.grad`` untouched.
        x: images (N, C, H, W) in [0, 1]; never written. Or a Dataset or a DataLoader of
            ``(x, y)``: then it is read block by block (inside a process group each rank
            explains its blocks) and ``target`` is ``"label"`` (default) or
            ``"prediction"``.
        target: the class to explain: an int for every image, or (N,) class indices.
        method: a registered method name.
        batch_size: examples per forward pass (default: sized by memory, see
            :mod:`robustkit.explain.batching`).
        options: the method's own options, e.g. ``n_steps=100`` or ``baselines=...`` for
            integrated gradients, ``layer="conv4"`` for Grad-CAM, ``window=(1, 6, 6)`` for
            occlusion. Per-example tensors (first dimension N) are split with ``x``.

    Returns:
        A detached float tensor shaped like ``x``, on ``x``'s device.

    Example:
        >>> a = attribute(model, x, 3, method="gradcam")            # doctest: +SKIP
        >>> a = attribute(model, x, y, method="integrated_gradients", n_steps=100)  # doctest: +SKIP
    """
    if not isinstance(x, torch.Tensor):
        return _attribute_data(model, x, target, method, batch_size, options)
    if isinstance(target, str):  # "label", "prediction": names for labelled data only
        raise RobustkitError(f"explain {method}: target {target!r} is for a Dataset or a "
                             f"DataLoader; with images, target must be an int or an (N,) "
                             f"tensor of class indices")
    with explaining(model, x, target, method, batch_size=batch_size) as prep:
        return prep.run(prep.x, prep.target, **options).to(x.device)


def _attribute_data(model: nn.Module, data: Data, target: Target | str, method: str,
                    batch_size: int | None, options: dict[str, Any]) -> Tensor:
    """:func:`attribute` over a Dataset or a DataLoader: the maps of every example, in
    example order, computed in aligned blocks (sharded and gathered in a process group)."""
    if target not in ("label", "prediction"):
        raise RobustkitError(f"explain {method}: with a Dataset or a DataLoader, target is "
                             f"'label' or 'prediction', got {target!r}")
    block = batch_size or 64
    shard = current_shard()
    index, maps = [], []
    for b in batches(data, block, shard=shard, what=f"explain {method}"):
        t = b.y.long() if target == "label" else predict(model, b.x).argmax(1)
        index.append(b.index)
        maps.append(attribute(model, b.x, t, method=method, batch_size=batch_size,
                              **options).detach().cpu())
    if not maps:  # no block here (fewer blocks than processes, or no data at all)
        first = next(batches(data, 1, what=f"explain {method}"), None)
        if first is None:
            raise RobustkitError(f"explain {method}: the data holds no examples")
        index, maps = [torch.empty(0, dtype=torch.long)], [torch.empty(0, *first.x.shape[1:])]
    joined = gather({"index": torch.cat(index), "maps": torch.cat(maps)})
    return joined["maps"]
