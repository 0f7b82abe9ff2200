"""Attributions: every method's shape, captum equality, axioms on linear models, state kept,
captum's traps refused, figures."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import captum.attr
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from robustkit import explain, models
from robustkit.errors import RobustkitError
from tests.as_found import assert_as_found, snapshot
from tests.test_attacks import half_train

EVERY = explain.names()


def tiny_cnn(channels: int = 1) -> nn.Module:
    """Two convolutions (with separate ReLU modules), max-pooling and a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        normalize=models.Normalize([0.5] * channels, [0.5] * channels),
        conv1=nn.Conv2d(channels, 4, 3, padding=1), relu1=nn.ReLU(),
        pool=nn.MaxPool2d(2),
        conv2=nn.Conv2d(4, 6, 3, padding=1), relu2=nn.ReLU(),
        flat=nn.Flatten(),
        fc=nn.Linear(6 * 14 * 14, 10),
    )).eval()


@pytest.fixture
def linear():
    """Softmax regression on raw pixels (Normalize with mean 0, std 1): logits = W x + b."""
    torch.manual_seed(3)
    model = models.create("logistic", mean=(0.0,), std=(1.0,))
    with torch.no_grad():
        model.linear.weight.normal_()
    return model.eval()


def expected_w_times_x(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * model.linear.weight[y].view(x.shape)  # (N, 1, 28, 28)


# --------------------------------------------------------------------------- shapes and registry

def test_registry_holds_the_issue_methods():
    assert set(EVERY) == {"saliency", "gradient", "input_x_gradient", "integrated_gradients",
                          "smoothgrad", "guided_backprop", "deeplift", "gradcam", "occlusion"}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", EVERY)
def test_every_method_returns_the_input_shape(name, channels):
    model = tiny_cnn(channels)
    x = torch.rand(3, channels, 28, 28, generator=torch.Generator().manual_seed(0))
    a = explain.attribute(model, x, torch.tensor([0, 4, 9]), method=name)
    assert a.shape == x.shape and a.dtype == torch.float32 and not a.requires_grad
    assert torch.isfinite(a).all() and a.abs().sum() > 0


@pytest.mark.parametrize("name", EVERY)
def test_an_int_target_equals_the_same_class_for_every_example(name, tiny_batch):
    model = tiny_cnn()
    x = tiny_batch[:3]
    a = explain.attribute(model, x, 7, method=name)
    b = explain.attribute(model, x, torch.full((3,), 7), method=name)
    assert torch.allclose(a, b, atol=1e-6)


def test_gradcam_explains_the_last_convolution_that_runs(tiny_batch):
    model = tiny_cnn()
    y = torch.arange(8)
    default = explain.attribute(model, tiny_batch, y, method="gradcam")
    assert torch.equal(default, explain.attribute(model, tiny_batch, y, method="gradcam",
                                                  layer="conv2"))
    first = explain.attribute(model, tiny_batch, y, method="gradcam", layer="conv1")
    assert not torch.allclose(default, first)
    with pytest.raises(RobustkitError, match="no nn.Conv2d"):
        explain.attribute(models.create("mlp", hidden=(8,)).eval(), tiny_batch, y,
                          method="gradcam")


# --------------------------------------------------------------------------- against captum

def test_saliency_and_integrated_gradients_equal_direct_captum_calls(trained_mlp, mnist_1000):
    x, y = mnist_1000["test"]
    x, y = x[::50], y[::50]  # 20 images across classes
    ours = explain.attribute(trained_mlp, x, y, method="saliency")
    theirs = captum.attr.Saliency(trained_mlp).attribute(x.clone().requires_grad_(), target=y)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    ours = explain.attribute(trained_mlp, x, y, method="integrated_gradients")
    theirs = captum.attr.IntegratedGradients(trained_mlp).attribute(
        x.clone().requires_grad_(), target=y, n_steps=50)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_occlusion_with_many_windows_per_pass_equals_captums_one_per_pass(tiny_batch):
    model = tiny_cnn()
    y = torch.arange(8)
    ours = explain.attribute(model, tiny_batch, y, method="occlusion")
    theirs = captum.attr.Occlusion(model).attribute(
        tiny_batch, target=y, sliding_window_shapes=(1, 4, 4), strides=2, baselines=0.0)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_occlusion_skips_windows_over_the_baseline_and_gives_them_exactly_zero(monkeypatch):
    """A window over pixels already equal to the baseline changes nothing: no forward pass
    for that copy, attribution exactly 0, and the rest equal to captum's plain call."""
    from robustkit.explain import reuse

    model = tiny_cnn()
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, 8:16, 10:18] = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 4, 7])
    made = []
    monkeypatch.setattr(reuse.SkipUnchanged, "__init__", _recording(made))
    ours = explain.attribute(model, x, y, method="occlusion")
    theirs = captum.attr.Occlusion(model).attribute(
        x, target=y, sliding_window_shapes=(1, 4, 4), strides=2, baselines=0.0)
    assert torch.allclose(ours, theirs, atol=1e-6)
    ink = F.max_pool2d((x != 0).float(), 4, 2)  # (3, 1, 13, 13): windows touching the digit
    forward = made[0]
    assert forward.evaluated == len(x) + int(ink.sum())  # the clean pass + changed copies
    # blank windows, and captum's own pass over the unperturbed images, come from the cache
    assert forward.skipped == ink.numel() - int(ink.sum()) + len(x)
    covered = F.conv_transpose2d(ink, torch.ones(1, 1, 4, 4), stride=2)  # (3, 1, 28, 28)
    assert (ours[covered == 0] == 0).all()  # pixels only blank windows cover: exactly zero


def _recording(made: list):
    from robustkit.explain.reuse import SkipUnchanged
    init = SkipUnchanged.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)
    return record


def test_skip_unchanged_answers_other_layouts_in_full():
    from robustkit.explain.reuse import SkipUnchanged

    model = tiny_cnn()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    forward = SkipUnchanged(model, x, rows=3)
    odd = torch.cat([x, x[:1]])  # 5 rows: not k copies of 4 examples
    with torch.no_grad():
        assert torch.allclose(forward(odd), model(odd), atol=1e-6)
        stacked = torch.cat([x, x.flip(0)])  # copy 0 unchanged, copy 1 all changed (rows 0-3)
        assert torch.allclose(forward(stacked), model(stacked), atol=1e-6)
    assert forward.skipped == 4 and forward.evaluated == 4 + 5 + 4


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "gradcam"])
def test_attributions_inside_a_callers_no_grad_are_the_same(name, tiny_batch):
    model, y = tiny_cnn(), torch.arange(8)
    expected = explain.attribute(model, tiny_batch, y, method=name)
    with torch.no_grad():
        inside = explain.attribute(model, tiny_batch, y, method=name)
        assert not torch.is_grad_enabled()
    assert torch.equal(inside, expected)


@pytest.mark.parametrize("name", ["integrated_gradients", "occlusion", "saliency", "gradcam"])
def test_small_batches_equal_one_batch(name, tiny_batch):
    model, y = tiny_cnn(), torch.arange(8)
    whole = explain.attribute(model, tiny_batch, y, method=name)
    parts = explain.attribute(model, tiny_batch, y, method=name, batch_size=3)
    assert torch.allclose(whole, parts, atol=1e-6)


def test_per_example_baselines_are_split_with_the_batch(trained_mlp, tiny_batch):
    y = torch.arange(8)
    base = tiny_batch.flip(0) * 0.5  # one baseline per image
    whole = explain.attribute(trained_mlp, tiny_batch, y, method="integrated_gradients",
                              baselines=base)
    parts = explain.attribute(trained_mlp, tiny_batch, y, method="integrated_gradients",
                              baselines=base, batch_size=3)
    assert torch.allclose(whole, parts, atol=1e-6)
    assert not torch.allclose(whole, explain.attribute(
        trained_mlp, tiny_batch, y, method="integrated_gradients"), atol=1e-3)


# --------------------------------------------------------------------------- axioms

@pytest.mark.parametrize("fixture", ["trained_mlp", "tiny_mlp"])
def test_integrated_gradients_are_complete(fixture, request, mnist_1000):
    """Sundararajan et al.'s completeness: the attributions sum to f(x) - f(baseline)."""
    model = request.getfixturevalue(fixture).eval()
    x, y = mnist_1000["test"]
    x, y = x[5::100], y[5::100]
    a = explain.attribute(model, x, y, method="integrated_gradients")
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None]).squeeze(1)
    delta = captum.attr.IntegratedGradients(model).compute_convergence_delta(
        a, torch.zeros_like(x), x, target=y)
    assert (delta.abs() < 1e-2 * gap.abs()).all()
    assert torch.allclose(a.sum((1, 2, 3)), gap, rtol=1e-2)


@pytest.mark.parametrize("name,options,atol", [
    ("input_x_gradient", {}, 1e-6),
    ("integrated_gradients", {}, 1e-6),
    ("deeplift", {}, 1e-6),
    # A difference of two logits of size ~20: float32 rounding reaches a few 1e-6.
    ("occlusion", {"window": (1, 1, 1), "stride": 1}, 2e-5),
])
def test_on_a_linear_model_attributions_are_w_times_x(name, options, atol, linear, tiny_batch):
    y = torch.tensor([0, 3, 5, 9])
    x = tiny_batch[:4]
    a = explain.attribute(linear, x, y, method=name, **options)
    assert torch.allclose(a, expected_w_times_x(linear, x, y), rtol=1e-5, atol=atol)


def test_on_a_linear_model_gradient_is_the_weight_row(linear, tiny_batch):
    y = torch.tensor([1, 2])
    a = explain.attribute(linear, tiny_batch[:2], y, method="gradient")
    assert torch.equal(a, linear.linear.weight[y].view(2, 1, 28, 28))
    assert torch.equal(explain.attribute(linear, tiny_batch[:2], y, method="saliency"), a.abs())


# --------------------------------------------------------------------------- state kept

@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("name", EVERY)
def test_modes_params_buffers_and_input_are_restored(name, requires_grad, bn_cnn, tiny_batch):
    model = half_train(bn_cnn)
    before = snapshot(model)
    x = tiny_batch[:4].clone().requires_grad_(requires_grad)
    x_copy = x.detach().clone()
    with pytest.warns(UserWarning, match="train mode") as record:
        explain.attribute(model, x, torch.tensor([0, 1, 2, 3]), method=name)
    assert record[0].filename == __file__  # the warning points at the caller
    assert_as_found(model, before)
    assert torch.equal(x.detach(), x_copy) and x.requires_grad is requires_grad and x.grad is None


@pytest.mark.parametrize("name", EVERY)
def test_existing_parameter_grads_are_left_alone(name, bn_cnn, tiny_batch):
    g = torch.Generator().manual_seed(5)
    for p in bn_cnn.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    grads = {k: p.grad.clone() for k, p in bn_cnn.named_parameters()}
    explain.attribute(bn_cnn, tiny_batch[:4], torch.tensor([0, 1, 2, 3]), method=name)
    for k, p in bn_cnn.named_parameters():
        assert torch.equal(p.grad, grads[k]), k


#: Where to make captum fail midway, after it set requires_grad and its hooks.
FAILURES = [
    ("saliency", "captum.attr._utils.attribution.compute_gradients"),
    ("integrated_gradients", "captum.attr._utils.attribution.compute_gradients"),
    ("guided_backprop", "captum.attr._utils.attribution.compute_gradients"),
    ("deeplift", "captum.attr._utils.attribution.compute_gradients"),
    ("gradcam", "captum.attr._core.layer.grad_cam.compute_layer_gradients_and_eval"),
    ("occlusion", "captum.attr._core.feature_ablation._run_forward"),
]


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("name,where", FAILURES)
def test_state_is_restored_when_captum_raises(name, where, requires_grad, bn_cnn, tiny_batch,
                                              monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom: captum failed on purpose")

    monkeypatch.setattr(where, boom)
    model = half_train(bn_cnn)
    before = snapshot(model)
    x = tiny_batch[:4].clone().requires_grad_(requires_grad)
    x_copy = x.detach().clone()
    # (pytest.warns does not check a block that raises, so record the warnings instead.)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RuntimeError, match="boom"):
        warnings.simplefilter("always")
        explain.attribute(model, x, torch.tensor([0, 1, 2, 3]), method=name)
    assert any("train mode" in str(w.message) for w in caught)
    assert_as_found(model, before)
    assert torch.equal(x.detach(), x_copy) and x.requires_grad is requires_grad and x.grad is None


def test_eval_mode_model_draws_no_warning(tiny_mlp, tiny_batch):
    tiny_mlp.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("saliency", "guided_backprop", "deeplift", "integrated_gradients"):
            explain.attribute(tiny_mlp, tiny_batch, 1, method=name)


def test_smoothgrad_is_seeded_and_leaves_the_global_generator_alone(tiny_mlp, tiny_batch):
    tiny_mlp.eval()
    state = torch.get_rng_state()
    a = explain.attribute(tiny_mlp, tiny_batch, 2, method="smoothgrad", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, explain.attribute(tiny_mlp, tiny_batch, 2, method="smoothgrad", seed=1))
    assert not torch.allclose(a, explain.attribute(tiny_mlp, tiny_batch, 2, method="smoothgrad",
                                                   seed=2))


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("target,match", [
    (10, "label out of range"),
    (-1, "label out of range"),
    (torch.tensor([0.0, 1.0]), "integer"),
    (torch.tensor([1, 2, 3]), r"shape \(2,\)"),
    ("3", "int or an"),
])
def test_bad_targets_are_refused(target, match, tiny_mlp, tiny_batch):
    tiny_mlp.eval()
    with pytest.raises(ValueError, match=match):
        explain.attribute(tiny_mlp, tiny_batch[:2], target, method="saliency")


def test_input_outside_the_unit_box_and_unknown_methods_are_refused(tiny_mlp, tiny_batch):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explain.attribute(tiny_mlp, tiny_batch * 2, 0, method="saliency")
    with pytest.raises(RobustkitError, match="valid names: deeplift"):
        explain.attribute(tiny_mlp, tiny_batch, 0, method="lime")
    with pytest.raises(RobustkitError, match="batch_size"):
        explain.attribute(tiny_mlp, tiny_batch, 0, method="saliency", batch_size=0)


# --------------------------------------------------------------------------- captum's traps

class ReusedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(784, 16), nn.Linear(16, 16), nn.Linear(16, 10)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.out(self.act(self.fc2(self.act(self.fc1(x.flatten(1))))))


class FunctionalActivation(nn.Module):
    def __init__(self, activation) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(784, 16))
        self.out = nn.Linear(16, 10)
        self.activation = activation

    def forward(self, x):
        return self.out(self.activation(self.block(x.flatten(1))))


@pytest.mark.parametrize("name", ["guided_backprop", "deeplift"])
def test_a_reused_activation_module_is_refused_by_name(name, tiny_batch):
    with pytest.raises(RobustkitError, match=r"activation module 'act' \(ReLU\) runs 2 times"):
        explain.attribute(ReusedReLU().eval(), tiny_batch, 0, method=name)


@pytest.mark.parametrize("activation", [F.relu, torch.relu, lambda h: h.relu(),
                                        lambda h: F.relu(h, inplace=True)])
@pytest.mark.parametrize("name", ["guided_backprop", "deeplift"])
def test_a_functional_relu_is_refused_naming_the_forward(name, activation, tiny_batch):
    with pytest.raises(RobustkitError, match="FunctionalActivation.forward calls relu"):
        explain.attribute(FunctionalActivation(activation).eval(), tiny_batch, 0, method=name)


def test_traps_are_specific_to_what_the_method_hooks(tiny_batch):
    sigmoid = FunctionalActivation(torch.sigmoid).eval()
    explain.attribute(sigmoid, tiny_batch, 0, method="guided_backprop")  # hooks ReLUs only
    with pytest.raises(RobustkitError, match="calls sigmoid"):
        explain.attribute(sigmoid, tiny_batch, 0, method="deeplift")
    explain.attribute(ReusedReLU().eval(), tiny_batch, 0, method="saliency")  # no hooks, no trap


def test_check_model_names_flatten_for_lrp_and_passes_robustkits_models(tiny_batch):
    for name, opts in [("logistic", {}), ("alexnet", {}), ("alexnet", {"batchnorm": True}),
                       *[("mlp", {"activation": a}) for a in
                         ("relu", "sigmoid", "tanh", "leaky_relu")]]:
        explain.check_model(models.create(name, **opts).eval(), tiny_batch)
    with pytest.raises(RobustkitError, match="module 'flatten' is nn.Flatten"):
        explain.check_model(models.create("logistic").eval(), tiny_batch, lrp=True)
    with pytest.raises(RobustkitError, match="'act'"):
        explain.check_model(ReusedReLU().eval(), tiny_batch)


# --------------------------------------------------------------------------- figures

@pytest.mark.parametrize("channels", [1, 3])
def test_plot_draws_signed_maps_diverging_and_absolute_ones_sequential(channels, tmp_path):
    model = tiny_cnn(channels)
    x = torch.rand(2, channels, 28, 28, generator=torch.Generator().manual_seed(0))
    maps = {m: explain.attribute(model, x, 1, method=m) for m in ("saliency", "gradient")}
    path = tmp_path / "sub" / "maps.png"
    fig = explain.plot(x, maps, labels=["a", "b"], path=path)
    assert isinstance(fig, Figure) and path.stat().st_size > 0
    axes = fig.axes  # row-major: input, saliency, gradient per image
    assert len(axes) == 2 * 3
    assert axes[0].images[0].get_array().shape == ((28, 28) if channels == 1 else (28, 28, 3))
    sal, grad = axes[1].images[-1], axes[2].images[-1]
    assert sal.get_cmap().name == "inferno" and sal.norm.vmin == 0
    assert grad.get_cmap().name == "RdBu_r" and grad.norm.vmin == -grad.norm.vmax < 0


def test_plot_refuses_maps_of_another_shape(tiny_batch):
    with pytest.raises(ValueError, match="shape"):
        explain.plot(tiny_batch, torch.zeros(8, 1, 14, 14))
