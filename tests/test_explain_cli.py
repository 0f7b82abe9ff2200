"""The ``explain`` and ``sanity`` subcommands: figures and JSON written, mistakes refused."""

from __future__ import annotations

import json

import pytest
import torch

from robustkit import models
from tests.test_cli import assert_one_line_error, run_main


@pytest.fixture
def checkpoint(tmp_path):
    """An (untrained, seeded) alexnet checkpoint: it has convolutions for Grad-CAM."""
    torch.manual_seed(0)
    path = tmp_path / "alexnet.pt"
    models.save(models.create("alexnet"), path, dataset="mnist-5k")
    return path


def test_explain_writes_figures_and_metrics(checkpoint, tmp_path, capsys):
    out = tmp_path / "explain"
    code, printed, err = run_main(["explain", "--checkpoint", checkpoint, "--n", "10",
                                   "--steps", "4", "--out", out, "--device", "cpu"], capsys)
    assert code == 0, err
    record = json.loads((out / "explain.json").read_text())
    assert record["methods"] == ["saliency", "integrated_gradients", "gradcam"]
    assert record["n"] == 10 and record["versions"]["torch"] == torch.__version__
    for r in record["results"].values():
        assert 0 <= r["deletion"]["auc"] <= 1 and 0 <= r["insertion"]["auc"] <= 1
        assert len(r["fractions"]) == 5 and r["seconds"] > 0
    assert record["results"]["integrated_gradients"]["options"]["n_steps"] == 50
    for name in ("explanations.png", "faithfulness.png"):
        assert (out / name).stat().st_size > 0
    assert "| random |" in printed
    ig = record["results"]["integrated_gradients"]["alignment"]
    assert len(ig["per_example"]["spearman"]) == 10 and -1 <= ig["spearman"] <= 1
    # IG with a black baseline is zero on the black background: it follows the digit.
    assert ig["ink_share"] > ig["area_share"]
    assert f"integrated_gradients {ig['spearman']:.3f}" in printed


def test_sanity_writes_the_table_and_the_curves(checkpoint, tmp_path, capsys):
    out = tmp_path / "sanity"
    code, printed, err = run_main(["sanity", "--checkpoint", checkpoint, "--methods",
                                   "saliency,gradcam", "--n", "4", "--mode", "independent",
                                   "--out", out, "--device", "cpu"], capsys)
    assert code == 0, err
    record = json.loads((out / "sanity.json").read_text())
    sanity = record["sanity"]
    assert sanity["mode"] == "independent" and sanity["layers"][0] == "fc3"
    assert set(sanity["steps"]) == {"saliency", "gradcam"}
    assert len(sanity["steps"]["gradcam"]) == len(sanity["layers"]) == 8
    assert (out / "sanity.png").stat().st_size > 0
    assert "| conv1 |" in printed


@pytest.mark.parametrize("argv,match", [
    (["--methods", "saliency,lime"], "unknown explainer 'lime'; valid names"),
    (["--methods", ","], "names no method"),
    (["--methods", "saliency,saliency"], "names a method twice"),
    (["--n", "5000"], "larger than"),
])
def test_mistakes_are_one_line_errors(argv, match, checkpoint, tmp_path, capsys):
    out = tmp_path / "never"
    code, _, err = run_main(["explain", "--checkpoint", checkpoint, "--out", out, *argv], capsys)
    assert_one_line_error(code, err, match)
    assert not out.exists()  # refused before the folder was made


def test_bad_numbers_are_refused_by_the_parser(checkpoint, tmp_path, capsys):
    code, _, err = run_main(["sanity", "--checkpoint", checkpoint, "--out", tmp_path,
                             "--n", "0"], capsys)
    assert_one_line_error(code, err, "--n", "must be an integer >= 1")


def test_sanity_out_that_is_a_file_is_refused_before_loading(checkpoint, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine\n")
    code, _, err = run_main(["sanity", "--checkpoint", checkpoint, "--out",
                             tmp_path / "taken"], capsys)
    assert_one_line_error(code, err, "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "mine\n"


def test_explain_moved_into_the_cli_package():
    import importlib.util

    assert importlib.util.find_spec("robustkit.explain.cli") is None
    from robustkit.cli import explain

    assert callable(explain.cmd_explain) and callable(explain.cmd_sanity)
