"""Benchmark spa-opt's model IO (``spa_opt.ir.io``) against plain ``onnx.load`` / ``onnx.save``.

Why this exists: ``load_model`` promises to memory-map external data instead of
reading it and to validate every external path up front; ``save_model`` promises an
atomic write (temporary folder + rename) and picks external data automatically past
protobuf's 2 GB limit. Those promises are not free (onnx_ir conversion, path checks,
an extra rename), and a lazy load only moves the cost of reading weights elsewhere.
This script puts numbers on that, next to plain onnx, in the same run:

- a 1,000-node model (500 MatMul with 64x64 weights, alternating Relu / Add), and
- a model with > 2 GB of float32 weights in external data (a sparse file, so
  creating the input costs no disk writes).

Every operation runs in a fresh subprocess. The parent samples the child's
``/proc/<pid>/status`` (``VmRSS``, ``RssAnon``) every ~5 ms from outside, so a child
holding the GIL inside a C++ protobuf parse cannot starve the sampler; the child also
resets and reads its own ``VmHWM`` around the operation for an exact RSS peak.

Run from the repository root::

    python bench/io.py              # both models (writes ~4.5 GB of output, removed)
    python bench/io.py --skip-big   # 1,000-node model only
    python bench/io.py --tmp DIR    # work in a fresh folder inside DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the sparse > 2 GB model builder is shared
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine  # noqa: E402

SPA = "spa-opt"
ONNX = "onnx"
TOOLS = (SPA, ONNX)
OPERATIONS = ("load", "save")
MIB = 2**20
SMALL_REPEATS = 3
SAMPLE_SECONDS = 0.005
RESULT_MARK = "@@bench-io-result "

# Small model: 500 MatMul (64x64 weight) + 250 Relu + 250 Add = 1,000 nodes.
SMALL_PAIRS = 500
SMALL_DIM = 64
# Big model: tests/conftest.py's three MatMul weights (16384 x 12288 float32) in a
# sparse file, 2.25 GiB > 2 GiB.
BIG_WEIGHTS = 3
BIG_BYTES = 3 * 16384 * 12288 * 4


# --------------------------------------------------------------------------- models


def build_small(folder: Path) -> Path:
    """Write the 1,000-node chain model (weights inline) and return its path."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = []
    initializers = []
    current = "x"
    for i in range(SMALL_PAIRS):
        weight = f"w{i}"
        initializers.append(
            numpy_helper.from_array(
                rng.standard_normal((SMALL_DIM, SMALL_DIM), dtype=np.float32), weight
            )
        )
        nodes.append(helper.make_node("MatMul", [current, weight], [f"m{i}"], name=f"matmul{i}"))
        if i % 2 == 0:
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"a{i}"], name=f"relu{i}"))
        else:
            bias = f"b{i}"
            initializers.append(
                numpy_helper.from_array(rng.standard_normal(SMALL_DIM, dtype=np.float32), bias)
            )
            nodes.append(helper.make_node("Add", [f"m{i}", bias], [f"a{i}"], name=f"add{i}"))
        current = f"a{i}"
    graph = helper.make_graph(
        nodes,
        "chain1000",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SMALL_DIM])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, SMALL_DIM])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "small.onnx"
    onnx.save(model, path)
    return path


# --------------------------------------------------------------------------- worker


def _status(pid: int | str = "self") -> dict[str, int]:
    """Memory fields of /proc/<pid>/status, in bytes."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def worker(operation: str, tool: str, scale: str, model_path: str, out_path: str) -> None:
    """Run one operation in this (fresh) process; report to the parent on stdout."""
    import gc

    import onnx

    from spa_opt.ir.io import load_model, save_model

    big = scale == "big"
    prepared: Any = None
    if operation == "save":  # load first, outside the measurement
        prepared = load_model(model_path) if tool == SPA else onnx.load(model_path)
    gc.collect()

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("parent did not say go")
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False

    start = time.perf_counter()
    if operation == "load":
        result = load_model(model_path) if tool == SPA else onnx.load(model_path)
    elif tool == SPA:
        result = save_model(prepared, out_path)
    elif big:
        result = onnx.save_model(
            prepared,
            out_path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=Path(out_path).name + ".data",
        )
    else:
        result = onnx.save(prepared, out_path)
    seconds = time.perf_counter() - start

    report = {"seconds": seconds, "hwm_reset": hwm_reset, **_status()}
    print(RESULT_MARK + json.dumps(report), flush=True)
    del result


# --------------------------------------------------------------------------- parent


@dataclass
class Run:
    """One measured operation in one subprocess."""

    seconds: float
    rss_mib: float
    anon_mib: float


@dataclass
class Row:
    """Best-of-N figures for one (model, operation, tool)."""

    model: str
    operation: str
    tool: str
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    @property
    def seconds(self) -> float:
        """Fastest run."""
        return min(run.seconds for run in self.runs)

    @property
    def rss_mib(self) -> float:
        """Highest peak RSS increase over the runs."""
        return max(run.rss_mib for run in self.runs)

    @property
    def anon_mib(self) -> float:
        """Highest peak anonymous-memory increase over the runs."""
        return max(run.anon_mib for run in self.runs)


class Sampler(threading.Thread):
    """Poll another process's /proc status and keep the highest VmRSS and RssAnon."""

    def __init__(self, pid: int, baseline: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = baseline["VmRSS"]
        self.peak_anon = baseline["RssAnon"]
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        """Sample until told to stop or the process is gone."""
        while not self.stop.is_set():
            try:
                status = _status(self.pid)
            except (OSError, KeyError, ValueError):
                break  # the child exited
            if "VmRSS" in status:  # absent once the child is a zombie
                self.peak_rss = max(self.peak_rss, status["VmRSS"])
                self.peak_anon = max(self.peak_anon, status.get("RssAnon", 0))
                self.samples += 1
            self.stop.wait(SAMPLE_SECONDS)


def measure(operation: str, tool: str, scale: str, model: Path, out_dir: Path) -> Run:
    """Run one operation in a fresh subprocess and return its time and memory peaks."""
    out_dir.mkdir()
    out_path = out_dir / "out.onnx"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        operation,
        tool,
        scale,
        str(model),
        str(out_path),
    ]
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        assert child.stdin is not None and child.stdout is not None
        report: dict[str, Any] | None = None
        sampler: Sampler | None = None
        baseline: dict[str, int] = {}
        try:
            for line in child.stdout:
                if line.strip() == "ready":
                    baseline = _status(child.pid)
                    sampler = Sampler(child.pid, baseline)
                    sampler.start()
                    child.stdin.write("go\n")
                    child.stdin.flush()
                elif line.startswith(RESULT_MARK):
                    report = json.loads(line[len(RESULT_MARK) :])
                    break
        finally:
            if sampler is not None:
                sampler.stop.set()
                sampler.join()
            child.stdin.close()
            code = child.wait()
        errors.seek(0)
        stderr = errors.read().strip()
    if report is None or sampler is None or code != 0:
        tail = "\n".join(stderr.splitlines()[-15:])
        raise RuntimeError(f"{tool} {operation} failed (exit {code}):\n{tail}")
    if stderr:
        print(f"  [{tool} {operation} stderr] {stderr.splitlines()[-1]}", file=sys.stderr)
    verify(operation, scale, out_path)
    peak_rss = max(sampler.peak_rss, report["VmHWM"] if report["hwm_reset"] else 0)
    return Run(
        seconds=report["seconds"],
        rss_mib=(peak_rss - baseline["VmRSS"]) / MIB,
        anon_mib=(sampler.peak_anon - baseline["RssAnon"]) / MIB,
    )


def verify(operation: str, scale: str, out_path: Path) -> None:
    """Check that a save really wrote a usable model (outside the measurement)."""
    if operation != "save":
        return
    import onnx

    proto = onnx.load(out_path, load_external_data=False)
    if scale == "small":
        expected_nodes, expected_inits = 2 * SMALL_PAIRS, SMALL_PAIRS + SMALL_PAIRS // 2
    else:
        expected_nodes, expected_inits = BIG_WEIGHTS, BIG_WEIGHTS
        data = out_path.with_name(out_path.name + ".data")
        needed = BIG_BYTES
        if not data.is_file() or data.stat().st_size < needed:
            raise RuntimeError(f"save wrote no complete external data file '{data}'")
        if any(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            raise RuntimeError("save left weights inline in the > 2 GB model")
    if len(proto.graph.node) != expected_nodes or len(proto.graph.initializer) != expected_inits:
        raise RuntimeError(
            f"saved model has {len(proto.graph.node)} nodes / "
            f"{len(proto.graph.initializer)} initializers"
        )


def bench(scale: str, model: Path, work: Path, repeats: int) -> list[Row]:
    """Measure load and save with both tools, interleaving tools across repeats."""
    rows = {
        (operation, tool): Row(scale, operation, tool) for operation in OPERATIONS for tool in TOOLS
    }
    for operation in OPERATIONS:
        for repeat in range(repeats):
            for tool in TOOLS:
                row = rows[operation, tool]
                if row.error:
                    continue
                out_dir = work / f"{scale}-{operation}-{tool}-{repeat}"
                os.sync()  # no writeback from the previous run during this one
                try:
                    row.runs.append(measure(operation, tool, scale, model, out_dir))
                except RuntimeError as error:
                    row.error = str(error)
                    print(error, file=sys.stderr)
                finally:
                    shutil.rmtree(out_dir, ignore_errors=True)
                status = "failed" if row.error else f"{row.runs[-1].seconds:.4f} s"
                print(f"  {scale} {operation} {tool} run {repeat + 1}: {status}", file=sys.stderr)
    return list(rows.values())


def _ratio(numerator: float, denominator: float, floor: float) -> str:
    if denominator < floor:
        return "n/a"
    ratio = numerator / denominator
    return "<0.01x" if 0 < ratio < 0.005 else f"{ratio:.2f}x"


def table(rows: list[Row], labels: dict[str, str]) -> str:
    """Format the results with one ratio row (spa-opt / onnx) per model and operation."""
    header = ("model", "operation", "tool", "seconds", "peak RSS MiB", "peak anon MiB")
    lines: list[tuple[str, ...]] = [header]
    by_key = {(row.model, row.operation, row.tool): row for row in rows}
    for model, operation in dict.fromkeys((row.model, row.operation) for row in rows):
        pair = [by_key[model, operation, tool] for tool in TOOLS]
        for row in pair:
            if row.error or not row.runs:
                lines.append((labels[model], operation, row.tool, "FAILED", "-", "-"))
            else:
                lines.append(
                    (
                        labels[model],
                        operation,
                        row.tool,
                        f"{row.seconds:.4f}",
                        f"{row.rss_mib:.1f}",
                        f"{row.anon_mib:.1f}",
                    )
                )
        spa, plain = pair
        if spa.runs and plain.runs and not (spa.error or plain.error):
            lines.append(
                (
                    labels[model],
                    operation,
                    "ratio spa/onnx",
                    _ratio(spa.seconds, plain.seconds, 1e-6),
                    _ratio(spa.rss_mib, plain.rss_mib, 1.0),
                    _ratio(spa.anon_mib, plain.anon_mib, 1.0),
                )
            )
    return format_table(lines, {0, 1, 2})


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the models, run every measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-big", action="store_true", help="skip the > 2 GB model")
    parser.add_argument(
        "--tmp",
        metavar="DIR",
        help="work in a fresh folder inside DIR (removed afterwards); default: under /tmp",
    )
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0

    shown = ["python", "bench/io.py", *(argv if argv is not None else sys.argv[1:])]
    print(f"Reproduce (from the repo root): {shlex.join(shown)}")
    print(machine())
    parent = Path(args.tmp) if args.tmp else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spa-bench-io-", dir=parent) as tmp:
        work = Path(tmp)
        print(f"Working in {work}", file=sys.stderr)
        inputs = work / "inputs"
        inputs.mkdir()
        small = build_small(inputs)
        labels = {"small": "1k-node", "big": "2.25GB"}
        rows = bench("small", small, work, SMALL_REPEATS)
        notes = [
            f"1k-node: {2 * SMALL_PAIRS} nodes, {SMALL_PAIRS + SMALL_PAIRS // 2} initializers, "
            f"{small.stat().st_size / MIB:.1f} MiB .onnx, weights inline; "
            f"best of {SMALL_REPEATS} fresh processes (time: min, memory: max).",
        ]
        if not args.skip_big:
            from conftest import write_sparse_big_model

            big, data_bytes = write_sparse_big_model(inputs)
            rows += bench("big", big, work, 1)
            notes.append(
                f"2.25GB: {BIG_WEIGHTS} MatMul, {BIG_WEIGHTS} float32 16384x12288 "
                f"weights = {data_bytes / 2**30:.2f} GiB ({data_bytes / 1e9:.2f} GB) of external "
                "data (sparse input file); 1 run. onnx: load(load_external_data=True), "
                "save_model(save_as_external_data=True, all_tensors_to_one_file=True)."
            )
    print()
    print(table(rows, labels))
    print()
    for note in notes:
        print(note)
    print(
        "Peaks are increases over the child's own baseline (after imports and, for save, "
        "after loading the model to save). peak RSS: VmHWM reset before the operation; "
        "peak anon: RssAnon sampled every 5 ms from the parent. Memory-mapped file pages "
        "count in RSS but not in RssAnon, so RSS - anon is mostly mapped weight data."
    )
    return 0 if all(not row.error for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
