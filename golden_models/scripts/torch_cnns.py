"""PyTorch CNNs of the torch-exported golden models (see make_torch.py): one pattern each.

Shared blocks, ResNet, MobileNetV2, DenseNet, ShuffleNet, Inception, EfficientNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGE = (1, 3, 32, 32)
NUM_CLASSES = 10


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class ClassifierHead(nn.Module):
    """Global average pool -> flatten -> Linear."""

    def __init__(self, c_in: int, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Pool and classify.

        Args:
            x: Feature map (B, C, H, W).

        Returns:
            Logits (B, num_classes).
        """
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ImageClassifier(nn.Module):
    """A backbone (``features``) followed by a classifier head (``head``)."""

    features: nn.Module
    head: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3-3x3 with identity or 1x1-conv projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(c_in, c_out, 3, stride)
        self.conv2 = ConvBnAct(c_out, c_out, 3, act=None)
        self.downsample = (ConvBnAct(c_in, c_out, 1, stride, act=None)
                           if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        """Residual block.

        Args:
            x: Input feature map.

        Returns:
            ``relu(conv2(conv1(x)) + shortcut(x))``.
        """
        return F.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class ResNetBasic(nn.Module):
    """ResNet with basic blocks, 16/32/64 wide."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, 16)
        self.layers = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2),
                                    BasicBlock(32, 64, 2))
        self.head = ClassifierHead(64)

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        return self.head(self.layers(self.stem(x)))


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1 reduce, 3x3, 1x1 expand (x4), projection shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = ConvBnAct(c_in, width, 1)
        self.conv2 = ConvBnAct(width, width, 3, stride)
        self.conv3 = ConvBnAct(width, c_out, 1, act=None)
        self.downsample = (ConvBnAct(c_in, c_out, 1, stride, act=None)
                           if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        """Residual bottleneck.

        Args:
            x: Input feature map.

        Returns:
            ``relu(conv3(conv2(conv1(x))) + shortcut(x))``.
        """
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.downsample(x))


class ResNetBottleneck(nn.Module):
    """ResNet with bottleneck blocks (expansion 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, 16)
        self.layers = nn.Sequential(Bottleneck(16, 8), Bottleneck(32, 8),
                                    Bottleneck(32, 16, 2))
        self.head = ClassifierHead(64)

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        return self.head(self.layers(self.stem(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, linear 1x1 project, residual if same shape."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBnAct(c_in, hidden, 1, act=nn.ReLU6))
        layers += [ConvBnAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   ConvBnAct(hidden, c_out, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        """Inverted residual.

        Args:
            x: Input feature map.

        Returns:
            Block output, with the input added when shapes match.
        """
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(ImageClassifier):
    """A MobileNetV2 with five inverted-residual blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBnAct(3, 16, 3, 2, act=nn.ReLU6),
            InvertedResidual(16, 8, 1, 1),
            InvertedResidual(8, 16, 2, 4),
            InvertedResidual(16, 16, 1, 4),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
            ConvBnAct(24, 64, 1, act=nn.ReLU6),
        )
        self.head = ClassifierHead(64)


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-1x1 conv-BN-ReLU-3x3 conv, output concatenated to input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Grow the running feature map.

        Args:
            x: Running feature map (B, C, H, W).

        Returns:
            ``cat([x, new_features])`` with C + growth channels.
        """
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], 1)


class Transition(nn.Sequential):
    """DenseNet transition: BN-ReLU-1x1 conv-2x2 avgpool."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False),
                         nn.AvgPool2d(2))


class DenseNet(ImageClassifier):
    """A DenseNet-BC with two dense blocks (growth 8) and one transition."""

    def __init__(self) -> None:
        super().__init__()
        growth = 8
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False)]
        c = 16
        for _ in range(3):
            layers.append(DenseLayer(c, growth))
            c += growth
        layers.append(Transition(c, c // 2))
        c //= 2
        for _ in range(3):
            layers.append(DenseLayer(c, growth))
            c += growth
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = ClassifierHead(c)



def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle via view/transpose/reshape.

    Args:
        x: Feature map (B, C, H, W).
        groups: Number of channel groups.

    Returns:
        The feature map with channels interleaved across groups.
    """
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or two-branch (stride 2), concat, shuffle."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = c_out // 2
        b2_in = c_in if stride == 2 else c_in // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                ConvBnAct(c_in, c_in, 3, stride, groups=c_in, act=None),
                ConvBnAct(c_in, half, 1),
            )
        self.branch2 = nn.Sequential(
            ConvBnAct(b2_in, half, 1),
            ConvBnAct(half, half, 3, stride, groups=half, act=None),
            ConvBnAct(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Split-transform-concat-shuffle.

        Args:
            x: Input feature map.

        Returns:
            Shuffled concatenation of both branches.
        """
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(ImageClassifier):
    """A ShuffleNetV2-style network with a grouped (groups=2) 1x1 conv before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBnAct(3, 16, 3, 2),
            ShuffleUnit(16, 32, 2),
            ShuffleUnit(32, 32, 1),
            ShuffleUnit(32, 48, 2),
            ShuffleUnit(48, 48, 1),
            ConvBnAct(48, 64, 1, groups=2),
        )
        self.head = ClassifierHead(64)


class InceptionBlock(nn.Module):
    """Inception-v1 block: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1, concatenated."""

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int,
                 cp: int) -> None:
        super().__init__()
        self.b1 = ConvBnAct(c_in, c1, 1)
        self.b2 = nn.Sequential(ConvBnAct(c_in, c3r, 1), ConvBnAct(c3r, c3, 3))
        self.b3 = nn.Sequential(ConvBnAct(c_in, c5r, 1), ConvBnAct(c5r, c5, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvBnAct(c_in, cp, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Run the four branches and concatenate.

        Args:
            x: Input feature map.

        Returns:
            Channel concatenation of the branch outputs.
        """
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class Inception(ImageClassifier):
    """Two inception blocks with a strided maxpool between them."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBnAct(3, 16),
            InceptionBlock(16, 8, 8, 12, 4, 8, 8),
            nn.MaxPool2d(3, 2, 1),
            InceptionBlock(36, 16, 12, 16, 4, 8, 8),
        )
        self.head = ClassifierHead(48)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: GAP -> 1x1 reduce -> SiLU -> 1x1 expand -> Sigmoid -> Mul."""

    def __init__(self, c: int, c_reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, c_reduced, 1)
        self.expand = nn.Conv2d(c_reduced, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Rescale channels.

        Args:
            x: Feature map (B, C, H, W).

        Returns:
            ``x * sigmoid(expand(silu(reduce(gap(x)))))``.
        """
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.expand(F.silu(self.reduce(s)))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """EfficientNet MBConv: 1x1 expand, depthwise, SE, 1x1 project, residual."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBnAct(c_in, hidden, 1, act=nn.SiLU) if expand != 1 else nn.Identity()
        self.dw = ConvBnAct(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU)
        self.se = SqueezeExcite(hidden, max(1, c_in // 4))
        self.project = ConvBnAct(hidden, c_out, 1, act=None)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        """MBConv block.

        Args:
            x: Input feature map.

        Returns:
            Block output, with the input added when shapes match.
        """
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.use_res else y


class EfficientNet(ImageClassifier):
    """An EfficientNet-B0-like network with SE and SiLU."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBnAct(3, 16, 3, 2, act=nn.SiLU),
            MBConv(16, 16, 3, 1, 1),
            MBConv(16, 24, 3, 2, 4),
            MBConv(24, 24, 5, 1, 4),
            ConvBnAct(24, 64, 1, act=nn.SiLU),
        )
        self.head = ClassifierHead(64)
