"""What a unit of an experiment gets to work with: the config, its own section, the store,
and the run's data and models, loaded once and shared by every unit.

A unit never sees the runner: it receives a :class:`Context` and returns its record and
arrays. The test subset and the models are loaded lazily, the first time a unit asks.

Example:
    >>> ctx = Context(cfg, Store(root), root)                     # doctest: +SKIP
    >>> x, y = ctx.test_set()                                     # doctest: +SKIP
    >>> model = ctx.model("mlp", seed=0)                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from torch import nn

from robustkit import data, models
from robustkit.core import pick_device
from robustkit.errors import RobustkitError
from robustkit.experiment.config import ExperimentConfig, ModelEntry
from robustkit.store import Store

Tensor = torch.Tensor


@dataclass
class Shared:
    """What every unit of one run shares: the test subset and the loaded models."""

    test: tuple[Tensor, Tensor] | None = None
    models: dict[tuple[str, int], nn.Module] = field(default_factory=dict)


@dataclass
class Context:
    """A unit's view of the run.

    Attributes:
        cfg: the whole, validated config.
        store: the run's units.
        root: the run folder.
        section: the unit's own part of the config (a model entry, an attack entry, the
            ``[examples]`` table ...).
        shared: the data and models loaded so far (shared by every unit of the run).
    """

    cfg: ExperimentConfig
    store: Store
    root: Path
    section: Any = None
    shared: Shared = field(default_factory=Shared)

    def of(self, section: Any) -> Context:
        """The same run, for a unit whose own section is ``section``."""
        return dataclasses.replace(self, section=section)

    @property
    def device(self) -> torch.device:
        return pick_device(self.cfg.device)

    def test_set(self) -> tuple[Tensor, Tensor]:
        """``n_test`` class-balanced test images (N, C, H, W) and labels (N,): the same
        subset for every unit."""
        if self.shared.test is None:
            x, y = data.load_tensors(self.cfg.dataset, "test")
            n = min(self.cfg.n_test, len(y))
            keep = torch.from_numpy(data.stratified_indices(y.numpy(), n, seed=0))
            self.shared.test = (x[keep], y[keep])
        return self.shared.test

    def balanced(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` class-balanced images from the test subset (the same for every model)."""
        x, y = self.test_set()
        n = min(n, len(y))
        keep = torch.from_numpy(np.sort(data.stratified_indices(y.cpu().numpy(), n, seed=0)))
        return x[keep], y[keep]

    def entry(self, name: str) -> ModelEntry:
        """The config entry of model ``name``."""
        for m in self.cfg.models:
            if m.name == name:
                return m
        raise RobustkitError(f"the run has no model {name!r}")

    def checkpoint(self, name: str, seed: int) -> Path:
        """Where model ``name`` trained with ``seed`` lives: the entry's own checkpoint (or
        weights file), or ``models/NAME-sSEED.pt`` in the run folder (checked to stay
        inside it)."""
        entry = self.entry(name)
        if entry.checkpoint:
            return Path(entry.checkpoint)
        if entry.weights:
            return Path(entry.weights)
        path = self.root / "models" / f"{quote(name, safe='')}-s{int(seed)}.pt"
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            raise RobustkitError(f"model {name!r}: checkpoint {path} resolves outside the "
                                 f"run folder {self.root}") from None
        return path

    def model(self, name: str, seed: int) -> nn.Module:
        """Model ``name`` trained with ``seed``, loaded once on the run's device: from its
        checkpoint, or built by its ``arch`` with its ``weights``
        (:func:`robustkit.models.build`)."""
        if (name, seed) not in self.shared.models:
            entry = self.entry(name)
            if entry.weights:
                ds = data.spec(self.cfg.dataset)
                model = models.build(entry.architecture, ds.in_shape, ds.num_classes,
                                     entry.mean, entry.std, entry.options, output=entry.output,
                                     weights=entry.weights, device=self.device)
            else:  # a factory the config names (arch, or the model it trains) is trusted
                trust = [entry.arch] if entry.checkpoint else [entry.architecture]
                model = models.load(self.checkpoint(name, seed), device=self.device,
                                    trust=trust)
            self.shared.models[(name, seed)] = model
        return self.shared.models[(name, seed)]

    def forget(self, name: str, seed: int) -> None:
        """Drop a loaded model (its checkpoint is about to be written again)."""
        self.shared.models.pop((name, seed), None)
