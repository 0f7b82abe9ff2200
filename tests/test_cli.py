"""The command line: a tiny end-to-end run, and one-line errors with status 2 for user mistakes."""

from __future__ import annotations

import builtins
import json
import re
import subprocess
import sys

import pytest
import torch

from robustkit import cli, models
from robustkit.models import checkpoint


def run_main(argv, capsys):
    """(exit status, stdout, stderr) of ``robustkit argv`` run in this process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse exits by itself on bad flags
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert re.match(r"^robustkit( \w+)?: error: ", lines[0])
    for fragment in fragments:
        assert fragment in lines[0]


def test_train_then_info(tmp_path, capsys):
    out_path = tmp_path / "m.pt"
    code, out, err = run_main(["train", "--model", "logistic", "--epochs", "1", "--train-size",
                               "200", "--device", "cpu", "--quiet", "--out", out_path], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert out_path.is_file()
    assert "(200 train / 1000 test)" in out
    accuracy = float(re.search(r"test accuracy (\d\.\d{4}) ", out).group(1))
    assert 0.2 < accuracy <= 1.0  # one epoch on 200 digits beats chance (0.1)
    assert re.search(r"epoch +1/1 ", out)

    code, out, err = run_main(["info", out_path], capsys)
    assert code == 0, err
    summary, end = json.JSONDecoder().raw_decode(out)
    assert summary["name"] == "logistic"
    assert summary["in_shape"] == [1, 28, 28] and summary["num_classes"] == 10
    meta = summary["metadata"]
    assert meta["dataset"] == "mnist-5k" and meta["train_size"] == 200 and meta["epochs"] == 1
    assert meta["test_accuracy"] == pytest.approx(accuracy, abs=5e-5)
    assert meta["torch"] == torch.__version__ and "python" in meta and "robustkit" in meta
    assert "history: 1 epochs recorded" in out[end:]


def test_info_of_a_checkpoint_saved_by_the_api(tmp_path, capsys, tiny_mlp):
    models.save(tiny_mlp, tmp_path / "m.pt", dataset="mnist-5k", seed=4)
    code, out, err = run_main(["info", tmp_path / "m.pt"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["options"] == {"hidden": [16], "activation": "tanh", "dropout": 0.1}
    assert summary["metadata"]["seed"] == 4


def test_list_names_models_and_datasets(capsys):
    code, out, _ = run_main(["list"], capsys)
    assert code == 0
    for name in models.names():
        assert name in out
    assert "mnist-5k" in out and "cifar10" in out


class MarkerPayload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _train(tmp_path, *extra):
    return ["train", "--model", "logistic", "--epochs", "1", "--train-size", "100", "--quiet",
            "--out", tmp_path / "never.pt", *extra]


def test_unknown_model_lists_valid_names(tmp_path, capsys):
    code, _, err = run_main(["train", "--model", "vgg", "--out", tmp_path / "never.pt"], capsys)
    assert_one_line_error(code, err, "unknown model 'vgg'", *models.names())
    assert not (tmp_path / "never.pt").exists()


def test_unknown_dataset(tmp_path, capsys):
    code, _, err = run_main(_train(tmp_path, "--dataset", "svhn"), capsys)
    assert_one_line_error(code, err, "unknown dataset 'svhn'", "mnist-5k", "cifar10")
    assert not (tmp_path / "never.pt").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "abc"], "--lr"),
], ids=["epochs-0", "lr-negative", "lr-not-a-number"])
def test_bad_numbers(flags, fragment, tmp_path, capsys):
    code, _, err = run_main(_train(tmp_path, *flags), capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "never.pt").exists()


def test_train_size_larger_than_the_split(tmp_path, capsys):
    code, _, err = run_main(_train(tmp_path, "--train-size", "999999"), capsys)
    assert_one_line_error(code, err, "train_size must be between 1 and 4000", "999999")
    assert not (tmp_path / "never.pt").exists()


def test_missing_torchvision_dataset_without_download(tmp_path, capsys):
    root = tmp_path / "empty-root"
    root.mkdir()
    code, _, err = run_main(_train(tmp_path, "--dataset", "mnist", "--root", root), capsys)
    assert_one_line_error(code, err, str(root / "MNIST" / "raw"), "--download")
    assert list(root.iterdir()) == []  # nothing was fetched


def test_info_of_a_truncated_checkpoint(tmp_path, capsys, tiny_mlp):
    blob = models.save(tiny_mlp, tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    code, _, err = run_main(["info", tmp_path / "cut.pt"], capsys)
    assert_one_line_error(code, err, "corrupt or truncated", str(tmp_path / "cut.pt"))


def test_info_of_a_text_file(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("hello world\n")
    code, _, err = run_main(["info", tmp_path / "notes.pt"], capsys)
    assert_one_line_error(code, err, str(tmp_path / "notes.pt"))


def test_info_of_a_missing_checkpoint(tmp_path, capsys):
    code, _, err = run_main(["info", tmp_path / "nope.pt"], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_info_of_a_malicious_checkpoint(tmp_path, capsys, tiny_mlp):
    marker = tmp_path / "pwned"
    torch.save({"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
                **tiny_mlp.robustkit_spec, "state_dict": tiny_mlp.state_dict(),
                "metadata": {"x": MarkerPayload(marker)}}, tmp_path / "evil.pt")
    code, out, err = run_main(["info", tmp_path / "evil.pt"], capsys)
    assert_one_line_error(code, err, "could run code")
    assert not marker.exists()
    assert out == ""


def test_subprocess_exit_status_and_clean_stderr(tmp_path, subprocess_env):
    proc = subprocess.run(
        [sys.executable, "-m", "robustkit", "train", "--model", "vgg", "--out",
         str(tmp_path / "never.pt")],
        capture_output=True, text=True, env=subprocess_env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, "unknown model 'vgg'", *models.names())


def test_help_exits_zero(capsys):
    code, out, err = run_main(["--help"], capsys)
    assert code == 0 and "COMMAND" in out and err == ""
    code, out, _ = run_main(["attack", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0 and "--option KEY=VALUE" in text
    assert "for attacks that take one (default 0.3)" in text


def test_interrupt_is_one_line_and_status_130(monkeypatch, capsys):
    from robustkit.cli import info

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "cmd_list", interrupted)
    code, _, err = run_main(["list"], capsys)
    assert code == 130 and err == "robustkit: interrupted\n"


def test_a_file_error_from_deep_inside_is_one_line(monkeypatch, tmp_path, capsys):
    from robustkit.cli import info

    def missing(args):
        open(tmp_path / "gone" / "file.txt")

    monkeypatch.setattr(info, "cmd_list", missing)
    code, _, err = run_main(["list"], capsys)
    assert_one_line_error(code, err, "gone", "no such file")


def test_a_bug_still_shows_its_traceback(monkeypatch, capsys):
    from robustkit.cli import info

    def bug(args):
        raise ZeroDivisionError("a bug in robustkit")

    monkeypatch.setattr(info, "cmd_list", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["list"])


def test_warnings_are_one_line_each(monkeypatch, capsys):
    import warnings

    from robustkit.cli import info

    def warns(args):
        warnings.warn("first line\nsecond line")
        return 0

    monkeypatch.setattr(info, "cmd_list", warns)
    code, _, err = run_main(["list"], capsys)
    assert code == 0 and err == "robustkit: warning: first line second line\n"


def test_train_out_is_checked_before_training(tmp_path, capsys, monkeypatch):
    from robustkit.cli import train

    def never(*args, **kwargs):
        raise AssertionError("trained before the output path was checked")

    monkeypatch.setattr(train, "train_and_save", never)
    (tmp_path / "file").write_text("x")
    for out, fragment in [(tmp_path, "is a folder"), (tmp_path / "file" / "m.pt", "is a file")]:
        code, _, err = run_main(["train", "--model", "logistic", "--out", out], capsys)
        assert_one_line_error(code, err, fragment)


def test_nothing_below_the_command_line_imports_it():
    """No import cycles through the CLI: only robustkit/cli/ and __main__ name it."""
    import ast
    from pathlib import Path

    import robustkit

    root = Path(robustkit.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("cli/") or rel == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "robustkit.cli" or n.startswith("robustkit.cli.") for n in names):
                offenders.append(rel)
            if isinstance(node, ast.ImportFrom) and node.module == "robustkit" and any(
                    a.name == "cli" for a in node.names):
                offenders.append(rel)
    assert offenders == []
    assert not (root / "cli.py").exists() and not (root / "explain" / "cli.py").exists()
