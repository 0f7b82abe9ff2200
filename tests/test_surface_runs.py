"""The run-folder surface: every bad situation of a run folder is answered exactly.

- REFUSED: a run that must not start (an unsafe name, a folder held by another run, a
  name robustkit needs taken by the user's file or folder ...) raises RobustkitError with
  a phrase, and leaves every file under the test's folder exactly as it was (contents,
  links and their targets), also with ``fresh=True``;
- RECOVERED: a run folder whose stored units are damaged or from another version: the
  run warns naming the unit, computes exactly those units again, and ends with the
  results of an undamaged run;
- ``fresh`` deletes only what robustkit wrote; the lock is released on error; a
  ``module:function`` attack in a config receives each eps.

Each run is tiny (softmax regression trained one epoch on 200 digits, 20 test images).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from robustkit.errors import RobustkitError
from robustkit.experiment import RunFolder, Store, lock, run
from robustkit.store import key

SMALL = """
name = "small"
seeds = [0]
n_test = 20

[[models]]
name = "lin"
arch = "logistic"
train = { epochs = 1 }
train_size = 200

[[attacks]]
attack = "fgsm"
eps = [0.1]

[examples]
attack = "fgsm"
eps = 0.1
n = 3
"""

TRAIN, ATTACK, EXAMPLES = "train/lin/s0", "attack/fgsm/lin/s0/eps0.1", "examples/lin/s0"


def snapshot(top: Path) -> dict[str, tuple]:
    """Every path under ``top``: a file's bytes, a link's target, or a folder (links are
    never followed)."""
    found: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            p = Path(folder) / name
            rel = p.relative_to(top).as_posix()
            if p.is_symlink():
                found[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                found[rel] = ("folder",)
            else:
                found[rel] = ("file", p.read_bytes())
    return found


def comparable(root: Path) -> list[dict]:
    """The records without what differs between runs (timings, paths, the commit)."""
    records = json.loads((root / "results.json").read_text())["records"]
    for r in records:
        for k in ("seconds", "train_seconds", "checkpoint", "computed_by"):
            r.pop(k, None)
        for epoch in r.get("history") or []:
            epoch.pop("seconds", None)
    return records


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


@pytest.fixture(scope="module")
def base(tmp_path_factory, session_cache):
    """SMALL, run once to the end (no report)."""
    top = tmp_path_factory.mktemp("base")
    (top / "exp.toml").write_text(SMALL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTKIT_CACHE", str(session_cache))
        run(top / "exp.toml", top / "run", progress=False, render=False)
    return top / "run"


def copy_of(base: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the base run folder, and its config."""
    out = tmp_path / "run"
    shutil.copytree(base, out, symlinks=True)
    (tmp_path / "exp.toml").write_text(SMALL)
    return tmp_path / "exp.toml", out


# -- refused ---------------------------------------------------------------------------
def project_folder(folder: Path) -> None:
    """A user's project: a README, a models/ and a figures/ folder of their own."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("# my project\n")
    (folder / "models").mkdir()
    (folder / "models" / "mine.pt").write_bytes(b"my weights")
    (folder / "figures").mkdir()
    (folder / "figures" / "plot.png").write_bytes(b"my plot")


def named(name: str, fresh: bool):
    """Reproduction 1: an experiment called ``name`` run (default out: reports/NAME) from
    a project folder."""
    def arrange(tmp_path, base, monkeypatch, stack):
        sub = tmp_path / "sub"
        project_folder(sub)
        (sub / "reports").mkdir()
        monkeypatch.chdir(sub)
        (tmp_path / "exp.toml").write_text(SMALL.replace('name = "small"', f'name = "{name}"'))
        return (tmp_path / "exp.toml", None), {"fresh": fresh}
    return arrange


def model_named_dotdot(tmp_path, base, monkeypatch, stack):
    """Reproduction 4: a model named ``..`` with [examples] and [validity]."""
    text = SMALL.replace('name = "lin"', 'name = ".."') + "\n[validity]\nsteps = 2\nn = 10\n"
    (tmp_path / "exp.toml").write_text(text)
    return (tmp_path / "exp.toml", tmp_path / "run"), {}


def into_project(fresh: bool):
    def arrange(tmp_path, base, monkeypatch, stack):
        project_folder(tmp_path / "project")
        (tmp_path / "exp.toml").write_text(SMALL)
        return (tmp_path / "exp.toml", tmp_path / "project"), {"fresh": fresh}
    return arrange


def held_here(fresh: bool):
    """The folder's lock is held by this process, through the same helper, until the case
    ends (``stack`` closes)."""
    def arrange(tmp_path, base, monkeypatch, stack):
        cfg, out = copy_of(base, tmp_path)
        stack.enter_context(lock(out))
        return (cfg, out), {"fresh": fresh}
    return arrange


def layout(make):
    """A copy of the base run whose folder gets ``make(out, tmp_path)`` first."""
    def arrange(tmp_path, base, monkeypatch, stack):
        cfg, out = copy_of(base, tmp_path)
        make(out, tmp_path)
        return (cfg, out), {"fresh": True}
    return arrange


def _replace_with_file(name):
    def make(out, tmp_path):
        shutil.rmtree(out / name)
        (out / name).write_text("a file")
    return make


def _replace_with_link(name):
    def make(out, tmp_path):
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "keep.txt").write_text("keep")
        shutil.rmtree(out / name)
        (out / name).symlink_to(tmp_path / "elsewhere")
    return make


def _results_folder(out, tmp_path):
    (out / "results.json").unlink()
    (out / "results.json").mkdir()


def _lock_link(out, tmp_path):
    (tmp_path / "target.txt").write_text("not a lock")
    (out / ".robustkit.lock").unlink()
    (out / ".robustkit.lock").symlink_to(tmp_path / "target.txt")


def run_folder_is_a_file(tmp_path, base, monkeypatch, stack):
    (tmp_path / "exp.toml").write_text(SMALL)
    (tmp_path / "run").write_text("a file")
    return (tmp_path / "exp.toml", tmp_path / "run"), {"fresh": True}


def run_folder_under_a_file(tmp_path, base, monkeypatch, stack):
    (tmp_path / "exp.toml").write_text(SMALL)
    (tmp_path / "file.txt").write_text("a file")
    return (tmp_path / "exp.toml", tmp_path / "file.txt" / "run"), {}


def another_config(tmp_path, base, monkeypatch, stack):
    cfg, out = copy_of(base, tmp_path)
    cfg.write_text(SMALL.replace("n_test = 20", "n_test = 30"))
    return (cfg, out), {}


#: (id, arrange(tmp_path, base, monkeypatch, stack) -> ((config, out), run keywords),
#: phrase of the error).
REFUSED = [
    ("experiment named .. (repro 1)", named("..", False),
     "experiment.name: '..' is not a safe folder name"),
    ("experiment named .. with fresh (repro 1)", named("..", True),
     "experiment.name: '..' is not a safe folder name"),
    ("experiment named . with fresh", named(".", True),
     "experiment.name: '.' is not a safe folder name"),
    ("model named .. with examples and validity (repro 4)", model_named_dotdot,
     "experiment.models[0].name: '..' is not a safe folder name"),
    ("out is the user's project", into_project(False), "was not written by robustkit"),
    ("out is the user's project, fresh", into_project(True), "was not written by robustkit"),
    ("lock held by this process", held_here(False),
     f"is in use by another run (pid {os.getpid()})"),
    ("lock held by this process, fresh", held_here(True),
     f"is in use by another run (pid {os.getpid()})"),
    ("units/ is a file", layout(_replace_with_file("units")), "units is a file, not a folder"),
    ("models/ is a file", layout(_replace_with_file("models")), "models is a file, not a folder"),
    ("units/ is a link out of the folder", layout(_replace_with_link("units")),
     "units is a link"),
    ("results.json is a folder", layout(_results_folder), "results.json is a folder"),
    ("the lock file is a link", layout(_lock_link), "cannot lock run folder"),
    ("the run folder is a file", run_folder_is_a_file, "is a file, not a folder"),
    ("the run folder lies under a file", run_folder_under_a_file,
     "file.txt is a file, not a folder"),
    ("another config in the folder", another_config, "another version of this config"),
]


@pytest.mark.parametrize("arrange, phrase", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_bad_run_folder_is_refused_and_left_untouched(tmp_path, base, monkeypatch, arrange,
                                                        phrase):
    with contextlib.ExitStack() as stack:
        (config, out), kw = arrange(tmp_path, base, monkeypatch, stack)
        before = snapshot(tmp_path)
        with pytest.raises(RobustkitError) as info:
            run(config, out, progress=False, render=False, **kw)
    assert phrase in str(info.value), str(info.value)
    assert snapshot(tmp_path) == before


def test_a_lock_held_by_another_process_names_its_pid(tmp_path, base, subprocess_env):
    cfg, out = copy_of(base, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom robustkit.experiment import lock\n"
         "with lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n",
         str(out)],
        env=subprocess_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # the child holds the lock now
        before = snapshot(tmp_path)
        for fresh in (False, True):
            with pytest.raises(RobustkitError, match=rf"in use by another run \(pid "
                                                     rf"{holder.pid}\)"):
                run(cfg, out, progress=False, render=False, fresh=fresh)
        assert snapshot(tmp_path) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    run(cfg, out, progress=False, render=False)  # released when its holder ended


# -- recovered -------------------------------------------------------------------------
def _edit_record(unit, change):
    def damage(out):
        path = out / "units" / f"{unit}.json"
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))
    return damage


def _truncate(*files):
    def damage(out):
        for f in files:
            p = out / "units" / f
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return damage


def _write(unit_file, data: bytes):
    return lambda out: (out / "units" / unit_file).write_bytes(data)


def _flip_a_byte(out):
    p = out / "units" / f"{EXAMPLES}.npz"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _old_checkpoint(out):
    """The model's checkpoint says another robustkit trained it; its record is gone."""
    path = out / "models" / "lin-s0.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["metadata"]["robustkit"] = "0.0.0"
    torch.save(payload, path)
    (out / "units" / f"{TRAIN}.json").unlink()


def _damaged_checkpoint(out):
    path = out / "models" / "lin-s0.pt"
    path.write_bytes(path.read_bytes()[:100])
    (out / "units" / f"{TRAIN}.json").unlink()


#: (id, damage(out), the warning's phrase (None: no warning), units computed again).
RECOVERED = [
    ("record and arrays truncated (repro 5)", _truncate(f"{EXAMPLES}.json", f"{EXAMPLES}.npz"),
     "unit examples/lin/s0 cannot be reused (unit record", 1),
    ("record is garbage", _write(f"{ATTACK}.json", b"\x00garbage{"),
     "unit attack/fgsm/lin/s0/eps0.1 cannot be reused (unit record", 1),
    ("record is a list", _write(f"{ATTACK}.json", b"[1, 2]"), "is not the record of", 1),
    ("record of another unit", lambda out: shutil.copy(out / "units" / f"{TRAIN}.json",
                                                      out / "units" / f"{ATTACK}.json"),
     "is not the record of 'attack/fgsm/lin/s0/eps0.1'", 1),
    ("arrays missing", lambda out: (out / "units" / f"{EXAMPLES}.npz").unlink(),
     "unit examples/lin/s0 cannot be reused (unit arrays", 1),
    ("arrays truncated", _truncate(f"{EXAMPLES}.npz"),
     "do not match the checksum in its record", 1),
    ("arrays changed", _flip_a_byte, "do not match the checksum in its record", 1),
    ("record from another version",
     _edit_record(ATTACK, lambda r: r["computed_by"].update(robustkit="0.0.0")),
     "it was computed by robustkit 0.0.0", 1),
    ("record from another commit",
     _edit_record(EXAMPLES, lambda r: r["computed_by"].update(git_commit="deadbeef" * 5)),
     "at commit deadbeefdead", 1),
    ("record from before provenance", _edit_record(TRAIN, lambda r: r.pop("computed_by")),
     "it was computed by an unknown robustkit version", 1),
    ("checkpoint from another version", _old_checkpoint, "training it again", 1),
    ("checkpoint damaged", _damaged_checkpoint, "training it again", 1),
    ("record missing", lambda out: (out / "units" / f"{ATTACK}.json").unlink(), None, 1),
]


@pytest.mark.parametrize("damage, phrase, again", [c[1:] for c in RECOVERED],
                         ids=[c[0] for c in RECOVERED])
def test_a_damaged_unit_is_computed_again_with_a_warning(tmp_path, base, damage, phrase, again):
    cfg, out = copy_of(base, tmp_path)
    damage(out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(cfg, out, progress=False, render=False)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if phrase is None:
        assert not [s for s in said if "cannot be reused" in s or "again" in s], said
    else:
        assert any(phrase in s for s in said), said
    assert manifest(out)["units_run_now"] == again
    assert comparable(out) == comparable(base)
    store = Store(out)
    assert all(store.check(k) is None for k in (TRAIN, ATTACK, EXAMPLES))


def test_truncated_unit_is_recomputed_and_the_report_renders(tmp_path, base):
    """Reproduction 5: a unit's record and .npz truncated; run recomputes it (with a
    warning naming it) and the report renders."""
    from robustkit.report import render

    cfg, out = copy_of(base, tmp_path)
    _truncate(f"{EXAMPLES}.json", f"{EXAMPLES}.npz")(out)
    with pytest.warns(UserWarning, match=re.escape(f"unit {EXAMPLES} cannot be reused")):
        run(cfg, out, progress=False, render=False)
    page = render(out)
    assert page == out / "index.html" and page.stat().st_size > 0
    assert Store(out).arrays(EXAMPLES, verify=True)["x"].shape == (3, 1, 28, 28)


# -- fresh, the lock on error, module:function --------------------------------------------
def test_fresh_deletes_only_what_robustkit_wrote(tmp_path, base):
    cfg, out = copy_of(base, tmp_path)
    (tmp_path / "outside.txt").write_text("the user's")
    (out / "notes.txt").write_text("my notes")
    (out / "link").symlink_to(tmp_path / "outside.txt")
    (out / "more").mkdir()
    (out / "more" / "data.csv").write_text("1,2")
    run(cfg, out, progress=False, render=False, fresh=True)
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "link").is_symlink() and (out / "link").read_text() == "the user's"
    assert (out / "more" / "data.csv").read_text() == "1,2"
    assert manifest(out)["units_reused"] == 0 and manifest(out)["units_run_now"] == 3
    assert comparable(out) == comparable(base)


def test_fresh_in_a_folder_from_before_the_list_of_written_files(tmp_path, base):
    """A run folder written before ``.robustkit-files`` existed is taken as robustkit's."""
    cfg, out = copy_of(base, tmp_path)
    (out / ".robustkit-files").unlink()
    (out / "notes.txt").write_text("my notes")
    run(cfg, out, progress=False, render=False, fresh=True)
    assert manifest(out)["units_reused"] == 0 and (out / "notes.txt").exists()
    assert RunFolder(out).is_ours("units/") and RunFolder(out).is_ours("config.toml")


def test_the_lock_is_released_when_a_run_fails(tmp_path, base, monkeypatch):
    import dataclasses

    from robustkit.experiment import units

    def broken(*args, **kwargs):
        raise RobustkitError("a unit failed")

    cfg, out = copy_of(base, tmp_path)
    (out / "units" / f"{ATTACK}.json").unlink()
    monkeypatch.setitem(units.UNITS, "attack",
                        dataclasses.replace(units.UNITS["attack"], compute=broken))
    with pytest.raises(RobustkitError, match="a unit failed"):
        run(cfg, out, progress=False, render=False)
    with lock(out):  # taken at once: the failed run let it go
        pass


def test_a_module_function_attack_receives_each_eps(tmp_path, monkeypatch):
    (tmp_path / "rk_seen_eps.py").write_text(
        "SEEN = []\n\n"
        "def shift(model, x, y, *, eps, steps=1):\n"
        "    SEEN.append((eps, steps))\n"
        "    return (x + eps).clamp(0, 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = SMALL.replace('attack = "fgsm"\neps = [0.1]',
                         'attack = "rk_seen_eps:shift"\neps = [0.1, 0.2]\noptions = { steps = 3 }')
    (tmp_path / "exp.toml").write_text(text)
    run(tmp_path / "exp.toml", tmp_path / "run", progress=False, render=False)
    import rk_seen_eps

    assert rk_seen_eps.SEEN == [(0.1, 3), (0.2, 3)]
    records = json.loads((tmp_path / "run" / "results.json").read_text())["records"]
    attacked = {r["eps"]: r for r in records if r["kind"] == "attack"}
    assert sorted(attacked) == [0.1, 0.2]
    assert attacked[0.2]["median_linf"] in (None, pytest.approx(0.2, abs=1e-6))


def test_keys_and_store_paths_stay_inside_the_folder(tmp_path):
    assert key("examples", "..", "s0") == "examples/%2E./s0"
    assert key("examples", ".hidden") == "examples/%2Ehidden"
    store = Store(tmp_path)
    with pytest.raises(RobustkitError, match="has an empty, '.' or '..' part"):
        store.put("examples/../../escape", {"x": 1})
    assert not list(tmp_path.parent.glob("escape*"))
