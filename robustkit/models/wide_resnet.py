"""Wide residual networks for 32x32 images.

Zagoruyko and Komodakis 2016, "Wide Residual Networks": WRN-d-k has a 3x3 stem of 16
channels and three groups of (d - 4) / 6 pre-activation basic blocks with 16k, 32k and 64k
channels (strides 1, 2, 2); each block is BN -> ReLU -> conv3x3 -> (dropout) -> BN ->
ReLU -> conv3x3, with a 1x1 convolution of the pre-activated input as the shortcut where
the shape changes; then BN -> ReLU -> global average pooling -> linear. WRN-28-10
(36.5M parameters) and WRN-34-10 are the usual CIFAR-10 robustness models (Madry et al.
2018 used WRN-34-10; RobustBench's leaders WRN-28-10 and wider). Initialization as the
authors' code: He-normal (fan out) convolutions, BN weights 1 and biases 0, linear biases 0.
"""

from __future__ import annotations

from torch import nn

from robustkit.errors import RobustkitError
from robustkit.models.normalize import Normalize
from robustkit.models.preact_resnet import CIFAR_TRAINING
from robustkit.models.preact_resnet import PreActBlock
from robustkit.models.zoo import register_model


def WideBlock(in_planes: int, planes: int, stride: int, dropout: float) -> PreActBlock:
    """A wide block: the pre-activation block with dropout between its convolutions
    (BN -> ReLU -> conv3x3(stride) -> dropout -> BN -> ReLU -> conv3x3, plus the shortcut)."""
    return PreActBlock(in_planes, planes, stride, dropout)


class WideResNet(nn.Module):
    """Normalize -> conv3x3 (16) -> three groups of wide blocks -> BN -> ReLU -> global
    average pooling -> linear."""

    def __init__(self, in_shape, num_classes, mean, std, depth: int, widen_factor: int,
                 dropout: float) -> None:
        super().__init__()
        n = (depth - 4) // 6  # blocks per group
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_shape[0], widths[0], 3, stride=1, padding=1, bias=False)
        planes = widths[0]
        for g, (w, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            group = nn.Sequential()
            for j in range(n):
                group.add_module(str(j), WideBlock(planes, w, stride if j == 0 else 1, dropout))
                planes = w
            self.add_module(f"block{g}", group)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)  # 8x8 -> 1x1 on 32x32 inputs
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):  # (N, C, H, W) in [0, 1] -> (N, num_classes)
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.flatten(self.pool(self.relu(self.bn(out))))  # (N, 64 * widen_factor)
        return self.fc(out)


@register_model("wide_resnet", train=CIFAR_TRAINING)
def wide_resnet(in_shape, num_classes, mean, std, depth: int = 28, widen_factor: int = 10,
                dropout: float = 0.0) -> nn.Module:
    """WRN-depth-widen_factor (Zagoruyko and Komodakis 2016) for 32x32 images.

    Args:
        depth: 6n + 4 layers (n blocks per group): 28 and 34 are the usual ones, 10 is the
            smallest (one block per group).
        widen_factor: k, the width multiplier of the three groups (16k, 32k, 64k channels).
        dropout: drop probability between a block's two convolutions, in [0, 1) (0.3 in
            the paper's CIFAR runs; robustness papers mostly use 0).

    Example:
        >>> m = wide_resnet((3, 32, 32), 10, (0.5,) * 3, (0.5,) * 3, depth=10,
        ...                 widen_factor=1)
        >>> m.fc.in_features
        64
    """
    for name, value in (("depth", depth), ("widen_factor", widen_factor)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RobustkitError(f"{name} must be a positive integer, got {value!r}")
    if depth < 10 or (depth - 4) % 6:
        raise RobustkitError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), "
                             f"got {depth}")
    if isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise RobustkitError(f"dropout must be in [0, 1), got {dropout!r}")
    return WideResNet(in_shape, num_classes, mean, std, depth, widen_factor, float(dropout))
