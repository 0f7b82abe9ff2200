"""Channels-last weights inside a block, and the model given back exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit import models
from robustkit.core.layout import channels_last, nhwc


def storage(model: nn.Module) -> dict:
    return {k: (p.data_ptr(), p.stride(), p.detach().clone())
            for k, p in [*model.named_parameters(), *model.named_buffers()]}


@pytest.fixture
def alexnet():
    torch.manual_seed(0)
    return models.create("alexnet").eval()


def test_weights_are_channels_last_inside_and_restored_after(alexnet):
    before = storage(alexnet)
    ids = {k: id(p) for k, p in alexnet.named_parameters()}
    with channels_last(alexnet):
        for name, p in alexnet.named_parameters():
            if p.ndim == 4:
                _, c, h, w = p.shape
                assert p.stride() == (c * h * w, 1, w * c, c), name  # conv1 too (C_in = 1)
    after = storage(alexnet)
    assert {k: id(p) for k, p in alexnet.named_parameters()} == ids
    for k, (ptr, stride, value) in before.items():
        assert after[k][:2] == (ptr, stride), k
        assert torch.equal(after[k][2], value), k


def test_outputs_equal_and_the_layout_carries_through(alexnet):
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = alexnet(x)
        with channels_last(alexnet):
            fast = alexnet(nhwc(x))
            feature = alexnet.conv2(alexnet.pool1(alexnet.relu1(alexnet.conv1(
                alexnet.normalize(nhwc(x))))))
    assert torch.allclose(plain, fast, atol=1e-5)
    assert feature.is_contiguous(memory_format=torch.channels_last)


def test_restored_on_error_and_in_place_changes_kept(alexnet):
    ptr = alexnet.conv2.weight.data_ptr()
    with pytest.raises(RuntimeError, match="inside"):
        with channels_last(alexnet):
            with torch.no_grad():
                alexnet.conv2.weight.zero_()
            raise RuntimeError("failure inside the block")
    assert alexnet.conv2.weight.data_ptr() == ptr
    assert alexnet.conv2.weight.is_contiguous()
    assert (alexnet.conv2.weight == 0).all()  # written inside the block, kept


def test_models_without_4d_weights_and_nhwc_on_other_ranks():
    mlp = models.create("mlp").eval()
    before = storage(mlp)
    with channels_last(mlp):
        pass
    assert all(storage(mlp)[k][:2] == v[:2] for k, v in before.items())
    flat = torch.rand(3, 784)
    assert nhwc(flat) is flat


class ViewsItsWeight(nn.Module):
    """A custom layer that flattens its 4-D weight with ``.view`` (weight standardization
    written this way): channels-last strides would break it, so it must be left alone."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(4, -1)
        w = (w - w.mean(1, keepdim=True)).view_as(self.weight)
        return torch.nn.functional.conv2d(x, w)


def test_only_plain_convolutions_change_layout():
    torch.manual_seed(0)
    model = nn.Sequential(ViewsItsWeight(), nn.Conv2d(4, 2, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        plain = model(x)
        with channels_last(model):
            assert model[0].weight.is_contiguous()  # the custom layer's weight: untouched
            assert model[1].weight.stride()[1] == 1  # the plain Conv2d's: channels-last
            assert torch.allclose(model(nhwc(x)), plain, atol=1e-6)
