r"""obspa with ``--executor ray`` (a local Ray cluster) beside ``--executor threads``.

In one run the script builds a Llama-architecture decoder (``bench/decoder_model.py``;
by default 2 layers of the TinyLlama-1.1B width: hidden 2048, 32/4 heads, intermediate
5632, vocab 32000) under ``<tmp>/spa-opt-bench-decoder``, then runs
``spa-opt -p couple,group,obspa<OPTIONS>,prune --target-params 0.8 --calib calib.npz``
twice in subprocesses, with ``--executor threads`` and ``--executor ray`` (a local
cluster of this machine's cores, started by the run), and prints:

- both runs' seconds and their ratio (ray / threads);
- what travelled through Ray's object store: tasks, MB sent and received, the largest
  task, and the bytes per consumer layer;
- the largest difference between the two pruned models' weights (goal: <= 1e-6);
- the per-layer order and reconstruction seconds of the threads run's report by layer
  width, the inputs of the 70B estimate in ``docs/distributed.md``.

Peak memory is not compared: Ray's workers are other processes.

Run from the repository root (the ``distributed`` extra installed)::

    python bench/distributed.py
    python bench/distributed.py --layers 4 --windows 64 --obspa propagate=pruned
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, revision  # noqa: E402
from bench.decoder import CACHE, add_shape_arguments, shape_of  # noqa: E402
from bench.decoder_model import write  # noqa: E402


def run(model: Path, calib: Path, options: str, executor: str) -> dict:
    """One pruning run in a subprocess: seconds, report, output path."""
    out = CACHE / f"pruned-{executor}.onnx"
    report = CACHE / f"report-{executor}.json"
    command = [sys.executable, "-m", "spa_opt.cli", "-p",
               f"couple,group,obspa<{options}>,prune", "--target-params", "0.8",
               "--calib", str(calib), "--report", str(report), "--external-data", "--stats",
               "--executor", executor, str(model), str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{executor} run failed with exit code {done.returncode}")
    return {"seconds": seconds, "report": json.loads(report.read_text()), "out": out}


def weights(path: Path) -> dict[str, np.ndarray]:
    """Every initializer of a saved model."""
    import onnx_ir as ir

    model = ir.load(path)
    return {v.name: v.const_value.numpy() for v in model.graph.initializers.values()
            if v.const_value is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser, layers=2, windows=32)
    args = parser.parse_args()
    print(machine())
    print(revision(ROOT, "spa_opt", "bench"))
    shape, model = shape_of(args)
    if not model.exists():
        write(shape, model)
    calib = model.parent / f"calib{args.windows}.npz"
    if not calib.exists():
        ids = np.random.default_rng(1).integers(0, shape.vocab, (args.windows, shape.seq))
        np.savez(calib, input_ids=ids)
    print(f"model: {shape.params() / 1e9:.3f} B parameters; {args.windows} windows of "
          f"{shape.seq} tokens; obspa<{args.obspa}>", flush=True)
    threads = run(model, calib, args.obspa, "threads")
    print(f"threads: {threads['seconds']:.1f} s", flush=True)
    on_ray = run(model, calib, args.obspa, "ray")
    print(f"ray (local cluster): {on_ray['seconds']:.1f} s, "
          f"{on_ray['seconds'] / threads['seconds']:.2f}x threads", flush=True)
    traffic = on_ray["report"]["obspa"]["executor"]
    layers = on_ray["report"]["obspa"]["layers"]
    print(f"object store: {traffic['tasks']} tasks, {traffic['sent_mb']:.1f} MB sent, "
          f"{traffic['received_mb']:.1f} MB received, largest task "
          f"{traffic['largest_task_mb']:.1f} MB; {traffic['sent_mb'] / max(len(layers), 1):.1f}"
          f" MB sent per consumer layer ({len(layers)} layers)")
    a, b = weights(threads["out"]), weights(on_ray["out"])
    assert a.keys() == b.keys(), "the two runs pruned different initializers"
    worst = max((float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a
                 if a[k].size and a[k].shape == b[k].shape), default=0.0)
    shapes_equal = all(a[k].shape == b[k].shape for k in a)
    print(f"same widths: {shapes_equal}; largest weight difference {worst:.2e} "
          f"({'met' if shapes_equal and worst <= 1e-6 else 'NOT MET'}: <= 1e-6)")
    by_width: dict[int, list[float]] = {}
    for row in threads["report"]["obspa"]["layers"]:
        if row["removed"]:
            by_width.setdefault(row["columns"], []).append(row["seconds"])
    for width, seconds in sorted(by_width.items()):
        print(f"  reconstruct, {width} columns: {np.mean(seconds):.2f} s per layer "
              f"({len(seconds)} layers)")
    stats = {p["name"]: p for p in threads["report"].get("passes", [])}.get(
        "obspa", {}).get("stats", {})
    for key in ("hessian-seconds", "order-seconds", "reconstruct-seconds"):
        if key in stats:
            print(f"  threads {key}: {stats[key]:.1f}")


if __name__ == "__main__":
    main()
