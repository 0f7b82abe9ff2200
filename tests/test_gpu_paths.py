"""The GPU paths, checked where they can be on a CPU: mixed-precision attacks (bfloat16
autocast here, float16 on CUDA) judged in float32, the sync-free early stop that CUDA
devices take, device selection. On a machine with CUDA the last test also runs there."""

from __future__ import annotations

import pytest
import torch

from robustkit import attacks, evaluate, models
from robustkit.attacks.pgd import _iterate_masked, iterate
from robustkit.attacks.threat import THREATS
from robustkit.core import borrowed, pick_device


@pytest.fixture(scope="module")
def batch(mnist_1000):
    x, y = mnist_1000["test"]
    return x[:200], y[:200]


def test_the_sync_free_early_stop_equals_the_compacting_one(trained_mlp, batch):
    x, y = batch
    tm = THREATS.get("linf")
    e = torch.full((len(x), 1, 1, 1), 0.1)
    a = e * 2.5 / 10
    start = tm.random_start(x, e, torch.Generator().manual_seed(0))
    with borrowed(trained_mlp, "test"):
        spent_a = torch.zeros(len(x), dtype=torch.long)
        spent_b = torch.zeros(len(x), dtype=torch.long)
        xa, sa = iterate(trained_mlp, x, y, start, threat=tm, eps=e, alpha=a, steps=10,
                         targeted=False, early_stop=True, spent=spent_a)
        xb, sb = _iterate_masked(trained_mlp, x, y, start, threat=tm, eps=e, alpha=a,
                                 steps=10, targeted=False, loss="ce", spent=spent_b)
    assert sa is not None and torch.equal(sa, sb)
    assert torch.allclose(xa, xb, atol=1e-6)
    assert torch.equal(spent_a, spent_b)
    assert 0 < int(sa.sum()) < len(x)


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "mifgsm"])
def test_mixed_precision_attacks_stay_in_the_ball_and_leave_the_model_float32(
        name, trained_mlp, batch):
    x, y = batch
    options = {"eps": 0.1, "amp": True, **({"steps": 5} if name != "fgsm" else {})}
    x_adv = attacks.ATTACKS.get(name)(trained_mlp, x, y, **options)
    assert x_adv.dtype == torch.float32
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert all(p.dtype == torch.float32 for p in trained_mlp.parameters())
    assert not torch.is_autocast_enabled("cpu")  # the autocast ended with the attack


def test_mixed_precision_robust_accuracy_is_close_and_judged_in_float32(trained_mlp, batch):
    x, y = batch
    full = evaluate.robust_accuracy(trained_mlp, x, y, "pgd", eps=0.1, steps=10,
                                    progress=False)
    mixed = evaluate.robust_accuracy(trained_mlp, x, y, "pgd", eps=0.1, steps=10, amp=True,
                                     progress=False)
    assert mixed.clean_accuracy == full.clean_accuracy  # the clean pass is float32 in both
    assert abs(float(mixed) - float(full)) <= 0.05
    c_full = evaluate.robustness_curve(trained_mlp, x, y, eps=[0.05, 0.1], steps=5,
                                       progress=False)
    c_mixed = evaluate.robustness_curve(trained_mlp, x, y, eps=[0.05, 0.1], steps=5,
                                        amp=True, progress=False)
    for a, b in zip(c_full, c_mixed):
        assert abs(a["accuracy"] - b["accuracy"]) <= 0.05
        assert a["clean_accuracy"] == b["clean_accuracy"]


def test_auto_picks_cuda_when_present_and_load_honours_it(tmp_path, trained_mlp):
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        else "cpu")
    assert pick_device("auto").type == expected
    models.save(trained_mlp, tmp_path / "m.pt")
    loaded = models.load(tmp_path / "m.pt", device="auto")
    assert next(loaded.parameters()).device.type == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_on_cuda_an_attack_runs_on_the_models_device(trained_mlp, batch):
    x, y = batch
    model = models.create("mlp", hidden=(64,), dropout=0.0)
    model.load_state_dict(trained_mlp.state_dict())
    model = model.cuda().eval()
    x_adv = attacks.pgd(model, x, y, eps=0.1, steps=5, amp=True, seed=0)
    assert x_adv.device.type == "cuda"
    acc = evaluate.robust_accuracy(model, x, y, "pgd", eps=0.1, steps=5, progress=False)
    assert float(acc) <= acc.clean_accuracy
