"""The ``explain`` and ``sanity`` subcommands: figures and JSON written, mistakes refused."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from robustkit import models
from robustkit.errors import RobustkitError
from robustkit.explain import cli


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="robustkit")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
def checkpoint(tmp_path):
    """An (untrained, seeded) alexnet checkpoint: it has convolutions for Grad-CAM."""
    torch.manual_seed(0)
    path = tmp_path / "alexnet.pt"
    models.save(models.create("alexnet"), path, dataset="mnist-5k")
    return path


def test_explain_writes_figures_and_metrics(checkpoint, tmp_path, capsys):
    out = tmp_path / "explain"
    args = parse(["explain", "--checkpoint", str(checkpoint), "--n", "10", "--steps", "4",
                  "--out", str(out), "--device", "cpu"])
    assert args.func(args) == 0
    record = json.loads((out / "explain.json").read_text())
    assert record["methods"] == ["saliency", "integrated_gradients", "gradcam"]
    assert record["n"] == 10 and record["versions"]["torch"] == torch.__version__
    for r in record["results"].values():
        assert 0 <= r["deletion"]["auc"] <= 1 and 0 <= r["insertion"]["auc"] <= 1
        assert len(r["fractions"]) == 5 and r["seconds"] > 0
    assert record["results"]["integrated_gradients"]["options"]["n_steps"] == 50
    for name in ("explanations.png", "faithfulness.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| random |" in printed
    ig = record["results"]["integrated_gradients"]["alignment"]
    assert len(ig["per_example"]["spearman"]) == 10 and -1 <= ig["spearman"] <= 1
    # IG with a black baseline is zero on the black background: it follows the digit.
    assert ig["ink_share"] > ig["area_share"]
    assert f"integrated_gradients {ig['spearman']:.3f}" in printed


def test_sanity_writes_the_table_and_the_curves(checkpoint, tmp_path, capsys):
    out = tmp_path / "sanity"
    args = parse(["sanity", "--checkpoint", str(checkpoint), "--methods", "saliency,gradcam",
                  "--n", "4", "--mode", "independent", "--out", str(out), "--device", "cpu"])
    assert args.func(args) == 0
    record = json.loads((out / "sanity.json").read_text())
    sanity = record["sanity"]
    assert sanity["mode"] == "independent" and sanity["layers"][0] == "fc3"
    assert set(sanity["steps"]) == {"saliency", "gradcam"}
    assert len(sanity["steps"]["gradcam"]) == len(sanity["layers"]) == 8
    assert (out / "sanity.png").stat().st_size > 0
    assert "| conv1 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--methods", "saliency,lime"], "unknown explainer 'lime'; valid names"),
    (["--methods", ","], "names no method"),
    (["--n", "5000"], "larger than"),
])
def test_mistakes_are_one_line_errors(argv, match, checkpoint, tmp_path):
    args = parse(["explain", "--checkpoint", str(checkpoint), "--out", str(tmp_path), *argv])
    with pytest.raises(RobustkitError, match=match):
        args.func(args)


def test_bad_numbers_are_refused_by_the_parser(checkpoint, tmp_path):
    with pytest.raises(SystemExit):
        parse(["sanity", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--n", "0"])
