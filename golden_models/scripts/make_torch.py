"""Export small PyTorch models to ONNX with both exporters: the torch-exported golden models.

Each model is a tiny, seeded, eval-mode PyTorch module that exercises one channel-coupling
pattern a structured pruner must handle (residual adds, depthwise and grouped convs,
concatenation, channel split and shuffle, squeeze-excitation, attention heads, fused qkv,
grouped-query attention, per-head norms, ...). Every model is exported twice, with static
shapes and batch 1:

- ``golden_models/torch/<name>.dynamo.onnx``: ``torch.onnx.export(..., dynamo=True)``
  (``torch.export`` + onnxscript, opset 20);
- ``golden_models/torch/<name>.torchscript.onnx``: the legacy TorchScript exporter
  (``dynamo=False``, opset 17).

The files are then normalised: IR version capped at 10, as in make_handmade.py (onnxruntime
1.31 loads IR <= 13 but refuses IR 14, the onnx 1.23 default; the exporters currently write
10 and 8, so the cap is a guard); the per-node ``pkg.torch.onnx.stack_trace`` metadata is
dropped (it holds absolute paths of this machine); weights stay inside the file. Each file
must pass the full ONNX checker and match the PyTorch output within 1e-4 in onnxruntime on a
seeded random input; the script asserts this and prints a table.

Regenerate with::

    pip install torch==2.13.0 && python golden_models/scripts/make_torch.py

Optionally pass model names to export only those, e.g. ``python ... make_torch.py vit gpt2``.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUT = Path(__file__).resolve().parent.parent / "torch"
IR_VERSION = 10
DYNAMO_OPSET = 20
TORCHSCRIPT_OPSET = 17
ATOL = 1e-4
DROPPED_METADATA = ("pkg.torch.onnx.stack_trace",)

IMAGE = (1, 3, 32, 32)
SEQ = 16
VOCAB = 100
NUM_CLASSES = 10


# --------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------


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


class RMSNorm(nn.Module):
    """Root-mean-square norm as written in HF Llama/Qwen3."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise over the last axis.

        Args:
            x: Input (..., dim).

        Returns:
            ``x * rsqrt(mean(x^2) + eps) * weight``.
        """
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


# --------------------------------------------------------------------------------------
# CNNs
# --------------------------------------------------------------------------------------


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


class MobileNetV2(nn.Module):
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

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        return self.head(self.features(x))


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


class DenseNet(nn.Module):
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

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        return self.head(self.features(x))


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


class ShuffleNet(nn.Module):
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

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        return self.head(self.features(x))


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


class Inception(nn.Module):
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

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        return self.head(self.features(x))


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


class EfficientNet(nn.Module):
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

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        return self.head(self.features(x))


def yolo_conv(c_in: int, c_out: int, k: int = 1, stride: int = 1) -> ConvBnAct:
    """Ultralytics ``Conv``: conv + BN + SiLU.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        k: Kernel size.
        stride: Stride.

    Returns:
        The conv block.
    """
    return ConvBnAct(c_in, c_out, k, stride, act=nn.SiLU)


class YoloBottleneck(nn.Module):
    """Ultralytics bottleneck: 3x3 -> 3x3 with optional shortcut add."""

    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = yolo_conv(c, c, 3)
        self.cv2 = yolo_conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        """Bottleneck.

        Args:
            x: Input feature map.

        Returns:
            ``x + cv2(cv1(x))`` or ``cv2(cv1(x))``.
        """
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8 C2f: 1x1 conv, chunk into halves, bottleneck chain appended, concat, 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = yolo_conv(c_in, 2 * self.c)
        self.cv2 = yolo_conv((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        """C2f block.

        Args:
            x: Input feature map.

        Returns:
            ``cv2(cat([a, b, m1(b), m2(m1(b)), ...]))``.
        """
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """YOLOv5/v8 SPPF: 1x1 conv, three chained 5x5 maxpools, concat of all four, 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, k: int = 5) -> None:
        super().__init__()
        c = c_in // 2
        self.cv1 = yolo_conv(c_in, c)
        self.cv2 = yolo_conv(4 * c, c_out)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: Tensor) -> Tensor:
        """Spatial pyramid pooling (fast).

        Args:
            x: Input feature map.

        Returns:
            Pooled and fused feature map.
        """
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YoloC2f(nn.Module):
    """A YOLOv8-style backbone (Conv, C2f, SPPF) with a 1x1 detection-like output conv."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            yolo_conv(3, 16, 3, 2),
            yolo_conv(16, 32, 3, 2),
            C2f(32, 32, 2, shortcut=True),
            yolo_conv(32, 64, 3, 2),
            C2f(64, 64, 1, shortcut=False),
            SPPF(64, 64),
        )
        self.detect = nn.Conv2d(64, 16, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Dense prediction.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Prediction map (1, 16, 4, 4).
        """
        return self.detect(self.model(x))


class DoubleConv(nn.Sequential):
    """UNet double 3x3 conv-BN-ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(ConvBnAct(c_in, c_out), ConvBnAct(c_out, c_out))


class UNet(nn.Module):
    """A two-level UNet: ConvTranspose2d up on one level, nearest Upsample + 1x1 on the other."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = DoubleConv(3, 16)
        self.enc2 = DoubleConv(16, 32)
        self.bottleneck = DoubleConv(32, 64)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = DoubleConv(64, 32)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                 nn.Conv2d(32, 16, 1))
        self.dec1 = DoubleConv(32, 16)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Segment an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Per-pixel logits (1, 2, 32, 32).
        """
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


class LayerNorm2d(nn.Module):
    """ConvNeXt channels-first LayerNorm, written out as in the official code."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise over the channel axis.

        Args:
            x: Feature map (B, C, H, W).

        Returns:
            The normalised, scaled and shifted feature map.
        """
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: dw 7x7, channels-last LayerNorm, MLP x4 with GELU, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        """ConvNeXt block.

        Args:
            x: Feature map (B, C, H, W).

        Returns:
            ``x + permute(gamma * mlp(norm(permute(dwconv(x)))))``.
        """
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return x + y


class ConvNeXt(nn.Module):
    """A two-stage ConvNeXt (16 then 32 wide, two blocks each)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16))
        self.stage1 = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.downsample = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 32, 2, stride=2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32))
        self.norm = nn.LayerNorm(32, eps=1e-6)
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        x = self.stage2(self.downsample(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean([-2, -1])))


# --------------------------------------------------------------------------------------
# Transformers
# --------------------------------------------------------------------------------------


class ViTAttention(nn.Module):
    """Hand-written multi-head self-attention with separate q/k/v projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention.

        Args:
            x: Tokens (B, N, D).

        Returns:
            Attended tokens (B, N, D).
        """
        b, n, d = x.shape
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(y)


class ViTBlock(nn.Module):
    """Pre-LN transformer encoder block."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """Encoder block.

        Args:
            x: Tokens (B, N, D).

        Returns:
            Tokens (B, N, D).
        """
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A ViT: 8x8 patches of a 32x32 image, cls token, learned positions, 2 blocks, dim 64."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2, patch: int = 8) -> None:
        super().__init__()
        n_patches = (IMAGE[2] // patch) * (IMAGE[3] // patch)
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embed)
        return self.head(self.norm(x)[:, 0])


class BertLayer(nn.Module):
    """Post-LN BERT layer with hand-written attention and an additive mask."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=1e-12)
        self.intermediate = nn.Linear(dim, ffn)
        self.output = nn.Linear(ffn, dim)
        self.out_norm = nn.LayerNorm(dim, eps=1e-12)

    def _heads(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Encoder layer.

        Args:
            x: Hidden states (B, S, D).
            mask: Additive attention mask (B, 1, 1, S).

        Returns:
            Hidden states (B, S, D).
        """
        b, s, d = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
        ctx = torch.matmul(F.softmax(scores, dim=-1), v)
        ctx = ctx.permute(0, 2, 1, 3).contiguous().view(b, s, d)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.out_norm(x + self.output(F.gelu(self.intermediate(x))))


class Bert(nn.Module):
    """A BERT encoder: word + position + token-type embeddings, 2 post-LN layers, pooler."""

    def __init__(self, dim: int = 64, heads: int = 4, ffn: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, dim)
        self.position_embeddings = nn.Embedding(SEQ, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.emb_norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(dim, heads, ffn) for _ in range(depth))
        self.pooler = nn.Linear(dim, dim)
        self.register_buffer("position_ids", torch.arange(SEQ)[None], persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(1, SEQ, dtype=torch.long),
                             persistent=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a token sequence.

        Args:
            input_ids: Token ids (1, 16), int64.
            attention_mask: 1 for real tokens, 0 for padding (1, 16), int64.

        Returns:
            ``(last_hidden_state (1, 16, D), pooler_output (1, D))``.
        """
        s = input_ids.shape[1]
        x = (self.word_embeddings(input_ids)
             + self.position_embeddings(self.position_ids[:, :s])
             + self.token_type_embeddings(self.token_type_ids[:, :s]))
        x = self.emb_norm(x)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x, torch.tanh(self.pooler(x[:, 0]))


class GPT2Attention(nn.Module):
    """GPT-2 attention: fused c_attn (3*D), split, causal mask buffer, c_proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dim = dim
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.register_buffer("bias", torch.tril(torch.ones(SEQ, SEQ, dtype=torch.bool))
                             .view(1, 1, SEQ, SEQ), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Causal self-attention.

        Args:
            x: Hidden states (B, T, D).

        Returns:
            Hidden states (B, T, D).
        """
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(self.dim, dim=2)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.masked_fill(~self.bias[:, :, :t, :t], torch.finfo(att.dtype).min)
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))


class GPT2Block(nn.Module):
    """Pre-LN GPT-2 block with a tanh-GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = GPT2Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Decoder block.

        Args:
            x: Hidden states (B, T, D).

        Returns:
            Hidden states (B, T, D).
        """
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    """A GPT-2 decoder (dim 64, 4 heads, 2 layers) with lm_head tied to wte."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, dim)
        self.wpe = nn.Embedding(SEQ, dim)
        self.h = nn.ModuleList(GPT2Block(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, input_ids: Tensor) -> Tensor:
        """Next-token logits.

        Args:
            input_ids: Token ids (1, 16), int64.

        Returns:
            Logits (1, 16, 100).
        """
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)[None]
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def rotate_half(x: Tensor) -> Tensor:
    """Rotate the two halves of the last axis: ``[-x2, x1]``.

    Args:
        x: Tensor (..., D).

    Returns:
        The rotated tensor.
    """
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Apply rotary position embeddings as in HF Llama.

    Args:
        q: Queries (B, H, S, D).
        k: Keys (B, KVH, S, D).
        cos: Cosines (1, 1, S, D).
        sin: Sines (1, 1, S, D).

    Returns:
        The rotated queries and keys.
    """
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Repeat key/value heads for grouped-query attention, as in HF.

    Args:
        x: Keys or values (B, KVH, S, D).
        n_rep: Query heads per key/value head.

    Returns:
        Tensor (B, KVH * n_rep, S, D).
    """
    b, kvh, s, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kvh, n_rep, s, d).reshape(b, kvh * n_rep, s, d)


class LlamaAttention(nn.Module):
    """Grouped-query attention with RoPE and optional per-head q/k RMSNorm (Qwen3)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int,
                 qk_norm: bool) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        """Causal GQA.

        Args:
            x: Hidden states (B, S, D).
            cos: RoPE cosines (1, 1, S, head_dim).
            sin: RoPE sines (1, 1, S, head_dim).
            mask: Additive causal mask (1, 1, S, S).

        Returns:
            Hidden states (B, S, D).
        """
        b, s, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, s, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, s, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        n_rep = self.heads // self.kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        att = torch.matmul(q, k.transpose(2, 3)) * self.head_dim ** -0.5 + mask
        y = torch.matmul(F.softmax(att, dim=-1, dtype=torch.float32), v)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, -1))


class LlamaBlock(nn.Module):
    """Pre-RMSNorm decoder layer with a SwiGLU MLP."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, ffn: int,
                 qk_norm: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = LlamaAttention(dim, heads, kv_heads, head_dim, qk_norm)
        self.post_attention_layernorm = RMSNorm(dim)
        self.gate_proj = nn.Linear(dim, ffn, bias=False)
        self.up_proj = nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        """Decoder layer.

        Args:
            x: Hidden states (B, S, D).
            cos: RoPE cosines.
            sin: RoPE sines.
            mask: Additive causal mask.

        Returns:
            Hidden states (B, S, D).
        """
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    """A Llama/Qwen3-style decoder: RMSNorm, RoPE, GQA, SwiGLU, no biases, untied lm_head."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, ffn: int,
                 depth: int, qk_norm: bool, theta: float = 10000.0) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(LlamaBlock(dim, heads, kv_heads, head_dim, ffn, qk_norm)
                                    for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Next-token logits.

        Args:
            input_ids: Token ids (1, 16), int64.

        Returns:
            Logits (1, 16, 100).
        """
        s = input_ids.shape[1]
        pos = torch.arange(s, dtype=torch.float32, device=input_ids.device)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((s, s), torch.finfo(torch.float32).min).triu(1)[None, None]
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))


def llama() -> Llama:
    """Llama: hidden 32, 4 query heads, 2 kv heads, head_dim 8, SwiGLU 64, 2 layers.

    Returns:
        The model.
    """
    return Llama(dim=32, heads=4, kv_heads=2, head_dim=8, ffn=64, depth=2, qk_norm=False)


def qwen3() -> Llama:
    """Qwen3: hidden 32, 4 query heads x head_dim 16 (q width 64 != hidden), 2 kv heads, q/k norm.

    Returns:
        The model.
    """
    return Llama(dim=32, heads=4, kv_heads=2, head_dim=16, ffn=64, depth=2, qk_norm=True,
                 theta=1000000.0)


# --------------------------------------------------------------------------------------
# Registry, randomisation, export and checks
# --------------------------------------------------------------------------------------


def image_input() -> tuple[Tensor, ...]:
    """A random image batch.

    Returns:
        ``(x,)`` with x of shape (1, 3, 32, 32).
    """
    return (torch.randn(IMAGE),)


def token_input() -> tuple[Tensor, ...]:
    """Random token ids.

    Returns:
        ``(input_ids,)`` of shape (1, 16), int64.
    """
    return (torch.randint(0, VOCAB, (1, SEQ)),)


def bert_input() -> tuple[Tensor, ...]:
    """Random token ids and an attention mask with the last 4 positions padded.

    Returns:
        ``(input_ids, attention_mask)``, both (1, 16) int64.
    """
    mask = torch.ones(1, SEQ, dtype=torch.long)
    mask[:, -4:] = 0
    return torch.randint(0, VOCAB, (1, SEQ)), mask


@dataclass(frozen=True)
class Spec:
    """One golden model: how to build it, its inputs and I/O names."""

    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[Tensor, ...]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    seed: int


IMG_IO = (("input",), ("logits",))
LM_IO = (("input_ids",), ("logits",))

MODELS: dict[str, Spec] = {
    "resnet_basic": Spec(ResNetBasic, image_input, *IMG_IO, seed=1),
    "resnet_bottleneck": Spec(ResNetBottleneck, image_input, *IMG_IO, seed=2),
    "mobilenetv2": Spec(MobileNetV2, image_input, *IMG_IO, seed=3),
    "densenet": Spec(DenseNet, image_input, *IMG_IO, seed=4),
    "shufflenet": Spec(ShuffleNet, image_input, *IMG_IO, seed=5),
    "inception": Spec(Inception, image_input, *IMG_IO, seed=6),
    "efficientnet": Spec(EfficientNet, image_input, *IMG_IO, seed=7),
    "yolo_c2f": Spec(YoloC2f, image_input, ("input",), ("output",), seed=8),
    "unet": Spec(UNet, image_input, ("input",), ("output",), seed=9),
    "convnext": Spec(ConvNeXt, image_input, *IMG_IO, seed=10),
    "vit": Spec(ViT, image_input, *IMG_IO, seed=11),
    "bert": Spec(Bert, bert_input, ("input_ids", "attention_mask"),
                 ("last_hidden_state", "pooler_output"), seed=12),
    "gpt2": Spec(GPT2, token_input, *LM_IO, seed=13),
    "llama": Spec(llama, token_input, *LM_IO, seed=14),
    "qwen3": Spec(qwen3, token_input, *LM_IO, seed=15),
}


@torch.no_grad()
def randomize_norms(model: nn.Module) -> None:
    """Give every norm non-trivial statistics and affine parameters so none is an identity.

    BatchNorm gets random running mean/var, weight and bias; LayerNorm, RMSNorm and the
    channels-first LayerNorm get random weight (and bias); ConvNeXt layer-scale gamma is
    set to O(1) values instead of 1e-6.

    Args:
        model: The model, modified in place.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
        elif isinstance(m, (nn.LayerNorm, LayerNorm2d, RMSNorm)):
            m.weight.uniform_(0.5, 1.5)
            bias = getattr(m, "bias", None)
            if bias is not None:
                bias.normal_(0.0, 0.1)
        if isinstance(m, ConvNeXtBlock):
            m.gamma.uniform_(0.2, 1.0)


def normalise(path: Path) -> onnx.ModelProto:
    """Cap the IR version, drop machine-specific metadata and re-save with inline weights.

    Args:
        path: The exported file, rewritten in place.

    Returns:
        The normalised model.
    """
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, IR_VERSION)
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in DROPPED_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(model, str(path), save_as_external_data=False)
    return model


def export(model: nn.Module, args: tuple[Tensor, ...], spec: Spec, path: Path,
           dynamo: bool) -> None:
    """Export with one exporter, static shapes, weights inline.

    Args:
        model: Eval-mode model.
        args: Example inputs.
        spec: The model's spec (I/O names).
        path: Output file.
        dynamo: True for the torch.export-based exporter, False for TorchScript.
    """
    common = {"input_names": list(spec.input_names), "output_names": list(spec.output_names)}
    if dynamo:
        torch.onnx.export(model, args, str(path), dynamo=True, opset_version=DYNAMO_OPSET,
                          external_data=False, verbose=False, **common)
    else:
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                          do_constant_folding=True, **common)


def check(path: Path, model: onnx.ModelProto, args: tuple[Tensor, ...],
          expected: tuple[Tensor, ...]) -> float:
    """Run the full checker and onnxruntime; compare with the PyTorch outputs.

    Args:
        path: The saved file.
        model: The loaded model.
        args: The inputs.
        expected: The PyTorch outputs.

    Returns:
        The maximum absolute error over all outputs.

    Raises:
        AssertionError: If the outputs differ by more than ``ATOL`` or mismatch in shape.
    """
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
    got = sess.run(None, feeds)
    err = 0.0
    for g, e in zip(got, expected, strict=True):
        e_np = e.numpy()
        assert g.shape == e_np.shape, f"{path.name}: shape {g.shape} != {e_np.shape}"
        err = max(err, float(np.max(np.abs(g - e_np))))
    assert err <= ATOL, f"{path.name}: max abs error {err:.3g} > {ATOL}"
    return err


def param_count(model: onnx.ModelProto) -> int:
    """Count elements of all initializers.

    Args:
        model: The model.

    Returns:
        The number of initializer elements.
    """
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def build(name: str) -> tuple[nn.Module, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Build one seeded eval-mode model with its seeded input and PyTorch outputs.

    Args:
        name: Key in ``MODELS``.

    Returns:
        ``(model, inputs, outputs)``.
    """
    spec = MODELS[name]
    torch.manual_seed(spec.seed)
    model = spec.build()
    randomize_norms(model)
    model.eval()
    torch.manual_seed(1000 + spec.seed)
    args = spec.inputs()
    with torch.no_grad():
        out = model(*args)
    outputs = out if isinstance(out, tuple) else (out,)
    return model, args, outputs


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, int, int, float, int]] = []
    skipped: list[str] = []
    for name in names or list(MODELS):
        for exporter in ("dynamo", "torchscript"):
            model, args, expected = build(name)
            path = OUT / f"{name}.{exporter}.onnx"
            try:
                export(model, args, MODELS[name], path, dynamo=exporter == "dynamo")
            except Exception as exc:  # an exporter that cannot handle a model is reported
                path.unlink(missing_ok=True)
                skipped.append(f"{path.name}: {type(exc).__name__}: {exc}".splitlines()[0])
                continue
            onnx_model = normalise(path)
            err = check(path, onnx_model, args, expected)
            rows.append((name, exporter, len(onnx_model.graph.node), param_count(onnx_model),
                         err, path.stat().st_size))
    print(f"{'model':<18} {'exporter':<12} {'nodes':>6} {'params':>8} {'max err':>9} "
          f"{'bytes':>8}")
    for name, exporter, nodes, params, err, size in rows:
        print(f"{name:<18} {exporter:<12} {nodes:>6} {params:>8} {err:>9.2e} {size:>8}")
    print(f"{len(rows)} files, {sum(r[5] for r in rows)} bytes in {OUT}")
    for line in skipped:
        print(f"skipped {line}")


if __name__ == "__main__":
    main(sys.argv[1:])
