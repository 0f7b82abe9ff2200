"""A forward function for captum's perturbation methods that skips copies left unchanged.

Occlusion slides a window over every image and evaluates the model once per position,
with the window set to the baseline. Where the window covers only pixels that already
equal the baseline (the black background of an MNIST digit, 55% of the 4x4 windows of
the benchmark's 100 test digits), the "occluded" copy is the image itself: its output is
known without a forward pass, and its attribution is exactly zero. :class:`SkipUnchanged`
answers such rows from one cached pass over the unperturbed images and sends only the
changed rows through the model, in passes of a fixed number of rows, with channels-last
images. captum still builds the perturbations and computes the attributions.

captum stacks ``k`` perturbed copies of the ``n`` examples as ``k`` consecutive blocks of
``n`` rows (row ``r`` is a copy of example ``r % n``); a batch of another length is
evaluated in full.

Example:
    >>> forward = SkipUnchanged(model, x, rows=256)                         # doctest: +SKIP
    >>> Occlusion(forward).attribute(x, sliding_window_shapes=(1, 4, 4), target=y)
"""

from __future__ import annotations

import torch
from torch import nn

from robustkit.explain.batching import chunks
from robustkit.core.layout import nhwc

Tensor = torch.Tensor


class SkipUnchanged:
    """``forward(inputs)`` for captum: rows equal to their unperturbed example are not run.

    Args:
        model: the classifier, in the mode it should be evaluated in.
        x: the unperturbed examples (n, ...), on the model's device.
        rows: the most rows one forward pass may hold (at least 1).

    Attributes:
        evaluated: rows that went through the model, the unperturbed pass included.
        skipped: rows answered from the cached pass.
    """

    def __init__(self, model: nn.Module, x: Tensor, rows: int) -> None:
        self.model, self.x, self.rows = model, x.detach(), max(1, int(rows))
        self.evaluated = self.skipped = 0
        self.clean = self._run(self.x)  # (n, ...) outputs of the unperturbed examples

    @torch.no_grad()
    def _run(self, inputs: Tensor) -> Tensor:
        self.evaluated += len(inputs)
        parts = chunks(len(inputs), self.rows)
        return torch.cat([self.model(nhwc(inputs[part])) for part in parts])

    @torch.no_grad()
    def __call__(self, inputs: Tensor) -> Tensor:
        n = len(self.x)
        if len(inputs) % n or inputs.shape[1:] != self.x.shape[1:]:
            return self._run(inputs)
        k = len(inputs) // n
        same = (inputs.reshape(k, n, -1) == self.x.reshape(1, n, -1)).all(2).flatten()  # (k*n,)
        out = self.clean.repeat(k, *(1,) * (self.clean.ndim - 1))  # (k*n, ...)
        changed = (~same).nonzero().squeeze(1)
        self.skipped += len(inputs) - len(changed)
        if len(changed):
            out[changed] = self._run(inputs[changed]).to(out.dtype)
        return out
