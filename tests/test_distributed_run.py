"""``robustkit run`` under torch.distributed, for real: 2 gloo processes on this machine
share an experiment's units and rank 0 writes the results and the report.

Each unit is computed by one rank as one process computes it (every unit seeds itself),
so the records equal a 1-process run's, bit for bit, except what legitimately differs:
timings (``seconds``, ``train_seconds``, each epoch's ``seconds``) and the checkpoint path
(the run folders differ). ``computed_by`` is the same version and commit on both sides.
A run whose processes are SIGKILLed mid-run and started again computes only the units
without a record: the records already there are kept untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from robustkit.experiment import run
from robustkit.experiment.folder import lock

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2"]

TINY = """
name = "tiny-ddp"
seeds = [0]
n_test = 40

[[models]]
name = "logistic"
train = { epochs = 1 }

[[models]]
name = "small"
arch = "mlp"
options = { hidden = [16] }
train = { epochs = 2, augment = "shift" }
train_size = 300

[[attacks]]
attack = "fgsm"
eps = [0.1, 0.25]

[[attacks]]
attack = "pgd"
eps = [0.1]
options = { steps = 3 }

[transfer]
sources = ["logistic", "small"]
targets = ["logistic", "small"]
eps = [0.1]
options = { steps = 3 }

[explain]
methods = ["saliency"]
n = 4
eps = 0.1
"""
#: 2 models; 3 attacks x 2 models; 2 transfer sources; saliency and its sanity check x 2.
UNITS = 2 + 6 + 2 + 2 + 2


def _comparable(path: Path) -> list[dict]:
    """The records without what legitimately differs between runs (timings and paths)."""
    records = json.loads(path.read_text())["records"]
    for r in records:
        for k in ("seconds", "train_seconds", "checkpoint"):
            r.pop(k, None)
        for epoch in r.get("history") or []:
            epoch.pop("seconds", None)
    return records


def _records(out: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each unit record in the run folder: its inode, modification time and bytes (a
    record written again is a new file, by the store's atomic rename)."""
    units = out / "units"
    found = {}
    for p in (units.rglob("*.json") if units.is_dir() else []):
        if not p.name.startswith("."):
            st = p.stat()
            found[p.relative_to(units).as_posix()] = (st.st_ino, st.st_mtime_ns, p.read_bytes())
    return found


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny config, and its run in one process (this one, one thread), without report."""
    root = tmp_path_factory.mktemp("ddp-run")
    cfg = root / "tiny.toml"
    cfg.write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTKIT_CACHE", str(tmp_path_factory.getbasetemp() / "robustkit-cache0"))
        run(cfg, root / "one", progress=False, render=False)
    assert len(_comparable(root / "one" / "results.json")) == UNITS
    return cfg, root / "one"


def _argv(cfg: Path, out: Path) -> list[str]:
    return [*TORCHRUN, "-m", "robustkit", "run", str(cfg), "--out", str(out), "--quiet"]


def _env(subprocess_env: dict[str, str]) -> dict[str, str]:
    return {**subprocess_env, "OMP_NUM_THREADS": "1"}


def test_two_processes_give_the_records_of_one(setup, tmp_path, subprocess_env):
    cfg, one = setup
    out = tmp_path / "two"
    done = subprocess.run(_argv(cfg, out), env=_env(subprocess_env), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stdout.count("report:") == 1 and "on 2 processes" in done.stdout  # rank 0
    assert _comparable(out / "results.json") == _comparable(one / "results.json")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert manifest["units_run_now"] == UNITS and len(manifest["timings"]) == UNITS
    assert (out / "index.html").exists()
    # Only rank 0 wrote the list of robustkit's files; the units lie in listed folders.
    ledger = (out / ".robustkit-files").read_text().split()
    assert "units/" in ledger and "models/" in ledger and not any(
        line.startswith("units/") and line != "units/" for line in ledger)
    assert not list(out.rglob(".*.tmp"))


def _workers(agent: int) -> list[int]:
    """The processes torchrun started (its children: one per rank, each in a session of
    its own, so killing the agent's process group would leave them running)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # it ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == agent:
                children.append(int(entry.name))
    return children


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _kill_when(proc: subprocess.Popen, ready, what: str, ranks: tuple[int, ...]) -> None:
    """SIGKILL the given ranks of a torchrun launch (all: the agent too) as soon as
    ``ready()`` holds, polled on the file system; then wait for the launch to end. The run
    must still be going then; the time limit only keeps a broken run from hanging."""
    deadline = time.monotonic() + 300
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after 300 s")
        time.sleep(0.01)
    workers = {_rank_of(pid): pid for pid in _workers(proc.pid)}
    assert set(ranks) <= set(workers), f"ranks {sorted(k for k in workers if k is not None)}"
    for r in ranks:
        os.kill(workers[r], signal.SIGKILL)
    if len(ranks) == 2:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=300)  # with one rank killed, torchrun stops the other
    assert proc.returncode != 0
    # No rank lives on: a SIGKILLed process may take a moment to finish exiting, so wait
    # for that (the limit only keeps a stuck process from hanging the test).
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers.values())


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (not ended, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_mid_run_then_resumed_recomputes_only_units_without_a_record(
        setup, tmp_path, subprocess_env):
    """Kill rank 1 alone just after the first unit record appears (training: torchrun then
    stops rank 0), start again, SIGKILL every process 3 records later, start again: the
    end equals the 1-process run, and every record written before a restart is kept."""
    cfg, one = setup
    out = tmp_path / "cut"
    env = _env(subprocess_env)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(_argv(cfg, out), env=env, **quiet)
    _kill_when(proc, lambda: len(_records(out)) >= 1, "the first unit record", (1,))
    first = _records(out)
    assert 1 <= len(first) < UNITS, "the kill did not land mid-run"

    proc = subprocess.Popen(_argv(cfg, out), env=env, **quiet)
    _kill_when(proc, lambda: len(_records(out)) >= len(first) + 3,
               f"{len(first) + 3} unit records", (0, 1))
    second = _records(out)
    assert len(second) < UNITS, "the run finished before it was killed"
    assert {k: second[k] for k in first} == first  # kept, not written again
    assert not (out / "results.json").exists()

    done = subprocess.run(_argv(cfg, out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    final = _records(out)
    assert {k: final[k] for k in second} == second  # only the missing units were computed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units_reused"] == len(second)
    assert manifest["units_run_now"] == UNITS - len(second)
    assert _comparable(out / "results.json") == _comparable(one / "results.json")
    assert not list(out.rglob(".*.tmp"))  # the killed ranks' temporary files were removed


def test_a_folder_in_use_stops_every_rank(setup, tmp_path, subprocess_env):
    """Rank 0 alone takes the folder's lock; when another run holds it, every rank stops
    with rank 0's message and nothing is computed."""
    cfg, _ = setup
    out = tmp_path / "busy"
    with lock(out):
        done = subprocess.run(_argv(cfg, out), env=_env(subprocess_env), capture_output=True,
                              text=True, timeout=600)
    assert done.returncode != 0
    assert "is in use by another run" in done.stderr
    assert f"taking the run folder {out} failed on rank 0" in done.stderr  # rank 1's line
    assert not (out / "units").exists()


MEETINGS = textwrap.dedent('''
    """The meeting points of the ranks: each rank writes what it saw."""
    import json, sys
    import torch.distributed as dist
    from robustkit.core import distributed
    from robustkit.errors import RobustkitError

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seen = {"exchange": distributed.exchange(rank * 10),
            "broadcast": distributed.broadcast(f"from {rank}"),
            "on_main": distributed.on_main(lambda: rank, "asking")}
    with distributed.alone():
        seen["alone"] = [distributed.active(), distributed.is_main(), distributed.world(),
                         distributed.exchange(rank)]
    try:
        distributed.settle(ValueError("boom") if rank == 1 else None, "unit u")
    except (ValueError, RobustkitError) as err:
        seen["settle"] = [type(err).__name__, str(err)]
    def fail():
        raise RobustkitError("disk full")
    try:
        distributed.on_main(fail, "writing x")
    except RobustkitError as err:
        seen["on_main_error"] = str(err)
    with open(f"{sys.argv[1]}/meet{rank}.json", "w") as f:
        json.dump(seen, f)
    dist.destroy_process_group()
''')


def test_the_ranks_meeting_points(tmp_path, subprocess_env):
    script = tmp_path / "meet.py"
    script.write_text(MEETINGS)
    done = subprocess.run([*TORCHRUN, str(script), str(tmp_path)], env=_env(subprocess_env),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"meet{r}.json").read_text()) for r in (0, 1))
    assert r0["exchange"] == r1["exchange"] == [0, 10]
    assert r0["broadcast"] == r1["broadcast"] == "from 0"
    assert r0["on_main"] == r1["on_main"] == 0
    assert r0["alone"] == [False, True, 1, [0]] and r1["alone"] == [False, True, 1, [1]]
    # The failed rank raises its own error; the other names it, its work and its message.
    assert r1["settle"] == ["ValueError", "boom"]
    assert r0["settle"] == ["RobustkitError", "rank 1 failed: unit u: ValueError: boom"]
    assert r0["on_main_error"] == "disk full"
    assert r1["on_main_error"] == "writing x failed on rank 0: disk full"
