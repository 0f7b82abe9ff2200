"""Training: losses go down, runs are reproducible on the CPU, the losses are the textbook
ones, and train_and_save records what produced a checkpoint."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from robustkit import data, models
from robustkit.config import TrainConfig
from robustkit.errors import RobustkitError
from robustkit.core import predict
from robustkit.train import (History, epoch_line, fit, loss_function, random_shift, run_epoch,
                             setup, train_and_save)

QUIET = {"quiet": True, "device": "cpu"}


def _logistic():
    torch.manual_seed(0)
    return models.create("logistic", (1, 28, 28), 10, mean=(0.1307,), std=(0.3081,))


def _mean_loss(model, x, y, loss: str) -> float:
    with torch.no_grad():
        return loss_function(loss, 10)(predict(model, x), y).item()


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_a_few_epochs_lower_the_loss(loss, mnist_small, mnist_test_small):
    x, y = mnist_small
    model = _logistic()
    before = _mean_loss(model, x, y, loss)
    history = fit(model, (x, y), mnist_test_small, epochs=3, batch_size=32, lr=0.02, loss=loss,
                  augment="none", **QUIET)
    after = _mean_loss(model, x, y, loss)
    assert after < 0.8 * before
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert history.final_test_accuracy > 0.5  # chance is 0.1


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(mnist_small):
    # An MLP with dropout and shifts, so shuffling, dropout masks and offsets all draw randomness.
    def run(seed):
        torch.manual_seed(0)  # the same initial weights each time
        model = models.create("mlp", hidden=(16,), dropout=0.2)
        fit(model, mnist_small, epochs=2, batch_size=64, lr=0.05, augment="shift", seed=seed,
            **QUIET)
        return model.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])
    assert not torch.equal(a["out.weight"], c["out.weight"])


def test_seed_alone_changes_the_order_of_batches(mnist_small):
    # No dropout, no augmentation: only the shuffling depends on the seed.
    def run(seed):
        model = _logistic()
        fit(model, mnist_small, epochs=1, batch_size=64, augment="none", seed=seed, **QUIET)
        return model.linear.weight.detach().clone()

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_history_records_every_epoch(mnist_small, mnist_test_small):
    model = _logistic()
    history = fit(model, mnist_small, mnist_test_small, epochs=2, batch_size=64, **QUIET)
    assert isinstance(history, History)
    assert [e["epoch"] for e in history.epochs] == [1, 2]
    for e in history.epochs:
        assert {"epoch", "loss", "train_accuracy", "test_accuracy", "lr", "seconds"} <= set(e)
        assert e["loss"] > 0 and e["seconds"] >= 0 and e["lr"] > 0
        assert 0.0 <= e["train_accuracy"] <= 1.0 and 0.0 <= e["test_accuracy"] <= 1.0
    assert history.final_test_accuracy == history.epochs[-1]["test_accuracy"]
    assert history.seconds == pytest.approx(sum(e["seconds"] for e in history.epochs))
    # amp=None picks bfloat16 only where the CPU runs it natively
    assert history.device == "cpu" and history.amp in (None, "bfloat16")
    assert fit(_logistic(), mnist_small, epochs=1, amp=False, **QUIET).amp is None
    # test_accuracy is the accuracy of the final model on the test data
    x_test, y_test = mnist_test_small
    acc = (predict(model, x_test).argmax(1) == y_test).float().mean().item()
    assert history.final_test_accuracy == pytest.approx(acc)


def test_history_without_test_data_has_none(mnist_small):
    history = fit(_logistic(), mnist_small, epochs=1, **QUIET)
    assert history.epochs[0]["test_accuracy"] is None
    assert history.final_test_accuracy is None


def test_fit_leaves_the_model_in_eval_mode(mnist_small, tiny_mlp):
    tiny_mlp.train()
    fit(tiny_mlp, mnist_small, epochs=1, **QUIET)
    assert not tiny_mlp.training
    assert all(not m.training for m in tiny_mlp.modules())
    assert all(p.grad is None for p in tiny_mlp.parameters())


def test_fit_accepts_a_config_and_keywords_override_it(mnist_small):
    cfg = TrainConfig(epochs=3, batch_size=128, lr=0.01)
    history = fit(_logistic(), mnist_small, config=cfg, epochs=1, **QUIET)
    assert len(history.epochs) == 1


@pytest.mark.parametrize("bad,match", [
    ({"epochs": 0}, "epochs"),
    ({"epochs": -2}, "epochs"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1.0}, "lr"),
    ({"loss": "hinge"}, "loss"),
    ({"batch_size": 0}, "batch_size"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"augment": "flip"}, "augment"),
])
def test_bad_config_values_raise(bad, match, mnist_small):
    model = _logistic()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RobustkitError, match=match):
        fit(model, mnist_small, **bad, **QUIET)
    with pytest.raises(RobustkitError, match=match):
        TrainConfig(**bad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_bad_data_raises(tiny_mlp):
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(RobustkitError, match="x must be"):
        fit(tiny_mlp, (x, torch.zeros(3, dtype=torch.long)), **QUIET)
    with pytest.raises(RobustkitError, match="empty"):
        fit(tiny_mlp, (x[:0], torch.zeros(0, dtype=torch.long)), **QUIET)
    with pytest.raises(RobustkitError, match="mixed precision is not supported on meta"):
        fit(tiny_mlp, (x, torch.zeros(4, dtype=torch.long)), amp=True, quiet=True,
            device=torch.device("meta"))


def test_amp_choice():
    from robustkit.core import amp_dtype_for

    assert amp_dtype_for(torch.device("cuda"), None) == torch.float16
    assert amp_dtype_for(torch.device("cuda"), False) is None
    assert amp_dtype_for(torch.device("cpu"), True) == torch.bfloat16
    assert amp_dtype_for(torch.device("cpu"), False) is None


def test_bfloat16_training_on_cpu_lowers_the_loss_and_is_deterministic(mnist_small):
    def run():
        model = _logistic()
        h = fit(model, mnist_small, epochs=2, batch_size=64, lr=0.02, augment="none", amp=True,
                **QUIET)
        return h, model.linear.weight.detach().clone()

    (h1, w1), (_, w2) = run(), run()
    assert h1.amp == "bfloat16"
    assert h1.epochs[-1]["loss"] < h1.epochs[0]["loss"]
    assert torch.equal(w1, w2)


def test_random_shift_keeps_shape_and_zero_shift_is_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 6, generator=g)
    assert random_shift(x, 2, g).shape == x.shape
    assert torch.equal(random_shift(x, 0, g), x)


def _translate(img, dy, dx):
    """img (C, H, W) moved by (dy, dx): out[:, i, j] = img[:, i + dy, j + dx], zero outside."""
    out = torch.zeros_like(img)
    _, h, w = img.shape
    for i, j in itertools.product(range(h), range(w)):
        if 0 <= i + dy < h and 0 <= j + dx < w:
            out[:, i, j] = img[:, i + dy, j + dx]
    return out


def test_random_shift_is_a_zero_filled_translation_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 2, 5, 5, generator=g) + 0.1  # no zeros in the original
    out = random_shift(x, 1, g)
    seen = set()
    for img, moved in zip(x, out):
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if torch.equal(moved, _translate(img, dy, dx))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 1  # each image draws its own offset


def test_mse_loss_is_the_quadratic_cost_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0, 3, 1, 1, 2, 0])
    expected = 0.0
    for n in range(6):
        z = logits[n]
        p = [torch.exp(z[k]).item() / torch.exp(z).sum().item() for k in range(4)]
        expected += sum((p[k] - (1.0 if k == y[n] else 0.0)) ** 2 for k in range(4))
    expected /= 6
    got = loss_function("mse", 4)(logits, y)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_loss_is_the_negative_log_likelihood_by_hand():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, generator=g)
    y = torch.tensor([2, 0, 1, 1, 0])
    expected = -logits.log_softmax(1)[torch.arange(5), y].mean()
    torch.testing.assert_close(loss_function("cross_entropy", 3)(logits, y), expected)
    # label smoothing eps: the target is (1 - eps) one-hot + eps / K uniform
    eps = 0.2
    target = F.one_hot(y, 3) * (1 - eps) + eps / 3
    expected_smooth = -(target * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(loss_function("cross_entropy", 3, eps)(logits, y), expected_smooth)


def test_unknown_loss_function_is_refused():
    with pytest.raises(RobustkitError, match="hinge"):
        loss_function("hinge", 10)


def test_predict_restores_the_training_flag(tiny_mlp, tiny_batch):
    tiny_mlp.train()
    out = predict(tiny_mlp, tiny_batch, batch_size=3)  # three batches: 3 + 3 + 2
    assert tiny_mlp.training
    assert out.shape == (8, 10)
    tiny_mlp.eval()
    with torch.no_grad():
        torch.testing.assert_close(out, tiny_mlp(tiny_batch))


def test_setup_and_run_epoch_are_fit_in_pieces(mnist_small):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.02, augment="shift")
    whole = _logistic()
    history = fit(whole, mnist_small, config=cfg, amp=False, **QUIET)
    pieces = _logistic()
    run = setup(pieces, mnist_small, None, cfg, None, device="cpu", amp=False)
    assert run.done == 0 and len(run.loader) == 4  # 256 images in batches of 64
    records = [run_epoch(run, epoch)[0] for epoch in (1, 2)]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in records] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in history.epochs]
    assert torch.equal(pieces.linear.weight, whole.linear.weight)


def test_epoch_line_formats_a_record():
    record = {"epoch": 3, "loss": 0.12345, "train_accuracy": 0.9, "test_accuracy": 0.85,
              "guard_accuracy": 0.5, "guard_single_step_accuracy": 0.6, "seconds": 2.26}
    assert epoch_line(record, 10) == ("epoch   3/10  loss 0.1235  train acc 0.9000  held-out "
                                      "pgd acc 0.5000 (single step 0.6000)  test acc 0.8500  "
                                      "2.3s")
    assert epoch_line({**record, "test_accuracy": None, "guard_accuracy": None}, 10) == \
        "epoch   3/10  loss 0.1235  train acc 0.9000  2.3s"


def test_labels_of_any_integer_dtype_and_float64_images_are_taken(mnist_small):
    x, y = mnist_small
    a, b = _logistic(), _logistic()
    fit(a, (x, y), epochs=1, augment="none", amp=False, **QUIET)
    fit(b, (x.double(), y.to(torch.int32)), epochs=1, augment="none", amp=False, **QUIET)
    assert torch.equal(a.linear.weight, b.linear.weight)


@pytest.mark.parametrize("split,match", [
    (lambda x, y: torch.utils.data.TensorDataset(x, y, y), "a TensorDataset of \\(x, y\\)"),
    (lambda x, y: [x], "an \\(x, y\\) pair"),
    (lambda x, y: (x.numpy(), y), "must be \\(x, y\\) tensors"),
], ids=["three-tensors", "one-tensor", "numpy"])
def test_a_split_that_is_not_x_y_is_refused(split, match, tiny_batch):
    with pytest.raises(RobustkitError, match=match):
        fit(_logistic(), split(tiny_batch, torch.zeros(8, dtype=torch.long)), epochs=1, **QUIET)


def test_a_negative_eval_every_is_refused(tiny_batch):
    with pytest.raises(RobustkitError, match="eval_every must be an integer >= 0"):
        fit(_logistic(), (tiny_batch, torch.zeros(8, dtype=torch.long)), eval_every=-1, **QUIET)


FAST = TrainConfig(epochs=2, batch_size=64, lr=0.02, augment="none")


def test_train_and_save_records_what_produced_the_checkpoint(tmp_path):
    lines: list[str] = []
    out = tmp_path / "m.pt"
    model, history = train_and_save("logistic", "mnist-5k", out, config=FAST, seed=1,
                                    train_size=200, device="cpu", amp=False, log=lines.append)
    assert out.exists() and not (tmp_path / "m.pt.resume").exists()
    meta = models.load(out).robustkit_metadata
    assert {k: meta[k] for k in ("dataset", "train_size", "seed", "epochs", "training",
                                 "training_method", "threat_model", "device", "amp")} == {
        "dataset": "mnist-5k", "train_size": 200, "seed": 1, "epochs": 2,
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.02, "loss": "cross_entropy",
                     "optimizer": "sgd", "weight_decay": 5e-4, "label_smoothing": 0.0,
                     "augment": "none"},
        "training_method": "standard", "threat_model": None, "device": "cpu", "amp": None}
    assert meta["test_accuracy"] == history.final_test_accuracy > 0.5
    assert meta["history"] == history.epochs and meta["train_seconds"] == history.seconds
    assert [e["test_accuracy"] is None for e in history.epochs] == [True, False]  # eval_every 0
    assert len(lines) == 1 and lines[0].startswith(
        "training logistic (7,850 parameters) on mnist-5k (200 train / 1000 test), seed 1: ")
    x, y = data.load_tensors("mnist-5k", "test")
    assert history.final_test_accuracy == pytest.approx(
        (predict(model, x).argmax(1) == y).float().mean().item())


def test_train_and_save_resumes_and_fresh_starts_over(tmp_path, monkeypatch):
    from robustkit import snapshot

    out, state = tmp_path / "m.pt", tmp_path / "m.pt.resume"
    real = snapshot.save

    def save_then_die(path, saved):
        real(path, saved)
        raise KeyboardInterrupt

    kwargs = dict(config=FAST, train_size=200, device="cpu", amp=False)
    with monkeypatch.context() as m:
        m.setattr(snapshot, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_and_save("logistic", "mnist-5k", out, **kwargs)
    assert state.exists() and not out.exists()
    _, resumed = train_and_save("logistic", "mnist-5k", out, **kwargs)
    _, fresh = train_and_save("logistic", "mnist-5k", tmp_path / "f.pt", fresh=True, **kwargs)
    assert [e["loss"] for e in resumed.epochs] == [e["loss"] for e in fresh.epochs]
    torch.save({"format": 0}, state)  # a state it cannot use
    with pytest.raises(RobustkitError, match="m.pt.resume"):
        train_and_save("logistic", "mnist-5k", out, **kwargs)
    train_and_save("logistic", "mnist-5k", out, fresh=True, **kwargs)
    assert not state.exists()


def test_train_and_save_takes_options_a_test_split_and_adversarial_training(tmp_path,
                                                                           mnist_test_small):
    adv = {"method": "fgsm-rs", "eps": 0.1, "guard": False}
    _, history = train_and_save("mlp", "mnist-5k", tmp_path / "m.pt", config=FAST,
                                train_size=200, options={"hidden": [8]}, adversarial=adv,
                                test=mnist_test_small, device="cpu", amp=False)
    loaded = models.load(tmp_path / "m.pt")
    assert loaded.robustkit_spec["options"] == {"hidden": [8]}
    meta = loaded.robustkit_metadata
    assert meta["training_method"] == "fgsm-rs"
    assert meta["threat_model"] == {"norm": "linf", "eps": 0.1}
    assert history.final_test_accuracy == pytest.approx(
        (predict(loaded, mnist_test_small[0]).argmax(1) == mnist_test_small[1])
        .float().mean().item())


def test_train_py_imports_neither_the_cli_nor_the_experiments():
    import ast
    from pathlib import Path

    import robustkit.train

    tree = ast.parse(Path(robustkit.train.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith(("robustkit.cli",
                                                           "robustkit.experiment"))}
