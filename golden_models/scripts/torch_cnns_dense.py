"""PyTorch CNN blocks of the torch-exported golden models: YOLO C2f/SPPF, UNet, ConvNeXt."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_cnns import NUM_CLASSES, ConvBnAct


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
