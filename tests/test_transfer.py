"""Transfer matrices: checked against crafting and scoring by hand, one attack per source."""

from __future__ import annotations

import pytest
import torch

from robustkit.core.seeding import ExampleSeeds
from torch import nn

from robustkit import attacks, models, transfer
from robustkit.errors import RobustkitError
from robustkit.core import predict
from robustkit.train import fit


@pytest.fixture(scope="module")
def three(mnist_1000):
    """Three small, differently made models trained on the same 1000 digits."""
    out = {}
    for name, kind, opts, seed in [("mlp", "mlp", {"hidden": (32,), "dropout": 0.0}, 0),
                                   ("mlp2", "mlp", {"hidden": (32,), "dropout": 0.0}, 1),
                                   ("logistic", "logistic", {}, 0)]:
        torch.manual_seed(seed)
        m = models.create(kind, **opts)
        fit(m, mnist_1000["train"], epochs=2, batch_size=64, lr=0.01, augment="none",
            device="cpu", amp=False, seed=seed, quiet=True)
        out[name] = m.eval()
    return out


@pytest.fixture
def data64(mnist_1000):
    x, y = mnist_1000["test"]
    keep = torch.arange(0, 1000, 16)  # 64 images spread over the test split
    return x[keep], y[keep]


def test_matrix_equals_crafting_and_scoring_by_hand(three, data64):
    x, y = data64
    kw = {"eps": 0.15, "steps": 5, "seed": 0}
    m = transfer.transfer_matrix(three, three, x, y, attack="pgd", progress=False, **kw)
    assert set(m) == set(three) and all(set(row) == set(three) for row in m.values())
    for s, source in three.items():
        # each example's random start comes from its own stream, seeded by its index
        seeds = ExampleSeeds(kw["seed"], torch.arange(len(y)))
        x_adv = attacks.pgd(source, x, y, **{**kw, "seed": seeds}).cpu()
        for t, target in three.items():
            clean_ok = predict(target, x).argmax(1) == y
            adv_ok = predict(target, x_adv).argmax(1) == y
            assert m[s][t] == pytest.approx((clean_ok & adv_ok).float().mean().item())
            assert torch.equal(m.fooled[s][t], ~adv_ok)
            both = (predict(source, x).argmax(1) == y) & clean_ok
            assert m.success[s][t] == pytest.approx((~adv_ok)[both].float().mean().item())
    for name in three:  # the diagonal is white-box: no worse for the attacker than transfer
        assert m[name][name] <= min(m[s][name] for s in three) + 0.05


def test_each_source_is_attacked_exactly_once_per_eps(three, data64):
    x, y = data64
    calls: dict[str, int] = {}
    names = {id(m): n for n, m in three.items()}

    def counting_fgsm(model, xb, yb, eps):
        calls[names[id(model)]] = calls.get(names[id(model)], 0) + 1
        return attacks.fgsm(model, xb, yb, eps=eps)

    out = transfer.transfer_matrix(three, three, x, y, attack=counting_fgsm, eps=[0.1, 0.2],
                                   progress=False)
    assert sorted(out) == [0.1, 0.2]
    assert calls == {name: 2 for name in three}  # once per eps, not once per pair


def test_larger_eps_never_helps_the_targets_on_fgsm_examples(three, data64):
    x, y = data64
    out = transfer.transfer_matrix(three, {"logistic": three["logistic"]}, x, y,
                                   attack="fgsm", eps=[0.05, 0.3], progress=False)
    # FGSM on the linear model itself is monotone in eps; transfer typically is too
    assert out[0.3]["logistic"]["logistic"] <= out[0.05]["logistic"]["logistic"]


def test_ensemble_averages_logits_with_normalized_weights(three, data64):
    x, _ = data64
    a, b = three["mlp"], three["logistic"]
    ens = transfer.Ensemble([a, b], weights=[1, 3])
    with torch.no_grad():
        assert torch.allclose(ens(x), 0.25 * a(x) + 0.75 * b(x), atol=1e-6)
        assert torch.allclose(transfer.Ensemble([a, b])(x), (a(x) + b(x)) / 2, atol=1e-6)
    for bad in ([1], [-1, 2], [0, 0]):
        with pytest.raises(RobustkitError, match="weights"):
            transfer.Ensemble([a, b], weights=bad)
    with pytest.raises(RobustkitError, match="at least one"):
        transfer.Ensemble([])


def test_ensemble_serves_as_a_source(three, data64):
    x, y = data64
    ens = transfer.Ensemble([three["mlp"], three["logistic"]])
    m = transfer.transfer_matrix({"ens": ens}, {"mlp2": three["mlp2"]}, x, y, attack="pgd",
                                 eps=0.2, steps=5, seed=0, progress=False)
    assert 0 <= m["ens"]["mlp2"] <= (predict(three["mlp2"], x).argmax(1) == y).float().mean()


class _Quantized(nn.Module):
    """Gradient masking by input quantization: the gradient is zero everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_transfer_beating_white_box_warns(three, mnist_1000):
    x, y = mnist_1000["test"]
    x, y = x[::10], y[::10]
    masked = _Quantized(three["mlp"]).eval()
    models_ = {"mlp": three["mlp"], "masked": masked}
    with pytest.warns(UserWarning, match="suspect gradient masking"):
        m = transfer.transfer_matrix(models_, models_, x, y, attack="pgd", eps=0.3, steps=10,
                                     seed=0, progress=False)
    assert m["mlp"]["masked"] < m["masked"]["masked"]


@pytest.mark.parametrize("case", ["empty sources", "empty targets", "shape", "classes", "xy"])
def test_bad_input_is_refused(case, three, data64):
    x, y = data64
    src, tgt = {"mlp": three["mlp"]}, {"logistic": three["logistic"]}
    if case == "empty sources":
        src = {}
    elif case == "empty targets":
        tgt = {}
    elif case == "shape":
        tgt = {"cifar": models.create("mlp", in_shape=(3, 32, 32), hidden=(8,)).eval()}
    elif case == "classes":
        tgt = {"five": models.create("logistic", num_classes=5).eval()}
    elif case == "xy":
        y = y[:-1]
    with pytest.raises(ValueError) as err:
        transfer.transfer_matrix(src, tgt, x, y, eps=0.1, progress=False)
    message = str(err.value)
    expected = {"empty sources": "at least one source", "empty targets": "at least one source",
                "shape": "takes images of shape", "classes": "number of classes",
                "xy": "batch-size mismatch"}[case]
    assert expected in message
