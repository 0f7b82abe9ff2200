"""Evaluations under torch.distributed, for real: 2 processes with the gloo backend on this
machine give bit-identical per-example results to 1 process.

The test writes a script, launches it with ``python -m torch.distributed.run
--nproc-per-node 2`` (torchrun), and compares what rank 0 saved with the same evaluations
run here in one process. Each example's randomness follows its global index, so sharding
changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from robustkit import evaluate, models, transfer
from robustkit.attacks import bind
from robustkit.outcomes import outcomes

SCRIPT = textwrap.dedent("""
    import sys, warnings
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[3])
    from evaluations import evaluate_all
    from robustkit import models

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    model = models.load(sys.argv[1])
    data = torch.load(sys.argv[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate_all(model, data["x"], data["y"])
    result["world"] = dist.get_world_size()
    if dist.get_rank() == 0:
        torch.save(result, sys.argv[4])
    dist.barrier()
    dist.destroy_process_group()
""")

EVALUATIONS = textwrap.dedent('''
    import torch
    from robustkit import evaluate, transfer
    from robustkit.attacks import bind
    from robustkit.outcomes import outcomes


    def evaluate_all(model, x, y):
        """The evaluations compared between 1 and 2 processes."""
        run = bind("pgd", model, {"steps": 5}, eps=0.15, defaults={"seed": 3})
        out = outcomes((x, y), {"model": model}, run, batch_size=16)
        acc = evaluate.robust_accuracy(model, x, y, "pgd", eps=0.15, steps=5, seed=3,
                                       batch_size=16, progress=False)
        curve = evaluate.robustness_curve(model, x, y, eps=[0.05, 0.1, 0.2], steps=4,
                                          batch_size=10, progress=False)
        fgsm_curve = evaluate.robustness_curve(model, x, y, attack="fgsm", eps=[0.05, 0.2],
                                               batch_size=10, progress=False)
        m = transfer.transfer_matrix({"a": model}, {"a": model}, x, y, eps=[0.1], steps=3,
                                     seed=1, batch_size=12, progress=False)
        return {"index": out.index, "robust": out.robust("model"), "clean": out.clean["model"],
                "accuracy": float(acc), "clean_accuracy": acc.clean_accuracy, "n": acc.n,
                "curve": curve, "fgsm_curve": fgsm_curve,
                "fooled": m[0.1].fooled["a"]["a"], "correct": m[0.1].correct["a"]}
''')


@pytest.fixture(scope="module")
def setup(tmp_path_factory, trained_mlp, mnist_1000):
    root = tmp_path_factory.mktemp("dist")
    models_path = root / "m.pt"
    # trained_mlp is a plain module made by models.create: save it as a checkpoint
    models.save(trained_mlp, models_path)
    x, y = mnist_1000["test"]
    torch.save({"x": x[:77], "y": y[:77]}, root / "data.pt")  # odd N: uneven shards
    (root / "evaluations.py").write_text(EVALUATIONS)
    (root / "script.py").write_text(SCRIPT)
    return root


def _one_process(model, x, y):
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluations", str(_one_process.path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.evaluate_all(model, x, y)


def test_two_gloo_processes_match_one_process_bit_for_bit(setup, subprocess_env):
    root = setup
    out = root / "result.pt"
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", str(root / "script.py"), str(root / "m.pt"),
           str(root / "data.pt"), str(root), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(out)
    assert two["world"] == 2
    model = models.load(root / "m.pt")
    data = torch.load(root / "data.pt")
    _one_process.path = root / "evaluations.py"
    one = _one_process(model, data["x"], data["y"])
    assert torch.equal(one["index"], torch.arange(77)) and torch.equal(two["index"], one["index"])
    for key in ("robust", "clean", "fooled", "correct"):
        assert torch.equal(one[key], two[key]), key
    for key in ("accuracy", "clean_accuracy", "n", "curve", "fgsm_curve"):
        assert one[key] == two[key], key
    assert one["accuracy"] <= one["clean_accuracy"]
    # the attack did something: not every example survived it
    assert (one["robust"] != one["clean"]).any()


def test_outside_a_process_group_nothing_is_sharded(trained_mlp, mnist_1000):
    x, y = mnist_1000["test"]
    run = bind("fgsm", trained_mlp, eps=0.1)
    out = outcomes((x[:20], y[:20]), {"model": trained_mlp}, run, batch_size=7)
    assert torch.equal(out.index, torch.arange(20))
    assert not torch.distributed.is_initialized()
    assert os.environ.get("RANK") is None
    # and the public functions agree with the outcomes
    acc = evaluate.robust_accuracy(trained_mlp, x[:20], y[:20], "fgsm", eps=0.1,
                                   progress=False)
    assert float(acc) == out.robust("model").float().mean().item()
    m = transfer.transfer_matrix({"a": trained_mlp}, {"a": trained_mlp}, x[:20], y[:20],
                                 attack="fgsm", eps=0.1, progress=False)
    assert m["a"]["a"] == float(acc)


def _json_without_timings(path):
    import json

    record = json.loads(path.read_text())
    for key in ("seconds", "torch_threads"):
        record.pop(key, None)
    for result in record.get("results", {}).values():
        result.pop("seconds", None)
    for part in record.get("split", {}).values():  # autoattack: this process's time per attack
        part.pop("seconds", None)
    return record


@pytest.mark.parametrize("command", [
    ["attack", "--attack", "pgd", "--eps", "0.1", "--steps", "3", "--images", "50",
     "--batch-size", "16"],
    ["explain", "--methods", "saliency,integrated_gradients", "--images", "6", "--steps", "4"],
    ["autoattack", "--eps", "0.1", "--version", "fast", "--images", "30", "--batch-size", "8"],
])
def test_cli_commands_under_torchrun_match_one_process(command, setup, subprocess_env, tmp_path):
    root = setup
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    outputs = {}
    for procs in (1, 2):
        target = tmp_path / f"out{procs}"
        scored = command[0] in ("attack", "autoattack")
        out = [str(target / "r.json")] if scored else [str(target)]
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc-per-node", "2", "-m", "robustkit"] if procs == 2
                    else [sys.executable, "-m", "robustkit"])
        done = subprocess.run([*launcher, *command, "--checkpoint", str(root / "m.pt"),
                               "--out", *out, *(["--quiet"] if scored else [])],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        outputs[procs] = (_json_without_timings(target / "r.json") if scored
                          else _json_without_timings(target / "explain.json"))
        if procs == 2:  # rank 0 alone printed the result
            assert done.stdout.count("robust accuracy" if scored
                                     else "alignment with the image") == 1
    assert outputs[1] == outputs[2]


def test_a_killed_attack_under_torchrun_resumes_without_recomputing_finished_blocks(
        setup, subprocess_env, tmp_path, monkeypatch):
    """`robustkit attack --out r.json` under torchrun keeps each finished block in
    r.json.parts/; killed (every rank) after some blocks are stored, a rerun (here in one
    process: blocks do not depend on the number of processes) computes only the rest, and
    writes what an uninterrupted run writes."""
    from test_distributed_run import _kill_when

    import robustkit.outcomes as outcomes_module
    from robustkit.cli import main

    root = setup
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    command = ["attack", "--checkpoint", str(root / "m.pt"), "--attack", "pgd", "--eps", "0.1",
               "--steps", "40", "--images", "300", "--batch-size", "10", "--quiet"]
    whole = tmp_path / "whole.json"
    assert main([*command, "--out", str(whole)]) == 0
    assert not (tmp_path / "whole.json.parts").exists()  # cleared once the result is written
    out = tmp_path / "r.json"
    parts = tmp_path / "r.json.parts" / "attack"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", "2", "-m", "robustkit", *command,
                             "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: len(list(parts.glob("block-*.pt"))) >= 4, "4 finished blocks",
               (0, 1))
    done = {p.name: p.stat().st_mtime_ns for p in parts.glob("block-*.pt")}
    assert 4 <= len(done) < 30 and not out.exists()
    computed = []
    real = outcomes_module._score_batch

    def counting(*args, **kwargs):
        computed.append(int(args[2][0]))  # the block's first index
        return real(*args, **kwargs)

    monkeypatch.setattr(outcomes_module, "_score_batch", counting)
    assert main([*command, "--out", str(out)]) == 0
    assert sorted(computed) == sorted(set(range(0, 300, 10)) - {int(n[6:-3]) for n in done})
    assert _json_without_timings(out) == _json_without_timings(whole)
    # a store of another computation is refused, not mixed in
    (tmp_path / "s.json.parts" / "attack").mkdir(parents=True)
    (tmp_path / "s.json.parts" / "fingerprint.json").write_text('{"command": "curve"}')
    assert main([*command, "--out", str(tmp_path / "s.json")]) == 2
    assert main([*command, "--out", str(tmp_path / "s.json"), "--fresh"]) == 0
