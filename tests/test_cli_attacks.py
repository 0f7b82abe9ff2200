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
    # --n takes a class-balanced subset (the split is ordered by class): every class has rows
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
