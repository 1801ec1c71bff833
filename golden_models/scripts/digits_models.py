"""The digits golden models: a basic-block ResNet, a MobileNetV2-style CNN, a small ViT, a DenseNet.

Model definitions only; training, export and checks are in make_digits.py. All take
``(batch, 1, 32, 32)`` normalised images and return 10 logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_cnns import DenseLayer

SIZE = 32
NUM_CLASSES = 10

def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv2d without bias followed by BatchNorm2d.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        k: Kernel size (padding k // 2).
        stride: Stride.
        groups: Conv groups.

    Returns:
        The two layers.
    """
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus an identity or 1x1 conv+BN shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3)
        self.downsample = (conv_bn(c_in, c_out, 1, stride)
                           if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        """Residual block.

        Args:
            x: Feature map (B, c_in, H, W).

        Returns:
            Feature map (B, c_out, H / stride, W / stride).
        """
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(y + self.downsample(x))


class ResNet(nn.Module):
    """ResNet-18 layout at widths 16/32/64/128 for 1x32x32 inputs."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, widths[0], 3), nn.ReLU())
        layers: list[nn.Module] = []
        c_in = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(c_in, width, stride))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Classify.

        Args:
            x: Images (B, 1, 32, 32).

        Returns:
            Logits (B, 10).
        """
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU6, depthwise 3x3-BN-ReLU6, 1x1 project-BN; residual if it fits."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        hidden = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            conv_bn(c_in, hidden, 1), nn.ReLU6(),
            conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
            conv_bn(hidden, c_out, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Inverted residual.

        Args:
            x: Feature map (B, c_in, H, W).

        Returns:
            Feature map (B, c_out, H / stride, W / stride).
        """
        y = self.block(x)
        return x + y if self.residual else y


class PooledClassifier(nn.Module):
    """``features`` then global average pooling and the Linear ``fc``; subclasses build both."""

    features: nn.Sequential
    fc: nn.Linear

    def forward(self, x: Tensor) -> Tensor:
        """Classify.

        Args:
            x: Images (B, 1, 32, 32).

        Returns:
            Logits (B, 10).
        """
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class MobileNetV2(PooledClassifier):
    """MobileNetV2 at widths 16/24/32/64 for 1x32x32 inputs (stride-2 stem: 16x16 maps)."""

    SETTINGS = ((16, 1, 1), (24, 2, 2), (32, 2, 2), (64, 2, 2))
    """(width, blocks, stride of the first block) per stage."""

    def __init__(self, stem: int = 16, last: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(1, stem, 3, 2), nn.ReLU6()]
        c_in = stem
        for width, blocks, stride in self.SETTINGS:
            for block in range(blocks):
                layers.append(InvertedResidual(c_in, width, stride if block == 0 else 1))
                c_in = width
        layers += [conv_bn(c_in, last, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, NUM_CLASSES)



class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out Linear projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention.

        Args:
            x: Tokens (B, N, D).

        Returns:
            Tokens (B, N, D).
        """
        b, n, d = x.shape
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, d))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

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
    """ViT for 1x32x32 inputs: 4x4 patches (64 tokens) and a class token."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128,
                 patch: int = 4) -> None:
        super().__init__()
        tokens = (SIZE // patch) ** 2
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Classify.

        Args:
            x: Images (B, 1, 32, 32).

        Returns:
            Logits (B, 10).
        """
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embed)
        return self.head(self.norm(x)[:, 0])


class DenseNet(PooledClassifier):
    """DenseNet-BC for 1x32x32 inputs: stride-2 stem, three dense blocks, two transitions.

    Stem conv 3x3 to 24 channels at stride 2 (16x16 maps), then three dense blocks of 4
    layers (growth 12, bottleneck 48) at 16x16, 8x8 and 4x4, joined by transitions
    (BN-ReLU-1x1 conv halving the channels, 2x2 average pool); BN-ReLU, pool, Linear.
    Pre-activation BatchNorms read concatenations, so they stay BatchNormalization nodes
    in the export (there is no single conv before them to fold into).
    """

    def __init__(self, stem: int = 24, growth: int = 12, layers: int = 4, blocks: int = 3
                 ) -> None:
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(1, stem, 3, 2, 1, bias=False)]
        c = stem
        for block in range(blocks):
            for _ in range(layers):
                modules.append(DenseLayer(c, growth))
                c += growth
            if block + 1 < blocks:
                modules += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                            nn.AvgPool2d(2)]
                c //= 2
        modules += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*modules)
        self.fc = nn.Linear(c, NUM_CLASSES)



# --------------------------------------------------------------------------- training
