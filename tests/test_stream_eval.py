"""Evaluations over data of any size: tensors, a Dataset and a DataLoader give the same
per-example results, and each example's randomness follows its global index, so neither
the batch size nor the loader's batching changes a result."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robustkit import evaluate, transfer
from robustkit.core.seeding import ExampleSeeds, example_seed
from robustkit.core.stream import Shard, as_tensors, batches, size
from robustkit.errors import RobustkitError
from robustkit.outcomes import outcomes
from robustkit.attacks import bind


class ListDataset(Dataset):
    """A plain map-style dataset of (image, int label) items, as users write them."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.fixture(scope="module")
def data(mnist_1000):
    x, y = mnist_1000["test"]
    return x[:90], y[:90]


def forms(x, y):
    return {"tensors": (x, y), "dataset": ListDataset(x, y),
            "loader": DataLoader(TensorDataset(x, y), batch_size=13),
            "loader of a plain dataset": DataLoader(ListDataset(x, y), batch_size=32)}


def test_batches_cover_every_example_once_in_order(data):
    x, y = data
    for name, d in forms(x, y).items():
        seen = torch.cat([b.index for b in batches(d, 16)])
        assert torch.equal(seen, torch.arange(len(y))), name
        xx, yy = as_tensors(d)
        assert torch.equal(xx, x) and torch.equal(yy, y), name
        assert size(d) == len(y)
        parts = [torch.cat([b.index for b in batches(d, 16, shard=Shard(r, 3))])
                 for r in range(3)]
        assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(len(y))), name
        assert all(((p // 16) % 3 == r).all() for r, p in enumerate(parts))  # blocks of 16


def test_a_shuffled_loader_is_refused(data):
    x, y = data
    with pytest.raises(RobustkitError, match="fixed order"):
        evaluate.robust_accuracy(torch.nn.Identity(),
                                 DataLoader(TensorDataset(x, y), shuffle=True),
                                 attack="fgsm", eps=0.1)


def test_example_seeds_follow_the_index_not_the_batch():
    a = ExampleSeeds(5, torch.arange(10)).rand((10, 3))
    b = torch.cat([ExampleSeeds(5, torch.tensor([i])).rand((1, 3)) for i in range(10)])
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    assert example_seed(5, 1) != example_seed(6, 1) != example_seed(5, 2)


def test_pgd_random_starts_do_not_depend_on_the_batch_size(trained_mlp, data):
    x, y = data
    run = bind("pgd", trained_mlp, {"steps": 3}, eps=0.2, defaults={"seed": 1})
    whole = run(x, y, index=torch.arange(len(y)))
    pieces = torch.cat([run(x[i:i + 7], y[i:i + 7], index=torch.arange(i, min(i + 7, len(y))))
                        for i in range(0, len(y), 7)])
    assert torch.allclose(whole, pieces, atol=1e-6)
    assert (whole != x).any()


@pytest.mark.parametrize("form", ["dataset", "loader", "loader of a plain dataset"])
def test_every_evaluation_agrees_between_tensors_and_streams(trained_mlp, data, form):
    x, y = data
    stream = forms(x, y)[form]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = evaluate.robust_accuracy(trained_mlp, x, y, "pgd", eps=0.1, steps=5,
                                     batch_size=17, progress=False)
        b = evaluate.robust_accuracy(trained_mlp, stream, attack="pgd", eps=0.1, steps=5,
                                     batch_size=40, progress=False)
    assert float(a) == float(b) and a.clean_accuracy == b.clean_accuracy and a.n == b.n
    assert float(a) <= a.clean_accuracy
    for attack, extra in (("pgd", {"steps": 4}), ("fgsm", {})):
        c1 = evaluate.robustness_curve(trained_mlp, x, y, attack=attack, eps=[0.05, 0.2],
                                       batch_size=11, progress=False, **extra)
        c2 = evaluate.robustness_curve(trained_mlp, stream, attack=attack, eps=[0.05, 0.2],
                                       batch_size=50, progress=False, **extra)
        assert c1 == c2, attack
    x1 = evaluate.adversarial_examples(trained_mlp, x, y, "pgd", eps=0.1, steps=3,
                                       batch_size=9, progress=False)
    x2 = evaluate.adversarial_examples(trained_mlp, stream, attack="pgd", eps=0.1, steps=3,
                                       batch_size=64, progress=False)
    assert torch.allclose(x1, x2, atol=1e-6)
    zoo = {"mlp": trained_mlp}
    t1 = transfer.transfer_matrix(zoo, zoo, x, y, eps=[0.1], steps=3, seed=0, progress=False,
                                  batch_size=20)
    t2 = transfer.transfer_matrix(zoo, zoo, stream, eps=[0.1], steps=3, seed=0,
                                  progress=False, batch_size=33)
    assert torch.equal(t1[0.1].fooled["mlp"]["mlp"], t2[0.1].fooled["mlp"]["mlp"])
    v1 = evaluate.validity_checks(trained_mlp, x, y, steps=3, progress=False, batch_size=25)
    v2 = evaluate.validity_checks(trained_mlp, stream, steps=3, progress=False, batch_size=60)
    assert v1 == v2


def test_outcomes_are_in_example_order_and_robust_never_exceeds_clean(trained_mlp, data):
    x, y = data
    run = bind("pgd", trained_mlp, {"steps": 3}, eps=0.1, defaults={"seed": 0})
    out = outcomes(forms(x, y)["loader"], {"model": trained_mlp}, run, batch_size=8)
    assert torch.equal(out.index, torch.arange(len(y)))
    assert torch.equal(out.label, y)
    assert (out.robust("model") <= out.clean["model"]).all()
    assert out.attacked.all()


def test_a_loader_without_labels_or_with_y_is_refused(trained_mlp, data):
    x, y = data
    with pytest.raises(RobustkitError, match="carries its labels"):
        evaluate.robust_accuracy(trained_mlp, forms(x, y)["loader"], y, attack="fgsm", eps=0.1)
    with pytest.raises(RobustkitError, match="pairs"):
        evaluate.robust_accuracy(trained_mlp, [x[:4]], attack="fgsm", eps=0.1)
    with pytest.raises(RobustkitError, match="give the attack"):
        evaluate.robust_accuracy(trained_mlp, x, y)


def test_a_bad_batch_in_a_stream_is_refused_naming_the_problem(trained_mlp, data):
    x, y = data
    x = x.clone()
    x[50, 0, 0, 0] = 2.0
    with pytest.raises(RobustkitError, match=r"\[0, 1\]"):
        evaluate.robust_accuracy(trained_mlp, DataLoader(TensorDataset(x, y), batch_size=16),
                                 attack="fgsm", eps=0.1)


def test_near_chance_clean_accuracy_is_flagged_beside_the_number(data):
    x, y = data
    from robustkit import models
    torch.manual_seed(0)
    untrained = models.create("mlp", hidden=(8,)).eval()
    with pytest.warns(UserWarning, match="near chance"):
        acc = evaluate.robust_accuracy(untrained, x, y, "fgsm", eps=0.1, progress=False)
    assert acc.clean_accuracy <= 0.15


@pytest.mark.parametrize("form", ["dataset", "loader"])
def test_explanations_and_minimal_tables_agree_between_tensors_and_streams(trained_mlp, data,
                                                                          form):
    from robustkit import explain

    x, y = data
    x, y = x[:24], y[:24]
    stream = forms(x, y)[form]
    for method in ("saliency", "integrated_gradients"):
        a = explain.attribute(trained_mlp, x, y, method=method, batch_size=8)
        b = explain.attribute(trained_mlp, stream, method=method, batch_size=8)
        assert torch.equal(a, b), method
    pred = explain.attribute(trained_mlp, stream, "prediction", method="saliency", batch_size=8)
    by_hand = explain.attribute(trained_mlp, x, trained_mlp(x).argmax(1), method="saliency",
                                batch_size=8)
    assert torch.equal(pred, by_hand)
    with pytest.raises(RobustkitError, match="'label' or 'prediction'"):
        explain.attribute(trained_mlp, stream, 3, method="saliency")
    t1 = evaluate.minimal_table(trained_mlp, x[:6], y[:6], steps=20, progress=False)
    t2 = evaluate.minimal_table(trained_mlp, forms(x[:6], y[:6])[form], steps=20,
                                progress=False)
    assert t1 == t2
