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

Then, on the torch models, the whole ``couple,group,l1,prune --ratio 0.5`` run (load,
passes, save; in process and as a ``spa-opt`` subprocess) beside Torch-Pruning on the
same PyTorch architecture (``bench/pruning_reference.py``; goal: ResNet-50 under 1 s).

Models: light ResNet-50, DenseNet-121 and Inception v2 from the onnx package; the
10,000-node stacked transformer and the Qwen3 block of ``bench/models.py``; and, when
torch is installed, ResNet-50, MobileNetV2 and ViT-B/16 of ``bench/torch_models.py``
(no torchvision), exported once with the dynamo exporter (static shapes, batch 1,
opset 20) to a cache folder under the system temp dir.

Run from the repository root::

    python bench/analysis.py                 # every model, best of 3
    python bench/analysis.py --repeats 5     # best of 5
    python bench/analysis.py resnet vit      # models whose name contains a filter
    python bench/analysis.py --refresh       # re-export / rebuild the cached models
    python bench/analysis.py --no-prune      # without the whole prune run
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import shlex
import sys
import tempfile
import time
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

from common import format_table, generalize, machine  # noqa: E402
from models import blocks_for_nodes, qwen3_block, stacked_transformer  # noqa: E402
from pruning_reference import torch_pruning_version, whole_run  # noqa: E402
from torch_models import export_torch, torch_models  # noqa: E402

LIGHT = Path(onnx.__path__[0]) / "backend" / "test" / "data" / "light"
CACHE = Path(tempfile.gettempdir()) / "spa-opt-bench-analysis"
BUDGET_SECONDS = 0.3
TRANSFORMER_NODES = 10_000
STAGES = ("load", "fold", "couple", "group")
REFERENCE = ("onnx.load", "infer_shapes")


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
            for reason in {generalize(text) for text in group.why_not()}
        )
        del model, coupling, groups
    return result


# --------------------------------------------------------------------------- report


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


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
    return format_table(lines, {0})


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
    return format_table(lines, {0})


def pin_reasons(results: list[Result]) -> str:
    """Per model, why its non-prunable groups cannot be pruned (counted)."""
    lines = []
    for r in results:
        blocked = r.groups - r.prunable
        lines.append(f"{r.case.name}: {blocked} of {r.groups} groups not prunable")
        for text, count in r.pinned.most_common(4):
            lines.append(f"    {count:4d} x {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, prepare the models, measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filters", nargs="*", help="only models whose name contains one")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--refresh", action="store_true", help="rebuild the cached models")
    parser.add_argument("--no-prune", action="store_true", help="skip the whole prune run")
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
    if not args.no_prune:
        print_prune_run(found, args.repeats)
    return 0


def print_prune_run(found: list[Case], repeats: int) -> None:
    """The whole prune run on the torch models, beside Torch-Pruning."""
    print()
    torch_cases = [case for case in found if case.name.startswith("torch ")]
    if not torch_cases:
        print("skip: whole prune run (needs the torch models: pip install torch==2.13.0)")
        return
    builders = torch_models()
    print(f"Whole run `spa-opt -p couple,group,l1,prune --ratio 0.5`, best of {repeats}; "
          f"Torch-Pruning {torch_pruning_version()}:")
    print(whole_run([(c.name, c.path, *builders[c.name]) for c in torch_cases], repeats))
    print(
        "spa-opt: load = spa_opt.load_model; graph = couple + group; score+prune = l1 + "
        "prune; total = load + optimize (passes and cost counts) + save to a temp file; "
        "CLI = subprocess wall time, startup = `spa-opt --version`. Torch-Pruning: graph = "
        "the pruner's constructor (DependencyGraph), score+prune = step(); export = "
        "torch.onnx.export (dynamo) of the pruned module, once. params/MACs kept: "
        "spa-opt's cost model on the ONNX results, over the original export."
    )


if __name__ == "__main__":
    sys.exit(main())
