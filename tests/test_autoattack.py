"""AutoAttack (robustkit.evaluate.autoattack): each example's result is the worst case over
its attacks, the records add up, the flags fire on models built to trip them, the model is
left as found, bad input is refused before any work, and a stored run resumes exactly.

The models are tiny (the session's trained 784 -> 64 -> 10 MLP) and most runs use the
``fast`` version (APGD-CE + APGD-T) on a few dozen images, so each test takes seconds.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
import warnings

import pytest
import torch
from torch import nn

from robustkit import attacks, evaluate
from robustkit.autoattack import _stage_seed, stages
from robustkit.core import predict
from robustkit.core.resume import BlockStore
from robustkit.core.seeding import ExampleSeeds
from robustkit.errors import RobustkitError
from wrappers import Scaled

EPS = 0.1


@pytest.fixture(scope="module")
def test40(mnist_1000):
    x, y = mnist_1000["test"]
    return x[:40], y[:40]


class Softmaxed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1)


class Noisy(nn.Module):
    """Randomized in eval mode too: Gaussian noise on the input at every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


class Quantized(nn.Module):
    """Rounds the input to 4 levels with no gradient (a straight staircase): the input
    gradient is zero everywhere, the decisions are those of the model on the levels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x * 3).round() / 3)


def run(model, data, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate.autoattack(model, data, **options)


def test_each_example_is_the_worst_case_over_its_attacks(trained_mlp, test40):
    x, y = test40
    result = run(trained_mlp, (x, y), eps=EPS, version="fast", seed=3, batch_size=16)
    clean = predict(trained_mlp, x).argmax(1) == y
    # Every stage alone, on every correctly classified example, with the stage's seeds:
    # per-example seeds make an example's run independent of the others in its batch.
    fooled_any = torch.zeros(len(y), dtype=torch.bool)
    first = torch.full((len(y),), -1)
    idx = clean.nonzero().squeeze(1)
    for i, stage in enumerate(stages("fast", 10)):
        x_adv = attacks.ATTACKS.get(stage.attack)(
            trained_mlp, x[idx], y[idx], eps=EPS, norm="linf",
            seed=ExampleSeeds(_stage_seed(3, i), idx), **stage.options)
        hit = predict(trained_mlp, x_adv).argmax(1) != y[idx]
        newly = idx[hit & ~fooled_any[idx]]
        first[newly] = i + 1
        fooled_any[idx[hit]] = True
    assert torch.equal(result.records["robust"], clean & ~fooled_any)
    assert torch.equal(result.records["broken_by"], torch.where(clean, first, 0))
    assert result.records["clean"].tolist() == clean.tolist()
    assert float(result.robust_accuracy) == pytest.approx((clean & ~fooled_any).float().mean())


def test_records_add_up(trained_mlp, test40):
    x, y = test40
    result = run(trained_mlp, (x, y), eps=EPS, version="fast", batch_size=16)
    rec = result.records
    assert float(result.robust_accuracy) <= result.clean_accuracy
    assert not (rec["robust"] & ~rec["clean"]).any()
    broken = rec["broken_by"] > 0
    assert ((rec["norm"] > 0) == broken).all() and (rec["norm"] <= EPS + 1e-5).all()
    assert ((rec["broken_by"] == -1) == rec["robust"]).all()
    # Per-stage costs add up to the totals, plus the evaluation's own passes: two clean
    # forward passes and one gradient, and one check per stage an example went through.
    ran = sum((rec[f"{s}:forward"] > 0).long() for s in result.attacks)
    stage_f = sum(rec[f"{s}:forward"] for s in result.attacks)
    assert torch.equal(rec["forward"], stage_f + 3 + ran)
    assert torch.equal(rec["backward"], sum(rec[f"{s}:backward"] for s in result.attacks) + 1)
    # APGD-CE: at most 101 passes per example it attacked, 101 for those it did not break
    # (an example leaves at its first fooling iterate); APGD-T only on the survivors.
    ce = rec["apgd-ce:backward"]
    assert (ce[rec["clean"]] >= 1).all() and (ce <= 101).all() and (ce[~rec["clean"]] == 0).all()
    assert (ce[rec["clean"] & (rec["broken_by"] != 1)] == 101).all()
    assert (rec["apgd-t:backward"][~rec["robust"] & (rec["broken_by"] == 1)] == 0).all()
    split = result.split()
    assert sum(v["broken"] for v in split.values()) == int(broken.sum())
    assert result.to_dict()["examples"]["broken_by"] == result.broken_by()
    assert "robust accuracy" in result.summary()


def test_model_left_as_found(test40, trained_mlp):
    x, y = test40
    model = Scaled(copy.deepcopy(trained_mlp), 1.0).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()
    run(model, (x, y), eps=EPS, version="fast", compare_pgd=False)
    assert model.training and model.model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x_before)


def test_scaled_logits_fool_pgd_not_autoattack(trained_mlp, test40):
    x, y = test40
    plain = run(trained_mlp, (x, y), eps=0.15, version="fast", batch_size=40)
    scaled = run(Scaled(trained_mlp, 30.0), (x, y), eps=0.15, version="fast", batch_size=40)
    # DLR is invariant to the logits' scale: the same robust accuracy within 1 point.
    assert abs(float(scaled.robust_accuracy) - float(plain.robust_accuracy)) <= 0.01 + 1e-9
    names = [f.name for f in scaled.flags]
    assert "pgd_gap" in names, scaled.summary()


def test_flags_fire_on_models_built_for_them(trained_mlp, test40):
    x, y = test40
    probs = run(Softmaxed(trained_mlp), (x[:16], y[:16]), eps=EPS, version="fast",
                compare_pgd=False)
    assert "probabilities" in [f.name for f in probs.flags]
    noisy = run(Noisy(trained_mlp), (x[:8], y[:8]), eps=EPS, version="fast",
                compare_pgd=False)
    assert "randomized" in [f.name for f in noisy.flags]
    quantized = run(Quantized(trained_mlp), (x[:16], y[:16]), eps=EPS, version="fast",
                    compare_pgd=False)
    assert "zero_gradients" in [f.name for f in quantized.flags]
    plain = run(trained_mlp, (x[:16], y[:16]), eps=EPS, version="fast", compare_pgd=False)
    assert plain.flags == []  # a deterministic logit model with gradients: nothing to flag


def test_flags_are_warned(trained_mlp, test40):
    x, y = test40
    with pytest.warns(UserWarning, match="probabilities"):
        evaluate.autoattack(Softmaxed(trained_mlp).eval(), (x[:8], y[:8]), eps=EPS, version="fast",
                            compare_pgd=False)


@pytest.mark.parametrize("options,match", [
    ({"eps": -0.1}, "eps"), ({"eps": float("nan")}, "eps"), ({"eps": 0.1, "norm": "l1"}, "norm"),
    ({"eps": 0.1, "version": "plus"}, "version"), ({"eps": 0.1, "seed": 1.5}, "seed"),
    ({"eps": 0.1, "batch_size": 0}, "batch_size"),
])
def test_bad_input_refused_before_work(options, match, trained_mlp, test40):
    x, y = test40
    with pytest.raises(RobustkitError, match=match):
        evaluate.autoattack(trained_mlp, (x, y), **options)
    with pytest.raises(RobustkitError, match=r"\[0, 1\]|range"):
        evaluate.autoattack(trained_mlp, (x * 2, y), eps=0.1)


def test_a_stored_run_resumes_to_the_same_records(trained_mlp, test40, tmp_path, monkeypatch):
    x, y = test40
    store = BlockStore(tmp_path / "parts", {"test": 1})
    first = run(trained_mlp, (x, y), eps=EPS, version="fast", batch_size=16, resume=store)
    import robustkit.autoattack as aa

    def no_work(*args, **kwargs):
        raise AssertionError("a stored block was computed again")

    monkeypatch.setattr(aa, "_block", no_work)
    again = run(trained_mlp, (x, y), eps=EPS, version="fast", batch_size=16,
                resume=BlockStore(tmp_path / "parts", {"test": 1}))
    for k, v in first.records.items():
        assert torch.equal(v, again.records[k]), k


def test_l2_stays_in_the_ball(trained_mlp, test40):
    x, y = test40
    result = run(trained_mlp, (x[:16], y[:16]), eps=1.0, norm="l2", version="fast")
    assert (result.records["norm"] <= 1.0 + 1e-5).all()
    assert float(result.robust_accuracy) <= result.clean_accuracy


def test_norm_measured_is_the_perturbation(trained_mlp, test40):
    # The recorded norm is the Linf size of a real perturbation: at most eps, and positive
    # for every broken example (a fooling perturbation of size 0 would mean a clean error).
    x, y = test40
    result = run(trained_mlp, (x, y), eps=0.2, version="fast")
    broke = result.records["broken_by"] > 0
    assert broke.any()
    assert (result.records["norm"][broke] > 0).all()


AA_CONFIG = """
name = "aa"
seeds = [0]
n_test = 30

[[models]]
name = "small"
arch = "mlp"
options = { hidden = [16] }
train = { epochs = 1, augment = "none" }
train_size = 300

[[attacks]]
attack = "pgd"
eps = [0.1]
options = { steps = 3 }

[[attacks]]
attack = "autoattack"
eps = [0.1]
options = { version = "fast" }
"""


def test_a_config_runs_autoattack_and_the_report_shows_who_broke_what(tmp_path):
    from robustkit.experiment import run as run_experiment
    from robustkit.report import render

    cfg = tmp_path / "aa.toml"
    cfg.write_text(AA_CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_experiment(cfg, tmp_path / "run", progress=False, render=False)
    import json

    records = json.loads((tmp_path / "run" / "results.json").read_text())["records"]
    aa = [r for r in records if r.get("method") == "autoattack"]
    assert len(aa) == 1
    rec = aa[0]
    assert rec["robust_accuracy"] <= rec["clean_accuracy"]
    split = rec["autoattack"]["split"]
    assert list(split) == ["apgd-ce", "apgd-t"]
    broken = sum(v["broken"] for v in split.values())
    assert broken == round((rec["clean_accuracy"] - rec["robust_accuracy"]) * rec["n"])
    pgd = [r for r in records if r.get("method") == "pgd"][0]
    assert rec["robust_accuracy"] <= pgd["robust_accuracy"] + 1e-9  # stronger than PGD-3
    assert pgd["cost"]["backward"] == 3 * pgd["n"]  # PGD-3: three gradients per image
    assert pgd["cost"]["pgd40_per_example"] == pytest.approx(3 * 3 / 120)
    render(tmp_path / "run")
    html = next((tmp_path / "run").rglob("index.html")).read_text()
    md = next((tmp_path / "run").rglob("README.md")).read_text()
    assert "Which attack broke each example" in html and "Which attack broke each" in md
    figure = re.search(r'src="([^"]*autoattack[^"]*\.png)"', html)
    assert figure is not None
    assert next((tmp_path / "run").rglob(Path(figure.group(1)).name)).stat().st_size > 1000
    assert "broken by apgd-ce" in html and "PGD-40" in md
    assert "cost (PGD-40 per image)" in html and "<td>0.07</td>" in html


@pytest.mark.parametrize("options,match", [
    ('{ version = "plus" }', "version"), ("{ steps = 3 }", "options.steps"),
    ('{ norm = "l1" }', "norm")])
def test_a_config_with_bad_autoattack_options_is_refused_at_load(tmp_path, options, match):
    from robustkit.experiment import load_experiment

    text = AA_CONFIG.replace('options = { version = "fast" }', f"options = {options}")
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(RobustkitError, match=match):
        load_experiment(cfg)


def test_square_breaking_what_gradients_cannot_is_flagged(trained_mlp, test40):
    # The quantized model's input gradient is zero everywhere: APGD and FAB cannot move,
    # Square (which reads scores only) still finds the quantization levels' boundaries.
    x, y = test40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate.autoattack(Quantized(trained_mlp), (x[:12], y[:12]), eps=0.3,
                                     compare_pgd=False)
    split = result.split()
    assert split["apgd-ce"]["broken"] == split["apgd-t"]["broken"] == split["fab-t"]["broken"] == 0
    assert split["square"]["broken"] > 0
    assert split["square"]["queries"] > 0 and split["square"]["backward"] == 0
    names = [f.name for f in result.flags]
    assert "square_beats_whitebox" in names and "zero_gradients" in names


def test_rand_version_averages_gradients_on_a_randomized_model(trained_mlp, test40):
    x, y = test40
    result = run(Noisy(trained_mlp).eval(), (x[:6], y[:6]), eps=EPS, version="rand",
                 compare_pgd=False)
    assert result.attacks == ["apgd-ce", "apgd-dlr"]
    flag = next(f for f in result.flags if f.name == "randomized")
    assert "version='rand'" not in flag.message  # already the right version
    # EoT: 20 forward and backward passes per step for every example APGD-CE attacked.
    attacked = result.records["apgd-ce:backward"] > 0
    assert attacked.any()
    assert (result.records["apgd-ce:backward"][attacked] % 20 == 0).all()


@pytest.mark.parametrize("pgd,robust,flagged", [(0.91, 0.89, False), (0.92, 0.89, True),
                                                (0.89, 0.89, False)])
def test_the_gap_flag_fires_above_two_points_not_at_two(pgd, robust, flagged):
    from robustkit.autoattack import _flags

    n = 100
    rec = {"index": torch.arange(n), "probabilities": torch.zeros(n, dtype=torch.bool),
           "randomized": torch.zeros(n, dtype=torch.bool),
           "zero_grad": torch.zeros(n, dtype=torch.bool), "clean": torch.ones(n, dtype=torch.bool),
           "broken_by": torch.zeros(n, dtype=torch.long)}
    names = [f.name for f in _flags(rec, stages("fast", 10), "fast", robust, pgd)]
    assert ("pgd_gap" in names) is flagged
