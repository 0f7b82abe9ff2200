"""Models: every registered model maps [0, 1] images to logits and normalizes inside itself."""

from __future__ import annotations

import collections
import copy

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from robustkit import models
from robustkit.errors import RobustkitError
from robustkit.models import zoo
from robustkit.models.normalize import Normalize
from robustkit.registry import Registry

SHAPES = [(1, 28, 28), (3, 32, 32)]
ACTIVATION_TYPES = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU)
FUNCTIONAL_ACTIVATIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.sigmoid, torch.sigmoid,
                          F.tanh, torch.tanh, F.leaky_relu, F.gelu, F.elu, F.silu}
METHOD_ACTIVATIONS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}


def _make(name, in_shape, **kw):
    torch.manual_seed(0)
    c = in_shape[0]
    return models.create(name, in_shape, 10, mean=[0.3] * c, std=[0.2] * c, **kw).eval()


def _images(in_shape, n=3, seed=0):
    return torch.rand(n, *in_shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("name", models.names())
def test_output_is_n_by_10_logits(name, in_shape):
    model = _make(name, in_shape)
    out = model(_images(in_shape))
    assert out.shape == (3, 10)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.robustkit_spec["name"] == name
    assert model.robustkit_spec["in_shape"] == list(in_shape)


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("name", models.names())
def test_first_layer_is_normalize_with_mean_std_buffers(name, in_shape):
    model = _make(name, in_shape)
    first_name, first = next(iter(model.named_children()))
    assert isinstance(first, Normalize)
    buffers = dict(first.named_buffers())
    assert set(buffers) == {"mean", "std"}
    assert not list(first.parameters())  # not trained
    c = in_shape[0]
    torch.testing.assert_close(buffers["mean"].flatten(), torch.full((c,), 0.3))
    torch.testing.assert_close(buffers["std"].flatten(), torch.full((c,), 0.2))
    assert f"{first_name}.mean" in model.state_dict() and f"{first_name}.std" in model.state_dict()


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("name", models.names())
def test_model_equals_its_body_applied_to_normalized_input(name, in_shape):
    model = _make(name, in_shape)
    first_name, norm = next(iter(model.named_children()))
    body = copy.deepcopy(model)
    setattr(body, first_name, nn.Identity())
    x = _images(in_shape)
    with torch.no_grad():
        expected = body((x - norm.mean) / norm.std)  # mean, std: (1, C, 1, 1)
        assert torch.equal(model(x), expected)
        # and the normalization is not a no-op: skipping it changes the logits
        assert not torch.allclose(model(x), body(x))


def test_default_normalization_is_half_and_half():
    model = models.create("logistic", (3, 32, 32))
    assert model.normalize.mean.flatten().tolist() == [0.5] * 3
    assert model.normalize.std.flatten().tolist() == [0.5] * 3


def test_normalize_by_hand():
    norm = Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    x = torch.rand(2, 3, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.1) / 0.5, (x[:, 1] - 0.2) / 0.25, (x[:, 2] - 0.3) / 2.0], 1)
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("name", models.names())
def test_every_module_instance_appears_once(name, in_shape):
    model = _make(name, in_shape)
    with_dups = list(model.named_modules(remove_duplicate=False))
    without = list(model.named_modules())
    assert len(with_dups) == len(without)
    acts = [m for m in model.modules() if isinstance(m, ACTIVATION_TYPES)]
    assert len({id(m) for m in acts}) == len(acts)


@pytest.mark.parametrize("name", models.names())
def test_nonlinearities_are_modules_each_called_once(name):
    # Traced graph: no functional activation, and each module is called exactly once, so
    # hooks on an activation module see every use of it (what layer-wise explainers need).
    model = _make(name, (1, 28, 28))
    graph = torch.fx.symbolic_trace(model).graph
    functional = [n for n in graph.nodes
                  if (n.op == "call_function" and n.target in FUNCTIONAL_ACTIVATIONS)
                  or (n.op == "call_method" and n.target in METHOD_ACTIVATIONS)]
    assert functional == []
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    assert calls and max(calls.values()) == 1
    modules = dict(model.named_modules())
    act_calls = [t for t in calls if isinstance(modules[t], ACTIVATION_TYPES)]
    n_acts = sum(isinstance(m, ACTIVATION_TYPES) for m in model.modules())
    assert len(act_calls) == n_acts


def test_activation_counts_per_architecture():
    assert sum(isinstance(m, nn.ReLU) for m in _make("alexnet", (1, 28, 28)).modules()) == 7
    assert sum(isinstance(m, ACTIVATION_TYPES) for m in _make("logistic", (1, 28, 28)).modules()) == 0
    assert sum(isinstance(m, nn.ReLU) for m in _make("mlp", (1, 28, 28)).modules()) == 2


@pytest.mark.parametrize("activation,cls", [("relu", nn.ReLU), ("sigmoid", nn.Sigmoid),
                                            ("tanh", nn.Tanh), ("leaky_relu", nn.LeakyReLU)])
def test_mlp_activation_module_type(activation, cls):
    model = _make("mlp", (1, 28, 28), hidden=(8, 6, 4), activation=activation)
    acts = [m for m in model.modules() if isinstance(m, ACTIVATION_TYPES)]
    assert len(acts) == 3
    assert all(type(m) is cls for m in acts)
    assert model.act1 is not model.act2
    assert model(_images((1, 28, 28))).shape == (3, 10)


def test_mlp_without_hidden_layers_is_softmax_regression():
    model = _make("mlp", (1, 28, 28), hidden=())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(784, 10)]


def test_alexnet_fits_both_image_sizes_by_the_pooling_arithmetic():
    # 28 -> pool 13 -> 6 -> 2; 32 -> 15 -> 7 -> 3 (MaxPool2d(3, 2): (s - 3) // 2 + 1).
    assert _make("alexnet", (1, 28, 28)).fc1.in_features == 64 * 2 * 2
    assert _make("alexnet", (3, 32, 32)).fc1.in_features == 64 * 3 * 3
    assert _make("alexnet", (1, 27, 27))(_images((1, 27, 27))).shape == (3, 10)  # the minimum


@pytest.mark.parametrize("name", models.names())
def test_dropout_is_off_in_eval_mode(name):
    model = _make(name, (1, 28, 28))
    x = _images((1, 28, 28))
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("make,match", [
    (lambda: models.create("mlp", activation="swish"), "unknown activation 'swish'"),
    (lambda: models.create("mlp", dropout=1.0), "dropout"),
    (lambda: models.create("alexnet", (1, 16, 16)), "at least 27x27, got 16x16"),
    (lambda: models.create("alexnet", channels=(8, 8)), "5 channel widths"),
    (lambda: models.create("logistic", hidden=(3,)), "bad options"),
    (lambda: models.create("logistic", num_classes=1), "num_classes"),
    (lambda: models.create("logistic", (1, 28)), "in_shape"),
    (lambda: models.create("logistic", (1, 28, 28), mean=(0.5, 0.5)), "one per channel"),
    (lambda: models.create("logistic", (1, 28, 28), std=(0.0,)), "std"),
], ids=["activation", "dropout", "alexnet-16x16", "alexnet-channels", "unknown-option",
        "num-classes", "in-shape", "mean-length", "zero-std"])
def test_bad_options_raise_robustkit_error(make, match):
    with pytest.raises(RobustkitError, match=match):
        make()


def test_unknown_model_lists_valid_names():
    with pytest.raises(RobustkitError, match="unknown model 'resnet50'") as info:
        models.create("resnet50")
    for name in models.names():
        assert name in str(info.value)
    assert set(models.names()) >= {"logistic", "mlp", "alexnet"}


def test_registry_refuses_duplicate_names():
    reg = Registry("widget")
    first = reg.register("a")(lambda: 1)
    with pytest.raises(RobustkitError, match="widget 'a' is already registered"):
        reg.register("a")(lambda: 2)
    assert reg.get("a") is first and len(reg) == 1
    reg.register("0-b")(lambda: 3)
    assert reg.names() == ["0-b", "a"] and list(reg) == ["0-b", "a"]
    assert "a" in reg and "z" not in reg
    with pytest.raises(RobustkitError, match="unknown widget 'z'; valid names: 0-b, a"):
        reg.get("z")


def test_model_registry_refuses_a_second_mlp(monkeypatch):
    monkeypatch.setattr(zoo.MODELS, "_entries", dict(zoo.MODELS._entries))  # restored after
    original = zoo.MODELS.get("mlp")
    with pytest.raises(RobustkitError, match="already registered"):
        zoo.register_model("mlp")(lambda *a, **k: nn.Identity())
    assert zoo.MODELS.get("mlp") is original


def test_default_training_is_a_valid_config_per_model():
    for name in models.names():
        cfg = models.default_training(name)
        assert cfg.epochs > 0 and cfg.lr > 0
