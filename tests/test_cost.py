"""Cost accounting: every attack's bill (robustkit.core.cost) matches the passes the model
really made, counted independently by hooks on the model, per example where that is
known exactly, and scopes nest and stay silent outside a ``metering`` block."""

from __future__ import annotations

import pytest
import torch

from robustkit import attacks, models
from robustkit.core.cost import (PGD40_UNITS, Cost, charge, metered, metering,
                                 pgd40_equivalents)
from wrappers import Counted

PROBE = 2  # model_contract's probe: two images, not charged to the attack


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Counted(models.create("mlp", hidden=(16,), dropout=0.0)).eval()


def batch(n: int = 12):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


CASES = {
    "fgsm": {"eps": 0.1},
    "bim": {"eps": 0.1, "steps": 4},
    "pgd": {"eps": 0.1, "steps": 4, "restarts": 2, "seed": 0},
    "mifgsm": {"eps": 0.1, "steps": 3},
    "apgd": {"eps": 0.1, "steps": 5, "restarts": 2, "seed": 0},
    "apgd-t": {"eps": 0.1, "steps": 5, "targeted": True, "target_classes": 3, "seed": 0},
    "deepfool": {"steps": 5, "candidates": 3},
    "cw_l2": {"steps": 4, "binary_search_steps": 2},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bill_matches_the_passes_the_model_made(case, model):
    x, y = batch()
    fn = attacks.ATTACKS.get(case.split("-")[0])
    with metering(len(x)) as bill:
        fn(model, x, y, **CASES[case])
    totals = bill.totals()
    assert totals["forward"] == model.forward_rows - PROBE
    assert totals["backward"] == model.backward_rows
    assert totals["queries"] == 0  # white-box attacks make no black-box queries
    assert bill.unattributed == (0, 0, 0)
    assert (bill.forward >= 1).all()  # every example was looked at


def test_fixed_step_attacks_charge_every_example_alike(model):
    x, y = batch()
    with metering(len(x)) as bill:
        attacks.bim(model, x, y, eps=0.1, steps=7)
    assert bill.forward.tolist() == [7] * len(x) and bill.backward.tolist() == [7] * len(x)


def test_apgd_charges_only_the_examples_it_keeps_attacking(model):
    x, y = batch()
    with metering(len(x)) as bill:
        attacks.apgd(model, x, y, eps=0.3, steps=5, restarts=3, seed=0)
    # Each run costs at most steps + 1 passes; an example leaves a run when it is fooled and
    # is not attacked again (one fooled by the clean image is not attacked at all).
    assert (bill.backward <= 18).all()
    assert len(set(bill.backward.tolist())) > 1
    assert (bill.forward == bill.backward + 1).all()  # plus the clean pass


def test_no_scope_no_bill_and_scopes_nest():
    charge(3, forward=1)  # outside any scope: nothing happens, nothing raises
    assert not metered()
    with metering(3) as outer:
        assert metered()
        with metering(3) as inner:
            charge(3, rows=torch.tensor([True, False, True]), forward=1, backward=1)
        with metering(2):  # another batch: totals only
            charge(2, queries=5)
        charge(3, rows=torch.tensor([1]), queries=2)
    assert inner.forward.tolist() == [1, 0, 1]
    assert outer.forward.tolist() == [1, 2, 1] and outer.backward.tolist() == [1, 0, 1]
    assert outer.queries.tolist() == [0, 2, 0]
    assert outer.unattributed == (10, 0, 10)
    assert outer.totals() == {"forward": 14, "backward": 2, "queries": 12}


def test_pgd40_equivalents_and_rows():
    assert pgd40_equivalents(40, 40) == 1.0 and PGD40_UNITS == 120
    total = Cost.zeros(4)
    part = Cost.zeros(2)
    part.forward += torch.tensor([3, 5])
    total.add_rows(torch.tensor([1, 3]), part)
    assert total.forward.tolist() == [0, 3, 0, 5]


def test_evaluations_record_what_each_example_cost(model):
    from robustkit.attacks import bind
    from robustkit.outcomes import outcomes

    x, y = batch(20)
    only = torch.zeros(20, dtype=torch.bool)
    only[::2] = True
    out = outcomes((x, y), {"m": model}, bind("bim", model, {"steps": 4}, eps=0.1),
                   batch_size=7, only=only)
    assert out.costs["backward"].tolist() == [4 if a else 0 for a in only.tolist()]
    assert torch.equal(out.costs["forward"], out.costs["backward"])
    cost = out.cost()
    assert cost is not None and cost["forward"] == 40 and cost["queries"] == 0
    assert cost["pgd40_per_example"] == pytest.approx(pgd40_equivalents(4, 4))
    assert outcomes((x, y), {"m": model}).cost() is None  # clean only: no attack, no bill
