"""HopSkipJumpAttack (Chen et al. 2020): labels only, no gradient ever, the query budget
never exceeded and counted to the right example, done examples left alone, points that
are really adversarial (never closer than the true minimum on a model whose boundary is
known), progress with the budget, per-example seeds, and a loose comparison with ART.

Models are tiny: the session's 784 -> 64 -> 10 MLP, a seeded untrained float64 MLP, a
linear two-class model whose smallest adversarial perturbation has a closed form, a
parameterless constant model and the one-conv BatchNorm CNN.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

from robustkit import attacks, models
from robustkit.core import predict
from robustkit.core.cost import metering
from robustkit.core.seeding import ExampleSeeds
from robustkit.errors import RobustkitError
from tests.as_found import assert_as_found, snapshot
from tests.test_square import Closure, Constant, NoGrad

HSJ = sys.modules["robustkit.attacks.hop_skip_jump"]
closest_adversarial = HSJ.closest_adversarial
TOL = 1e-5


class Brightness(nn.Module):
    """Two classes by mean brightness: class 1 when the mean pixel exceeds 0.3. MNIST digits
    (mean about 0.13) are class 0, uniform noise (mean 0.5) class 1. No parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([0.3 - m, m - 0.3], 1) * 10


class Rows(nn.Module):
    """``inner``, counting the rows (images) it is asked about."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.inner(x)


def smallest_brightening(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest L2 and Linf perturbations (N,) that raise each image's mean to 0.3
    inside [0, 1]: d_i = min(t, 1 - x_i) with t set by bisection (water-filling: the same t
    is optimal for both norms), so the L2 minimum is ||d|| and the Linf minimum is t."""
    room = 1 - x.flatten(1).double()
    need = (0.3 - x.flatten(1).double().mean(1)) * room.shape[1]
    lo, hi = torch.zeros(len(x), dtype=torch.float64), torch.ones(len(x), dtype=torch.float64)
    for _ in range(80):
        t = (lo + hi) / 2
        short = torch.minimum(t[:, None], room).sum(1) < need
        lo, hi = torch.where(short, t, lo), torch.where(short, hi, t)
    return torch.minimum(hi[:, None], room).norm(dim=1), hi


def _size(d: torch.Tensor, norm: str) -> torch.Tensor:
    return d.flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)


@pytest.fixture(scope="module")
def test64(mnist_1000):
    x, y = mnist_1000["test"]
    return x[:64], y[:64]


@pytest.fixture
def mlp64():
    """An untrained seeded float64 MLP (float64: batched and single-row passes agree to the
    last bits that matter, so per-example results can be compared across batch splits)."""
    torch.manual_seed(3)
    return models.create("mlp", hidden=(16,), dropout=0.0).double().eval()


# ----------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("norm,eps", [("l2", 2.0), ("linf", 0.15)])
def test_hsj_returns_adversarials_within_eps_or_the_clean_image(trained_mlp, test64, norm,
                                                                eps):
    x, y = test64[0][:32], test64[1][:32]
    x_adv = attacks.hop_skip_jump(trained_mlp, x, y, eps=eps, norm=norm, queries=300, seed=0)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    size = _size(x_adv - x, norm)
    assert (size <= eps * (1 + TOL) + TOL).all()
    wrong = predict(trained_mlp, x_adv).argmax(1) != y
    clean_wrong = predict(trained_mlp, x).argmax(1) != y
    moved = size > 0
    assert wrong[moved].all()  # every moved image is adversarial ...
    assert torch.equal(x_adv[~moved], x[~moved])  # ... the others are the clean image
    assert (moved & ~clean_wrong).any()  # not vacuous


def test_hsj_leaves_the_model_and_the_input_as_found(bn_cnn, tiny_batch):
    model = bn_cnn
    model.train()
    model.drop.eval()
    before = snapshot(model)
    x = tiny_batch[:4].clone().requires_grad_(True)
    x_copy = x.detach().clone()
    with pytest.warns(UserWarning, match="train mode"):
        attacks.hop_skip_jump(model, x, torch.tensor([0, 1, 2, 3]), eps=1.0, queries=200,
                              seed=0)
    assert_as_found(model, before)
    assert torch.equal(x.detach(), x_copy) and x.grad is None


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_hsj_never_runs_the_model_with_gradients(trained_mlp, test64, norm):
    x, y = test64[0][:8], test64[1][:8]
    with torch.enable_grad():
        _, dist = closest_adversarial(NoGrad(trained_mlp), x, y, norm=norm, queries=300,
                                      seed=0)
    assert torch.isfinite(dist).any()
    assert all(p.grad is None for p in trained_mlp.parameters())


# ----------------------------------------------------------------------------- queries

@pytest.mark.parametrize("queries", [1, 2, 50, 101, 400])
def test_an_unbreakable_model_is_never_queried_past_the_budget(queries):
    # Uniform noise is never adversarial here: every example tries it INIT_TRIALS times
    # (or until its budget ends) and is given up.
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = Rows(Constant())
    with metering(5) as bill:
        x_adv = attacks.hop_skip_jump(model, x, torch.zeros(5, dtype=torch.long), eps=1.0,
                                      queries=queries, seed=0)
    spent = min(queries, 1 + HSJ.INIT_TRIALS)
    assert bill.queries.tolist() == [spent] * 5
    assert model.rows == 5 * spent
    assert torch.equal(bill.forward, bill.queries) and bill.backward.sum() == 0
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("queries", [5, 37, 300])
def test_budget_is_never_exceeded_and_every_row_is_billed(trained_mlp, test64, norm, queries):
    x, y = test64[0][:16], test64[1][:16]
    model = Rows(trained_mlp)
    with metering(16) as bill:
        closest_adversarial(model, x, y, norm=norm, queries=queries, seed=0)
    assert bill.queries.max() == queries  # not vacuous: some example spent it all ...
    assert model.rows == int(bill.queries.sum())  # ... and every row was billed
    assert torch.equal(bill.forward, bill.queries) and bill.backward.sum() == 0


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_per_example_counts_and_results_match_the_example_attacked_alone(mlp64, norm):
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)).double()
    y = predict(mlp64, x).argmax(1)
    y[0] = (y[0] + 1) % 10  # one example misclassified from the start: one query
    counted = Rows(mlp64)
    eps = 3.0 if norm == "l2" else 0.1
    with metering(6) as bill:
        whole = attacks.hop_skip_jump(counted, x, y, eps=eps, norm=norm, queries=250,
                                      seed=ExampleSeeds(0, torch.arange(6)))
    assert counted.rows == int(bill.queries.sum()) and bill.queries[0] == 1
    assert bill.queries.max() <= 250
    for i in range(6):
        alone = Rows(mlp64)
        one = attacks.hop_skip_jump(alone, x[i:i + 1], y[i:i + 1], eps=eps, norm=norm,
                                    queries=250, seed=ExampleSeeds(0, torch.tensor([i])))
        assert alone.rows == int(bill.queries[i]), i
        assert torch.equal(one, whole[i:i + 1]), i
    assert not torch.equal(whole[1:], x[1:])  # not vacuous


def test_same_seed_same_result(trained_mlp, test64):
    x, y = test64[0][:16], test64[1][:16]
    a = closest_adversarial(trained_mlp, x, y, queries=200, seed=3)
    b = closest_adversarial(trained_mlp, x, y, queries=200, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("norm,eps", [("l2", 100.0), ("linf", 1.0)])
def test_an_example_within_eps_stops_at_once(mnist_1000, norm, eps):
    # Every image is within eps of anything: the first adversarial noise (the first try,
    # for this model) makes the example done: its clean query and one more.
    x, _ = mnist_1000["test"]
    x = x[:6]
    y = torch.zeros(6, dtype=torch.long)
    y[0] = 1  # misclassified from the start: done after its clean query
    with metering(6) as bill:
        x_adv = attacks.hop_skip_jump(Brightness(), x, y, eps=eps, norm=norm, queries=500,
                                      seed=0)
    assert bill.queries.tolist() == [1, 2, 2, 2, 2, 2]
    assert (Brightness()(x_adv).argmax(1) != y).all()


def test_done_examples_stop_early_and_the_rest_spend_the_budget(mnist_1000):
    x, _ = mnist_1000["test"]
    x = x[:8].double()
    y = torch.zeros(8, dtype=torch.long)
    l2_min, _ = smallest_brightening(x)
    eps = float(l2_min.median()) * 1.6  # about half the examples get within eps
    with metering(8) as bill:
        x_adv = attacks.hop_skip_jump(Brightness(), x, y, eps=eps, queries=600, seed=0)
    done = _size(x_adv - x, "l2") > 0
    assert done.any() and (~done).any()
    assert (bill.queries[done] < 600).all() and (bill.queries[~done] == 600).all()


# ----------------------------------------------------------------------------- correctness

@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_points_are_adversarial_and_approach_the_known_minimum(mnist_1000, norm):
    x, _ = mnist_1000["test"]
    x = x[:8].double()
    y = torch.zeros(8, dtype=torch.long)
    l2_min, linf_min = smallest_brightening(x)
    least = l2_min if norm == "l2" else linf_min
    ratios = []
    for queries in (300, 3000):
        points, dist = closest_adversarial(Brightness(), x, y, norm=norm, queries=queries,
                                           seed=0)
        assert (Brightness()(points).argmax(1) == 1).all()  # really adversarial
        torch.testing.assert_close(dist, _size(points - x, norm))
        assert (dist >= least * (1 - 1e-6)).all()  # never below the true minimum
        ratios.append((dist / least).median().item())
    # High dimension (784) and a boundary every pixel moves: progress is slow but steady
    # (ART's HopSkipJump stands at 1.6 after ~1,200 queries on the same model, L2).
    assert ratios[1] < ratios[0]
    assert ratios[1] < (1.35 if norm == "l2" else 1.5), ratios


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_median_distance_decreases_with_the_budget(trained_mlp, test64, norm):
    x, y = test64[0][:32], test64[1][:32]
    right = predict(trained_mlp, x).argmax(1) == y
    medians = []
    for queries in (200, 600, 2000):
        _, dist = closest_adversarial(trained_mlp, x, y, norm=norm, queries=queries, seed=0)
        assert torch.isfinite(dist[right]).all()  # every example found a first point
        medians.append(dist[right].median().item())
    assert medians[0] > medians[1] > medians[2], medians


@pytest.mark.parametrize("norm,eps", [("l2", 4.0), ("linf", 0.3)])
def test_hsj_finds_adversarials_within_a_generous_eps(trained_mlp, test64, norm, eps):
    x, y = test64
    right = predict(trained_mlp, x).argmax(1) == y
    x_adv = attacks.hop_skip_jump(trained_mlp, x, y, eps=eps, norm=norm, queries=1000, seed=0)
    fooled = predict(trained_mlp, x_adv).argmax(1) != y
    assert fooled[right].float().mean() >= 0.85


# ----------------------------------------------------------------------------- any model

def test_labels_only_no_parameters_and_no_probability_warning(trained_mlp, test64):
    x, y = test64[0][:16], test64[1][:16]
    label_only = Closure(trained_mlp, label=True)  # one-hot rows: look like probabilities
    assert not list(label_only.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        via_labels = attacks.hop_skip_jump(label_only, x, y, eps=3.0, queries=300, seed=0)
    plain = attacks.hop_skip_jump(trained_mlp, x, y, eps=3.0, queries=300, seed=0)
    assert torch.equal(via_labels, plain)  # only the argmax is ever read
    blackbox = pytest.importorskip("robustkit.blackbox")
    oracle = blackbox.Oracle(trained_mlp, output="label").eval()  # a module: train mode
    with metering(16) as bill, warnings.catch_warnings():
        warnings.simplefilter("error")
        via_oracle = attacks.hop_skip_jump(oracle, x, y, eps=3.0, queries=300, seed=0)
    assert oracle.queries == int(bill.queries.sum()) and bill.queries.max() <= 300
    assert torch.equal(via_oracle, plain)


@pytest.mark.parametrize("options,match", [
    ({"queries": 0}, "queries must be an integer"),
    ({"queries": 1.5}, "queries must be an integer"),
    ({"steps": 0}, "steps must be an integer"),
    ({"gamma": 0.0}, "gamma must be a finite number > 0"),
    ({"gamma": float("inf")}, "gamma must be a finite number > 0"),
    ({"init_evals": 0}, "init_evals must be an integer"),
    ({"max_evals": True}, "max_evals must be an integer"),
    ({"eps": -1.0}, "eps must be a finite number"),
    ({"norm": "l1"}, "norm must be one of"),
    ({"seed": ExampleSeeds(0, torch.arange(5))}, "5 per-example streams for 4 examples"),
])
def test_hsj_refuses_bad_options(trained_mlp, test64, options, match):
    x, y = test64[0][:4], test64[1][:4]
    with pytest.raises(RobustkitError, match=match):
        attacks.hop_skip_jump(trained_mlp, x, y, **{"eps": 1.0, "queries": 10, **options})


def test_hsj_checks_labels_and_shapes_on_its_first_query(trained_mlp, test64):
    x, y = test64[0][:4], test64[1][:4]
    with pytest.raises(RobustkitError, match="label out of range"):
        attacks.hop_skip_jump(trained_mlp, x, torch.tensor([0, 1, 2, 10]), eps=1.0)
    with pytest.raises(RobustkitError, match="takes images of shape"):
        attacks.hop_skip_jump(trained_mlp, x[:, :, :20], y, eps=1.0)


# ----------------------------------------------------------------------------- the reference

def test_hsj_compares_with_art_at_the_same_budget(trained_mlp, test64):
    """Median L2 distance within a factor 1.5 of ART's HopSkipJump at ART's query count.

    ART runs 8 iterations per example (one at a time); its mean number of queries per
    example becomes our per-example budget. The two differ by design: ART's binary
    search tolerance is 0.01 / sqrt(d) where the reference's (ours) is d^(-3/2), and ART
    returns the point after its last step, ours the closest point found. Both are random
    (ART's first noise is drawn from an unseeded generator) and a median over ~30 images
    moved by 10 to 15% between seeds here (ART 1.74 to 1.81, ours 1.65 to 2.10 on 40
    images), so the bound is loose: it catches an attack that does not work, not a few
    percent.
    """
    pytest.importorskip("art")
    import numpy as np
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    x, y = test64[0][:32], test64[1][:32]
    right = predict(trained_mlp, x).argmax(1) == y

    class Float(Rows):  # ART interpolates in float64
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return super().forward(t.float())

    counted = Float(trained_mlp)
    classifier = PyTorchClassifier(counted, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                   nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    state = np.random.get_state()
    np.random.seed(0)
    try:
        art = HopSkipJump(classifier, norm=2, max_iter=8, max_eval=10_000, init_eval=100,
                          init_size=100, verbose=False)
        theirs_x = torch.as_tensor(art.generate(x.numpy()))
    finally:
        np.random.set_state(state)
    per_example = counted.rows // len(x)
    theirs = _size(theirs_x - x, "l2")[right].median().item()
    _, dist = closest_adversarial(trained_mlp, x, y, queries=per_example, steps=1000, seed=0)
    ours = dist[right].median().item()
    assert theirs / 1.5 <= ours <= theirs * 1.5, (ours, theirs, per_example)
