"""Pre-activation ResNet-18 for 32x32 images.

He, Zhang, Ren and Sun 2016, "Identity Mappings in Deep Residual Networks": each block is
BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3 plus an identity shortcut (a 1x1
convolution of the pre-activated input where the shape changes). The CIFAR layout is
the one Wong, Rice and Kolter 2020 ("Fast is better than free") and most CIFAR-10
robustness papers use: a 3x3 stem at full resolution, four stages of two blocks
(64, 128, 256, 512 channels; strides 1, 2, 2, 2), BN -> ReLU -> global average pooling ->
linear. 11.17M parameters for 10 classes.
"""

from __future__ import annotations

from torch import nn

from robustkit.config import TrainConfig
from robustkit.errors import RobustkitError
from robustkit.models.normalize import Normalize
from robustkit.models.zoo import register_model

#: CIFAR-10 training in the style of Wong et al. 2020: SGD with Nesterov momentum, one
#: cycle (what fit does), weight decay 5e-4, random shifts, batch 128.
CIFAR_TRAINING = TrainConfig(epochs=30, batch_size=128, lr=0.1, optimizer="sgd",
                             weight_decay=5e-4, augment="shift", label_smoothing=0.0)


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv3x3(stride) [-> dropout] -> BN -> ReLU -> conv3x3, plus the shortcut.

    The shortcut is the input itself, or a 1x1 convolution (stride) of the pre-activated
    input where the channels or the resolution change (He et al. 2016, section 3.1).
    Each ReLU is its own module, called once, so hooks (captum's layer methods) see every
    use of it.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        # WideResNet's dropout between the convolutions (none in ResNet-18)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):  # (N, in_planes, H, W) -> (N, planes, H / stride, W / stride)
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Normalize -> conv3x3 stem -> four stages of pre-activation blocks -> BN -> ReLU ->
    global average pooling -> linear."""

    def __init__(self, in_shape, num_classes, mean, std, blocks=(2, 2, 2, 2), width=64
                 ) -> None:
        super().__init__()
        channels = in_shape[0]
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(channels, widths[0], 3, stride=1, padding=1, bias=False)
        planes = widths[0]
        for i, (count, w) in enumerate(zip(blocks, widths), start=1):
            stage = nn.Sequential()
            for j in range(count):
                stride = 2 if (i > 1 and j == 0) else 1
                stage.add_module(str(j), PreActBlock(planes, w, stride))
                planes = w
            self.add_module(f"layer{i}", stage)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)  # 4x4 -> 1x1 on 32x32 inputs
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):  # (N, C, H, W) in [0, 1] -> (N, num_classes)
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.flatten(self.pool(self.relu(self.bn(out))))  # (N, 8 * width)
        return self.linear(out)


@register_model("preact_resnet18", train=CIFAR_TRAINING)
def preact_resnet18(in_shape, num_classes, mean, std, width: int = 64) -> nn.Module:
    """Pre-activation ResNet-18 (He et al. 2016) in the CIFAR layout of Wong et al. 2020.

    Args:
        in_shape: (C, H, W); 32x32 is the design (the last stage sees 4x4), other sizes
            work (global average pooling).
        width: channels of the first stage (64 in the paper; the stages have 1, 2, 4 and
            8 times as many). Smaller widths make tests fast.

    Example:
        >>> m = preact_resnet18((3, 32, 32), 10, (0.5,) * 3, (0.5,) * 3)
        >>> round(sum(p.numel() for p in m.parameters()) / 1e6, 2)
        11.17
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise RobustkitError(f"width must be a positive integer, got {width!r}")
    return PreActResNet(in_shape, num_classes, mean, std, blocks=(2, 2, 2, 2), width=width)
