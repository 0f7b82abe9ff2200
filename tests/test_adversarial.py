"""Adversarial training: robustness goes up, the inner attack stays in the ball, the guard
restores the weights it kept, and bad settings are refused naming the field."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F

from robustkit import adversarial, models
from robustkit.adversarial import (
    ADVERSARIAL_DEFAULTS,
    AdversarialLoss,
    adversarial_training,
    checkpoint_metadata,
    perturb,
)
from robustkit.config import AdversarialConfig, from_dict
from robustkit.errors import RobustkitError
from robustkit.evaluate import robust_accuracy
from robustkit.train import fit
from tests.test_cli import run_main

QUIET = {"quiet": True, "device": "cpu", "amp": False}
# A budget that a 64-unit MLP trains to ~85% clean accuracy in about a second.
BUDGET = {"epochs": 8, "batch_size": 64, "lr": 0.01, "optimizer": "adam", "weight_decay": 0.0,
          "augment": "none"}


def _mlp(hidden: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("mlp", hidden=(hidden,), dropout=0.0)


class _Probe:
    """Stands in for the guard's PGD probe: returns scripted accuracies in turn and keeps
    the weights and held-out labels it was shown."""

    def __init__(self, accuracies: list[float]) -> None:
        self.accuracies = accuracies
        self.weights: list[dict[str, torch.Tensor]] = []
        self.labels: list[torch.Tensor] = []

    def __call__(self, model, x, y, cfg, seed=0) -> float:
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        self.labels.append(y.clone())
        return self.accuracies[len(self.weights) - 1]


def _scripted_guard(monkeypatch, accuracies: list[float],
                    single_step: list[float] | None = None) -> _Probe:
    """Script the guard's PGD probe, and its single-step probe (default: the same values,
    so no overfitting signature)."""
    probe = _Probe(accuracies)
    monkeypatch.setattr(adversarial, "guard_accuracy", probe)
    steps = iter(single_step or accuracies)
    monkeypatch.setattr(adversarial, "single_step_accuracy", lambda *a, **k: next(steps))
    return probe


# ----------------------------------------------------------------------------- robustness

@pytest.mark.parametrize("method", ["pgd", "trades", "fgsm-rs"])
def test_adversarially_trained_twin_is_more_robust_at_the_training_eps(method, mnist_1000):
    # Same initial weights, seed, data and budget; only the training examples differ.
    x, y = mnist_1000["test"]
    xt, yt = x[::5], y[::5]  # 200 test images, 20 per class
    eps = 0.1
    standard, robust = _mlp(), _mlp()
    fit(standard, mnist_1000["train"], **BUDGET, seed=0, **QUIET)
    fit(robust, mnist_1000["train"], **BUDGET, seed=0, **QUIET,
        adversarial={"method": method, "eps": eps, "guard_size": 100})
    kw = {"eps": eps, "steps": 20, "seed": 0, "progress": False}
    std_acc = robust_accuracy(standard, xt, yt, "pgd", **kw)
    adv_acc = robust_accuracy(robust, xt, yt, "pgd", **kw)
    # Measured over seeds 0-2: 0.31-0.36 standard against 0.56-0.65 for each method.
    # Robust accuracy never exceeds clean accuracy.
    assert adv_acc > std_acc + 0.1
    clean = (robust(xt).argmax(1) == yt).float().mean().item()
    assert adv_acc <= clean


@pytest.mark.parametrize("method", ["fgsm-rs", "pgd", "trades"])
def test_each_method_trains_and_records_its_threat_model(method, mnist_1000, tmp_path):
    x, y = mnist_1000["train"]
    model = _mlp()
    history = fit(model, (x[:400], y[:400]), mnist_1000["test"], epochs=2, batch_size=64,
                  lr=0.01, optimizer="adam", seed=0, **QUIET,
                  adversarial={"method": method, "eps": 0.1, "guard_size": 50})
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert history.adversarial["method"] == method
    assert history.adversarial["steps"] == (1 if method == "fgsm-rs" else 10)
    assert history.adversarial["alpha"] == pytest.approx(
        0.125 if method == "fgsm-rs" else 0.025)
    assert history.held_out == 50
    for e in history.epochs:
        assert 0.0 <= e["guard_accuracy"] <= 1.0 and e["restored"] is None
        assert 0.0 <= e["train_accuracy"] <= 1.0 and e["loss"] > 0
    meta = checkpoint_metadata(history)
    assert meta["training_method"] == method
    assert meta["threat_model"] == {"norm": "linf", "eps": 0.1}
    path = models.save(model, tmp_path / "m.pt", **meta)
    saved = models.load(path).robustkit_metadata
    assert saved["training_method"] == method
    assert saved["threat_model"] == {"norm": "linf", "eps": 0.1}
    assert saved["adversarial"]["method"] == method and saved["guard"] == []


def test_standard_training_records_its_method(mnist_small):
    history = fit(_mlp(), mnist_small, epochs=1, **QUIET)
    assert history.adversarial is None and history.held_out == 0
    assert "guard_accuracy" not in history.epochs[0]
    assert checkpoint_metadata(history) == {"training_method": "standard", "threat_model": None}


def test_same_seed_gives_identical_adversarial_training(mnist_small):
    def run(seed):
        model = _mlp(16)
        fit(model, mnist_small, epochs=1, batch_size=64, seed=seed, **QUIET,
            adversarial={"method": "pgd", "eps": 0.1, "steps": 2, "guard": False})
        return model.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


# ----------------------------------------------------------------------------- inner attack

@pytest.mark.parametrize("method", ["fgsm-rs", "pgd", "trades"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_perturbation_stays_in_the_ball_and_the_box_and_modes_come_back(method, norm, eps,
                                                                         mnist_small):
    x, y = mnist_small[0][:32], mnist_small[1][:32]
    torch.manual_seed(0)
    model = models.create("mlp", hidden=(16,), dropout=0.5).train()
    model.drop1.eval()  # a submodule with its own mode must get it back
    cfg = AdversarialConfig(method=method, eps=eps, norm=norm, steps=None if method == "fgsm-rs"
                            else 3)
    x_adv = perturb(model, x, y, cfg, generator=torch.Generator().manual_seed(0))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and not model.drop1.training
    assert all(p.grad is None for p in model.parameters())
    assert not x_adv.requires_grad


def test_fgsm_rs_is_one_signed_step_from_the_random_start(mnist_small):
    # Wong et al. 2020, Algorithm 3, by hand: delta ~ U(-eps, eps); delta += alpha sign(grad);
    # delta clipped to [-eps, eps]; x + delta clipped to [0, 1].
    x, y = mnist_small[0][:16], mnist_small[1][:16]
    model = _mlp(16).eval()
    eps, alpha = 0.1, 0.125
    start = (x + eps * (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1)
             ).clamp(x - eps, x + eps).clamp(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(start), y, reduction="sum"), start)
    expected = torch.min(torch.max(start + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    got = perturb(model, x, y, AdversarialConfig(method="fgsm-rs", eps=eps),
                  generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-6)


def test_pgd_and_trades_increase_their_objectives(trained_mlp, mnist_1000):
    x, y = mnist_1000["test"][0][:100], mnist_1000["test"][1][:100]
    gen = torch.Generator().manual_seed(0)
    pgd_adv = perturb(trained_mlp, x, y, AdversarialConfig(method="pgd", eps=0.1), generator=gen)
    trades_adv = perturb(trained_mlp, x, y, AdversarialConfig(method="trades", eps=0.1),
                         generator=gen)
    with torch.no_grad():
        clean_logits = trained_mlp(x)
        assert F.cross_entropy(trained_mlp(pgd_adv), y) > F.cross_entropy(clean_logits, y) + 0.5
        kl = F.kl_div(trained_mlp(trades_adv).log_softmax(1), clean_logits.softmax(1),
                      reduction="batchmean")
        assert kl > 0.1  # zero at the clean images


def test_trades_loss_is_cross_entropy_plus_beta_kl_by_hand(trained_mlp, mnist_small):
    x, y = mnist_small[0][:32], mnist_small[1][:32]
    cfg = AdversarialConfig(method="trades", eps=0.1, steps=2, trades_beta=6.0)
    loss_fn = AdversarialLoss(cfg, F.cross_entropy, generator=torch.Generator().manual_seed(0))
    loss, logits = loss_fn(trained_mlp, x, y)
    x_adv = perturb(trained_mlp, x, y, cfg, generator=torch.Generator().manual_seed(0))
    clean, adv = trained_mlp(x), trained_mlp(x_adv)
    kl = (clean.softmax(1) * (clean.log_softmax(1) - adv.log_softmax(1))).sum(1).mean()
    torch.testing.assert_close(loss, F.cross_entropy(clean, y) + 6.0 * kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, adv)
    trained_mlp.zero_grad(set_to_none=True)


def test_eps_warm_up_ramps_linearly_then_holds():
    loss_fn = AdversarialLoss(AdversarialConfig(eps_warmup=0.25), F.cross_entropy)
    scales = []
    for step in range(100):
        loss_fn.warm_up(step, 100)
        scales.append(loss_fn.scale)
    assert scales[0] == pytest.approx(1 / 25) and scales[23] == pytest.approx(24 / 25)
    assert scales[24:] == [1.0] * 76
    no_ramp = AdversarialLoss(AdversarialConfig(eps_warmup=0.0), F.cross_entropy)
    no_ramp.warm_up(0, 100)
    assert no_ramp.scale == 1.0


# ----------------------------------------------------------------------------- the guard

def test_guard_restores_the_best_weights_exactly_and_stops_on_a_collapse(monkeypatch,
                                                                         mnist_small):
    probe = _scripted_guard(monkeypatch, [0.5, 0.8, 0.3, 0.9, 0.9])
    model = _mlp(16)
    with pytest.warns(UserWarning, match="catastrophic overfitting; restored the weights "
                                         "of epoch 2 and stopped"):
        history = fit(model, mnist_small, epochs=5, batch_size=64, seed=0, **QUIET,
                      adversarial={"method": "fgsm-rs", "eps": 0.1, "guard_size": 50})
    assert len(history.epochs) == 3  # stopped after the collapse
    assert [e["guard_accuracy"] for e in history.epochs] == [0.5, 0.8, 0.3]
    assert [e["restored"] for e in history.epochs] == [None, None, 2]
    assert history.guard == [{"epoch": 3, "pgd_accuracy": 0.3, "best_accuracy": 0.8,
                              "restored_epoch": 2, "action": "stop", "held_out": 50}]
    final = model.state_dict()
    assert all(torch.equal(final[k], probe.weights[1][k]) for k in final)  # epoch 2's, exactly
    assert not all(torch.equal(final[k], probe.weights[2][k]) for k in final)
    assert checkpoint_metadata(history)["guard"] == history.guard


def test_guard_continue_goes_on_from_the_restored_weights(monkeypatch, mnist_small):
    _scripted_guard(monkeypatch, [0.5, 0.8, 0.3, 0.7, 0.1])
    with pytest.warns(UserWarning, match="continuing from them"):
        history = fit(_mlp(16), mnist_small, epochs=5, batch_size=64, seed=0, **QUIET,
                      adversarial={"method": "fgsm-rs", "eps": 0.1, "guard_size": 50,
                                   "guard_action": "continue"})
    assert len(history.epochs) == 5
    assert [e["restored"] for e in history.epochs] == [None, None, 2, None, 2]
    assert [g["epoch"] for g in history.guard] == [3, 5]


def test_guard_floor_and_no_false_alarm(monkeypatch, mnist_small):
    # A 0.15 dip from 0.35 is within guard_drop = 0.2: no event.
    _scripted_guard(monkeypatch, [0.1, 0.35, 0.2, 0.4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = fit(_mlp(16), mnist_small, epochs=4, batch_size=64, **QUIET,
                      adversarial={"method": "pgd", "eps": 0.1, "steps": 1, "guard_size": 50})
    assert history.guard == []
    # Below the floor after reaching it is a collapse even when the drop is small.
    _scripted_guard(monkeypatch, [0.5, 0.45, 0.39])
    with pytest.warns(UserWarning, match="restored the weights of epoch 1"):
        history = fit(_mlp(16), mnist_small, epochs=3, batch_size=64, **QUIET,
                      adversarial={"method": "pgd", "eps": 0.1, "steps": 1, "guard_size": 50,
                                   "guard_floor": 0.4})
    assert history.guard[0]["epoch"] == 3


def test_guard_says_so_once_when_single_steps_fail_but_pgd_succeeds(monkeypatch, mnist_small):
    """Catastrophic overfitting with nothing to restore (PGD accuracy never rose): the guard
    warns once, at the first epoch whose single-step accuracy exceeds PGD's by guard_gap."""
    _scripted_guard(monkeypatch, [0.05, 0.04, 0.06, 0.05], single_step=[0.3, 0.62, 0.9, 0.9])
    with pytest.warns(UserWarning, match=r"after epoch 2 .* resist a single step \(0\.620\) "
                                         r"far better than PGD \(0\.040\)") as caught:
        history = fit(_mlp(16), mnist_small, epochs=4, batch_size=64, seed=0, **QUIET,
                      adversarial={"method": "fgsm-rs", "eps": 0.1, "guard_size": 50})
    assert sum("single step" in str(w.message) for w in caught) == 1
    assert [e["guard_single_step_accuracy"] for e in history.epochs] == [0.3, 0.62, 0.9, 0.9]
    assert history.guard == [] and len(history.epochs) == 4  # a warning, not a restore


def test_single_step_accuracy_is_fgsm_accuracy_on_linf(trained_mlp, mnist_1000):
    from robustkit.attacks import fgsm

    x, y = mnist_1000["test"][0][:200], mnist_1000["test"][1][:200]
    cfg = AdversarialConfig(method="fgsm-rs", eps=0.1)
    with torch.no_grad():  # attacks turn gradients back on for themselves
        ok = (trained_mlp(x).argmax(1) == y) & (trained_mlp(fgsm(trained_mlp, x, y, eps=0.1))
                                                .argmax(1) == y)
    assert adversarial.single_step_accuracy(trained_mlp, x, y, cfg) == pytest.approx(
        ok.float().mean().item())
    assert adversarial.single_step_accuracy(trained_mlp, x, y, cfg) >= \
        adversarial.guard_accuracy(trained_mlp, x, y, cfg)  # PGD is the stronger attack


def test_guard_probes_stratified_held_out_training_images(monkeypatch, mnist_1000):
    probe = _scripted_guard(monkeypatch, [0.5, 0.5])
    fit(_mlp(16), mnist_1000["train"], epochs=2, batch_size=128, **QUIET,
        adversarial={"method": "pgd", "eps": 0.1, "steps": 1, "guard_size": 100})
    assert len(probe.labels) == 2
    for y in probe.labels:
        assert torch.bincount(y, minlength=10).tolist() == [10] * 10


def test_guard_accuracy_is_pgd_accuracy(trained_mlp, mnist_1000):
    x, y = mnist_1000["test"][0][:100], mnist_1000["test"][1][:100]
    cfg = AdversarialConfig(eps=0.1, guard_steps=10)
    acc = adversarial.guard_accuracy(trained_mlp, x, y, cfg, seed=0)
    assert acc == pytest.approx(robust_accuracy(trained_mlp, x, y, "pgd", eps=0.1, steps=10,
                                                seed=0, progress=False))
    assert acc < (trained_mlp(x).argmax(1) == y).float().mean().item()


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad,match", [
    ({"method": "fgsm"}, r"adversarial\.method: must be one of \('fgsm-rs', 'pgd', 'trades'\)"),
    ({"eps": -0.1}, r"adversarial\.eps: must be a finite radius > 0"),
    ({"eps": 0}, r"adversarial\.eps: must be a finite radius > 0"),
    ({"norm": "l1"}, r"adversarial\.norm: must be one of"),
    ({"method": "fgsm-rs", "steps": 3}, r"adversarial\.steps: fgsm-rs takes exactly one step"),
    ({"steps": 0}, r"adversarial\.steps: must be positive"),
    ({"alpha": -1.0}, r"adversarial\.alpha: must be a finite step size > 0"),
    ({"trades_beta": -1.0}, r"adversarial\.trades_beta: must be finite and >= 0"),
    ({"eps_warmup": 1.0}, r"adversarial\.eps_warmup: must be a fraction"),
    ({"attack_mode": "test"}, r"adversarial\.attack_mode: must be one of"),
    ({"guard_action": "panic"}, r"adversarial\.guard_action: must be one of"),
    ({"guard_drop": 2.0}, r"adversarial\.guard_drop: must be in \[0, 1\]"),
    ({"epsilon": 0.3}, r"adversarial\.epsilon: unknown key; valid keys: .*eps"),
    ({"eps": "0.3"}, r"adversarial\.eps: expected a number"),
])
def test_bad_settings_are_refused_naming_the_field(bad, match, mnist_small):
    with pytest.raises(RobustkitError, match=match):
        fit(_mlp(16), mnist_small, epochs=1, adversarial=bad, **QUIET)


def test_too_large_a_guard_and_wrong_types_are_refused(mnist_small):
    with pytest.raises(RobustkitError, match=r"adversarial\.guard_size: 200 held-out images"):
        fit(_mlp(16), mnist_small, epochs=1, adversarial={"guard_size": 200}, **QUIET)
    with pytest.raises(RobustkitError, match="adversarial must be an AdversarialConfig"):
        fit(_mlp(16), mnist_small, epochs=1, adversarial="pgd", **QUIET)


def test_config_resolves_defaults_and_loads_from_a_table():
    assert AdversarialConfig(method="fgsm-rs", eps=0.2).attack_alpha == pytest.approx(0.25)
    cfg = from_dict(AdversarialConfig, {"method": "trades", "eps": 0.3, "steps": 10})
    assert (cfg.attack_steps, cfg.attack_alpha) == (10, pytest.approx(0.075))
    assert AdversarialConfig(alpha=0.01).attack_alpha == 0.01
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.eps = 0.1


def test_adversarial_defaults_per_model():
    assert adversarial_training("alexnet") == ADVERSARIAL_DEFAULTS["alexnet"]
    assert adversarial_training("logistic") == models.default_training("logistic")
    with pytest.raises(RobustkitError, match="unknown model"):
        adversarial_training("resnet-9000")


# ----------------------------------------------------------------------------- command line

def test_cli_trains_adversarially_and_records_the_threat_model(tmp_path, capsys):
    path = tmp_path / "m.pt"
    code, out, err = run_main(["train", "--model", "mlp", "--train-size", "600", "--epochs", "1",
                               "--adversarial", "trades", "--eps", "0.1", "--adv-steps", "2",
                               "--amp", "off", "--quiet", "--out", path], capsys)
    assert code == 0, err
    assert '"method": "trades"' in out and "held-out pgd acc" in out
    meta = models.load(path).robustkit_metadata
    assert meta["training_method"] == "trades"
    assert meta["threat_model"] == {"norm": "linf", "eps": 0.1}
    assert meta["adversarial"]["steps"] == 2 and meta["held_out"] == 256
    # The model's adversarial defaults, with the flags' overrides.
    assert meta["training"]["lr"] == ADVERSARIAL_DEFAULTS["mlp"].lr
    assert meta["training"]["epochs"] == 1


@pytest.mark.parametrize("argv,fragment", [
    (["--eps", "0.1"], "only applies with --adversarial"),
    (["--adversarial", "pgd", "--eps", "-0.1"], "argument --eps: must be finite and > 0"),
    (["--adversarial", "fgsm-rs", "--adv-steps", "3"], "adversarial.steps: fgsm-rs takes"),
    (["--adversarial", "pgdx"], "invalid choice: 'pgdx'"),
])
def test_cli_refuses_bad_adversarial_flags_in_one_line(argv, fragment, tmp_path, capsys):
    code, _, err = run_main(["train", "--model", "mlp", "--out", tmp_path / "m.pt", *argv],
                            capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and fragment in err


# ----------------------------------------------------------------------------- experiments

def test_experiment_entry_with_adversarial_trains_adversarially(tmp_path):
    import json

    from robustkit.experiment import run

    config = tmp_path / "adv.toml"
    config.write_text('''name = "adv"
n_test = 100

[[models]]
name = "mlp-std"
arch = "mlp"
train_size = 300
options = { hidden = [16] }
train = { epochs = 1 }

[[models]]
name = "mlp-pgd"
arch = "mlp"
train_size = 300
options = { hidden = [16] }
train = { epochs = 1 }
adversarial = { method = "pgd", eps = 0.1, steps = 2, guard_size = 50 }
''')
    root = run(config, tmp_path / "run", progress=False, render=False)
    records = {r["model"]: r for r in json.loads((root / "results.json").read_text())["records"]
               if r["kind"] == "model"}
    assert records["mlp-std"]["training_method"] == "standard"
    assert records["mlp-pgd"]["training_method"] == "pgd"
    assert records["mlp-pgd"]["threat_model"] == {"norm": "linf", "eps": 0.1}
    # The adversarial defaults are the base of the entry's training overrides.
    assert records["mlp-pgd"]["training"]["lr"] == ADVERSARIAL_DEFAULTS["mlp"].lr
    meta = models.load(records["mlp-pgd"]["checkpoint"]).robustkit_metadata
    assert meta["adversarial"]["steps"] == 2 and meta["held_out"] == 50


def test_label_smoothing_with_adversarial_training_warns(mnist_small):
    # Smoothed targets flatten the cross-entropy's gradient: PGD then overstates robustness.
    with pytest.warns(UserWarning, match="label smoothing 0.1 with adversarial training"):
        fit(_mlp(), mnist_small, epochs=1, batch_size=64, label_smoothing=0.1, **QUIET,
            adversarial={"method": "fgsm-rs", "eps": 0.1, "guard": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fit(_mlp(), mnist_small, epochs=1, batch_size=64, label_smoothing=0.1, **QUIET)
