"""Black box (Papernot et al. 2017): the oracle hides the target and counts exactly; the
substitute spends the planned queries, flips its step as planned and stays in [0, 1];
transfer figures agree with a recomputation; bad options are refused before any query."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from robustkit import attacks, cli, models
from robustkit.blackbox import (Oracle, QueryBudgetExceeded, Substitute, planned_queries,
                                step_size, substitute, transfer_success)
from robustkit.errors import RobustkitError
from robustkit.train import fit

SHAPE = (1, 4, 4)  # tiny images: the query arithmetic trains on up to 4,800 of them
K = 3


def _target(shape=SHAPE, k=K) -> nn.Module:
    """A seeded target with dropout and BatchNorm (so modes and running statistics matter)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 8), nn.BatchNorm1d(8),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, k))


class RowCounter:
    """A forward hook on the target: the rows it actually sees."""

    def __init__(self, model: nn.Module) -> None:
        self.rows = 0
        model.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.rows += len(inputs[0])


def _images(n: int, shape=SHAPE, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _walk(obj, seen=None):
    """Every object reachable from ``obj`` through dicts, lists, tuples and sets."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    items = obj.values() if isinstance(obj, dict) else obj \
        if isinstance(obj, (list, tuple, set)) else ()
    for item in items:
        yield from _walk(item, seen)


# ----------------------------------------------------------------------------- the oracle

def test_oracle_exposes_no_parameters_state_or_logits():
    target = _target()
    oracle = Oracle(target, num_classes=K)
    assert list(oracle.parameters()) == [] and list(oracle.buffers()) == []
    assert not oracle.training  # attacks run on it do not warn about train mode
    assert oracle.state_dict() == {} and list(oracle.modules()) == [oracle]
    reachable = list(_walk(vars(oracle)))
    assert not any(obj is target or isinstance(obj, torch.Tensor) for obj in reachable)
    assert not any(isinstance(obj, nn.Module) and obj is not oracle for obj in reachable)
    x = _images(6).requires_grad_(True)
    out = oracle(x)
    # label mode: one-hot rows, no logit, no graph back to the target
    assert out.shape == (6, K) and set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.sum(1), torch.ones(6)) and not out.requires_grad
    assert "queries=6" in repr(oracle)


def test_oracle_counts_every_image_exactly():
    target = _target()
    hook = RowCounter(target)
    oracle = Oracle(target, batch_size=4)
    assert oracle.num_classes is None  # no spec, no call yet
    oracle(_images(3))
    oracle(_images(9))
    assert oracle.labels(_images(2)).shape == (2,)
    assert oracle.queries == hook.rows == 14 and oracle.num_classes == K
    twin = copy.deepcopy(oracle)  # a copy counts against the same count
    twin(_images(1))
    assert oracle.queries == twin.queries == 15 and oracle.remaining is None


def test_budget_refuses_before_running_and_keeps_the_count():
    target = _target()
    hook = RowCounter(target)
    oracle = Oracle(target, budget=10)
    oracle(_images(6))
    with pytest.raises(QueryBudgetExceeded, match="6 of 10 used, 4 left"):
        oracle(_images(5))
    assert isinstance(QueryBudgetExceeded("x"), RobustkitError)
    assert oracle.queries == hook.rows == 6 and oracle.remaining == 4
    oracle.labels(_images(4))
    assert oracle.remaining == 0
    with pytest.raises(QueryBudgetExceeded):
        oracle(_images(1))
    assert hook.rows == 10


def test_oracle_keeps_modes_and_state():
    target = _target()
    target.train()
    target[4].eval()  # a mixed mode, given back as found
    modes = [m.training for m in target.modules()]
    state = copy.deepcopy(target.state_dict())
    oracle = Oracle(target, output="scores")
    first = oracle(_images(8))
    assert torch.equal(first, oracle(_images(8)))  # eval mode: no dropout, no batch statistics
    assert [m.training for m in target.modules()] == modes
    after = target.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # running statistics untouched
    assert all(p.grad is None for p in target.parameters())


def test_label_mode_is_the_argmax_and_scores_are_the_logits():
    target = _target().eval()
    x = _images(20)
    with torch.no_grad():
        logits = target(x)
    labels = Oracle(target)(x)
    assert torch.equal(labels.argmax(1), logits.argmax(1))
    assert torch.equal(labels, nn.functional.one_hot(logits.argmax(1), K).float())
    scores = Oracle(target, output="scores")(x.double())
    assert scores.dtype == torch.float64 and torch.allclose(scores.float(), logits)
    assert torch.equal(Oracle(target).labels(x), logits.argmax(1))


@pytest.mark.parametrize("bad, match", [
    (lambda x: x + 1, r"\[0, 1\]"),
    (lambda x: x.masked_fill(x > 0.5, float("nan")), "NaN"),
    (lambda x: x[0], "rank 4"),
    (lambda x: torch.rand(2, 1, 5, 5), r"\(1, 4, 4\)"),
])
def test_oracle_refuses_bad_images(bad, match):
    target = models.create("mlp", SHAPE, K, hidden=(4,))
    oracle = Oracle(target, budget=5)
    assert oracle.in_shape == SHAPE and oracle.num_classes == K  # from the spec
    with pytest.raises(RobustkitError, match=match):
        oracle(bad(_images(2)))
    assert oracle.queries == 0


def test_a_target_that_cannot_run_is_one_error_and_no_query():
    oracle = Oracle(_target())  # no spec: the shape is found out by running
    with pytest.raises(RobustkitError, match=r"cannot run on images of shape \(1, 5, 5\)"):
        oracle(torch.rand(2, 1, 5, 5))
    assert oracle.queries == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"output": "probs"}, "output"), ({"budget": -1}, "budget"), ({"budget": 2.5}, "budget"),
    ({"batch_size": 0}, "batch_size"), ({"num_classes": 1}, "num_classes"),
])
def test_oracle_refuses_bad_options(kwargs, match):
    with pytest.raises(RobustkitError, match=match):
        Oracle(_target(), **kwargs)
    with pytest.raises(RobustkitError, match="Oracle"):
        Oracle(Oracle(_target()))


# ----------------------------------------------------------------------------- substitute

def _tiny_run(seed_y: bool, **kwargs) -> tuple[Substitute, Oracle, RowCounter]:
    target = _target()
    hook = RowCounter(target)
    oracle = Oracle(target, num_classes=K)
    x = _images(150)
    y = torch.arange(150) % K if seed_y else None
    options = dict(arch="mlp", arch_options={"hidden": [8]}, rounds=6, epochs=1,
                   batch_size=256, progress=False)
    sub = substitute(oracle, x, seed_y=y, **{**options, **kwargs})
    return sub, oracle, hook


def test_reference_setup_costs_4650_queries_with_seed_labels():
    assert planned_queries(150, 6, oracle_labels_seeds=False) == 150 + 300 + 600 + 1200 + 2400
    sub, oracle, hook = _tiny_run(seed_y=True)
    assert sub.queries == oracle.queries == hook.rows == 4650
    assert [h["size"] for h in sub.history] == [150, 300, 600, 1200, 2400, 4800]
    assert [h["queries"] for h in sub.history] == [0, 150, 450, 1050, 2250, 4650]
    assert sub.points.shape == (4800, *SHAPE) and sub.labels.shape == (4800,)
    assert torch.equal(sub.labels[:150], torch.arange(150) % K)  # the attacker's own labels
    with torch.no_grad():  # every other label is the oracle's
        assert torch.equal(sub.labels[150:], oracle.labels(sub.points[150:]))


def test_oracle_labelled_seeds_cost_4800_queries():
    assert planned_queries(150, 6) == 4800
    sub, oracle, hook = _tiny_run(seed_y=False)
    assert sub.queries == oracle.queries == hook.rows == 4800
    assert [h["queries"] for h in sub.history] == [150, 300, 600, 1200, 2400, 4800]
    assert sub.options["seed_labels"] == "oracle" and sub.options["planned_queries"] == 4800


class PositiveJacobian(nn.Module):
    """Logit k = (k + 1) * sum(x) + b_k: every Jacobian entry is positive, whatever training
    does to b, so each sibling is its parent plus lam_r, clipped."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.arange(1.0, K + 1))
        self.bias = nn.Parameter(torch.zeros(K))

    def forward(self, x):
        return x.flatten(1).sum(1, keepdim=True) * self.scale + self.bias


def test_step_changes_sign_every_flip_every_rounds_and_points_stay_in_the_box():
    assert [step_size(0.1, r, 2) for r in range(5)] == [0.1, 0.1, -0.1, -0.1, 0.1]
    seeds = torch.tensor([0.5, 0.05, 0.95, 0.0]).repeat_interleave(4).view(4, 1, 2, 2)
    target = _target((1, 2, 2))
    arch = PositiveJacobian()
    sub = substitute(Oracle(target, num_classes=K), seeds, seed_y=torch.tensor([0, 1, 2, 0]),
                     arch=arch, rounds=5, lam=0.1, flip_every=2, epochs=1, progress=False)
    lams = [h["lam"] for h in sub.history]
    assert lams == [0.1, 0.1, -0.1, -0.1, None]
    for r, lam in enumerate(lams[:-1]):
        m = 4 * 2 ** r  # the set's size before round r's augmentation
        parents, siblings = sub.points[:m], sub.points[m:2 * m]
        assert torch.allclose(siblings, (parents + lam).clamp(0, 1))
    assert sub.points.min() >= 0 and sub.points.max() <= 1
    assert sub.points.max() == 1 and sub.points.min() == 0  # clipped, not overshooting
    assert torch.equal(arch.bias, torch.zeros(K))  # the module given is left as it was


def test_substitute_beats_chance_and_transfer_matches_a_recomputation(mnist_small,
                                                                      mnist_test_small):
    torch.manual_seed(0)
    target = models.create("mlp", (1, 28, 28), 10, hidden=(32,), dropout=0.0)
    fit(target, mnist_small, epochs=8, batch_size=32, lr=0.005, optimizer="adam", quiet=True,
        device="cpu")
    oracle = Oracle(target)
    x, y = mnist_test_small
    sub = substitute(oracle, x[:40], seed_y=y[:40], arch_options={"hidden": [32]}, rounds=3,
                     epochs=5, batch_size=16, lr=0.005, device="cpu", test=(x[40:], y[40:]),
                     progress=False)
    assert sub.queries == planned_queries(40, 3, False) == oracle.queries == 120
    accuracy = [h["accuracy"] for h in sub.history]
    assert accuracy[-1] > 0.3  # chance is 0.1 (a loose property)
    assert oracle.queries == 120  # scoring on test asked the oracle nothing

    xs, ys = x[40:100], y[40:100]
    before = oracle.queries
    r = transfer_success(oracle, sub, xs, ys, attack="fgsm", eps=0.3, batch_size=25)
    assert r["queries"] == oracle.queries - before == 2 * 60
    with torch.no_grad():
        clean = target(xs).argmax(1)
        adv = target(attacks.bind("fgsm", sub.model, eps=0.3)(xs, ys)).argmax(1)
    right = clean == ys
    assert r["clean_accuracy"] == pytest.approx(right.float().mean().item())
    assert r["adversarial_accuracy"] == pytest.approx((adv == ys).float().mean().item())
    assert r["fooled"] == int((right & (adv != ys)).sum())
    assert r["transfer_success"] == pytest.approx(r["fooled"] / int(right.sum()))
    assert r["adversarial_accuracy"] <= r["clean_accuracy"] and r["n"] == 60

    grid = transfer_success(oracle, sub.model, xs, ys, eps=[0.0, 0.3], clean_labels=clean)
    assert grid["queries"] == 2 * 60  # the clean labels were given: one query per image per eps
    assert grid["eps"] == [0.0, 0.3] and grid["fooled"][0] == 0
    assert grid["adversarial_accuracy"][1] == pytest.approx(r["adversarial_accuracy"])


def test_one_round_trains_on_the_seeds_only():
    sub, oracle, _ = _tiny_run(seed_y=False, rounds=1)
    assert sub.queries == oracle.queries == 150 and len(sub.history) == 1
    assert sub.history[0]["lam"] is None and len(sub.points) == 150


# ----------------------------------------------------------------------------- refusals

def _setup(budget=None):
    oracle = Oracle(models.create("mlp", SHAPE, K, hidden=(8,)), budget=budget)
    return oracle, _images(10), torch.arange(10) % K


@pytest.mark.parametrize("change, match", [
    ({"rounds": 0}, "rounds"), ({"rounds": 2.0}, "rounds"), ({"rounds": True}, "rounds"),
    ({"lam": 0}, "lam"), ({"lam": -0.1}, "lam"), ({"lam": float("nan")}, "lam"),
    ({"lam": float("inf")}, "lam"), ({"flip_every": 0}, "flip_every"),
    ({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"), ({"lr": 0.0}, "lr"),
    ({"seed_x": "x"}, "seed_x"), ({"seed_x": torch.rand(10, 16)}, "seed_x"),
    ({"seed_x": _images(10) * 2}, r"seed_x.*\[0, 1\]"),
    ({"seed_x": torch.rand(10, 1, 5, 5)}, r"\(1, 5, 5\)"),
    ({"seed_y": torch.arange(9) % K}, "mismatch"), ({"seed_y": torch.arange(10)}, "seed_y"),
    ({"seed_y": torch.zeros(10)}, "integer"),
    ({"arch": "no_such_model"}, "no_such_model"), ({"arch": 3}, "arch"),
    ({"arch_options": {"depth": 2}}, "depth"), ({"test": (_images(4),)}, "test"),
    ({"test": (_images(4), torch.tensor([0, 1, 2, 7]))}, "test y"),
    ({"device": "tpu"}, "tpu"),
])
def test_bad_options_are_refused_before_any_query(change, match):
    oracle, x, y = _setup()
    kwargs = {"seed_x": x, "seed_y": y, "rounds": 2, "epochs": 1, "progress": False, **change}
    with pytest.raises(RobustkitError, match=match):
        substitute(oracle, **kwargs)
    assert oracle.queries == 0


def test_an_oracle_is_required_and_the_budget_must_cover_the_plan():
    target = _target()
    with pytest.raises(RobustkitError, match="counts every query"):
        substitute(target, _images(10), progress=False)
    oracle, x, y = _setup(budget=4649)
    with pytest.raises(RobustkitError, match="plan needs 4,650 queries .* 4,649 left"):
        substitute(oracle, _images(150), seed_y=torch.arange(150) % K, progress=False)
    unknown = Oracle(_target())
    with pytest.raises(RobustkitError, match="num_classes"):
        substitute(unknown, x, progress=False)
    assert oracle.queries == unknown.queries == 0


def test_transfer_success_refuses_bad_options():
    oracle, x, y = _setup(budget=15)
    sub = models.create("mlp", SHAPE, K, hidden=(4,))
    for kwargs, match in [({"eps": []}, "empty"), ({"eps": float("nan")}, "eps"),
                          ({"eps": -1.0}, "eps"), ({"steps": 3}, "steps"),
                          ({"attack": "no_such_attack"}, "no_such_attack"),
                          ({"clean_labels": torch.zeros(3, dtype=torch.long)}, "clean_labels"),
                          ({"eps": [0.1, 0.2]}, "needs 30 queries")]:
        with pytest.raises(RobustkitError, match=match):
            transfer_success(oracle, sub, x, y, **kwargs)
    with pytest.raises(RobustkitError, match="gradients"):
        transfer_success(oracle, oracle, x, y)
    with pytest.raises(RobustkitError, match="Oracle"):
        transfer_success(sub, sub, x, y)
    assert oracle.queries == 0


# ----------------------------------------------------------------------------- command line

def test_cli_runs_the_attack_and_counts_its_queries(tmp_path, tiny_mlp, capsys):
    ckpt = models.save(tiny_mlp.eval(), tmp_path / "m.pt", dataset="mnist-5k")
    out = tmp_path / "bb.json"
    code = cli.main(["blackbox", "--oracle", str(ckpt), "--seed-n", "20", "--rounds", "2",
                     "--epochs", "1", "--n", "30", "--eps", "0.1,0.3", "--device", "cpu",
                     "--quiet", "--budget", "110", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    record = json.loads(out.read_text())
    # 20 siblings, then 30 clean images and 30 per eps: exactly the budget
    assert record["substitute_queries"] == 20 and record["queries"] == 110
    assert [r["size"] for r in record["rounds"]] == [20, 40]
    assert record["transfer"]["eps"] == [0.1, 0.3] and record["transfer"]["n"] == 30
    assert "110 in all" in text and "fgsm eps 0.3" in text


@pytest.mark.parametrize("extra, phrase", [
    (["--budget", "109"], "needs 110 queries"),
    (["--seed-n", "1000"], "1000 images, 0 after the seeds"),
    (["--n", "981"], "980 after the seeds"),
    (["--steps", "3"], "takes no option 'steps'"),
    (["--arch", "no_such_model"], "no_such_model"),
    (["--arch-options", "depth=3"], "depth"),
    (["--lam", "0"], "--lam"),
])
def test_cli_refuses_bad_command_lines_before_any_work(tmp_path, tiny_mlp, capsys, extra,
                                                       phrase):
    ckpt = models.save(tiny_mlp.eval(), tmp_path / "m.pt", dataset="mnist-5k")
    out = tmp_path / "bb.json"
    code = cli.main(["blackbox", "--oracle", str(ckpt), "--seed-n", "20", "--rounds", "2",
                     "--epochs", "1", "--n", "30", "--eps", "0.1,0.3", "--device", "cpu",
                     "--quiet", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and phrase in err, err
    assert not out.exists()


def test_the_mlp_substitute_defaults_to_cleverhans_two_layers_of_200():
    sub, _, _ = _tiny_run(seed_y=True, arch_options=None, rounds=1)
    assert sub.options["arch_options"] == {"hidden": [200, 200], "dropout": 0.0}
    widths = [m.out_features for m in sub.model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [200, 200, K]
