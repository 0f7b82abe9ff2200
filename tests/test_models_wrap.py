"""Model adapters: ``robustkit.models.wrap`` puts the pipeline's normalization in front of a
model and picks the logits from a dict, tuple or object output; wrapped models of a known
architecture save and load.

The normalization test is the issue's acceptance test: a torchvision ResNet-18 whose
normalization lives in the data pipeline gives, wrapped, the same clean and robust accuracy
(PGD, fixed seed) as the same weights with the normalization inside; unwrapped, fed the
pipeline's normalized images, it is refused.
"""

from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch
import torchvision
from torch import nn

from robustkit import models
from robustkit.core import accuracy_of, model_contract
from robustkit.errors import RobustkitError
from robustkit.evaluate import adversarial_examples, robust_accuracy
from robustkit.models import Normalize, Wrapped, wrap

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _images(n: int = 8, shape=(3, 32, 32), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet():
    """An untrained torchvision ResNet-18 (10 classes) whose BatchNorm statistics are
    those of CIFAR-like normalized images, in eval mode: its predictions vary with the
    image (the numbers, not their quality, are compared)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    x = _images(32, seed=1)
    net.train()
    with torch.no_grad():  # running statistics from normalized images
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        for _ in range(3):
            net((x - mean) / std)
    return net.eval()


# ------------------------------------------------------------------- normalization test


def test_wrapped_gives_the_same_clean_and_robust_accuracy_as_normalization_inside(resnet):
    x = _images(8)
    inside = nn.Sequential(Normalize(CIFAR_MEAN, CIFAR_STD), copy.deepcopy(resnet)).eval()
    wrapped = wrap(copy.deepcopy(resnet), mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    with torch.no_grad():
        pred = inside(x).argmax(1)
    y = pred.clone()
    y[:2] = (y[:2] + 1) % 10  # two wrong labels: clean accuracy 6/8
    with torch.no_grad():
        assert torch.equal(wrapped(x), inside(x))
    assert accuracy_of(wrapped, x, y) == accuracy_of(inside, x, y) == 0.75
    # eps small enough that PGD breaks some of the correct examples, not all (the
    # comparison means something): 3 of the 6 here.
    eps = 0.2 / 255
    options = dict(attack="pgd", eps=eps, steps=3, seed=0, progress=False, batch_size=4)
    robust_in = robust_accuracy(inside, x, y, **options)
    robust_wrapped = robust_accuracy(wrapped, x, y, **options)
    assert float(robust_wrapped) == float(robust_in)
    assert 0 < float(robust_in) < 0.75
    # ... and the same adversarial images, bit for bit
    adv_in = adversarial_examples(inside, x, y, "pgd", eps=eps, steps=3, seed=0,
                                  progress=False)
    adv_wrapped = adversarial_examples(wrapped, x, y, "pgd", eps=eps, steps=3, seed=0,
                                       progress=False)
    assert torch.equal(adv_in, adv_wrapped)
    assert (adv_in - x).abs().max() <= eps + 1e-6


def test_unwrapped_fed_pipeline_normalized_images_is_refused(resnet):
    x = _images(8)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    normalized = (x - mean) / std  # what the training pipeline feeds: outside [0, 1]
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(RobustkitError, match=r"\[0, 1\]"):
        robust_accuracy(resnet, normalized, y, attack="pgd", eps=2 / 255, steps=1,
                        progress=False)


def test_unwrapped_fed_unit_images_still_runs(resnet):
    # The near-chance warning beside the number is the evaluation's (another test's); here
    # only that the evaluation runs and returns a number in [0, 1].
    x = _images(8)
    y = torch.arange(8) % 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = robust_accuracy(resnet, x, y, attack="pgd", eps=2 / 255, steps=1, progress=False)
    assert 0.0 <= float(acc) <= 1.0


# ------------------------------------------------------------------------ output adapters


class Body(nn.Module):
    """A tiny classifier of 3x4x4 images whose outputs the adapters below dress up."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        return self.fc(self.flatten(x))


class DictOut(Body):
    def forward(self, x):
        return {"logits": super().forward(x), "features": self.flatten(x)}


class TupleOut(Body):
    def forward(self, x):
        return super().forward(x), self.flatten(x)


class ObjectOut(Body):
    def forward(self, x):  # HuggingFace-style: attributes
        return types.SimpleNamespace(logits=super().forward(x), hidden_states=None)


class ModelOutput(dict):
    """Like transformers' ModelOutput: a dict with attributes and ``to_tuple``."""

    def __getattr__(self, name):
        return self[name]

    def to_tuple(self):
        return tuple(self.values())


class HFOut(Body):
    def forward(self, x):
        return ModelOutput(logits=super().forward(x), loss=None)


@pytest.mark.parametrize("cls, output", [
    (DictOut, "logits"), (TupleOut, 0), (TupleOut, -2), (ObjectOut, "logits"),
    (HFOut, "logits"), (HFOut, 0), (DictOut, lambda out: out["logits"]),
], ids=["dict-key", "tuple-index", "tuple-negative-index", "object-attribute", "hf-key",
        "hf-index", "callable"])
def test_output_picks_the_logits(cls, output):
    x = _images(4, (3, 4, 4))
    model = wrap(cls(), output=output)
    with torch.no_grad():
        logits = model(x)
        expected = Body()(x)
    assert isinstance(model, Wrapped) and torch.equal(logits, expected)
    assert model_contract(model, x, "test") == 5


def test_attacks_run_through_an_output_adapter():
    x = _images(6, (3, 4, 4))
    plain, adapted = Body().eval(), wrap(DictOut(), output="logits").eval()
    y = plain(x).argmax(1)
    a = robust_accuracy(plain, x, y, attack="pgd", eps=0.1, steps=3, progress=False)
    b = robust_accuracy(adapted, x, y, attack="pgd", eps=0.1, steps=3, progress=False)
    assert float(a) == float(b)


def test_dict_output_without_adapter_is_refused_with_the_way_to_fix_it():
    x = _images(4, (3, 4, 4))
    with pytest.raises(RobustkitError, match=r"robustkit\.models\.wrap\(model, output=\.\.\.\)"):
        model_contract(DictOut(), x, "attack")


@pytest.mark.parametrize("cls, output, match", [
    (DictOut, "logit", r"keys \['features', 'logits'\], which has no 'logit'"),
    (TupleOut, 2, "a tuple of 2 items"),
    (ObjectOut, "scores", "has no 'scores'"),
    (Body, 0, "already returns a tensor"),
    (Body, "logits", "already returns a tensor"),
    (DictOut, "features", None),  # a tensor, but of features: the contract sees (N, 48)
    (ObjectOut, "hidden_states", "gave a NoneType"),
    (TupleOut, "logits", "has no 'logits'"),
], ids=["missing-key", "index-out-of-range", "missing-attribute", "index-on-tensor",
        "key-on-tensor", "features", "not-a-tensor", "key-on-tuple"])
def test_output_mistakes_are_refused(cls, output, match):
    model = wrap(cls(), output=output)
    x = _images(2, (3, 4, 4))
    if match is None:
        assert model(x).shape == (2, 48)  # picked as asked; the caller chose features
        return
    with pytest.raises(RobustkitError, match=match):
        model(x)


@pytest.mark.parametrize("kwargs, match", [
    ({"output": True}, "key .* an index .* or a function"),
    ({"output": 1.5}, "key .* an index"),
    ({"output": ""}, "must not be empty"),
    ({"mean": [0.5, 0.5, 0.5]}, "give both mean and std"),
    ({"std": [0.5]}, "give both mean and std"),
    ({"mean": [0.5, 0.5], "std": [0.5, 0.5, 0.5]}, "one value per channel"),
    ({"mean": [0.5], "std": [0.0]}, "std > 0"),
    ({"mean": [float("nan")], "std": [1.0]}, "finite"),
    ({"mean": ["a"], "std": [1.0]}, "numbers"),
])
def test_bad_wrap_arguments_are_refused(kwargs, match):
    with pytest.raises(RobustkitError, match=match):
        wrap(Body(), **kwargs)


def test_normalize_is_the_first_layer_and_its_buffers_live_in_the_state_dict():
    model = wrap(Body(), mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    first_name, first = next(iter(model.named_children()))
    assert (first_name, type(first)) == ("normalize", Normalize)
    assert {"normalize.mean", "normalize.std", "model.fc.weight"} <= set(model.state_dict())
    x = _images(2, (3, 4, 4))
    mean, std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), 0.5
    with torch.no_grad():
        assert torch.equal(model(x), model.model((x - mean) / std))


def test_wrapping_a_model_that_normalizes_itself_is_refused():
    m = models.create("logistic", (3, 4, 4))
    with pytest.raises(RobustkitError, match="normalize twice"):
        wrap(m, mean=[0.5] * 3, std=[0.5] * 3)
    w = wrap(Body(), mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(RobustkitError, match="normalize twice"):
        wrap(w, mean=[0.5] * 3, std=[0.5] * 3)


def test_wrapping_a_wrapped_model_flattens_it():
    w = wrap(DictOut(), mean=[0.5] * 3, std=[0.25] * 3)
    w2 = wrap(w, output="logits")
    assert isinstance(w2.model, DictOut) and w2.normalize is not None and w2.output == "logits"
    x = _images(2, (3, 4, 4))
    with torch.no_grad():
        assert torch.equal(w2(x), Body()((x - 0.5) / 0.25))


def test_wrap_keeps_the_model_on_its_device_and_leaves_its_mode():
    body = Body().eval()
    w = wrap(body, mean=[0.5] * 3, std=[0.5] * 3)
    assert w.normalize.mean.device == body.fc.weight.device
    assert not body.training


# --------------------------------------------------------------- checkpoints of wrapped models


def test_a_wrapped_torchvision_model_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    bare = models.build("torchvision:resnet18", (3, 32, 32), 10,
                        options={"num_classes": 10})
    assert bare.robustkit_spec["mean"] is None and bare.normalize is None
    model = wrap(bare, mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    assert model.robustkit_spec["mean"] == list(CIFAR_MEAN)
    models.save(model, tmp_path / "rn.pt", dataset="cifar10")
    loaded = models.load(tmp_path / "rn.pt")
    x = _images(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.robustkit_spec == model.robustkit_spec
    assert isinstance(loaded.model, torchvision.models.ResNet)


FACTORY_MODULE = '''
import torch
from torch import nn

class DictNet(nn.Module):
    def __init__(self, num_classes, width):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, width), nn.ReLU(),
                                  nn.Linear(width, num_classes))

    def forward(self, x):
        return {"logits": self.body(x), "aux": x.mean()}

def dictnet(num_classes=10, width=8):
    return DictNet(num_classes, width)
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A module ``wrapnets`` (on sys.path for this test) with a factory of a dict-output net."""
    (tmp_path / "wrapnets.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "wrapnets:dictnet"


@pytest.mark.parametrize("output", ["logits", None])
def test_a_wrapped_factory_model_with_an_output_key_saves_and_loads(tmp_path, factory_module,
                                                                    output):
    torch.manual_seed(0)
    if output is None:  # wrapped after building
        model = wrap(models.create(factory_module, (3, 4, 4), 5, width=6), output="logits")
    else:  # built with its output
        model = models.build(factory_module, (3, 4, 4), 5, options={"width": 6},
                             output=output)
    assert model.robustkit_spec["output"] == "logits"
    models.save(model, tmp_path / "f.pt")
    with pytest.raises(RobustkitError, match="--trust-factory wrapnets:dictnet"):
        models.load(tmp_path / "f.pt")
    loaded = models.load(tmp_path / "f.pt", trust=[factory_module])
    x = _images(3, (3, 4, 4))
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert loaded.robustkit_spec == model.robustkit_spec


def test_wrapped_models_of_unknown_architecture_are_refused_by_save(tmp_path):
    with pytest.raises(RobustkitError, match=r"models\.build\('torchvision:NAME'"):
        models.save(wrap(Body(), mean=[0.5] * 3, std=[0.5] * 3), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_a_callable_output_cannot_be_saved(tmp_path, factory_module):
    model = wrap(models.create(factory_module, (3, 4, 4), 5), output=lambda o: o["logits"])
    assert getattr(model, "robustkit_spec", None) is None
    with pytest.raises(RobustkitError, match="save needs a model made by"):
        models.save(model, tmp_path / "x.pt")


def test_wrapping_with_a_normalization_of_the_wrong_channel_count_is_refused():
    bare = models.create("torchvision:resnet18", (3, 32, 32), 10)
    with pytest.raises(RobustkitError, match="1 values, but the model .* takes 3-channel"):
        wrap(bare, mean=[0.5], std=[0.5])


def test_checkpoints_of_registered_models_keep_their_checksums(tmp_path):
    # "output" joins a checkpoint's description only when set: a registered model's
    # checkpoint holds the same fields (and the same checksums) as before.
    m = models.create("logistic")
    models.save(m, tmp_path / "m.pt")
    payload = models.read(tmp_path / "m.pt")
    assert "output" not in payload
    from robustkit.models.checkpoint import SPEC_KEYS, _json_digest

    assert payload["checksum"]["spec"] == _json_digest({k: payload[k] for k in SPEC_KEYS})


class Prototypes(nn.Module):
    """A classifier of normalized images: the nearest of K prototypes (logit = minus the
    squared distance). Accurate on the images its pipeline normalizes; on raw [0, 1]
    images, which all sit near the middle, it picks one class for all."""

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes)  # (K, D)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(z.flatten(1), self.prototypes) ** 2


def test_a_forgotten_normalization_gets_the_near_chance_warning_beside_the_number():
    g = torch.Generator().manual_seed(0)
    k, shape, mean, std = 10, (3, 4, 4), 0.5, 0.1
    # Normalized space: class 0's prototype sits at 0.5, where every raw [0, 1] image is
    # near; the others at +-(1.5 to 3), where normalized images of their class are.
    signs = torch.randint(0, 2, (k, 48), generator=g) * 2 - 1
    prototypes = signs * (1.5 + 1.5 * torch.rand(k, 48, generator=g))
    prototypes[0] = 0.5
    y = torch.arange(40) % k
    z = prototypes[y] + 0.1 * torch.randn(40, 48, generator=g)
    x = (z * std + mean).clamp(0, 1).view(40, *shape)  # what a dataset holds: [0, 1]
    model = Prototypes(prototypes).eval()
    # Unwrapped on [0, 1] images: the normalization was forgotten
    with pytest.warns(UserWarning, match="near chance"):
        forgotten = robust_accuracy(model, x, y, attack="fgsm", eps=0.01, progress=False)
    assert forgotten.clean_accuracy <= 0.15
    # Wrapped: the same weights, the normalization in front, no warning
    wrapped = wrap(model, mean=[mean] * 3, std=[std] * 3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = robust_accuracy(wrapped, x, y, attack="fgsm", eps=0.01, progress=False)
    assert right.clean_accuracy == 1.0
    assert float(right) <= right.clean_accuracy
