"""Experiment configs, the unit store and the resumable runner."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustkit.errors import RobustkitError
from robustkit.experiment import Store, load_experiment, run
from robustkit.store import key

TINY = """
name = "tiny"
seeds = [0, 1]
n_test = 60

[[models]]
name = "logistic"
train = { epochs = 1 }

[[models]]
name = "small"
arch = "mlp"
options = { hidden = [16] }
train = { epochs = 1, augment = "none" }
train_size = 500

[[attacks]]
attack = "fgsm"
eps = [0.1, 0.25]

[[attacks]]
attack = "pgd"
eps = [0.1, 0.2]
options = { steps = 3 }

[transfer]
sources = ["logistic", "small"]
targets = ["logistic", "small"]
eps = [0.1]
options = { steps = 3 }

[examples]
n = 3

[validity]
steps = 3
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, fragment", [
    (("n_test = 60", "n_test = 60\nbogus = 1"), "experiment.bogus: unknown key"),
    (('eps = [0.1, 0.25]', 'eps = [0.1, "x"]'), "experiment.attacks[0].eps[1]: expected a number"),
    (('sources = ["logistic", "small"]', 'sources = ["logistic", "nope"]'),
     "experiment.transfer.sources[1]: unknown model 'nope'"),
    (("train = { epochs = 1 }", "train = { epoch = 1 }"), "experiment.models[0].train.epoch"),
    (('name = "logistic"', 'name = "small"'), "names must be unique"),
    (('arch = "mlp"', 'arch = "resnet"'), "experiment.models[1].arch"),
    (("seeds = [0, 1]", "seeds = [0, 0]"), "experiment.seeds"),
])
def test_config_errors_name_the_field(tmp_path, edit, fragment):
    path = write(tmp_path, TINY.replace(*edit, 1))
    with pytest.raises(RobustkitError) as err:
        load_experiment(path)
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_store_writes_atomically_and_encodes_names(tmp_path):
    import numpy as np

    store = Store(tmp_path)
    k = key("train", "<script>a/b</script>", "s0")
    assert "/" not in k.split("/")[1]  # a slash inside a name cannot make a folder
    assert not store.has(k)
    store.put(k, {"value": float("nan")}, {"x": np.arange(3)})
    assert store.has(k) and store.get(k)["value"] is None  # NaN is stored as null (valid JSON)
    assert store.arrays(k)["x"].tolist() == [0, 1, 2]
    assert list(store.keys()) == [k]
    assert not list(tmp_path.rglob(".*.tmp"))


def _comparable(path: Path) -> list[dict]:
    """The records without what legitimately differs between runs (timings, paths, and the
    commit, which moves when a commit lands while the suite runs)."""
    drop = {"seconds", "train_seconds", "checkpoint", "computed_by"}
    records = json.loads(path.read_text())["records"]
    for r in records:
        for k in drop:
            r.pop(k, None)
        for epoch in r.get("history") or []:
            epoch.pop("seconds", None)
    return records


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny config run once, start to end, in this process (no report)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    cfg = write(root, TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTKIT_CACHE", str(tmp_path_factory.getbasetemp() / "robustkit-cache0"))
        run(cfg, root / "run", progress=False, render=False)
    return root / "run"


def test_a_run_writes_results_manifest_and_config(uninterrupted):
    results = json.loads((uninterrupted / "results.json").read_text())
    kinds = [r["kind"] for r in results["records"]]
    # 2 models x 2 seeds; (2 + 2 eps) x 2 models x 2 seeds; 2 x 2 examples; 2 sources x 2
    # seeds; 2 x 2 validity.
    assert kinds.count("model") == 4 and kinds.count("attack") == 16
    assert kinds.count("examples") == 4 and kinds.count("transfer") == 4
    assert kinds.count("validity") == 4
    from robustkit.core import sha256, versions

    for r in results["records"]:
        if r["kind"] == "attack":
            assert 0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1
        # Each record names the version and commit that computed it, and the checksum of
        # its arrays (None when it has none).
        assert r["computed_by"] == {k: versions()[k] for k in ("robustkit", "git_commit")}
        npz = uninterrupted / "units" / f"{r['key']}.npz"
        assert r["arrays_sha256"] == (sha256(npz.read_bytes()) if npz.exists() else None)
        assert (r["arrays_sha256"] is not None) == (r["kind"] == "examples")
    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1] and manifest["versions"]["torch"]
    assert (uninterrupted / "config.toml").read_text() == TINY


def forbid_computing(monkeypatch):
    """Make every kind of unit fail if it is computed."""
    from robustkit.experiment import units

    def fail(*args, **kwargs):
        raise AssertionError("a finished unit was computed again")

    for name, kind in list(units.UNITS.items()):
        monkeypatch.setitem(units.UNITS, name, dataclasses.replace(kind, compute=fail))


def test_a_rerun_skips_finished_units(uninterrupted, monkeypatch):
    forbid_computing(monkeypatch)
    before = _comparable(uninterrupted / "results.json")
    run(uninterrupted / "config.toml", uninterrupted, progress=False, render=False)
    assert _comparable(uninterrupted / "results.json") == before


def test_new_prose_reuses_every_unit(uninterrupted, tmp_path, monkeypatch):
    forbid_computing(monkeypatch)
    reworded = write(tmp_path, 'description = "new words"\n' + TINY)
    run(reworded, uninterrupted, progress=False, render=False)
    assert "new words" in (uninterrupted / "config.toml").read_text()
    (uninterrupted / "config.toml").write_text(TINY)  # as the other tests expect


def test_another_config_in_the_same_folder_is_refused(uninterrupted, tmp_path):
    other = write(tmp_path, TINY.replace("n_test = 60", "n_test = 50"))
    with pytest.raises(RobustkitError, match="another version of this config"):
        run(other, uninterrupted, progress=False, render=False)


def unit_records(out: Path) -> int:
    """How many unit records the run folder holds (each is written when its unit ends)."""
    units = out / "units"
    return sum(1 for p in units.rglob("*.json") if not p.name.startswith(".")) \
        if units.is_dir() else 0


def kill_when(proc: subprocess.Popen, ready, what: str, safety_net: float = 300.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled on the file system). The run
    must still be going then; the time limit only keeps a broken run from hanging the
    suite, it never decides when to kill."""
    deadline = time.monotonic() + safety_net
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {safety_net:.0f} s")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_after_the_kth_unit_then_resume_gives_the_same_results(uninterrupted, tmp_path,
                                                                      subprocess_env):
    """Kill the run with SIGKILL just after its 2nd, 9th and 21st unit records appear (in
    training, in the attacks, in transfer), restart it each time, and compare the end
    with a run that was never interrupted."""
    cfg = write(tmp_path, TINY)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "robustkit", "run", str(cfg), "--out", str(out), "--quiet"]
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    for k in (2, 9, 21):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        kill_when(proc, lambda: unit_records(out) >= k, f"the {k}th unit record")
        assert unit_records(out) < 32, "the run finished before it was killed"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "report:" in done.stdout
    assert _comparable(out / "results.json") == _comparable(uninterrupted / "results.json")
    assert not list(out.rglob(".*.tmp"))  # no half-written file survives
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units_reused"] >= 21  # the killed runs' units were kept


RESUMABLE = """
name = "resumable"
seeds = [0]
n_test = 40

[[models]]
name = "small"
arch = "mlp"
options = { hidden = [16], dropout = 0.2 }
train = { epochs = 3, augment = "shift" }
train_size = 300

[[attacks]]
attack = "fgsm"
eps = [0.1]
"""


def test_sigkill_during_training_then_resume_gives_the_same_results(tmp_path, subprocess_env):
    """Kill the run with SIGKILL as soon as its model's first training snapshot
    (``models/small-s0.pt.resume``) appears, rerun it, and compare with a whole run."""
    # Long enough (about a second after the first snapshot) for the kill to land in it.
    text = RESUMABLE.replace("epochs = 3", "epochs = 60").replace("300", "1000")
    cfg = write(tmp_path, text)
    run(cfg, tmp_path / "whole", progress=False, render=False)
    out = tmp_path / "cut"
    argv = [sys.executable, "-m", "robustkit", "run", str(cfg), "--out", str(out), "--quiet"]
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    snapshot = out / "models" / "small-s0.pt.resume"
    kill_when(proc, snapshot.exists, "training snapshot")
    assert snapshot.exists() and not (out / "models" / "small-s0.pt").exists(), \
        "the kill did not land during training"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not snapshot.exists()
    assert _comparable(out / "results.json") == _comparable(tmp_path / "whole" / "results.json")


def test_a_run_killed_during_training_goes_on_from_the_last_epoch(tmp_path, monkeypatch):
    """Training is the longest unit: a run interrupted inside it resumes from the training
    state of the last finished epoch (robustkit.snapshot), to the same results."""
    from robustkit import snapshot

    text = RESUMABLE
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    cfg = write(tmp_path, text)
    run(cfg, tmp_path / "whole", progress=False, render=False)

    real, epochs = snapshot.save, []

    def save_then_die(path, state):
        real(path, state)
        epochs.append(state["epoch"])
        if state["epoch"] == 2:
            raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(snapshot, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, tmp_path / "cut", progress=False, render=False)
    assert epochs == [1, 2] and list((tmp_path / "cut" / "models").glob("*.resume"))
    trained = []
    monkeypatch.setattr(snapshot, "save", lambda path, state: (trained.append(state["epoch"]),
                                                               real(path, state)))
    run(cfg, tmp_path / "cut", progress=False, render=False)
    assert trained == [3]  # only the epoch the interruption cost
    assert not list((tmp_path / "cut" / "models").glob("*.resume"))
    assert _comparable(tmp_path / "cut" / "results.json") == \
        _comparable(tmp_path / "whole" / "results.json")


@pytest.mark.parametrize("config", sorted((Path(__file__).parent.parent / "experiments")
                                          .glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(config):
    # Checked at load (names, options, eps grids, sections) without training anything.
    cfg = load_experiment(config)
    assert cfg.models
