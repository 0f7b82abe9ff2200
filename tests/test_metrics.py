"""Metrics: norms against NumPy, PSNR against its formula, SSIM against torchmetrics and its
axioms, and the exact semantics of accuracy and attack success on a hand-made classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from robustkit import metrics


def pair(n: int = 5, seed: int = 0, scale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images x (n, 1, 28, 28) in [0, 1] and x + noise, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    x_adv = (x + scale * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, x_adv


class FirstPixelClassifier(nn.Module):
    """Says class ``floor(10 * x[:, 0, 0, 0])`` (clipped to 9): predictions set by hand.

    Logits (N, 10) are minus the squared distance of the first pixel to each class centre.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(100.0))  # predict() wants one parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = (torch.arange(10, dtype=x.dtype) + 0.5) / 10  # (10,)
        return -self.scale * (x[:, 0, 0, 0, None] - centres).pow(2)  # (N, 10)


def saying(classes: list[int]) -> torch.Tensor:
    """Images (N, 1, 4, 4) that FirstPixelClassifier labels ``classes``."""
    x = torch.full((len(classes), 1, 4, 4), 0.5)
    x[:, 0, 0, 0] = (torch.tensor(classes, dtype=torch.float32) + 0.5) / 10
    return x


# --------------------------------------------------------------------------- norms

def test_perturbation_norms_match_numpy():
    x, x_adv = pair()
    x_adv[0] = x[0]  # one unperturbed example: all norms 0
    norms = metrics.perturbation_norms(x, x_adv)
    d = (x_adv.numpy().astype(np.float64) - x.numpy()).reshape(len(x), -1)
    assert set(norms) == {"l0", "l2", "linf"}
    np.testing.assert_allclose(norms["l2"].numpy(), np.linalg.norm(d, axis=1), rtol=1e-5)
    np.testing.assert_allclose(norms["linf"].numpy(), np.abs(d).max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(norms["l0"].numpy(), (np.abs(d) > 1e-6).sum(axis=1))
    assert norms["l0"][0] == norms["l2"][0] == norms["linf"][0] == 0


def test_perturbation_l0_counts_changes_larger_than_tol():
    x = torch.zeros(1, 1, 2, 2)
    x_adv = torch.tensor([[[[0.0, 1e-7], [0.25, 1.0]]]])
    assert metrics.perturbation_norms(x, x_adv)["l0"].item() == 2  # 1e-7 <= default tol
    assert metrics.perturbation_norms(x, x_adv, tol=0.5)["l0"].item() == 1
    assert metrics.perturbation_norms(x, x_adv, tol=0.0)["l0"].item() == 3


# --------------------------------------------------------------------------- PSNR and SSIM

def test_psnr_matches_its_formula():
    x, x_adv = pair(seed=1)
    mse = ((x_adv.double() - x.double()) ** 2).flatten(1).mean(1)
    expected = 10 * torch.log10(1.0 / mse)
    assert torch.allclose(metrics.psnr(x, x_adv).double(), expected, rtol=1e-5)
    # A uniform shift by d has MSE d^2: PSNR = -20 log10(d); d = 0.1 gives 20 dB.
    flat = torch.full((1, 1, 8, 8), 0.5)
    assert metrics.psnr(flat, flat + 0.1).item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_is_infinite_for_identical_images():
    x, _ = pair(n=3)
    assert torch.isinf(metrics.psnr(x, x.clone())).all()
    assert (metrics.psnr(x, x.clone()) > 0).all()


def test_ssim_is_one_for_identical_and_below_one_for_noisy_images():
    x, x_adv = pair(seed=2)
    same = metrics.ssim(x, x.clone())
    assert same.shape == (5,)
    assert torch.allclose(same, torch.ones(5), atol=1e-5)
    noisy = metrics.ssim(x, x_adv)
    assert (noisy < 0.99).all()


def test_ssim_matches_torchmetrics_and_is_symmetric_and_per_example():
    x, x_adv = pair(seed=3)
    ours = metrics.ssim(x, x_adv)
    theirs = structural_similarity_index_measure(x_adv, x, data_range=1.0, reduction="none")
    assert torch.allclose(ours, theirs.reshape(-1), atol=1e-6)
    assert torch.allclose(ours, metrics.ssim(x_adv, x), atol=1e-6)  # SSIM is symmetric
    one_by_one = torch.cat([metrics.ssim(x[i:i + 1], x_adv[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(ours, one_by_one, atol=1e-6)


def test_ssim_falls_as_noise_grows():
    x, _ = pair(n=2, seed=4)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    values = [metrics.ssim(x, (x + s * noise).clamp(0, 1)) for s in (0.01, 0.05, 0.2)]
    assert (values[0] > values[1]).all() and (values[1] > values[2]).all()


@pytest.mark.parametrize("fn", [metrics.perturbation_norms, metrics.psnr, metrics.ssim])
def test_shape_mismatch_is_refused(fn):
    x, x_adv = pair(n=2)
    with pytest.raises(ValueError, match="shapes differ"):
        fn(x, x_adv[:1])
    with pytest.raises(ValueError, match="shapes differ"):
        fn(x, x_adv[:, :, :27])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fn(x[0], x_adv[0])


# --------------------------------------------------------------------------- accuracy and success

def test_accuracy_counts_correct_labels():
    model = FirstPixelClassifier()
    x = saying([0, 3, 3, 9])
    assert metrics.accuracy(model, x, torch.tensor([0, 3, 4, 9])) == pytest.approx(0.75)
    assert metrics.accuracy(model, x, torch.tensor([1, 1, 1, 1])) == 0.0
    with pytest.raises(ValueError, match="batch-size mismatch"):
        metrics.accuracy(model, x, torch.tensor([0, 3, 4]))


def test_accuracy_works_for_a_model_without_parameters():
    # A fixed function is a model too (attacks accept it: they fall back to x's device).
    class FirstPixelNoParams(nn.Module):
        def forward(self, x):
            centres = (torch.arange(10, dtype=x.dtype) + 0.5) / 10
            return -100 * (x[:, 0, 0, 0, None] - centres).pow(2)

    x = saying([2, 5])
    assert metrics.accuracy(FirstPixelNoParams(), x, torch.tensor([2, 7])) == pytest.approx(0.5)


def test_untargeted_success_counts_only_originally_correct_examples():
    model = FirstPixelClassifier()
    y = torch.tensor([1, 2, 3, 4, 5])
    x = saying([1, 2, 3, 0, 0])      # the last two are wrong already: they do not count
    x_adv = saying([7, 2, 8, 4, 9])  # fooled, not fooled, fooled | (made right), (changed)
    assert metrics.success_rate(model, x, x_adv, y) == pytest.approx(2 / 3)
    assert math.isnan(metrics.success_rate(model, saying([0, 0]), saying([1, 1]),
                                           torch.tensor([5, 6])))  # nobody counts


def test_targeted_success_counts_only_examples_not_already_at_the_target():
    model = FirstPixelClassifier()
    target = torch.tensor([7, 7, 7, 7])
    x = saying([7, 1, 2, 3])         # the first is at the target already: it does not count
    x_adv = saying([7, 7, 5, 7])     # (reached) | reached, missed, reached
    assert metrics.success_rate(model, x, x_adv, target, targeted=True) == pytest.approx(2 / 3)
    assert math.isnan(metrics.success_rate(model, saying([7]), saying([7]), torch.tensor([7]),
                                           targeted=True))


def test_success_rate_refuses_mismatched_shapes():
    model = FirstPixelClassifier()
    y = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="batch-size mismatch"):
        metrics.success_rate(model, saying([1, 2]), saying([1, 2, 3]), y)
    # Same batch size, other image size: the model could well run on both, so refuse it.
    x_adv = torch.full((2, 1, 5, 5), 0.5)
    with pytest.raises(ValueError, match="shape"):
        metrics.success_rate(model, saying([1, 2]), x_adv, y)
