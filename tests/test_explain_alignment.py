"""Perceptual alignment of attribution maps with their images (Tsipras et al. 2019)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit import explain
from robustkit.errors import RobustkitError


@pytest.fixture
def binary():
    """Four seeded binary images (4, 1, 8, 8), each with ink and background."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 1, 8, 8, generator=g) > 0.7).float()
    x[:, :, 0, 0], x[:, :, -1, -1] = 1.0, 0.0  # at least one pixel of each
    return x


def test_a_map_equal_to_the_image_is_perfectly_aligned(binary):
    r = explain.alignment(binary, binary)
    assert torch.allclose(r.spearman, torch.ones(4))
    assert torch.allclose(r.ink_share, torch.ones(4))
    assert torch.allclose(r.area_share, binary.mean((1, 2, 3)))


def test_a_map_on_the_background_is_anti_aligned(binary):
    r = explain.alignment(-3.0 * (1 - binary), binary)  # the sign does not matter: |map|
    assert (r.spearman < 0).all()
    assert torch.allclose(r.spearman, -torch.ones(4))
    assert torch.equal(r.ink_share, torch.zeros(4))


def test_a_uniform_map_gets_the_ink_share_of_the_area(mnist_test_small):
    x = mnist_test_small[0][:5]
    for level in (0.0, 2.5):  # an all-zero map counts as uniform
        r = explain.alignment(torch.full_like(x, level), x, threshold=0.3)
        assert torch.allclose(r.ink_share, r.area_share)
        assert torch.equal(r.spearman, torch.zeros(5))  # a constant map ranks nothing
        assert torch.allclose(r.area_share, (x > 0.3).float().mean((1, 2, 3)))


def test_channels_are_summed_and_ink_is_the_channel_mean():
    x = torch.zeros(1, 3, 2, 2)
    x[0, :, 0, 0] = 1.0  # white: ink
    x[0, 0, 0, 1] = 1.0  # pure red: channel mean 1/3, not ink at 0.5
    a = torch.zeros(1, 3, 2, 2)
    a[0, 0, 0, 0], a[0, 2, 0, 0], a[0, 1, 1, 1] = 1.0, -1.0, 2.0  # |map| 2 on ink, 2 off it
    r = explain.alignment(a, x)
    assert r.area_share.item() == pytest.approx(0.25)
    assert r.ink_share.item() == pytest.approx(0.5)


def test_a_linear_model_has_the_known_alignment_of_its_weight_row():
    # The input gradient of a linear model for class t is its weight row, whatever x is.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -3.0, 0.5, 2.0]]))
    x = torch.tensor([0.9, 0.0, 0.2, 0.7]).view(1, 1, 2, 2)
    target = torch.tensor([1])
    for method in ("saliency", "gradient"):
        a = explain.attribute(model, x, target, method=method)
        r = explain.alignment(a, x)
        # Ranks of x: 3 0 1 2; of |w|: 1 3 0 2; rho = 1 - 6 * 14 / (4 * 15) = -0.4.
        assert r.spearman.item() == pytest.approx(-0.4)
        # Ink (> 0.5): pixels 0 and 3, |w| 1 + 2 of 6.5 in all; half of the area.
        assert r.ink_share.item() == pytest.approx(3 / 6.5)
        assert r.area_share.item() == pytest.approx(0.5)


def test_per_example_shapes_and_a_json_safe_summary(binary):
    import json

    r = explain.alignment(torch.rand(binary.shape, generator=torch.Generator().manual_seed(1)),
                          binary)
    assert r.spearman.shape == r.ink_share.shape == r.area_share.shape == (4,)
    assert ((-1 <= r.spearman) & (r.spearman <= 1)).all()
    summary = r.to_dict(per_example=True)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["n"] == 4 and summary["threshold"] == 0.5
    assert summary["spearman"] == pytest.approx(r.spearman.mean().item())
    assert summary["per_example"]["ink_share"] == pytest.approx(r.ink_share.tolist())
    assert "per_example" not in r.to_dict()


@pytest.mark.parametrize("a, x, kw, fragment", [
    (torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 5), {}, "differ in shape"),
    (torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4), {}, "differ in shape"),
    (torch.rand(2, 16), torch.rand(2, 16), {}, "rank 4"),
    (torch.full((2, 1, 4, 4), float("nan")), torch.rand(2, 1, 4, 4), {}, "NaN or Inf"),
    (torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4) * 2, {}, "[0, 1]"),
    (torch.rand(0, 1, 4, 4), torch.rand(0, 1, 4, 4), {}, "empty batch"),
    (torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), {"threshold": 1.0}, "threshold"),
    ([[0.0]], torch.rand(1, 1, 1, 1), {}, "must be a tensor"),
])
def test_bad_input_is_refused_with_a_clear_error(a, x, kw, fragment):
    with pytest.raises(RobustkitError, match="alignment: .*" + fragment.replace("[", r"\[")
                       .replace("]", r"\]")):
        explain.alignment(a, x, **kw)
