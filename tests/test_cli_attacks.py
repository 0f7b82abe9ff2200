"""The attack commands: attack, curve and minimal, end to end on a small trained checkpoint."""

from __future__ import annotations

import json
import re

import pytest

from robustkit import models
from tests.test_cli import assert_one_line_error, run_main


@pytest.fixture
def checkpoint(tmp_path, trained_mlp):
    path = tmp_path / "mlp.pt"
    models.save(trained_mlp, path, dataset="mnist-5k")
    return path


def test_attack_prints_and_writes_the_measures(checkpoint, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run_main(["attack", "--checkpoint", checkpoint, "--attack", "pgd", "--eps",
                               "0.2", "--steps", "10", "--n", "100", "--device", "cpu",
                               "--quiet", "--out", out_json], capsys)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["n"] == 100 and result["attack"] == "pgd"
    assert result["options"]["eps"] == 0.2 and result["options"]["steps"] == 10
    assert 0 <= result["robust_accuracy"] <= result["clean_accuracy"] <= 1
    med = result["median_over_fooled"]
    assert med["linf"] <= 0.2 + 1e-6 and med["l2"] > 0 and med["ssim"] <= 1
    clean = float(re.search(r"clean accuracy +([\d.]+)%", out).group(1))
    robust = float(re.search(r"robust accuracy +([\d.]+)%", out).group(1))
    assert clean == pytest.approx(result["clean_accuracy"] * 100, abs=0.01)
    assert robust == pytest.approx(result["robust_accuracy"] * 100, abs=0.01)
    assert "PSNR" in out and "SSIM" in out


def test_curve_is_sorted_and_monotone(checkpoint, tmp_path, capsys):
    out_json = tmp_path / "c.json"
    code, out, err = run_main(["curve", "--checkpoint", checkpoint, "--eps", "0.2,0.05,0.1",
                               "--steps", "5", "--n", "100", "--device", "cpu", "--quiet",
                               "--out", out_json], capsys)
    assert code == 0, err
    curve = json.loads(out_json.read_text())["curve"]
    assert [r["eps"] for r in curve] == [0.05, 0.1, 0.2]
    acc = [r["accuracy"] for r in curve]
    assert acc == sorted(acc, reverse=True)


def test_minimal_prints_a_class_by_class_table(checkpoint, tmp_path, capsys):
    out_json = tmp_path / "m.json"
    code, out, err = run_main(["minimal", "--checkpoint", checkpoint, "--n", "20", "--steps",
                               "20", "--norms", "l2", "--device", "cpu", "--out", out_json],
                              capsys)
    assert code == 0, err
    table = json.loads(out_json.read_text())["tables"]["l2"]
    assert table["pairs"] == 20 * 9
    for r, row in enumerate(table["median"]):
        assert row[r] is None
    # --n takes a class-balanced subset (every class has the same share): every class has rows
    assert all(any(v is not None for v in row) for row in table["median"])
    assert "median l2 perturbation" in out


@pytest.mark.parametrize("argv, fragment", [
    (["--attack", "nope"], "unknown attack 'nope'"),
    (["--eps", "-0.1"], "must be finite and >= 0"),
    (["--n", "5000"], "larger than"),
])
def test_attack_bad_input(argv, fragment, checkpoint, capsys):
    code, _, err = run_main(["attack", "--checkpoint", checkpoint, "--device", "cpu",
                             "--quiet", *argv], capsys)
    assert_one_line_error(code, err, fragment)


def test_attack_on_a_missing_checkpoint(tmp_path, capsys):
    code, _, err = run_main(["attack", "--checkpoint", tmp_path / "none.pt"], capsys)
    assert_one_line_error(code, err, "does not exist")


def _attack_json(checkpoint, tmp_path, capsys, *argv):
    out_json = tmp_path / "r.json"
    code, out, err = run_main(["attack", "--checkpoint", checkpoint, "--n", "20", "--device",
                               "cpu", "--quiet", "--out", out_json, *argv], capsys)
    assert code == 0, err
    return json.loads(out_json.read_text())


def test_only_the_flags_given_reach_the_attack(checkpoint, tmp_path, capsys):
    # fgsm takes no seed, steps or norm: it gets eps (the default 0.3) and nothing else.
    assert _attack_json(checkpoint, tmp_path, capsys, "--attack", "fgsm")["options"] == \
        {"eps": 0.3}
    # pgd takes a seed: the run's seed reaches it; no norm is forced on it.
    result = _attack_json(checkpoint, tmp_path, capsys, "--attack", "pgd", "--steps", "3",
                          "--seed", "7", "--option", "random_start=false")
    assert result["options"] == {"steps": 3, "seed": 7, "random_start": False, "eps": 0.3}


def test_deepfool_runs_without_eps_and_is_never_labelled_with_one(checkpoint, tmp_path,
                                                                   capsys):
    result = _attack_json(checkpoint, tmp_path, capsys, "--attack", "deepfool",
                          "--option", "overshoot=0.05")
    assert result["options"] == {"overshoot": 0.05}
    assert "eps" not in result and "eps" not in result["options"]
    assert result["robust_accuracy"] <= result["clean_accuracy"]


USER_ATTACK = '''
import torch

CALLS = []


def shift(model, x, y, *, eps=0.0, scale=1.0):
    CALLS.append({"eps": eps, "scale": scale})
    return (x + eps * torch.where(x > 0.5, -1.0, 1.0)).clamp(0, 1)


def no_eps(model, x, y, *, steps=3):
    return x.clone()
'''


@pytest.fixture
def user_attack(tmp_path, monkeypatch):
    """A user's attack module (``rk_user_attack``) importable from ``tmp_path``."""
    import sys

    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "rk_user_attack.py").write_text(USER_ATTACK)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "rk_user_attack", raising=False)
    yield "rk_user_attack"
    sys.modules.pop("rk_user_attack", None)


def test_a_module_function_attack_receives_eps(checkpoint, tmp_path, capsys, user_attack):
    import sys

    result = _attack_json(checkpoint, tmp_path, capsys, "--attack", f"{user_attack}:shift",
                          "--eps", "0.1", "--option", "scale=2")
    calls = sys.modules[user_attack].CALLS
    assert calls and all(c == {"eps": 0.1, "scale": 2} for c in calls)
    assert result["options"] == {"eps": 0.1, "scale": 2}
    if result["median_over_fooled"]["linf"] is not None:
        assert result["median_over_fooled"]["linf"] <= 0.1 + 1e-6


def test_a_module_function_curve_receives_each_eps(checkpoint, tmp_path, capsys, user_attack):
    import sys

    code, _, err = run_main(["curve", "--checkpoint", checkpoint, "--attack",
                             f"{user_attack}:shift", "--eps", "0.2,0.05", "--n", "20",
                             "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    calls = sys.modules[user_attack].CALLS
    assert calls and {c["eps"] for c in calls} <= {0.05, 0.2}  # never the default 0.0
    assert calls[0]["eps"] == 0.05  # ascending


def test_a_module_function_without_eps_is_refused_on_a_curve(checkpoint, capsys, user_attack):
    code, _, err = run_main(["curve", "--checkpoint", checkpoint, "--attack",
                             f"{user_attack}:no_eps", "--n", "20", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "takes no eps", "its options: steps")
