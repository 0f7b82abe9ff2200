"""Evaluating explanations: sanity checks, faithfulness curves, robustness metrics, shift
under attack; checked against loops written out by hand and against axioms."""

from __future__ import annotations

import copy

import pytest
import torch
from matplotlib.figure import Figure

from robustkit import attacks, explain, models
from robustkit.errors import RobustkitError
from robustkit.explain import compare


@pytest.fixture
def test32(mnist_1000):
    """32 test images spread over the test split."""
    x, y = mnist_1000["test"]
    keep = torch.arange(0, 1000, 1000 // 32)[:32]
    return x[keep], y[keep]


# --------------------------------------------------------------------------- comparisons

def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 1, 6, 6), generator=g).float()  # many ties
    b = a + torch.randn(a.shape, generator=g)
    ours = compare.spearman(a, b, absolute=False)
    theirs = [stats.spearmanr(a[i].flatten(), b[i].flatten())[0] for i in range(5)]
    assert torch.allclose(ours, torch.tensor(theirs, dtype=torch.float32), atol=1e-5)


def test_a_constant_map_correlates_zero_except_with_itself():
    a = torch.zeros(2, 1, 5, 5)
    b = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(compare.spearman(a, b, absolute=True), torch.zeros(2))
    assert torch.equal(compare.spearman(a, a, absolute=True), torch.ones(2))


def test_centre_of_mass_of_a_single_pixel_and_its_shift():
    a = torch.zeros(1, 1, 9, 9)
    a[0, 0, 2, 7] = -3.0  # absolute maps: the sign does not move the centre
    b = torch.zeros(1, 1, 9, 9)
    b[0, 0, 5, 3] = 1.0
    assert compare.centre_of_mass(a).tolist() == [[2.0, 7.0]]
    assert compare.centre_of_mass_shift(a, b).item() == pytest.approx(5.0)  # 3-4-5


# --------------------------------------------------------------------------- sanity check

def test_cascading_randomization_decorrelates_and_leaves_the_model_alone(trained_mlp, test32):
    x, y = test32
    before = copy.deepcopy(trained_mlp.state_dict())
    r = explain.sanity_check(trained_mlp, x, y, ["saliency", "gradient", "integrated_gradients"],
                             seed=0)
    assert all(torch.equal(v, before[k]) for k, v in trained_mlp.state_dict().items())
    assert not trained_mlp.training
    assert r.layers == ["out", "fc1"] and r.mode == "cascading"
    for method, steps in r.items():
        assert [s["layer"] for s in steps] == ["out", "fc1"]
        assert set(steps[-1]) >= {"layer", "spearman_abs", "spearman", "ssim", "ssim_std"}
        assert abs(r.baseline[method]["spearman_abs"]) < 0.1  # random maps: no correlation
    for method in ("saliency", "gradient"):
        first, last = r[method]
        assert last["spearman_abs"] < 0.5, method  # every layer random: maps decorrelate
        assert last["spearman_abs"] < first["spearman_abs"] < 1.0, method
    # Adebayo et al.'s pattern: maps multiplied by the input keep its structure (zero
    # wherever the digit's background is), whatever the weights.
    assert r["integrated_gradients"][-1]["spearman_abs"] > r["saliency"][-1]["spearman_abs"]
    assert "| up to fc1 |" in r.table("spearman_abs")


def test_independent_randomization_changes_one_layer_at_a_time(trained_mlp, test32):
    x, y = test32
    r = explain.sanity_check(trained_mlp, x[:8], y[:8], ["gradient"], mode="independent")
    cascading = explain.sanity_check(trained_mlp, x[:8], y[:8], ["gradient"])
    # Randomizing only the output layer is the first cascading step; fc1 alone differs.
    assert r["gradient"][0] == cascading["gradient"][0]
    assert r["gradient"][1] != cascading["gradient"][1]


def test_sanity_check_is_reproducible_and_the_seed_matters(trained_mlp, test32):
    x, y = test32[0][:8], test32[1][:8]
    a = explain.sanity_check(trained_mlp, x, y, ["saliency"], seed=1)
    assert a == explain.sanity_check(trained_mlp, x, y, ["saliency"], seed=1)
    assert a != explain.sanity_check(trained_mlp, x, y, ["saliency"], seed=2)


def test_data_randomization_retrains_a_copy_on_permuted_labels(trained_mlp, mnist_1000, test32):
    x, y = test32
    xt, yt = mnist_1000["train"]
    r = explain.sanity_check(trained_mlp, x[:8], y[:8], ["saliency"], data_randomization=True,
                             train=(xt[:256], yt[:256]),
                             fit_options={"epochs": 1, "lr": 0.01, "amp": False})
    d = r.data_randomization["saliency"]
    assert -1 <= d["spearman_abs"] < 1 and 0 <= d["train_accuracy"] <= 1
    assert r.to_dict()["data_randomization"] == r.data_randomization
    with pytest.raises(RobustkitError, match="needs train"):
        explain.sanity_check(trained_mlp, x, y, ["saliency"], data_randomization=True)


def test_plot_sanity_draws_one_panel_per_metric(trained_mlp, test32, tmp_path):
    r = explain.sanity_check(trained_mlp, test32[0][:4], test32[1][:4], ["saliency", "gradient"])
    fig = explain.plot_sanity(r, path=tmp_path / "s.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and (tmp_path / "s.png").exists()


# --------------------------------------------------------------------------- faithfulness

def curves_by_hand(model, x, y, relevance, steps, baseline):
    """One forward pass per image and step: the definition, written out."""
    n, _, h, w = x.shape
    out = {"deletion": torch.zeros(n, steps + 1), "insertion": torch.zeros(n, steps + 1)}
    with torch.no_grad():
        for i in range(n):
            order = relevance[i].sum(0).flatten().argsort(descending=True, stable=True)
            for s in range(steps + 1):
                moved = torch.zeros(h * w, dtype=torch.bool)
                moved[order[:round(s / steps * h * w)]] = True
                moved = moved.view(1, h, w)
                base = baseline[i] if torch.is_tensor(baseline) else torch.full_like(x[i], baseline)
                deleted = torch.where(moved, base, x[i])
                inserted = torch.where(moved, x[i], base)
                for mode, img in (("deletion", deleted), ("insertion", inserted)):
                    out[mode][i, s] = model(img[None]).softmax(1)[0, y[i]]
    return out


@pytest.mark.parametrize("batch_size", [None, 7])
def test_batched_curves_equal_the_per_image_loop(batch_size, trained_mlp, test32):
    x, y = test32[0][:6], test32[1][:6]
    a = explain.attribute(trained_mlp, x, y, method="input_x_gradient")
    r = explain.faithfulness(trained_mlp, x, y, a, steps=8, baseline=0.2, batch_size=batch_size,
                             amp=False)
    hand = curves_by_hand(trained_mlp, x, y, a, 8, 0.2)
    for mode in ("deletion", "insertion"):
        assert torch.allclose(torch.tensor(r[mode]["curve"]), hand[mode].mean(0), atol=1e-5)
        auc = torch.trapezoid(hand[mode], torch.linspace(0, 1, 9), dim=1)
        assert torch.allclose(torch.tensor(r[mode]["auc_per_example"]), auc, atol=1e-5)


def test_a_baseline_per_image_gives_the_curves_of_the_definition(trained_mlp, test32):
    """Petsiuk et al. insert into a blurred copy: a baseline tensor, one image each, that
    differs from x almost everywhere (few shared images to skip)."""
    x, y = test32[0][:6], test32[1][:6]
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)  # (6, 1, 28, 28)
    a = explain.attribute(trained_mlp, x, y, method="saliency")
    r = explain.faithfulness(trained_mlp, x, y, a, steps=6, baseline=blurred, amp=False)
    hand = curves_by_hand(trained_mlp, x, y, a, 6, blurred)
    for mode in ("deletion", "insertion"):
        assert torch.allclose(torch.tensor(r[mode]["curve"]), hand[mode].mean(0), atol=1e-5)


def test_each_distinct_image_of_the_curves_runs_through_the_model_once(trained_mlp, test32):
    """Curves share images (the whole image, the baseline, steps that move only background
    pixels): the model sees each distinct image of an example once, and the curves still
    match the definition."""
    x, y = test32[0][:5], test32[1][:5]
    a = explain.attribute(trained_mlp, x, y, method="saliency")
    steps = 8
    seen = []
    hook = trained_mlp.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    try:
        r = explain.faithfulness(trained_mlp, x, y, a, steps=steps, amp=False, seed=3)
    finally:
        hook.remove()
    rows = torch.cat(seen[1:])  # the first pass is the probe's
    noise = torch.rand(5, 28 * 28, generator=torch.Generator().manual_seed(3))
    images = []
    for relevance in (a.sum(1).flatten(1), noise):
        for i in range(5):
            order = relevance[i].argsort(descending=True, stable=True)
            for k in range(steps + 1):
                moved = torch.zeros(28 * 28, dtype=torch.bool)
                moved[order[:round(k / steps * 28 * 28)]] = True
                moved = moved.view(1, 28, 28)
                for img in (torch.where(moved, 0.0, x[i]), torch.where(moved, x[i], 0.0)):
                    images.append(torch.cat([img.flatten(), torch.tensor([float(i)])]))
    distinct = len(torch.unique(torch.stack(images), dim=0))
    assert len(rows) == distinct < len(images)  # 2 rankings x 2 modes x 9 steps x 5 images
    hand = curves_by_hand(trained_mlp, x, y, a, steps, 0.0)
    assert torch.allclose(torch.tensor(r["deletion"]["curve"]), hand["deletion"].mean(0),
                          atol=1e-5)


def test_mixed_precision_curves_stay_close_and_leave_the_model_in_float32(trained_mlp, test32):
    from robustkit.core import cpu_has_native_bf16

    x, y = test32
    a = explain.attribute(trained_mlp, x, y, method="saliency")
    exact = explain.faithfulness(trained_mlp, x, y, a, steps=8, amp=False)
    fast = explain.faithfulness(trained_mlp, x, y, a, steps=8, amp=True)
    for mode in ("deletion", "insertion"):
        assert fast[mode]["curve"] != exact[mode]["curve"]  # autocast really ran (bfloat16)
        assert fast[mode]["auc"] == pytest.approx(exact[mode]["auc"], abs=0.02)
        assert fast["random"][mode]["auc"] == pytest.approx(exact["random"][mode]["auc"], abs=0.02)
    auto = explain.faithfulness(trained_mlp, x, y, a, steps=8)  # amp=None: where it pays
    expected = fast if cpu_has_native_bf16() else exact
    assert auto["deletion"]["curve"] == expected["deletion"]["curve"]
    assert all(p.dtype == torch.float32 for p in trained_mlp.parameters())
    assert not torch.is_autocast_enabled("cpu")


def test_curves_start_and_end_where_the_definition_says(trained_mlp, test32):
    x, y = test32
    r = explain.faithfulness(trained_mlp, x, y, "saliency", steps=4, amp=False)
    with torch.no_grad():
        clean = trained_mlp(x).softmax(1).gather(1, y[:, None]).mean().item()
        blank = trained_mlp(torch.zeros_like(x)).softmax(1).gather(1, y[:, None]).mean().item()
    for curves in (r, r["random"]):
        assert curves["deletion"]["curve"][0] == pytest.approx(clean, abs=1e-6)
        assert curves["insertion"]["curve"][-1] == pytest.approx(clean, abs=1e-6)
        assert curves["deletion"]["curve"][-1] == pytest.approx(blank, abs=1e-6)
        assert curves["insertion"]["curve"][0] == pytest.approx(blank, abs=1e-6)


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency"])
def test_deletion_beats_random_rankings(method, trained_mlp, test32):
    x, y = test32
    r = explain.faithfulness(trained_mlp, x, y, method, mode="deletion")
    assert "insertion" not in r
    assert r["deletion"]["auc"] < r["random"]["deletion"]["auc"]


def test_faithfulness_refuses_bad_arguments(trained_mlp, test32):
    x, y = test32
    with pytest.raises(RobustkitError, match="shaped like x"):
        explain.faithfulness(trained_mlp, x, y, torch.zeros(3, 1, 28, 28))
    with pytest.raises(RobustkitError, match="mode"):
        explain.faithfulness(trained_mlp, x, y, "saliency", mode="both-ways")
    with pytest.raises(RobustkitError, match="baseline"):
        explain.faithfulness(trained_mlp, x, y, "saliency", baseline=2.0)


def test_plot_faithfulness_draws_both_modes(trained_mlp, test32):
    x, y = test32
    results = {m: explain.faithfulness(trained_mlp, x, y, m, steps=4)
               for m in ("saliency", "gradient")}
    fig = explain.plot_faithfulness(results)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3  # two methods and random


# --------------------------------------------------------------------------- robustness

@pytest.fixture
def linear():
    torch.manual_seed(3)
    return models.create("logistic", mean=(0.0,), std=(1.0,)).eval()


def test_on_a_linear_model_gradients_never_move_and_are_perfectly_faithful(linear, test32):
    x, y = test32
    r = explain.robustness(linear, x, y, "gradient", n_perturb_samples=4)
    assert r["sensitivity_max"] == 0.0  # the gradient of a linear model is its weight row
    assert r["infidelity"] < 1e-8  # perturbation . w is exactly the change of the logit
    moving = explain.robustness(linear, x, y, "input_x_gradient", n_perturb_samples=4)
    assert moving["sensitivity_max"] > 0 and len(moving["infidelity_per_example"]) == len(x)


def test_robustness_is_seeded_and_leaves_the_global_generator_alone(trained_mlp, test32):
    x, y = test32[0][:8], test32[1][:8]
    state = torch.get_rng_state()
    a = explain.robustness(trained_mlp, x, y, "saliency", n_perturb_samples=3, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == explain.robustness(trained_mlp, x, y, "saliency", n_perturb_samples=3, seed=4)


# --------------------------------------------------------------------------- shift under attack

def test_no_perturbation_no_shift(trained_mlp, test32):
    x, y = test32
    s = explain.explanation_shift(trained_mlp, x, x.clone(), y, "saliency")
    assert s["flipped"]["n"] == 0 and s["held"]["n"] == len(x) and s["flipped"]["ssim"] is None
    held = s["held"]
    assert held["top_k_intersection"] == 1.0 and held["spearman_abs"] == pytest.approx(1.0)
    assert held["spearman"] == pytest.approx(1.0) and held["ssim"] == pytest.approx(1.0)
    assert held["centre_of_mass_shift"] == 0.0


def test_an_attack_moves_the_maps_and_splits_flipped_from_held(trained_mlp, test32):
    x, y = test32
    x_adv = attacks.fgsm(trained_mlp, x, y, eps=0.1)
    s = explain.explanation_shift(trained_mlp, x, x_adv, y, "gradient", k=50)
    assert s["flipped"]["n"] > 0 and s["held"]["n"] > 0
    assert s["flipped"]["n"] + s["held"]["n"] == len(x) == len(s["per_example"]["flipped"])
    assert s["all"]["top_k_intersection"] < 1.0 and s["all"]["centre_of_mass_shift"] > 0
    with pytest.raises(RobustkitError, match="k must be"):
        explain.explanation_shift(trained_mlp, x, x_adv, y, "gradient", k=0)
