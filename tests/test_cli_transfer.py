"""``robustkit transfer``: the matrices as a table, JSON with per-example records, a heatmap."""

from __future__ import annotations

import json

import pytest
import torch

from robustkit import models
from robustkit.transfer import transfer_matrix
from tests.test_cli import assert_one_line_error, run_main


@pytest.fixture
def checkpoints(tmp_path, trained_mlp, mnist_1000):
    """Two small trained checkpoints: the session's mlp and a logistic fitted for 2 epochs."""
    from robustkit.train import fit

    torch.manual_seed(0)
    logistic = models.create("logistic")
    fit(logistic, mnist_1000["train"], epochs=2, batch_size=64, lr=0.05, augment="none",
        device="cpu", amp=False, quiet=True)
    paths = {"mlp": tmp_path / "mlp.pt", "logistic": tmp_path / "logistic.pt"}
    models.save(trained_mlp, paths["mlp"], dataset="mnist-5k")
    models.save(logistic.eval(), paths["logistic"], dataset="mnist-5k")
    return paths


def test_transfer_writes_the_api_matrices_records_and_heatmap(checkpoints, tmp_path, capsys,
                                                              mnist_1000):
    out = tmp_path / "run" / "transfer.json"
    code, printed, err = run_main(
        ["transfer", "--sources", checkpoints["mlp"], "--targets", checkpoints["mlp"],
         checkpoints["logistic"], "--eps", "0.1,0.2", "--steps", "5", "--n", "1000",
         "--device", "cpu", "--quiet", "--out", out], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert [m["eps"] for m in result["matrices"]] == [0.1, 0.2]
    assert result["options"] == {"steps": 5, "seed": 0}  # the flags given, and pgd's seed
    # The same call through the API gives the same matrices (the attack is seeded).
    x, y = mnist_1000["test"]
    loaded = {k: models.load(p) for k, p in checkpoints.items()}
    expected = transfer_matrix({"mlp": loaded["mlp"]}, loaded, x, y, attack="pgd",
                               eps=[0.1, 0.2], steps=5, seed=0, progress=False)
    for record in result["matrices"]:
        m = expected[record["eps"]]
        assert record["accuracy"].keys() == m.keys()
        assert record["accuracy"]["mlp"] == pytest.approx(m["mlp"], abs=1e-6)
        for target, fooled in record["fooled_indices"]["mlp"].items():
            assert fooled == m.fooled["mlp"][target].nonzero().flatten().tolist()
    # The white-box cell is starred in the printed table, and the heatmap is a real PNG.
    assert "*" in printed and "eps 0.2" in printed
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_transfer_refuses_models_of_other_input_shapes(checkpoints, tmp_path, capsys):
    rgb = tmp_path / "rgb.pt"
    models.save(models.create("logistic", (3, 32, 32), 10), rgb, dataset="mnist-5k")
    code, _, err = run_main(["transfer", "--sources", checkpoints["mlp"], "--targets", rgb,
                             "--n", "20", "--device", "cpu", "--quiet"], capsys)
    assert_one_line_error(code, err, "rgb", "(3, 32, 32)", "(1, 28, 28)")


@pytest.mark.parametrize("argv, fragment", [
    (["--eps", ","], "at least one radius"),
    (["--attack", "nope"], "unknown attack 'nope'"),
    (["--attack", "deepfool"], "measures a distance"),
    (["--attack", "cw_l2", "--eps", "0.1"], "measures a distance"),
    (["--attack", "fgsm", "--steps", "3"], "takes no option 'steps'"),
])
def test_transfer_bad_options(argv, fragment, checkpoints, capsys):
    code, _, err = run_main(["transfer", "--sources", checkpoints["mlp"], "--targets",
                             checkpoints["logistic"], "--n", "20", "--device", "cpu", "--quiet",
                             *argv], capsys)
    assert_one_line_error(code, err, fragment)


def test_transfer_names_checkpoints_apart_when_stems_collide(checkpoints, tmp_path, capsys):
    other = tmp_path / "sub" / "mlp.pt"
    other.parent.mkdir()
    other.write_bytes(checkpoints["logistic"].read_bytes())
    out = tmp_path / "t.json"
    code, _, err = run_main(["transfer", "--sources", checkpoints["mlp"], other, "--targets",
                             checkpoints["mlp"], "--n", "20", "--eps", "0.1", "--steps", "2",
                             "--device", "cpu", "--quiet", "--out", out], capsys)
    assert code == 0, err
    names = json.loads(out.read_text())["checkpoints"]
    # The stems collide, so each name keeps one folder: short enough for a heatmap's labels.
    assert sorted(names) == sorted([f"{tmp_path.name}/mlp", "sub/mlp"])


def test_transfer_with_fgsm_gets_no_seed(checkpoints, tmp_path, capsys):
    out = tmp_path / "f.json"
    code, _, err = run_main(["transfer", "--sources", checkpoints["mlp"], "--targets",
                             checkpoints["logistic"], "--attack", "fgsm", "--n", "20", "--eps",
                             "0.1", "--device", "cpu", "--quiet", "--out", out], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["options"] == {}
    assert out.with_suffix(".png").is_file()
