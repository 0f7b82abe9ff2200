"""Channels-last convolution weights for an inference block, given back as they were.

Convolutions on the CPU (oneDNN) and on CUDA tensor cores run fastest when both the
images and the 4-D weights are stored channels-last (NHWC). Converting only the images
left most of the gain on the table: on 2 CPU cores, 4,200 forward passes of the
benchmark alexnet on MNIST took 1.36 s contiguous, 0.95 s with channels-last images and
0.61 s with channels-last images and weights (same values up to float rounding).

:func:`channels_last` converts the weights for the length of a ``with`` block and then
puts every parameter's original storage back (copying in anything written to it during
the block), so the model leaves exactly as it came: same tensors, same strides.

Example:
    >>> with channels_last(model):                                  # doctest: +SKIP
    ...     logits = model(x.contiguous(memory_format=torch.channels_last))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

Tensor = torch.Tensor


@contextmanager
def channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """Store ``model``'s 4-D parameters and buffers channels-last inside the block.

    Meant for inference (forward passes under ``torch.no_grad``). On exit each converted
    tensor gets its original storage back, with the block's in-place changes copied in.
    Only the weights of plain ``nn.Conv2d`` modules change layout: a custom layer might
    ``.view`` its 4-D weight, which fails on channels-last strides.

    Every 4-D tensor is restrided, even one that ``is_contiguous`` in both formats: a
    one-channel kernel (C_in = 1) that keeps its contiguous strides makes the convolution
    choose the contiguous layout, and every layer after it inherits that (measured: the
    alexnet's passes then took 1.4x as long).
    """
    saved: list[tuple[Tensor, Tensor]] = []  # (the weight, its original data)
    seen: set[int] = set()
    for t in _conv_weights(model):
        if id(t) not in seen and t.stride() != _nhwc_strides(t):
            seen.add(id(t))
            saved.append((t, t.data))
            t.data = torch.empty_like(t.data, memory_format=torch.channels_last).copy_(t.data)
    try:
        yield model
    finally:
        with torch.no_grad():
            for t, original in saved:
                original.copy_(t.data)
                t.data = original


def _conv_weights(model: nn.Module) -> Iterator[Tensor]:
    """The 4-D weights of the model's plain ``nn.Conv2d`` modules (not subclasses, whose
    forward may use the weight in other ways)."""
    for m in model.modules():
        if type(m) is nn.Conv2d and m.weight is not None and m.weight.ndim == 4:
            yield m.weight


def _nhwc_strides(t: Tensor) -> tuple[int, ...]:
    """The strides of a dense channels-last tensor of ``t``'s shape (N, C, H, W)."""
    _, c, h, w = t.shape
    return (h * w * c, 1, w * c, c)


def nhwc(x: Tensor) -> Tensor:
    """``x`` in channels-last memory format when it is a batch of images (N, C, H, W)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
