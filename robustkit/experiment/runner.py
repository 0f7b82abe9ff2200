"""``robustkit run experiments/NAME.toml``: a resumable run that writes ``reports/NAME/``.

The whole config is checked when it is loaded, before anything trains. The run is then a
list of units (see :mod:`robustkit.experiment.units`), planned up front and done in order;
each is stored when it finishes and skipped when a rerun finds it whole and computed by
this version, so a run killed at any moment and started again ends with the same results
as one that never stopped. Every unit seeds itself from the run's seed, so its result does
not depend on what ran before it in the same process.

The run holds the folder's lock from start to end, and writes only robustkit's own names
there (see :mod:`robustkit.experiment.folder`): ``units/`` (records and arrays),
``models/`` (checkpoints), ``config.toml`` (a copy), ``results.json`` (tidy records),
``manifest.json`` (versions, git commit, device, seeds, timings) and the report
(``index.html``, ``README.md``, ``figures/``). A folder that holds one of these names that
robustkit did not write is refused, and ``fresh`` deletes only what robustkit wrote.

Under torchrun (``python -m torch.distributed.run --nproc-per-node N -m robustkit run
...``, or :func:`run` inside a process group of several processes) the units are spread
over the ranks:

- Rank 0 checks the folder, takes its lock (and holds it to the end: the other ranks
  never take it), deletes what ``fresh`` deletes and claims the folder, then tells the
  others it may start; it decides which units are still to compute and sends the list.
- The units to compute run in two stages: the models (``train`` units) first, then, once
  every rank has finished its models (every checkpoint is then on disk), the rest. In each
  stage unit ``i`` of the list goes to rank ``i % N``. Each rank computes its units
  :func:`alone <robustkit.core.distributed.alone>` (as one process would, bit for bit:
  every unit seeds itself) and stores each the moment it finishes, through the store's
  atomic writes (temporary names carry the writer's pid); only rank 0 writes the list of
  what robustkit wrote (``units/`` and ``models/`` are listed whole).
- After the last stage rank 0 writes ``results.json``, ``manifest.json`` (with every
  rank's timings) and the report, and lets the lock go. A unit that fails on one rank
  stops every rank at the end of its stage, with the rank, the unit and its message.
- Resuming is per unit, as in one process: started again (with any number of processes),
  the run computes only the units without a whole record. The folder must be one that
  every rank sees (one machine, or a shared file system).
"""

from __future__ import annotations

import contextlib
import platform
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import torch
from tqdm.auto import tqdm

from robustkit.config import tomllib
from robustkit.core import distributed
from robustkit.core import (check_name, git_commit, pick_device, read_json, sha256, versions,
                            write_atomic, write_json)
from robustkit.errors import RobustkitError
from robustkit.experiment.config import ExperimentConfig, load_experiment
from robustkit.experiment.context import Context
from robustkit.experiment.folder import FOLDERS, RunFolder
from robustkit.store import Store
from robustkit.experiment.units import UNITS, Result
from robustkit.report import render as render_report


#: The kinds of unit that make the run's models: computed before every other unit.
MODEL_KINDS = ("train",)


@dataclass(frozen=True)
class Unit:
    """A planned piece of work: its key, the function that computes it and its kind."""

    key: str
    compute: Callable[[], Result]
    kind: str = ""


def run(config: str | Path, out: str | Path | None = None, *, progress: bool = True,
        fresh: bool = False, render: bool = True) -> Path:
    """Run (or resume) the experiment in ``config`` and write its report.

    Args:
        config: path of the TOML config; checked whole before anything trains.
        out: the run folder (used as given); default ``reports/<name>``.
        progress: show a progress bar over the units.
        fresh: delete what robustkit wrote in ``out`` first (nothing else).
        render: write the report at the end.

    Returns:
        The run folder.

    Raises:
        RobustkitError: a mistake in the config; another run holds the folder (the
            message names its pid); the folder holds a name robustkit needs that it did
            not write. Under torchrun: any of these, or a unit's error, on any rank.

    Inside a process group of several processes every rank calls it, with the same
    arguments, and the units are spread over the ranks (the module docstring says how).

    Example:
        >>> run("experiments/quickstart.toml")     # doctest: +SKIP
        PosixPath('reports/quickstart')
    """
    cfg = load_experiment(config)
    text = Path(config).read_text(encoding="utf-8")  # parsed already: it is UTF-8 TOML
    root = (Path(out) if out is not None
            else Path("reports") / check_name(cfg.name, "experiment.name"))
    folder = RunFolder(root)
    with _claimed(folder, text, render, fresh):
        main = distributed.is_main()
        # Only rank 0 writes the list of what robustkit wrote; the files of the others lie
        # in units/ and models/, which rank 0 listed whole.
        store = Store(root, on_write=folder.wrote if main else None)
        plan = make_plan(cfg, Context(cfg, store, root))
        timings = _compute(plan, store, cfg.name, progress and main)

        def finish() -> None:
            folder.wrote("results.json")
            write_json(root / "results.json", {
                "experiment": cfg.name, "dataset": cfg.dataset, "seeds": cfg.seeds,
                "records": [store.get(u.key) for u in plan]})
            _write_manifest(folder, cfg, timings, len(plan) - len(timings))
            if render:
                _render(folder)

        distributed.on_main(finish, "writing the results and the report")
    return root


@contextlib.contextmanager
def _claimed(folder: RunFolder, text: str, render: bool, fresh: bool) -> Iterator[None]:
    """Hold the run folder, claimed for this config, while inside: checked, locked,
    cleaned (``fresh``) and claimed (:func:`_claim`). Under torchrun rank 0 alone does
    this and holds the lock to the end; the other ranks wait for its word (its error is
    raised on every rank)."""
    with contextlib.ExitStack() as held:
        def take() -> None:
            folder.check_layout()
            _check_names(folder, render)  # before the lock, which writes a file there
            held.enter_context(folder.locked())
            if fresh:
                folder.clean()
            _claim(folder, text, render)

        distributed.on_main(take, f"taking the run folder {folder.root}")
        yield


def make_plan(cfg: ExperimentConfig, ctx: Context) -> list[Unit]:
    """Every unit of the run, in the order they run: each registered kind in turn (models
    first), each unit with the context of its own config section."""
    plan = [Unit(p.key, partial(kind.compute, ctx.of(p.section), *p.args), kind.name)
            for kind in UNITS.values() for p in kind.plan(cfg)]
    dup = sorted(k for k, n in Counter(u.key for u in plan).items() if n > 1)
    if dup:  # the config's checks make keys distinct; this guards a new kind of unit
        raise RobustkitError(f"two units of the run share the key {unquote(dup[0])!r}")
    return plan


def _compute(plan: list[Unit], store: Store, desc: str, progress: bool) -> dict[str, float]:
    """Compute every unit that is not stored whole by this version; a damaged unit, or one
    of another version or commit, is computed again with a warning naming it. Under
    torchrun rank 0 decides which (and warns), and the ranks share them out, models first
    (the module docstring says how). Returns every computed unit's seconds (every rank's)."""
    todo = set(distributed.on_main(lambda: _todo(plan, store), "checking the stored units"))
    units = [u for u in plan if u.key in todo]
    world, rank = distributed.world(), distributed.rank()
    stages = [units] if world == 1 else [[u for u in units if u.kind in MODEL_KINDS],
                                         [u for u in units if u.kind not in MODEL_KINDS]]
    timings: dict[str, float] = {}
    for stage in stages:
        timings.update(_compute_share(stage[rank::world], store, desc, progress))
    return timings


def _todo(plan: list[Unit], store: Store) -> list[str]:
    """The keys of the units to compute, warning about each stored one that cannot be used."""
    todo = []
    for unit in plan:
        problem = store.check(unit.key)
        if problem is None:
            continue
        if store.exists(unit.key):
            warnings.warn(f"unit {unquote(unit.key)} cannot be reused ({problem}); "
                          "computing it again", stacklevel=4)
        todo.append(unit.key)
    return todo


def _compute_share(units: list[Unit], store: Store, desc: str, progress: bool
                   ) -> dict[str, float]:
    """Compute and store ``units`` (this rank's share of a stage), each as one process
    would; then meet the other ranks: every rank's timings, or every rank raises when one
    failed. In one process an error is raised as it comes."""
    timings: dict[str, float] = {}
    failure: Exception | None = None
    bar = tqdm(units, disable=not progress, unit="unit", desc=desc)
    for unit in bar:
        bar.set_postfix_str(unquote(unit.key))
        start = time.perf_counter()
        try:
            with distributed.alone():
                record, arrays = unit.compute()
                seconds = time.perf_counter() - start
                store.put(unit.key, {**record, "seconds": seconds}, arrays)
        except Exception as err:
            if not distributed.active():
                raise
            failure = err  # raised after the other ranks hear of it
            break
        timings[unit.key] = seconds
    bar.close()
    what = f"unit {unquote(unit.key)}" if failure is not None else ""
    distributed.settle(failure, what)
    return {k: v for part in distributed.exchange(timings) for k, v in part.items()}


def _check_names(folder: RunFolder, render: bool) -> None:
    """Refuse a folder holding a name the run writes (``units/``, ``README.md`` ...) that
    robustkit did not write there: the user's own files are never overwritten."""
    legacy = [] if folder.ledger() else folder.legacy()  # a folder from before the list
    names = ["units/", "models/", "config.toml", "results.json", "manifest.json"]
    names += ["figures/", "index.html", "README.md"] if render else []
    for name in names:
        p = folder.root / name.rstrip("/")
        if (p.exists() or p.is_symlink()) and not (folder.is_ours(name) or name in legacy):
            raise RobustkitError(
                f"{p} was not written by robustkit, and a run would write there; choose "
                f"another --out (or move it)")


def _claim(folder: RunFolder, text: str, render: bool) -> None:
    """Make the folder this config's run folder: refuse a name robustkit needs that it did
    not write, and a run of another version of the config; copy the config."""
    root = folder.root
    if not folder.ledger():  # a run folder from before the list of written paths
        for rel in folder.legacy():
            folder.wrote(rel)
    _check_names(folder, render)
    for name in FOLDERS[:2]:  # units/, models/
        folder.make_folder(name)
    copy = root / "config.toml"
    if copy.exists() and _computed(copy) != _computed(text):
        raise RobustkitError(
            f"{root} holds a run of another version of this config; rerun with --fresh to "
            "start over, or choose another --out")
    if not copy.exists() or copy.read_text(encoding="utf-8", errors="replace") != text:
        # New, or only the words the report shows changed (description, references).
        folder.wrote("config.toml")
        write_atomic(copy, text.encode())
    # A run killed while writing leaves its temporary files behind; the unit they belonged
    # to has no record, so it runs again.
    folder.remove_stale()


def _computed(source: str | Path) -> dict[str, Any]:
    """The parts of a config that decide what is computed (not the report's prose)."""
    try:
        text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise RobustkitError(f"the run's copy of its config {source} cannot be read ({err}); "
                             "rerun with --fresh to start over") from None
    return {k: v for k, v in raw.items() if k not in ("description", "references")}


def _write_manifest(folder: RunFolder, cfg: ExperimentConfig, timings: dict[str, float],
                    reused: int) -> None:
    """``manifest.json``: what produced the run, and how long each unit took."""
    path = folder.root / "manifest.json"
    earlier: dict[str, Any] = {}
    if path.exists():
        try:
            earlier = dict(read_json(path, what="manifest").get("timings") or {})
        except (RobustkitError, AttributeError, TypeError, ValueError):
            warnings.warn(f"{path} is damaged; its earlier timings are dropped", stacklevel=3)
    copy = folder.root / "config.toml"
    folder.wrote("manifest.json")
    write_json(path, {
        "experiment": cfg.name,
        "config_sha256": sha256(copy.read_bytes()) if copy.exists() else None,
        "versions": versions(), "git_commit": git_commit(), "python": platform.python_version(),
        "platform": platform.platform(), "device": str(pick_device(cfg.device)),
        "torch_threads": torch.get_num_threads(), "processes": distributed.world(),
        "seeds": cfg.seeds,
        "units_run_now": len(timings), "units_reused": reused,
        "timings": {**earlier, **timings},
    })


def _render(folder: RunFolder) -> None:
    """Write the report; its files are listed as robustkit's before it writes them."""
    folder.wrote("index.html")
    folder.wrote("README.md")
    folder.make_folder("figures")
    render_report(folder.root)
