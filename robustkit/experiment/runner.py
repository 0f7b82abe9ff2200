"""``robustkit run experiments/NAME.toml``: a resumable run that writes ``reports/NAME/``.

The run is a list of units (see :mod:`robustkit.experiment.store`), planned up front and
done in order; each is stored when it finishes and skipped when a rerun finds it, so a run
killed at any moment and started again ends with the same results as one that never
stopped. Every unit seeds itself from the run's seed, so its result does not depend on
what ran before it in the same process.

Output: ``units/`` (records and arrays), ``models/`` (checkpoints), ``config.toml`` (a
copy), ``results.json`` (tidy records), ``manifest.json`` (versions, git commit, device,
seeds, timings) and the report (``index.html``, ``README.md``, ``figures/``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import platform
import time
from urllib.parse import quote, unquote
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from robustkit import data, models
from robustkit.errors import RobustkitError
from robustkit.experiment import units
from robustkit.experiment.config import ExperimentConfig, load_experiment
from robustkit.experiment.store import Store, key, write_atomic, write_json


@dataclass(frozen=True)
class Unit:
    """A planned piece of work: its key and the function that computes it."""

    key: str
    compute: Callable[[], tuple[dict[str, Any], dict[str, Any] | None]]


def run(config: str | Path, out: str | Path | None = None, *, progress: bool = True,
        fresh: bool = False, render: bool = True) -> Path:
    """Run (or resume) the experiment in ``config`` and write its report.

    Args:
        config: path of the TOML config.
        out: the run folder; default ``reports/<name>``.
        progress: show a progress bar over the units.
        fresh: delete an earlier run's state in ``out`` first.
        render: write the report at the end.

    Returns:
        The run folder.

    Example:
        >>> run("experiments/quickstart.toml")     # doctest: +SKIP
        PosixPath('reports/quickstart')
    """
    text = Path(config).read_text() if Path(config).exists() else None
    cfg = load_experiment(config)
    root = Path(out) if out is not None else Path("reports") / cfg.name
    _claim(root, text, fresh)
    store = Store(root)
    plan = Planner(cfg, store, root).plan()
    timings: dict[str, float] = {}
    todo = [u for u in plan if not store.has(u.key)]
    bar = tqdm(todo, disable=not progress, unit="unit", desc=cfg.name)
    for unit in bar:
        bar.set_postfix_str(unquote(unit.key))
        start = time.perf_counter()
        record, arrays = unit.compute()
        seconds = time.perf_counter() - start
        store.put(unit.key, {**record, "seconds": seconds}, arrays)
        timings[unit.key] = seconds
    write_json(root / "results.json", {
        "experiment": cfg.name, "dataset": cfg.dataset, "seeds": cfg.seeds,
        "records": [store.get(u.key) for u in plan]})
    _write_manifest(root, cfg, timings, len(plan) - len(todo))
    if render:
        from robustkit.report import render as render_report

        render_report(root)
    return root


def _claim(root: Path, text: str | None, fresh: bool) -> None:
    """Make ``root`` this config's run folder; refuse to mix two configs' units."""
    import shutil

    copy = root / "config.toml"
    if fresh and root.exists():
        for part in ("units", "models", "figures"):
            shutil.rmtree(root / part, ignore_errors=True)
        copy.unlink(missing_ok=True)
    if copy.exists() and text is not None and _computed(copy.read_text()) != _computed(text):
        raise RobustkitError(
            f"{root} holds a run of another version of this config; rerun with --fresh to "
            "start over, or choose another --out")
    if text is not None and (not copy.exists() or copy.read_text() != text):
        # New, or only the words the report shows changed (description, references).
        write_atomic(copy, text.encode())
    # A run killed while writing leaves its temporary file behind; the unit it belonged to
    # has no record, so it runs again.
    for stale in [*root.glob("units/**/.*.tmp"), *root.glob("models/.*.tmp")]:
        stale.unlink(missing_ok=True)


def _computed(text: str) -> dict:
    """The parts of a config that decide what is computed (not the report's prose)."""
    from robustkit.config import tomllib

    raw = tomllib.loads(text)
    return {k: v for k, v in raw.items() if k not in ("description", "references")}


def _write_manifest(root: Path, cfg: ExperimentConfig, timings: dict[str, float],
                    reused: int) -> None:
    from robustkit.device import pick_device
    from robustkit.models.checkpoint import git_commit, versions

    manifest_path = root / "manifest.json"
    earlier = {}
    if manifest_path.exists():
        import json

        earlier = json.loads(manifest_path.read_text()).get("timings", {})
    write_json(manifest_path, {
        "experiment": cfg.name, "config_sha256": hashlib.sha256(
            (root / "config.toml").read_bytes()).hexdigest() if (root / "config.toml").exists()
        else None,
        "versions": versions(), "git_commit": git_commit(), "python": platform.python_version(),
        "platform": platform.platform(), "device": str(pick_device(cfg.device)),
        "torch_threads": torch.get_num_threads(), "seeds": cfg.seeds,
        "units_run_now": len(timings), "units_reused": reused,
        "timings": {**earlier, **timings},
    })


class Planner:
    """Turns a config into the ordered list of units, with lazily loaded models and data."""

    def __init__(self, cfg: ExperimentConfig, store: Store, root: Path) -> None:
        self.cfg, self.store, self.root = cfg, store, root
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None
        self._models: dict[tuple[str, int], torch.nn.Module] = {}
        self.entries = {m.name: m for m in cfg.models}

    # -- lazily loaded inputs -------------------------------------------------------
    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_test`` class-balanced test images (the same subset for every unit)."""
        if self._test is None:
            x, y = data.load_tensors(self.cfg.dataset, "test")
            n = min(self.cfg.n_test, len(y))
            keep = torch.from_numpy(data.stratified_indices(y.numpy(), n, seed=0))
            self._test = (x[keep], y[keep])
        return self._test

    def checkpoint(self, name: str, seed: int) -> Path:
        entry = self.entries[name]
        if entry.checkpoint:
            return Path(entry.checkpoint)
        return self.root / "models" / f"{quote(name, safe='')}-s{seed}.pt"

    def model(self, name: str, seed: int) -> torch.nn.Module:
        if (name, seed) not in self._models:
            from robustkit.device import pick_device

            self._models[(name, seed)] = models.load(self.checkpoint(name, seed),
                                                    device=pick_device(self.cfg.device))
        return self._models[(name, seed)]

    # -- the plan --------------------------------------------------------------------
    def plan(self) -> list[Unit]:
        """Every unit of the run, in the order they run: models first, then the rest."""
        cfg = self.cfg
        out = [Unit(key("train", m.name, f"s{seed}"), partial(units.train, self, m, seed))
               for seed in cfg.seeds for m in cfg.models]

        def per_model(kind: str, listed: list[str], compute, extras=((),)) -> None:
            """One unit per listed model x seed x extra arguments (a norm, a method)."""
            for name in cfg.model_names(listed):
                for seed in cfg.seeds:
                    for extra in extras:
                        out.append(Unit(key(kind, name, f"s{seed}", *extra),
                                        partial(compute, self, name, seed, *extra)))

        for a in cfg.attacks:
            for name in cfg.model_names(a.models):
                for seed in cfg.seeds:
                    out.extend(Unit(key("attack", a.label, name, f"s{seed}", f"eps{e:g}"),
                                    partial(units.attack, self, a, name, seed, e)) for e in a.eps)
        if cfg.examples:
            per_model("examples", cfg.examples.models, units.examples)
        if cfg.minimal:
            per_model("minimal", cfg.minimal.models, units.minimal,
                      [(n,) for n in cfg.minimal.norms])
        if cfg.transfer:
            out.extend(Unit(key("transfer", source, f"s{seed}"),
                            partial(units.transfer, self, source, seed))
                       for seed in cfg.seeds for source in cfg.transfer.sources)
        if cfg.explain:
            per_model("explain", cfg.explain.models, units.explanation,
                      [(m,) for m in cfg.explain.methods])
            if cfg.explain.sanity:
                per_model("sanity", cfg.explain.models, units.sanity)
        if cfg.validity:
            per_model("validity", cfg.validity.models, units.validity)
        return out


def attack_options(attack: str, options: dict[str, Any], seed: int, eps: float | None
                   ) -> dict[str, Any]:
    """The attack's keyword options: the config's, the radius, and the run's seed when the
    attack takes one."""
    from robustkit.attacks import ATTACKS, BOUNDED

    kw = dict(options)
    if eps is not None and attack in BOUNDED:
        kw["eps"] = eps
    if "seed" in inspect.signature(ATTACKS.get(attack)).parameters:
        kw.setdefault("seed", seed)
    return kw


def as_dict(entry: Any) -> dict[str, Any]:
    return dataclasses.asdict(entry)
