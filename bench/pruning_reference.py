"""The whole prune run, spa-opt against Torch-Pruning, for ``bench/analysis.py``.

spa-opt side, on the exported ONNX file, ``couple,group,l1,prune`` at ``ratio=0.5``:

- API: ``spa_opt.load_model`` + ``spa_opt.optimize`` + ``spa_opt.save_model`` to a
  temporary file (what the CLI does), each timed, best of N;
- CLI: a subprocess ``spa-opt -p couple,group,l1,prune --ratio 0.5 IN OUT``, best of N,
  beside ``spa-opt --version`` (interpreter start and imports, paid by every call).

Torch-Pruning side, on the same architecture in PyTorch (a fresh seeded model per run,
built outside the timing): ``tp.pruner.BasePruner`` (``MetaPruner`` in older releases) with
``MagnitudeImportance(p=1)`` (L1), ``pruning_ratio=0.5``, ``global_pruning=False``, the
classifier ignored; timed: the constructor (it builds the ``DependencyGraph`` by tracing
one forward) and ``step()``. ViT attention gets ``num_heads`` hints and prunes whole heads
(``prune_num_heads=True``, ``head_pruning_ratio=0.5``, ``prune_head_dims=False``), the
units spa-opt removes for a fused qkv. The pruned module is then exported (dynamo, timed
apart) so spa-opt's cost model counts both results, compared layer by layer.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from spa_opt.ir.ops import WEIGHTED

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table

PIPELINE = "couple,group,l1,prune"
RATIO = 0.5


@dataclass
class Run:
    """Best-of-N seconds per stage and the counts of one tool's result on one model."""

    model: str
    tool: str
    seconds: dict[str, list[float]] = field(default_factory=dict)
    params: tuple[int, int] = (0, 0)
    macs: tuple[int, int] = (0, 0)
    shapes: list[tuple[str, str, list[int]]] = field(default_factory=list)
    arrays: list[Any] = field(default_factory=list)
    passes: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def best(self, stage: str) -> float | None:
        """Fastest run of one stage, or None when it was not measured."""
        values = self.seconds.get(stage)
        return min(values) if values else None

    def add(self, stage: str, seconds: float) -> None:
        """Record one measurement."""
        self.seconds.setdefault(stage, []).append(seconds)


def weights(model: ir.Model) -> list[ir.Value]:
    """The constant weight of every Conv/Gemm/MatMul, in graph order."""
    found = []
    for node in model.graph.all_nodes():
        weight = node.inputs[1] if node.op_type in WEIGHTED and len(node.inputs) > 1 else None
        if weight is not None and weight.const_value is not None:
            found.append(weight)
    return found


def record_weights(model: ir.Model, run: Run) -> None:
    """Keep (op, name, shape) and the array of every weighted layer of a result."""
    found = weights(model)
    run.shapes = [(w.consumers()[0].op_type, w.name or "", list(w.const_value.shape))
                  for w in found if w.const_value is not None]
    run.arrays = [w.const_value.numpy().copy() for w in found if w.const_value is not None]


def spa_cli() -> list[str]:
    """The ``spa-opt`` console script of this interpreter (no pyenv shim in the timing)."""
    beside = Path(sys.executable).parent / "spa-opt"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("spa-opt")
    return [found] if found else [sys.executable, "-m", "spa_opt.cli"]


def spa_run(name: str, path: Path, repeats: int) -> tuple[Run, Run]:
    """Time the API (load, optimize, save) and the CLI; return (api run, cli run)."""
    import spa_opt
    import spa_opt.api  # the package imports lazily: now, not in the first timed load

    api, cli = Run(name, "spa-opt API"), Run(name, "spa-opt CLI")
    command = [*spa_cli(), "-p", PIPELINE, "--ratio", str(RATIO)]
    with tempfile.TemporaryDirectory(prefix="spa-opt-prune-") as tmp:
        out = Path(tmp) / "pruned.onnx"
        for _ in range(repeats):
            gc.collect()
            start = time.perf_counter()
            model = spa_opt.load_model(path)
            loaded = time.perf_counter()
            model, report = spa_opt.optimize(model, PIPELINE, ratio=RATIO)
            optimized = time.perf_counter()
            spa_opt.save_model(model, out)
            saved = time.perf_counter()
            for stage, seconds in (("load", loaded - start), ("optimize", optimized - loaded),
                                   ("save", saved - optimized), ("total", saved - start)):
                api.add(stage, seconds)
            data = report.to_dict()
            for record in data["passes"]:
                api.add(f"pass {record['name']}", record["seconds"])
            api.params = (data["params"]["before"], data["params"]["after"])
            api.macs = (data["macs"]["before"], data["macs"]["after"])
            record_weights(model, api)
            del model, report
        api.passes = {k[5:]: min(v) for k, v in api.seconds.items() if k.startswith("pass ")}
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([*spa_cli(), "--version"], check=True, capture_output=True)
            cli.add("startup", time.perf_counter() - start)
            start = time.perf_counter()
            done = subprocess.run([*command, str(path), str(out)], capture_output=True,
                                  text=True)
            cli.add("total", time.perf_counter() - start)
            if done.returncode:
                cli.error = f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
                break
    return api, cli


def torch_pruning_missing() -> str:
    """Why the Torch-Pruning side cannot run here, or "" when it can."""
    for module, hint in (("torch", "pip install torch==2.13.0"),
                         ("torch_pruning", "pip install torch-pruning")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({hint})"
    return ""


def torch_pruning_version() -> str:
    """The installed Torch-Pruning distribution's version, or "not installed"."""
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _prune_once(build: Callable[[], Any], shape: tuple[int, ...], run: Run) -> tuple[Any, Any]:
    """Build a fresh seeded model, then time Torch-Pruning's graph and step on it."""
    import torch
    import torch_pruning as tp
    from torch_models import seeded_model

    model = seeded_model(build)  # the weights of the exported file spa-opt prunes
    x = torch.randn(shape)
    classifier = [m for m in model.modules()
                  if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    heads = {m.qkv: m.heads for m in model.modules() if hasattr(m, "qkv")}
    options: dict[str, Any] = {}
    if heads:
        options = {"num_heads": heads, "prune_num_heads": True, "prune_head_dims": False,
                   "head_pruning_ratio": RATIO}
    pruner_class = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner
    gc.collect()
    start = time.perf_counter()
    pruner = pruner_class(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO,
        ignored_layers=classifier, global_pruning=False, **options,
    )
    built = time.perf_counter()
    pruner.step()
    stepped = time.perf_counter()
    for stage, seconds in (("graph", built - start), ("step", stepped - built),
                           ("total", stepped - start)):
        run.add(stage, seconds)
    for module in model.modules():  # as Torch-Pruning's ViT example: heads follow the qkv
        if hasattr(module, "qkv"):
            module.heads = pruner.num_heads[module.qkv]
    return model, x


def torch_pruning_run(name: str, build: Callable[[], Any], shape: tuple[int, ...],
                      repeats: int) -> Run:
    """Prune with Torch-Pruning ``repeats`` times, export the last result, count it."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from spa_opt import count_cost, load_model

    run = Run(name, "Torch-Pruning")
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        for _ in range(repeats):
            model, x = _prune_once(build, shape, run)
        with torch.no_grad():
            expected = model(x).numpy()
        with tempfile.TemporaryDirectory(prefix="tp-export-") as tmp:
            path = Path(tmp) / "tp.onnx"
            start = time.perf_counter()
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=20,
                              external_data=False, verbose=False,
                              input_names=["input"], output_names=["output"])
            run.add("export", time.perf_counter() - start)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {"input": x.numpy()})[0]
            if float(np.max(np.abs(got - expected))) > 1e-3:
                run.error = "the exported pruned model disagrees with PyTorch"
            exported = load_model(path)
            cost = count_cost(exported)
            record_weights(exported, run)
        run.params, run.macs = (0, cost.params), (0, cost.macs)  # before: from spa-opt
    except Exception as error:  # a failing reference is reported, not fatal
        run.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
    return run


def shape_differences(spa: Run, reference: Run, limit: int = 3) -> str:
    """Layers (in graph order) whose pruned weights differ between the two tools."""
    import numpy as np

    if len(spa.shapes) != len(reference.shapes):
        return (f"{len(spa.shapes)} weighted layers in spa-opt's result, "
                f"{len(reference.shapes)} in Torch-Pruning's")
    pairs = list(zip(spa.shapes, reference.shapes, strict=True))
    differ = [(a, b) for a, b in pairs if a[2] != b[2]]
    same = sum(a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-5)
               for a, b in zip(spa.arrays, reference.arrays, strict=True))
    kept = f"{same} of {len(pairs)} keep the very same weights (same channels kept)"
    if not differ:
        return f"all {len(pairs)} weighted layers have the same shapes; {kept}"
    examples = "; ".join(f"{a[1]} ({a[0]}): spa-opt {a[2]} vs Torch-Pruning {b[2]}"
                         for a, b in differ[:limit])
    return f"{len(differ)} of {len(pairs)} weighted layers differ in shape, e.g. {examples}; {kept}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def whole_run(cases: list[tuple[str, Path, Callable[[], Any], tuple[int, ...]]],
              repeats: int) -> str:
    """Run both sides on every (name, ONNX path, torch constructor, input shape) case.

    Returns:
        The table, then one line per model comparing the layers each tool pruned.
    """
    missing = torch_pruning_missing()
    header = ("model", "tool", "load s", "graph s", "score+prune s", "save s", "total s",
              "export s", "CLI s (startup)", "params kept", "MACs kept", "spa/TP")
    lines: list[tuple[str, ...]] = [header]
    notes = []
    for name, path, build, shape in cases:
        print(f"  whole prune run: {name} ({repeats} runs)", file=sys.stderr, flush=True)
        api, cli = spa_run(name, path, repeats)
        total = api.best("total") or 0.0
        params0, macs0 = api.params[0], api.macs[0]
        cli_cell = f"{_s(cli.best('total'))} ({_s(cli.best('startup'))})"
        if cli.error:
            cli_cell = "failed"
            notes.append(f"{name}: spa-opt CLI {cli.error}")
        graph = sum(v for k, v in api.passes.items() if k in ("couple", "group"))
        lines.append((
            name, "spa-opt", _s(api.best("load")), _s(graph),
            _s(sum(api.passes.values()) - graph), _s(api.best("save")), _s(total), "-",
            cli_cell, f"{api.params[1] / params0:.3f}", f"{api.macs[1] / macs0:.3f}", "",
        ))
        passes = ", ".join(f"{k} {v:.3f}" for k, v in api.passes.items())
        notes.append(f"{name}: spa-opt passes (best of {repeats}, s): {passes}; "
                     f"optimize() {_s(api.best('optimize'))} s in all (passes + cost counts)")
        if missing:
            notes.append(f"{name}: Torch-Pruning skipped: {missing}")
            continue
        tp_run = torch_pruning_run(name, build, shape, repeats)
        if tp_run.best("total") is None:
            notes.append(f"{name}: Torch-Pruning failed: {tp_run.error}")
            continue
        tp_total = tp_run.best("total") or 0.0
        export = tp_run.best("export")
        counted = export is not None and not tp_run.error
        lines.append((
            name, "Torch-Pruning", "-", _s(tp_run.best("graph")), _s(tp_run.best("step")),
            "-", _s(tp_total), _s(export), "-",
            f"{tp_run.params[1] / params0:.3f}" if counted else "-",
            f"{tp_run.macs[1] / macs0:.3f}" if counted else "-",
            f"{total / tp_total:.2f}x" if tp_total else "n/a",
        ))
        if export is not None:
            lines.append((name, "spa-opt / (TP + export)", *[""] * 9,
                          f"{total / (tp_total + export):.2f}x"))
        notes.append(f"{name}: first (cold) run: spa-opt {api.seconds['total'][0]:.3f} s, "
                     f"Torch-Pruning {tp_run.seconds['total'][0]:.3f} s")
        if tp_run.error:
            notes.append(f"{name}: Torch-Pruning: {tp_run.error}")
        if counted:
            notes.append(f"{name}: {shape_differences(api, tp_run)}")
    return "\n".join([format_table(lines, {0, 1}), "", *notes])
