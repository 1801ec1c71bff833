"""Time the coupling analysis (load, fold-constants, couple, group) on real-sized models.

For each model the script measures, best of N in-process runs (fresh model each run):

- ``load``: ``spa_opt.ir.load_model(path)``;
- ``fold``: ``FoldConstantsPass()`` (model-zoo graphs store weights behind
  ConstantOfShape; it runs on every model so all take the same pipeline);
- ``couple``: ``couple_model`` (infers shapes temporarily, then solves);
- ``group``: ``build_groups``;

and, as the reference beside it, ``onnx.load`` + ``onnx.shape_inference.infer_shapes``
(no data propagation): the floor any ONNX tool pays to read a model and know its
shapes. The table gives ``(couple + group) / reference`` and, for the ResNet-50 rows,
``(couple + group) / 0.3 s`` (the analysis budget).

Models: light ResNet-50, DenseNet-121 and Inception v2 from the onnx package; the
10,000-node stacked transformer and the Qwen3 block of ``bench/models.py``; and, when
torch is installed, ResNet-50, MobileNetV2 and ViT-B/16 defined here (no torchvision),
exported once with the dynamo exporter (static shapes, batch 1, opset 20) to a cache
folder under the system temp dir.

Run from the repository root::

    python bench/analysis.py                 # every model, best of 3
    python bench/analysis.py --repeats 5     # best of 5
    python bench/analysis.py resnet vit      # models whose name contains a filter
    python bench/analysis.py --refresh       # re-export / rebuild the cached models
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import os
import platform
import re
import shlex
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import blocks_for_nodes, qwen3_block, stacked_transformer  # noqa: E402

LIGHT = Path(onnx.__path__[0]) / "backend" / "test" / "data" / "light"
CACHE = Path(tempfile.gettempdir()) / "spa-opt-bench-analysis"
BUDGET_SECONDS = 0.3
TRANSFORMER_NODES = 10_000
IR_VERSION = 10
DYNAMO_OPSET = 20
DROPPED_METADATA = ("pkg.torch.onnx.stack_trace",)
STAGES = ("load", "fold", "couple", "group")
REFERENCE = ("onnx.load", "infer_shapes")


# --------------------------------------------------------------------------- torch models


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
    torch.manual_seed(0)
    model = build().eval()
    for module in model.modules():  # non-trivial norms, so BatchNorm is no identity
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
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
    proto = onnx.load(str(tmp))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key not in DROPPED_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(proto, str(tmp), save_as_external_data=False)
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


# --------------------------------------------------------------------------- model list


@dataclass
class Case:
    """One benchmarked model file."""

    name: str
    path: Path
    note: str = ""


def cases(refresh: bool, filters: list[str]) -> tuple[list[Case], list[str]]:
    """Build or find every model file; return the cases and lines about skipped models."""
    CACHE.mkdir(parents=True, exist_ok=True)
    wanted = [f.lower() for f in filters]

    def keep(name: str) -> bool:
        return not wanted or any(f in name.lower() for f in wanted)

    found = [
        Case(f"light {label}", LIGHT / f"light_{stem}.onnx")
        for label, stem in (
            ("ResNet-50", "resnet50"),
            ("DenseNet-121", "densenet121"),
            ("Inception v2", "inception_v2"),
        )
        if keep(f"light {label}")
    ]
    blocks = blocks_for_nodes(TRANSFORMER_NODES)
    built: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
        f"transformer x{blocks}": (
            lambda: stacked_transformer(blocks),
            f"stacked_transformer({blocks}): hidden 64, 4 heads, seq 16",
        ),
        "qwen3 block": (qwen3_block, "qwen3_block(): 1 layer, hidden 32, 4 q / 2 kv heads"),
    }
    for name, (build, note) in built.items():
        if not keep(name):
            continue
        path = CACHE / (name.replace(" ", "_") + ".onnx")
        if refresh or not path.exists():
            from models import run_in_onnxruntime

            proto = build()  # passes the full checker inside the builder
            run_in_onnxruntime(proto)
            onnx.save(proto, str(path))
        found.append(Case(name, path, note))
    skipped = []
    if importlib.util.find_spec("torch") is None:
        skipped.append(
            "skip: torch ResNet-50, MobileNetV2, ViT-B/16 (torch is not installed; "
            "pip install torch==2.13.0)"
        )
        return found, skipped
    import torch

    for name, (build_module, shape) in torch_models().items():
        if not keep(name):
            continue
        stem = name.split()[1].replace("/", "_")
        path = CACHE / f"{stem}.dynamo.torch{torch.__version__}.onnx"
        if refresh or not path.exists():
            try:
                export_torch(name, build_module, shape, path)
            except Exception as error:  # an export failure is reported, not fatal
                skipped.append(f"skip: {name}: export failed: {type(error).__name__}: {error}")
                continue
        found.append(Case(name, path, f"dynamo export, torch {torch.__version__}, {shape}"))
    return found, skipped


# --------------------------------------------------------------------------- measurement


@dataclass
class Result:
    """Best-of-N seconds per stage, plus what the analysis found."""

    case: Case
    seconds: dict[str, list[float]] = field(default_factory=dict)
    file_nodes: int = 0
    nodes: int = 0
    groups: int = 0
    prunable: int = 0
    share: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)
    pinned: Counter[str] = field(default_factory=Counter)
    """Groups that cannot be pruned, by reason (names generalized)."""

    def best(self, stage: str) -> float:
        """Fastest run of one stage."""
        return min(self.seconds[stage])

    @property
    def analysis(self) -> float:
        """Best couple + best group."""
        return self.best("couple") + self.best("group")

    @property
    def reference(self) -> float:
        """Best onnx.load + best infer_shapes."""
        return sum(self.best(stage) for stage in REFERENCE)


def _generalize(text: str) -> str:
    """A reason with backticked names replaced, so alike reasons count together."""
    return re.sub(r"`[^`]*`", "<name>", text)


def _timed(result: Result, stage: str, function: Callable[[], Any]) -> Any:
    gc.collect()
    start = time.perf_counter()
    value = function()
    result.seconds.setdefault(stage, []).append(time.perf_counter() - start)
    return value


def measure(case: Case, repeats: int) -> Result:
    """Run the pipeline and the reference ``repeats`` times each, on fresh models."""
    from spa_opt.ir import load_model
    from spa_opt.passes.couple import couple_model
    from spa_opt.passes.coupling.groups import build_groups
    from spa_opt.passes.fold_constants import FoldConstantsPass
    from spa_opt.passes.group import summarize

    result = Result(case)
    path = str(case.path)
    for _ in range(repeats):
        proto = _timed(result, "onnx.load", lambda: onnx.load(path))
        result.file_nodes = len(proto.graph.node)
        _timed(result, "infer_shapes", lambda p=proto: onnx.shape_inference.infer_shapes(p))
        del proto
        model = _timed(result, "load", lambda: load_model(path))
        _timed(result, "fold", lambda m=model: FoldConstantsPass()(m))
        coupling = _timed(result, "couple", lambda m=model: couple_model(m))
        groups = _timed(result, "group", lambda m=model, c=coupling: build_groups(c, m.graph))
        summary = summarize(groups)
        result.nodes = coupling.stats["nodes"]
        result.stats = coupling.stats
        result.groups = summary["groups"]
        result.prunable = summary["prunable"]
        result.share = summary["coverage"]["share"]
        result.pinned = Counter(
            reason
            for group in groups
            if not group.prunable
            for reason in {_generalize(text) for text in group.why_not()}
        )
        del model, coupling, groups
    return result


# --------------------------------------------------------------------------- report


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


def _format(lines: list[tuple[str, ...]], left: int = 1) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for index, line in enumerate(lines):
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def table(results: list[Result]) -> str:
    """The main table: what the analysis found and how long each stage took."""
    header = (
        "model",
        "nodes",
        "folded",
        "groups",
        "prunable",
        "coverage",
        "load s",
        "fold s",
        "couple s",
        "group s",
        "sum s",
        "c+g s",
        "ref s",
        "c+g/ref",
        "c+g/0.3s",
    )
    lines: list[tuple[str, ...]] = [header]
    for r in results:
        total = sum(r.best(stage) for stage in STAGES)
        budget = _ratio(r.analysis, BUDGET_SECONDS) if "ResNet-50" in r.case.name else "-"
        lines.append(
            (
                r.case.name,
                str(r.file_nodes),
                str(r.nodes),
                str(r.groups),
                str(r.prunable),
                f"{r.share:.1%}",
                *(f"{r.best(stage):.3f}" for stage in STAGES),
                f"{total:.3f}",
                f"{r.analysis:.3f}",
                f"{r.reference:.3f}",
                _ratio(r.analysis, r.reference),
                budget,
            )
        )
    return _format(lines)


def stats_table(results: list[Result]) -> str:
    """The solver's counters and the reference's two stages."""
    keys = ("evaluations", "tracked-axes", "elements", "links", "unknown-ops", "patches")
    header = ("model", *keys, "onnx.load s", "infer_shapes s", "file MiB")
    lines: list[tuple[str, ...]] = [header]
    for r in results:
        lines.append(
            (
                r.case.name,
                *(str(r.stats.get(key, "")) for key in keys),
                *(f"{r.best(stage):.3f}" for stage in REFERENCE),
                f"{r.case.path.stat().st_size / 2**20:.1f}",
            )
        )
    return _format(lines)


def pin_reasons(results: list[Result]) -> str:
    """Per model, why its non-prunable groups cannot be pruned (counted)."""
    lines = []
    for r in results:
        blocked = r.groups - r.prunable
        lines.append(f"{r.case.name}: {blocked} of {r.groups} groups not prunable")
        for text, count in r.pinned.most_common(4):
            lines.append(f"    {count:4d} x {text}")
    return "\n".join(lines)


def machine() -> str:
    """One line describing the interpreter, libraries and machine."""
    import onnx_ir

    parts = [
        f"python {platform.python_version()}",
        f"onnx {onnx.__version__}",
        f"onnx-ir {onnx_ir.__version__}",
    ]
    if importlib.util.find_spec("torch") is not None:
        import torch

        parts.append(f"torch {torch.__version__}")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts += [
        f"{platform.system()} {platform.machine()}",
        f"{os.cpu_count()} CPUs",
        f"{memory:.0f} GiB RAM",
    ]
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, prepare the models, measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filters", nargs="*", help="only models whose name contains one")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--refresh", action="store_true", help="rebuild the cached models")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    shown = ["python", "bench/analysis.py", *(argv if argv is not None else sys.argv[1:])]
    print(f"Reproduce (from the repo root): {shlex.join(shown)}")
    print(machine())
    print(f"Model cache: {CACHE}")
    found, skipped = cases(args.refresh, args.filters)
    for line in skipped:
        print(line)
    results = []
    for case in found:
        print(f"  measuring {case.name} ({args.repeats} runs)", file=sys.stderr, flush=True)
        results.append(measure(case, args.repeats))
    if not results:
        print("no model matched")
        return 1
    print()
    print(table(results))
    print()
    print(stats_table(results))
    print()
    print(pin_reasons(results))
    print()
    print(
        f"Best of {args.repeats} in-process runs per stage (gc.collect() before each); "
        "sum = load + fold + couple + group. nodes: in the file; folded: after "
        "fold-constants (what couple sees). coverage: share of producing-weight output "
        "channels in a prunable group. c+g = couple + group; ref = onnx.load + "
        "onnx.shape_inference.infer_shapes (no data propagation) on the same file; "
        f"c+g/0.3s: against the {BUDGET_SECONDS} s analysis budget (ResNet-50 rows). "
        "The reference grows with the weight bytes (infer_shapes copies the whole proto), "
        "the analysis does not: the light zoo files hold no weights (ConstantOfShape)."
    )
    for case in found:
        if case.note:
            print(f"{case.name}: {case.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
