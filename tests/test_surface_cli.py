"""The command line's surface: a table of bad command lines.

Each is answered the same way: exit status 2, exactly one line on stderr that starts with
``robustkit: error:`` and names the problem, no traceback, and nothing written (every
mistake is caught before any training or attacking). The table runs in-process through
``robustkit.cli.main`` (fast); two cases run ``python -m robustkit`` to show the same
end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustkit import cli, models


@pytest.fixture
def paths(tmp_path, tiny_mlp):
    """Files the bad command lines name: a tiny checkpoint, a corrupt one, a folder, a
    plain file, a config with a typo and a folder that holds no run."""
    ckpt = models.save(tiny_mlp, tmp_path / "m.pt", dataset="mnist-5k")
    blob = ckpt.read_bytes()
    (tmp_path / "corrupt.pt").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "folder").mkdir()
    (tmp_path / "heat.png").mkdir()
    (tmp_path / "norun").mkdir()
    (tmp_path / "file.txt").write_text("not a checkpoint\n")
    (tmp_path / "typo.toml").write_text('name = "typo"\nmodles = 1\n\n[[models]]\nname = "mlp"\n')
    return {"ckpt": str(ckpt), "corrupt": str(tmp_path / "corrupt.pt"),
            "folder": str(tmp_path / "folder"), "norun": str(tmp_path / "norun"),
            "file": str(tmp_path / "file.txt"), "typo": str(tmp_path / "typo.toml"),
            "tmp": str(tmp_path)}


def _files(root: str) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in Path(root).rglob("*") if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(code: int, err: str, phrase: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("robustkit: error: "), lines[0]
    assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"


ATTACK = ["attack", "--checkpoint", "{ckpt}", "--n", "20", "--device", "cpu", "--quiet"]
CURVE = ["curve", "--checkpoint", "{ckpt}", "--n", "20", "--device", "cpu", "--quiet"]
TRANSFER = ["transfer", "--sources", "{ckpt}", "--targets", "{ckpt}", "--n", "20", "--device",
            "cpu", "--quiet"]
TRAIN = ["train", "--model", "logistic", "--epochs", "1", "--train-size", "100", "--quiet",
         "--device", "cpu", "--out", "{tmp}/never.pt"]
EXPLAIN = ["explain", "--checkpoint", "{ckpt}", "--n", "4", "--device", "cpu"]
SANITY = ["sanity", "--checkpoint", "{ckpt}", "--n", "4", "--device", "cpu"]

#: (id, command line with {placeholders} from the ``paths`` fixture, a phrase of the message)
CASES = [
    # bad numbers, in every command that takes them
    ("attack-eps-negative", ATTACK + ["--eps", "-1"], "must be finite and >= 0, got -1"),
    ("attack-eps-inf", ATTACK + ["--eps", "inf"], "must be finite and >= 0, got inf"),
    ("attack-eps-nan", ATTACK + ["--eps", "nan"], "must be finite and >= 0, got nan"),
    ("attack-eps-text", ATTACK + ["--eps", "big"], "expected a number, got 'big'"),
    ("attack-n-0", ATTACK + ["--n", "0"], "argument --n/--images: must be an integer >= 1"),
    ("attack-steps-0", ATTACK + ["--steps", "0"], "argument --steps: must be an integer >= 1"),
    ("attack-steps-float", ATTACK + ["--steps", "2.5"], "expected an integer, got '2.5'"),
    ("attack-batch-size-0", ATTACK + ["--batch-size", "0"], "argument --batch-size"),
    ("attack-alpha-negative", ATTACK + ["--alpha", "-0.1"], "argument --alpha"),
    ("attack-seed-negative", ATTACK + ["--seed", "-1"], "argument --seed"),
    ("curve-eps-negative", CURVE + ["--eps", "0.1,-0.2"], "must be finite and >= 0"),
    ("curve-eps-empty", CURVE + ["--eps", ","], "needs at least one radius"),
    ("curve-eps-twice", CURVE + ["--eps", "0.1,0.1"], "lists 0.1 twice"),
    ("curve-batch-size-0", CURVE + ["--batch-size", "0"], "argument --batch-size"),
    ("transfer-eps-nan", TRANSFER + ["--eps", "0.1,nan"], "must be finite and >= 0"),
    ("transfer-n-0", TRANSFER + ["--n", "0"], "argument --n"),
    ("minimal-steps-0", ["minimal", "--checkpoint", "{ckpt}", "--steps", "0"], "--steps"),
    ("minimal-norms-l3", ["minimal", "--checkpoint", "{ckpt}", "--norms", "l2,l3"],
     "takes l2 and/or linf, got 'l3'"),
    ("validity-eps-inf", ["validity", "--checkpoint", "{ckpt}", "--eps", "inf"], "--eps"),
    ("validity-norm-l3", ["validity", "--checkpoint", "{ckpt}", "--norm", "l3"],
     "norm must be one of l2, linf, got 'l3'"),
    ("train-epochs-0", TRAIN + ["--epochs", "0"], "argument --epochs"),
    ("train-lr-nan", TRAIN + ["--lr", "nan"], "argument --lr: must be finite and > 0"),
    ("train-eval-every-negative", TRAIN + ["--eval-every", "-1"], "argument --eval-every"),
    ("explain-steps-0", EXPLAIN + ["--out", "{tmp}/e", "--steps", "0"], "argument --steps"),
    ("sanity-batch-size-0", SANITY + ["--out", "{tmp}/s", "--batch-size", "0"],
     "argument --batch-size"),
    # unknown names
    ("unknown-command", ["fight"], "invalid choice: 'fight'"),
    ("unknown-attack", ATTACK + ["--attack", "nope"], "unknown attack 'nope'; valid names"),
    ("unknown-module-attack", ATTACK + ["--attack", "no_such_module_rk:fn"],
     "cannot import attack 'no_such_module_rk:fn'"),
    ("unknown-model", TRAIN + ["--model", "vgg"], "unknown model 'vgg'"),
    ("unknown-dataset-train", TRAIN + ["--dataset", "svhn"], "unknown dataset 'svhn'"),
    ("unknown-dataset-attack", ATTACK + ["--dataset", "svhn"], "unknown dataset 'svhn'"),
    ("unknown-device", ATTACK + ["--device", "tpu"], "invalid choice: 'tpu'"),
    ("unknown-explainer", EXPLAIN + ["--out", "{tmp}/e", "--methods", "saliency,lime"],
     "unknown explainer 'lime'"),
    ("unknown-adv-norm", TRAIN + ["--adversarial", "pgd", "--adv-norm", "l3"],
     "adversarial.norm: must be one of"),
    # options the attack does not take: refused, never dropped
    ("fgsm-steps", ATTACK + ["--attack", "fgsm", "--steps", "5"],
     "attack 'fgsm' takes no option 'steps'; its options: amp, eps, targeted"),
    ("fgsm-norm-l2", ATTACK + ["--attack", "fgsm", "--norm", "l2"],
     "attack 'fgsm' takes no option 'norm'"),
    ("pgd-norm-l3", ATTACK + ["--norm", "l3"], "norm must be one of l2, linf, got 'l3'"),
    ("option-typo", ATTACK + ["--option", "typo=1"], "takes no option 'typo'; its options:"),
    ("option-not-a-pair", ATTACK + ["--option", "steps"], "expected KEY=VALUE"),
    ("option-eps", ATTACK + ["--option", "eps=0.1"], "--option eps: give it with --eps"),
    ("option-has-its-own-flag", ATTACK + ["--option", "steps=3"], "give it with --steps"),
    ("option-repeated", ATTACK + ["--option", "random_start=true", "--option",
                                  "random_start=false"], "--option random_start is given twice"),
    ("option-bad-bool", ATTACK + ["--option", "random_start=3"],
     "random_start must be true or false"),
    ("option-nan", ATTACK + ["--option", "overshoot=nan"], "expected a finite number"),
    ("deepfool-with-eps", ATTACK + ["--attack", "deepfool", "--eps", "0.1"],
     "measures a distance"),
    ("curve-deepfool", CURVE + ["--attack", "deepfool"], "measures a distance"),
    ("curve-cw", CURVE + ["--attack", "cw_l2"], "measures a distance"),
    ("transfer-deepfool", TRANSFER + ["--attack", "deepfool"], "measures a distance"),
    # checkpoints
    ("missing-checkpoint", ATTACK[:2] + ["{tmp}/none.pt"] + ATTACK[3:], "does not exist"),
    ("checkpoint-is-a-folder", ATTACK[:2] + ["{folder}"] + ATTACK[3:],
     "is a folder, not a checkpoint file"),
    ("corrupt-checkpoint", ATTACK[:2] + ["{corrupt}"] + ATTACK[3:], "corrupt"),
    ("text-as-checkpoint", EXPLAIN[:2] + ["{file}"] + EXPLAIN[3:] + ["--out", "{tmp}/e"],
     "file.txt"),
    ("missing-transfer-source", ["transfer", "--sources", "{tmp}/none.pt", "--targets",
                                 "{ckpt}"], "does not exist"),
    ("missing-transfer-from", ["validity", "--checkpoint", "{ckpt}", "--transfer-from",
                               "{tmp}/none.pt"], "--transfer-from: checkpoint"),
    ("info-missing", ["info", "{tmp}/none.pt"], "does not exist"),
    ("info-not-a-checkpoint", ["info", "{file}"], "checkpoint {file}"),
    ("info-folder", ["info", "{folder}"], "is a folder"),
    # output paths, checked before any work
    ("attack-out-folder", ATTACK + ["--out", "{folder}"], "--out {folder} is a folder"),
    ("attack-out-under-a-file", ATTACK + ["--out", "{file}/r.json"], "is a file, not a folder"),
    ("attack-out-is-the-checkpoint", ATTACK + ["--out", "{ckpt}"], "is also an input"),
    ("curve-out-folder", CURVE + ["--out", "{folder}"], "is a folder"),
    ("minimal-out-under-a-file", ["minimal", "--checkpoint", "{ckpt}", "--out",
                                  "{file}/m.json"], "is a file, not a folder"),
    ("transfer-out-folder", TRANSFER + ["--out", "{folder}"], "is a folder"),
    ("transfer-out-png", TRANSFER + ["--out", "{tmp}/t.png"], "the heatmap goes beside"),
    ("transfer-heatmap-folder", TRANSFER + ["--out", "{tmp}/heat.json"],
     "--out (its heatmap) {tmp}/heat.png is a folder"),
    ("train-out-folder", TRAIN[:-1] + ["{folder}"], "is a folder"),
    ("train-out-under-a-file", TRAIN[:-1] + ["{file}/m.pt"], "is a file, not a folder"),
    ("explain-out-is-a-file", EXPLAIN + ["--out", "{file}"], "is a file, not a folder"),
    ("sanity-out-is-a-file", SANITY + ["--out", "{file}"], "is a file, not a folder"),
    ("compare-out-is-a-file", ["compare", "{norun}", "{folder}", "--out", "{file}"],
     "is a file, not a folder"),
    ("compare-out-is-a-run", ["compare", "{norun}", "{folder}", "--out", "{folder}"],
     "is also an input"),
    ("run-out-under-a-file", ["run", "{typo}", "--out", "{file}/run"], "is a file"),
    # conflicting options and sizes
    ("train-eps-without-adversarial", TRAIN + ["--eps", "0.3"],
     "--eps only applies with --adversarial"),
    ("train-adv-steps-without-adversarial", TRAIN + ["--adv-steps", "3"],
     "--adv-steps only applies with --adversarial"),
    ("train-size-too-large", TRAIN + ["--train-size", "999999"], "train_size must be between"),
    ("attack-n-larger-than-split", ATTACK + ["--n", "5000"],
     "--n 5000 is larger than mnist-5k's test split (1000)"),
    ("explain-n-larger-than-split", EXPLAIN[:4] + ["5000", "--out", "{tmp}/e"], "larger than"),
    ("explain-no-method", EXPLAIN + ["--out", "{tmp}/e", "--methods", ","], "names no method"),
    ("missing-required-flag", ["attack", "--n", "20"], "--checkpoint"),
    # runs, reports and comparisons
    ("run-missing-config", ["run", "{tmp}/missing.toml"], "config {tmp}/missing.toml does "
                                                          "not exist"),
    ("run-config-is-a-folder", ["run", "{folder}"], "is a folder, not a TOML file"),
    ("run-config-typo", ["run", "{typo}", "--out", "{tmp}/run"], "modles: unknown key"),
    ("report-missing-folder", ["report", "{tmp}/nowhere"], "run folder {tmp}/nowhere does "
                                                           "not exist"),
    ("report-not-a-run", ["report", "{norun}"], "holds no results.json"),
    ("report-on-a-file", ["report", "{file}"], "is a file, not a folder"),
    ("compare-one-missing", ["compare", "{norun}", "{tmp}/nowhere", "--out", "{tmp}/c"],
     "run folder {tmp}/nowhere does not exist"),
    ("compare-one-folder", ["compare", "{norun}", "--out", "{tmp}/c"], "at least two"),
    ("compare-same-twice", ["compare", "{norun}", "{norun}", "--out", "{tmp}/c"],
     "is given twice"),
]


@pytest.mark.parametrize("argv, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_status_2(argv, phrase, paths, capsys):
    before = _files(paths["tmp"])
    code, out, err = run_cli([a.format(**paths) for a in argv], capsys)
    assert_one_line(code, err, phrase.format(**paths))
    assert _files(paths["tmp"]) == before, "a refused command wrote or changed files"


def test_the_table_is_large_and_its_ids_distinct():
    assert len(CASES) >= 35
    assert len({c[0] for c in CASES}) == len(CASES)


READ_ONLY_CASES = [
    ("attack", ATTACK + ["--out", "{ro}/r.json"]),
    ("curve", CURVE + ["--out", "{ro}/c.json"]),
    ("transfer", TRANSFER + ["--out", "{ro}/t.json"]),
    ("train", TRAIN[:-1] + ["{ro}/m.pt"]),
    ("explain", EXPLAIN + ["--out", "{ro}/e"]),
    ("compare", ["compare", "{norun}", "{folder}", "--out", "{ro}/cmp"]),
    ("run", ["run", "{typo}", "--out", "{ro}/run"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in READ_ONLY_CASES],
                         ids=[c[0] for c in READ_ONLY_CASES])
def test_an_output_in_a_read_only_place_is_refused_first(argv, paths, capsys, monkeypatch):
    # Tests run as root, whom chmod does not stop: the folder is made read-only by
    # answering os.access as the file system would for another user.
    ro = Path(paths["tmp"]) / "readonly"
    ro.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == ro and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    code, _, err = run_cli([a.format(ro=ro, **paths) for a in argv], capsys)
    assert_one_line(code, err, "permission denied")
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("argv, phrase", [
    (["attack", "--checkpoint", "{ckpt}", "--attack", "fgsm", "--steps", "5"],
     "attack 'fgsm' takes no option 'steps'"),
    (["run", "{tmp}/missing.toml"], "does not exist"),
], ids=["fgsm-steps", "run-missing-config"])
def test_end_to_end_no_traceback(argv, phrase, paths, subprocess_env):
    proc = subprocess.run([sys.executable, "-m", "robustkit", *[a.format(**paths) for a in argv]],
                          capture_output=True, text=True, env=subprocess_env,
                          cwd=paths["tmp"], timeout=300)
    assert proc.stdout == ""
    assert_one_line(proc.returncode, proc.stderr, phrase)
