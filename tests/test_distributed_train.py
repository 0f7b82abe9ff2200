"""Training under torch.distributed, for real: 2 gloo processes on this machine train one
model with DistributedDataParallel.

What holds between 2 processes and 1 (same seed, same settings): every rank draws the same
order and the same batches of ``batch_size`` as one process, trains on its rows of each,
weighs its loss by its share, and draws the augmentation for the whole batch; so a step's
gradient is that of the same batch. Without dropout the weights then differ from one
process only by the order of floating-point sums (about 1e-8 after 2 epochs here; the test
allows 1e-4), and the test accuracy agrees to within one image in 200. With dropout the
masks differ (each rank has its own stream), so only closeness of accuracy holds. Between
the ranks of one run the weights are equal bit for bit, and a run killed after an epoch
and resumed ends bit for bit as the uninterrupted 2-process run; a Dataset holding the same
images trains to the same weights as the tensors, as in one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from robustkit import models
from robustkit.core import accuracy_of

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2"]

TRAIN = ["train", "--model", "mlp", "--model-options", "hidden=[32],dropout=0", "--epochs", "2",
         "--train-size", "500", "--batch-size", "32", "--device", "cpu", "--amp", "off",
         "--quiet"]


def _launch(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done


def test_robustkit_train_under_torchrun_trains_one_model_with_ddp(tmp_path, subprocess_env,
                                                                  mnist_1000):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _launch([sys.executable, "-m", "robustkit", *TRAIN, "--out", str(one)], subprocess_env)
    done = _launch([*TORCHRUN, "-m", "robustkit", *TRAIN, "--out", str(two)], subprocess_env)
    # Rank 0 alone printed, and saved (no other checkpoint, no resume file left).
    assert done.stdout.count("test accuracy") == 1
    assert "cpu x 2 processes (DistributedDataParallel)" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "two.pt"]

    m1, m2 = models.load(one), models.load(two)
    meta1, meta2 = m1.robustkit_metadata, m2.robustkit_metadata
    assert meta2["processes"] == 2 and "processes" not in meta1
    xt, yt = mnist_1000["test"]
    acc1, acc2 = accuracy_of(m1, xt, yt), accuracy_of(m2, xt, yt)
    # The recorded test accuracy is the loaded model's, and well above chance (0.1).
    assert meta2["test_accuracy"] == pytest.approx(acc2, abs=1e-6) and acc2 > 0.5
    # The same batches and gradients as one process, summed in another order.
    for (name, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert (p1 - p2).abs().max().item() < 1e-4, name
    assert abs(acc1 - acc2) <= 0.005
    assert [len(meta1["history"]), len(meta2["history"])] == [2, 2]


SCRIPT = textwrap.dedent('''
    """fit under DistributedDataParallel, in one of three modes (argv[2]):
    whole: uninterrupted, from tensors and from a Dataset; die: rank 0 dies (os._exit, a
    real process death) right after the epoch-2 snapshot is written; resume: goes on from
    that snapshot. Each rank writes its weights' hashes and its history."""
    import hashlib, json, os, sys, warnings
    import torch
    import torch.distributed as dist
    from torch.utils.data import Subset, TensorDataset
    from robustkit import data, models, snapshot
    from robustkit.train import fit

    SETTINGS = dict(epochs=3, batch_size=32, lr=0.01, augment="affine", amp=False, quiet=True,
                    seed=3, device="cpu",
                    adversarial={"method": "fgsm-rs", "eps": 0.1, "guard_size": 32})

    def fresh():
        torch.manual_seed(0)
        return models.create("mlp", hidden=(32,), dropout=0.2)

    def digest(model):
        h = hashlib.sha256()
        for v in model.state_dict().values():
            h.update(v.contiguous().numpy().tobytes())
        return h.hexdigest()

    def epochs(history):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in history.epochs]

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out, mode = sys.argv[1], sys.argv[2]
    rank = dist.get_rank()
    x, y = data.load_tensors("mnist-5k", "train", train_size=250, seed=0)  # odd batches
    xt, yt = data.load_tensors("mnist-5k", "test")
    train, test = (x, y), (xt[:101], yt[:101])
    record = {}
    if mode == "whole":
        whole_model = fresh()
        whole = fit(whole_model, train, test, **SETTINGS)
        dataset_model = fresh()  # read item by item, in the same order as the tensors
        fit(dataset_model, Subset(TensorDataset(x, y), range(len(y))), test, **SETTINGS)
        record = {"whole": digest(whole_model), "dataset": digest(dataset_model),
                  "history": epochs(whole), "processes": whole.processes,
                  "held_out": whole.held_out}
    elif mode == "die":
        real = snapshot.save
        def save_then_die(path, state):
            real(path, state)
            if state["epoch"] == 2:
                os._exit(9)  # killed: no clean-up, no destructors
        snapshot.save = save_then_die
        fit(fresh(), train, test, resume=f"{out}/m.resume", **SETTINGS)
        raise SystemExit("the run was not killed")
    else:
        resumed_model = fresh()
        resumed = fit(resumed_model, train, test, resume=f"{out}/m.resume", **SETTINGS)
        record = {"resumed": digest(resumed_model), "resumed_history": epochs(resumed)}
    with open(f"{out}/{mode}{rank}.json", "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()
''')


def test_ddp_ranks_hold_the_same_weights_and_a_killed_run_resumes_bit_for_bit(tmp_path,
                                                                              subprocess_env):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    _launch([*TORCHRUN, str(script), str(tmp_path), "whole"], subprocess_env)
    died = subprocess.run([*TORCHRUN, str(script), str(tmp_path), "die"],
                          env={**subprocess_env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert died.returncode != 0  # rank 0 died after the epoch-2 snapshot; torchrun stopped
    assert (tmp_path / "m.resume").exists()
    _launch([*TORCHRUN, str(script), str(tmp_path), "resume"], subprocess_env)
    whole = [json.loads((tmp_path / f"whole{r}.json").read_text()) for r in (0, 1)]
    resumed = [json.loads((tmp_path / f"resume{r}.json").read_text()) for r in (0, 1)]
    assert whole[0]["processes"] == 2 and whole[0]["held_out"] == 32
    # Every rank holds the same weights and the same history (from tensors or a Dataset) ...
    assert whole[0]["whole"] == whole[1]["whole"] == whole[0]["dataset"] == whole[1]["dataset"]
    assert whole[0]["history"] == whole[1]["history"]
    # ... and the resumed run ends bit for bit as the uninterrupted one, on every rank.
    for w, r in zip(whole, resumed):
        assert r["resumed"] == w["whole"]
        assert r["resumed_history"] == w["history"]
    history = whole[0]["history"]
    assert len(history) == 3 and all(e["guard_accuracy"] is not None for e in history)
    assert all(e["test_accuracy"] is not None for e in history)
