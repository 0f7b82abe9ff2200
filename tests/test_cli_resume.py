"""Commands that attack many images keep their finished blocks in ``OUT.parts/``: an
interrupted run started again computes only the blocks it lacked and writes what an
uninterrupted run writes; the parts are deleted once the result is written."""

from __future__ import annotations

import json

import pytest

import robustkit.autoattack as autoattack_module
import robustkit.evaluate as evaluate_module
import robustkit.outcomes as outcomes_module
from robustkit import models
from robustkit.cli import main


@pytest.fixture
def ckpt(tmp_path, trained_mlp):
    path = tmp_path / "m.pt"
    models.save(trained_mlp, path)
    return path


def _result(path):
    record = json.loads(path.read_text())
    record.pop("seconds", None)
    for part in record.get("split", {}).values():  # autoattack: this process's time per attack
        part.pop("seconds", None)
    return record


COMMANDS = {
    "attack": (["attack", "--eps", "0.1", "--steps", "3"], outcomes_module, "_score_batch"),
    "curve": (["curve", "--eps", "0.05,0.1", "--steps", "3"], evaluate_module, "_bisect_batch"),
    "curve fgsm": (["curve", "--attack", "fgsm", "--eps", "0.05,0.1"], outcomes_module,
                   "_score_batch"),
    "validity": (["validity", "--steps", "2"], outcomes_module, "_score_batch"),
    "transfer": (["transfer", "--eps", "0.1", "--steps", "2"], outcomes_module, "_score_batch"),
    "autoattack": (["autoattack", "--eps", "0.1", "--version", "fast"], autoattack_module,
                   "_block"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_an_interrupted_command_goes_on_where_it_was(name, ckpt, tmp_path, monkeypatch):
    argv, module, function = COMMANDS[name]
    model = (["--sources", str(ckpt), "--targets", str(ckpt)] if name == "transfer"
             else ["--checkpoint", str(ckpt)])
    common = [*argv, *model, "--images", "60", "--batch-size", "10", "--quiet"]
    whole = tmp_path / "whole.json"
    assert main([*common, "--out", str(whole)]) == 0
    real = getattr(module, function)
    calls = []

    def interrupted(*args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    out = tmp_path / "r.json"
    monkeypatch.setattr(module, function, interrupted)
    assert main([*common, "--out", str(out)]) == 130
    assert not out.exists() and (tmp_path / "r.json.parts").is_dir()
    again = []

    def counting(*args, **kwargs):
        again.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, counting)
    assert main([*common, "--out", str(out)]) == 0
    total = []
    monkeypatch.setattr(module, function, lambda *a, **k: total.append(1) or real(*a, **k))
    assert main([*common, "--out", str(tmp_path / "again.json")]) == 0
    assert len(again) == len(total) - 4  # the 4 finished blocks were read back
    assert _result(out) == _result(whole)
    assert not (tmp_path / "r.json.parts").exists()
