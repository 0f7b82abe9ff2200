"""Square Attack (Andriushchenko et al. 2020): results in the ball and box, the model left as
found, no gradient ever, the query budget spent exactly and counted to the right example,
fooled examples left alone, seeds per example, and agreement with torchattacks' Square.

Models are tiny: the session's 784 -> 64 -> 10 MLP, seeded untrained MLPs, a parameterless
constant model and the one-conv BatchNorm CNN; budgets are at most a few hundred queries.
"""

from __future__ import annotations

import statistics
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

SQ = sys.modules["robustkit.attacks.square"]  # the module (the package exports the function)
TOL = 1e-5  # slack of the eps-ball checks (float rounding of x + delta)
NORMS = [("linf", 0.05), ("l2", 1.0)]


class NoGrad(nn.Module):
    """``inner``, but refusing to run with gradients enabled (no black-box attack may)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.training = False  # wrappers come in eval mode, like the models they wrap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise AssertionError("a black-box attack called the model with gradients enabled")
        return self.inner(x)


class Constant(nn.Module):
    """No parameters; says class 0 with a margin of 10 for every image: never fooled."""

    def __init__(self) -> None:
        super().__init__()
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), 10, dtype=x.dtype, device=x.device)
        out[:, 0] = 10.0
        return out


class Closure(nn.Module):
    """A model with no parameters, buffers or submodules: ``inner`` lives in a closure (as
    in a query oracle); ``label`` returns one-hot rows of the prediction instead of logits."""

    def __init__(self, inner: nn.Module, label: bool = False) -> None:
        super().__init__()

        def run(x: torch.Tensor) -> torch.Tensor:
            out = inner(x)
            return nn.functional.one_hot(out.argmax(1), out.shape[1]).to(x.dtype) if label \
                else out
        self._run = run
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


class Recorder(nn.Module):
    """``inner``, recording which example every row belongs to: the clean image nearest to it
    (exact when the clean images are further apart than twice the largest perturbation),
    and the label ``inner`` gave it, call by call."""

    def __init__(self, inner: nn.Module, clean: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.clean = inner, clean.flatten(1).double()
        self.counts = torch.zeros(len(clean), dtype=torch.long)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (owners, labels) per call
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = torch.cdist(x.flatten(1).double(), self.clean).argmin(1)
        self.counts += torch.bincount(owner, minlength=len(self.clean))
        out = self.inner(x)
        self.calls.append((owner, out.argmax(1)))
        return out


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _size(d: torch.Tensor, norm: str) -> torch.Tensor:
    return d.flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)


def _robust(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    """Robust accuracy in percent."""
    return 100 * (predict(model, x_adv).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def test200(mnist_1000):
    x, y = mnist_1000["test"]
    return x[:200], y[:200]


@pytest.fixture
def mlp64():
    """An untrained seeded float64 MLP (float64: batched and single-row passes agree to the
    last bits that matter, so per-example results can be compared across batch splits)."""
    torch.manual_seed(3)
    return models.create("mlp", hidden=(16,), dropout=0.0).double().eval()


# ----------------------------------------------------------------------------- the pieces

def test_p_schedule_halves_on_the_papers_10000_query_scale():
    # The reference's p_selection: p_init until iteration 10, halved after 10, 50, 200, 500,
    # 1000, 2000, 4000, 6000 and 8000 (of 10,000), the iteration rescaled to the budget.
    marks = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 500: 8, 501: 16, 1000: 16,
             1001: 32, 2001: 64, 4001: 128, 6001: 256, 8001: 512, 9999: 512}
    for i, div in marks.items():
        assert SQ.p_schedule(i, 10000, 0.8) == pytest.approx(0.8 / div), i
    assert SQ.p_schedule(2, 1000, 0.8) == pytest.approx(0.4)  # 2 of 1000 is 20 of 10,000
    assert SQ.p_schedule(1, 1000, 0.8) == pytest.approx(0.8)  # 10 of 10,000


def test_l2_pattern_matches_the_reference():
    torchattacks = pytest.importorskip("torchattacks")
    ref = torchattacks.Square(nn.Linear(2, 2), norm="L2")
    ref.device = torch.device("cpu")
    for s in (2, 3, 5, 8, 25):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            theirs = ref.eta(s)  # transposed at random: compare with both
        ours = SQ.eta(s).float()
        assert torch.allclose(ours, theirs, atol=1e-6) or torch.allclose(ours.t(), theirs,
                                                                         atol=1e-6), s
        assert SQ.eta(s).norm().item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("restarts", [1, 2])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_square_stays_in_ball_and_box(trained_mlp, test200, norm, eps, restarts):
    x, y = test200[0][:32], test200[1][:32]
    x_adv = attacks.square(trained_mlp, x, y, eps=eps, norm=norm, queries=60,
                           restarts=restarts, seed=0)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (_size(x_adv - x, norm) <= eps * (1 + TOL) + TOL).all()
    assert _robust(trained_mlp, x_adv, y) < _robust(trained_mlp, x, y)


def test_square_leaves_the_model_and_the_input_as_found(bn_cnn, tiny_batch):
    model = bn_cnn
    model.train()
    model.drop.eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = tiny_batch[:4].clone().requires_grad_(True)
    x_copy = x.detach().clone()
    with pytest.warns(UserWarning, match="train mode"):
        attacks.square(model, x, torch.tensor([0, 1, 2, 3]), eps=0.1, norm="l2", queries=30,
                       seed=0)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x.detach(), x_copy) and x.grad is None


@pytest.mark.parametrize("norm,eps", NORMS)
def test_square_never_runs_the_model_with_gradients(trained_mlp, test200, norm, eps):
    x, y = test200[0][:16], test200[1][:16]
    with torch.enable_grad():
        x_adv = attacks.square(NoGrad(trained_mlp), x, y, eps=eps, norm=norm, queries=40,
                               seed=0)
    assert x_adv.shape == x.shape
    assert all(p.grad is None for p in trained_mlp.parameters())


# ----------------------------------------------------------------------------- queries

@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("queries,restarts", [(1, 1), (2, 1), (9, 1), (9, 3), (40, 2),
                                              (40, 50)])
def test_an_unbreakable_model_gets_exactly_the_budget(norm, queries, restarts):
    x = _images(5)
    y = torch.zeros(5, dtype=torch.long)
    model = Recorder(Constant(), x)
    with metering(5) as bill:
        x_adv = attacks.square(model, x, y, eps=0.05 if norm == "linf" else 1.0, norm=norm,
                               queries=queries, restarts=restarts, seed=0)
    assert bill.queries.tolist() == [queries] * 5
    assert model.counts.tolist() == [queries] * 5  # the rows the model actually saw
    assert torch.equal(bill.forward, bill.queries) and bill.backward.sum() == 0
    assert x_adv.shape == x.shape


@pytest.mark.parametrize("norm,eps", NORMS)
def test_queries_are_counted_to_their_example_and_stop_when_fooled(trained_mlp, test200,
                                                                   norm, eps):
    x, y = test200[0][:32], test200[1][:32]
    # Every queried image lies within eps of its own clean image, which is closer to it
    # than any other clean image: the recorder attributes every row exactly.
    gap = torch.cdist(x.flatten(1), x.flatten(1)) + 1e9 * torch.eye(32)
    assert gap.min() > 2 * (eps * 28 if norm == "linf" else eps)
    model = Recorder(trained_mlp, x)
    queries = 150
    with metering(32) as bill:
        attacks.square(model, x, y, eps=eps, norm=norm, queries=queries, seed=0)
    assert torch.equal(model.counts, bill.queries)
    assert torch.equal(bill.forward, bill.queries) and bill.backward.sum() == 0
    assert bill.queries.max() <= queries
    # Not vacuous: some examples were fooled on the way, some spent the whole budget.
    assert (bill.queries < queries).any() and (bill.queries == queries).any()
    wrong = predict(trained_mlp, x).argmax(1) != y
    assert wrong.any() and (bill.queries[wrong] == 1).all()  # only the clean query
    fooled_at: dict[int, int] = {}
    for call, (owners, labels) in enumerate(model.calls):
        for i, label in zip(owners.tolist(), labels.tolist(), strict=True):
            assert i not in fooled_at, f"example {i} queried after being fooled"
            if label != int(y[i]):
                fooled_at[i] = call
    assert len(fooled_at) > int(wrong.sum())


def test_per_example_counts_match_the_example_attacked_alone(mlp64):
    # With per-example seeds an example's queries do not depend on its batch: its bill in
    # the batch equals the rows the model sees when it is attacked alone.
    x, y = _images(6, seed=1).double(), torch.arange(6) % 3

    class Rows(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner, self.rows = inner, 0
            self.training = False

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            self.rows += len(t)
            return self.inner(t)

    counted = Rows(mlp64)
    with metering(6) as bill:
        attacks.square(counted, x, y, eps=1.0, norm="l2", queries=80, restarts=2,
                       seed=ExampleSeeds(0, torch.arange(6)))
    assert counted.rows == int(bill.queries.sum())
    for i in range(6):
        alone = Rows(mlp64)
        attacks.square(alone, x[i:i + 1], y[i:i + 1], eps=1.0, norm="l2", queries=80,
                       restarts=2, seed=ExampleSeeds(0, torch.tensor([i])))
        assert alone.rows == int(bill.queries[i]), i


# ----------------------------------------------------------------------------- seeds

@pytest.mark.parametrize("norm,eps", NORMS)
def test_square_seeds(mlp64, norm, eps):
    x, y = _images(8, seed=2).double(), torch.arange(8) % 10
    a = attacks.square(mlp64, x, y, eps=eps, norm=norm, queries=50, restarts=2, seed=5)
    b = attacks.square(mlp64, x, y, eps=eps, norm=norm, queries=50, restarts=2, seed=5)
    assert torch.equal(a, b)
    whole = attacks.square(mlp64, x, y, eps=eps, norm=norm, queries=50, restarts=2,
                           seed=ExampleSeeds(0, torch.arange(8)))
    part = attacks.square(mlp64, x[5:], y[5:], eps=eps, norm=norm, queries=50, restarts=2,
                          seed=ExampleSeeds(0, torch.arange(5, 8)))
    one = attacks.square(mlp64, x[2:3], y[2:3], eps=eps, norm=norm, queries=50, restarts=2,
                         seed=ExampleSeeds(0, torch.tensor([2])))
    assert torch.equal(part, whole[5:]) and torch.equal(one, whole[2:3])
    assert not torch.equal(whole, x)  # not vacuous: the attack moved something


# ----------------------------------------------------------------------------- any model

def test_square_needs_no_parameters_and_works_through_an_oracle(trained_mlp, test200):
    x, y = test200[0][:16], test200[1][:16]
    hidden = Closure(trained_mlp)
    assert not list(hidden.parameters()) and not list(hidden.buffers())
    with metering(16) as bill:
        x_adv = attacks.square(hidden, x, y, eps=0.1, queries=40, seed=0)
    assert bill.queries.max() == 40 or bill.queries.min() < 40
    assert _robust(trained_mlp, x_adv, y) < _robust(trained_mlp, x, y)
    blackbox = pytest.importorskip("robustkit.blackbox")
    oracle = blackbox.Oracle(trained_mlp, output="scores").eval()  # a module: train mode
    with metering(16) as bill:
        via_oracle = attacks.square(oracle, x, y, eps=0.1, queries=40, seed=0)
    assert oracle.queries == int(bill.queries.sum())
    assert torch.allclose(via_oracle, x_adv)


def test_probability_outputs_warn_once(trained_mlp, test200):
    x, y = test200[0][:8], test200[1][:8]
    softmax = nn.Sequential(trained_mlp, nn.Softmax(dim=1)).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attacks.square(softmax, x, y, eps=0.1, queries=20, seed=0)
    assert sum("probabilities" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize("options,match", [
    ({"queries": 0}, "queries must be an integer"),
    ({"queries": 2.5}, "queries must be an integer"),
    ({"queries": True}, "queries must be an integer"),
    ({"p_init": 0.0}, "p_init must be a number in"),
    ({"p_init": 1.5}, "p_init must be a number in"),
    ({"p_init": float("nan")}, "p_init must be a number in"),
    ({"restarts": 0}, "restarts must be an integer"),
    ({"norm": "l1"}, "norm must be one of"),
    ({"seed": ExampleSeeds(0, torch.arange(3))}, "3 per-example streams for 4 examples"),
])
def test_square_refuses_bad_options(trained_mlp, test200, options, match):
    x, y = test200[0][:4], test200[1][:4]
    with pytest.raises(RobustkitError, match=match):
        attacks.square(trained_mlp, x, y, **{"eps": 0.1, "queries": 10, **options})


def test_square_checks_labels_and_shapes_on_its_first_query(trained_mlp, test200):
    x, y = test200[0][:4], test200[1][:4]
    with pytest.raises(RobustkitError, match="label out of range"):
        attacks.square(trained_mlp, x, torch.tensor([0, 1, 2, 10]), eps=0.1, queries=10)
    with pytest.raises(RobustkitError, match="takes images of shape"):
        attacks.square(trained_mlp, x[:, :, :20], y, eps=0.1, queries=10)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    with pytest.raises(RobustkitError, match="cannot run on images of shape"):
        attacks.square(plain, x[:, :, :20], y, eps=0.1, queries=10)


# ----------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_square_agrees_with_torchattacks(trained_mlp, test200, norm, eps):
    """Mean robust accuracy over 3 seeds within 2.5 points of torchattacks' Square.

    Same eps, budget (500 queries), p_init 0.8, margin loss, one restart. It is random
    search, so runs differ by seed: on these settings one run's robust accuracy spreads
    by 0.4 to 1 point (standard deviation over 6 seeds, both implementations), so a mean
    of 3 by at most about 0.6 and a difference of two means by about 0.8; 2.5 points
    (5 of 200 images) is 3 of those. One difference is deliberate: the paper draws a
    square's corner from {0, ..., w - s}, the reference from {0, ..., w - s - 1} (it can
    never change the last row and column with a square), which measured 0.5 to 1 point
    in our favour for Linf at 500 queries (2 at 1,000), about 0 for L2. The budgets differ
    by two queries (ours counts the clean image and the start; theirs counts neither).
    """
    torchattacks = pytest.importorskip("torchattacks")
    x, y = test200
    ours, theirs = [], []
    for seed in range(3):
        ours.append(_robust(trained_mlp, attacks.square(trained_mlp, x, y, eps=eps, norm=norm,
                                                        queries=500, seed=seed), y))
        ref = torchattacks.Square(trained_mlp, norm={"linf": "Linf", "l2": "L2"}[norm],
                                  eps=eps, n_queries=500, n_restarts=1, p_init=0.8,
                                  loss="margin", seed=seed)
        with torch.random.fork_rng():  # it seeds the global generator
            theirs.append(_robust(trained_mlp, ref(x, y), y))
    clean = _robust(trained_mlp, x, y)
    assert statistics.mean(ours) < clean - 20  # not vacuous: it breaks 26 to 38 points
    assert abs(statistics.mean(ours) - statistics.mean(theirs)) <= 2.5, (ours, theirs)
