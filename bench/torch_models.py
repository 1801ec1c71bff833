"""ResNet-50, MobileNetV2 and ViT-B/16 defined in PyTorch (no torchvision), for the benchmarks.

``export_torch`` exports one with the dynamo exporter (static shapes, batch 1, opset
20, IR at most 10, weights inline) and checks it in onnxruntime against PyTorch.
Needs torch (``pip install torch==2.13.0``); importing this module does not.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

DYNAMO_OPSET = 20

def torch_models() -> dict[str, tuple[Callable[[], Any], tuple[int, ...]]]:
    """Compact PyTorch definitions: name -> (constructor, input shape)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Bottleneck(nn.Module):
        """ResNet v1.5 bottleneck (stride on the 3x3), expansion 4."""

        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.bn1(self.conv1(x)))
            y = F.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return F.relu(y + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        """ResNet-50: stem, bottleneck stages [3, 4, 6, 3], GAP, Linear(2048, 1000)."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            layers: list[nn.Module] = []
            cin = 64
            for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for index in range(count):
                    layers.append(Bottleneck(cin, width, stride if index == 0 else 1))
                    cin = width * 4
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )

    class InvertedResidual(nn.Module):
        """MobileNetV2 block: 1x1 expand, depthwise 3x3, linear 1x1 project."""

        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers: list[nn.Module] = []
            if expand != 1:
                layers.append(conv_bn(cin, hidden, 1, 1))
            layers += [
                conv_bn(hidden, hidden, 3, stride, groups=hidden),
                nn.Conv2d(hidden, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            ]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        """MobileNetV2 (width 1.0): the torchvision stage table, 1280 features, 1000 classes."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
            cin = 32
            table = (
                (1, 16, 1, 1),
                (6, 24, 2, 2),
                (6, 32, 3, 2),
                (6, 64, 4, 2),
                (6, 96, 3, 1),
                (6, 160, 3, 2),
                (6, 320, 1, 1),
            )
            for expand, cout, count, stride in table:
                for index in range(count):
                    layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand))
                    cin = cout
            layers.append(conv_bn(cin, 1280, 1, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    class EncoderBlock(nn.Module):
        """Pre-LN ViT block: fused qkv Linear, scaled dot-product attention, GELU MLP."""

        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.ln1 = nn.LayerNorm(dim, eps=1e-6)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.ln2 = nn.LayerNorm(dim, eps=1e-6)
            self.fc1 = nn.Linear(dim, 4 * dim)
            self.fc2 = nn.Linear(4 * dim, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, tokens, dim = x.shape
            qkv = self.qkv(self.ln1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            attn = F.scaled_dot_product_attention(q, k, v)
            x = x + self.proj(attn.transpose(1, 2).reshape(batch, tokens, dim))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class ViTB16(nn.Module):
        """ViT-B/16 at 224x224: 16x16 patch conv, class token, 12 blocks of width 768."""

        def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, dim, 16, 16)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, 197, dim) * 0.02)
            self.blocks = nn.Sequential(*(EncoderBlock(dim, heads) for _ in range(depth)))
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            x = self.norm(self.blocks(x))
            return self.head(x[:, 0])

    image = (1, 3, 224, 224)
    return {
        "torch ResNet-50": (ResNet50, image),
        "torch MobileNetV2": (MobileNetV2, image),
        "torch ViT-B/16": (ViTB16, image),
    }


def seeded_model(build: Callable[[], Any]) -> Any:
    """The eval-mode module every export starts from: seed 0, randomized BatchNorm.

    The module's weights are those of the exported file (the next ``torch.randn``
    draws the check input).
    """
    import torch

    torch.manual_seed(0)
    model = build().eval()
    for module in model.modules():  # non-trivial norms, so BatchNorm is no identity
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    return model


def export_torch(name: str, build: Callable[[], Any], shape: tuple[int, ...], path: Path) -> None:
    """Export one seeded eval-mode model with the dynamo exporter; check it in onnxruntime.

    Args:
        name: Display name (for messages).
        build: The module's constructor.
        shape: Static input shape (batch 1).
        path: Output file; weights stay inline, IR capped at 10.

    Raises:
        RuntimeError: onnxruntime disagrees with PyTorch by more than 1e-3.
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model = seeded_model(build)
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x).numpy()
    tmp = path.with_suffix(".tmp.onnx")
    start = time.perf_counter()
    torch.onnx.export(
        model,
        (x,),
        str(tmp),
        dynamo=True,
        opset_version=DYNAMO_OPSET,
        external_data=False,
        verbose=False,
        input_names=["input"],
        output_names=["output"],
    )
    seconds = time.perf_counter() - start
    proto = _golden_script("make_torch").normalise(tmp)  # the golden models' IR cap, metadata
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    error = float(np.max(np.abs(got - expected)))
    if error > 1e-3:
        raise RuntimeError(f"{name}: onnxruntime differs from PyTorch by {error:.3g}")
    tmp.replace(path)
    print(
        f"  exported {name}: {len(proto.graph.node)} nodes in {seconds:.1f} s, "
        f"max abs error vs PyTorch {error:.2e} -> {path}",
        file=sys.stderr,
    )


def _golden_script(name: str) -> Any:
    """A module of ``golden_models/scripts`` (they need torch, so loaded on use)."""
    import importlib

    scripts = str(Path(__file__).resolve().parents[1] / "golden_models" / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module(name)
