"""Accuracy at a latency target against the FLOPs target that gives the same latency.

For each trained digits model of ``golden_models/digits`` (obspa with the 128
calibration images of ``calib.npz``, no fine-tuning), the script prunes with
``target_latency=L, round_to="auto"`` and measures the pruned model's latency kept
``m`` (timed by spa-opt's latency model: onnxruntime CPU, ``--threads``, at
``--batch`` images per run, so convolution time, not per-node overhead, dominates the
32x32 models). Then it finds the FLOPs target that gives the same measured latency:
bisection over ``target_flops`` (``--steps`` prunes, each timed the same way) for the
one whose measured latency is closest to ``m``, with ``round_to`` auto and 1 (the
FLOPs targets a user would otherwise give). Printed: test accuracy and measured latency
kept for each, and the goal: the latency target's accuracy at least as good as the
FLOPs target's at the same measured latency.

Run: ``python bench/latency_accuracy.py`` (``--models resnet,mobilenetv2``,
``--target-latency 0.5``, ``--threads 2``, ``--batch 64``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile

import numpy as np
from accuracy import CALIB, DIGITS, accuracy
from common import format_table, machine

from spa_opt.api import optimize
from spa_opt.latency import LatencySpec

PIPELINE = "couple,group,obspa,prune"


def run(name: str, spec: LatencySpec, batch: int, **targets) -> tuple[float, float, float]:
    """Prune ``name``; return (test accuracy, measured latency kept, FLOPs kept).

    The latency kept is timed here for every row alike: the pruned model in alternation
    with the original (spa-opt's ``time_paired``), at ``batch`` images per run.
    """
    import onnx_ir as ir

    from spa_opt.latency import OrtTimer, model_feed, time_paired

    path = DIGITS / f"{name}.onnx"
    model, report = optimize(str(path), PIPELINE, calibration=str(CALIB), latency=spec,
                             input_dims={"batch": batch}, **targets)
    data = report.to_dict()
    original = ir.load(str(path))
    paired = time_paired(OrtTimer(spec), original, model,
                         model_feed(original, {"batch": batch}), rounds=3)
    test = dict(np.load(DIGITS / "test.npz"))
    return (accuracy(model, test), paired.ratio,
            data["flops"]["after"] / data["flops"]["before"])


def matching_flops(name: str, spec: LatencySpec, batch: int, latency: float, round_to,
                   steps: int) -> tuple[float, float, float, float]:
    """The FLOPs target whose measured latency is closest to ``latency``, by bisection."""
    low, high = 0.05, 1.0
    best = None
    for _ in range(steps):
        middle = (low + high) / 2
        acc, kept, flops = run(name, spec, batch, target_flops=middle, round_to=round_to)
        if best is None or abs(kept - latency) < abs(best[2] - latency):
            best = (middle, acc, kept, flops)
        if kept > latency:
            high = middle
        else:
            low = middle
    return best


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, prune every model both ways, print the table and the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,mobilenetv2,vit")
    parser.add_argument("--target-latency", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="bisection prunes per FLOPs row")
    args = parser.parse_args(argv)
    shown = ["python", "bench/latency_accuracy.py", *(argv if argv is not None else sys.argv[1:])]
    print(f"Reproduce (from the repo root): {shlex.join(shown)}")
    print(machine())
    rows = [("model", "target", "round_to", "test acc %", "latency kept", "FLOPs kept")]
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="spa-opt-latency-acc-") as folder:
        spec = LatencySpec(threads=args.threads, cache_dir=folder)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"  {name}: target_latency={args.target_latency}", file=sys.stderr,
                  flush=True)
            acc, kept, flops = run(name, spec, args.batch, target_latency=args.target_latency,
                                   round_to="auto")
            rows.append((name, f"latency {args.target_latency}", "auto", f"{acc * 100:.1f}",
                         f"{kept:.3f}", f"{flops:.3f}"))
            for round_to in ("auto", 1):
                print(f"  {name}: FLOPs target matching latency {kept:.3f}, round_to "
                      f"{round_to}", file=sys.stderr, flush=True)
                target, other, other_kept, other_flops = matching_flops(
                    name, spec, args.batch, kept, round_to, args.steps)
                rows.append((name, f"flops {target:.3f}", str(round_to), f"{other * 100:.1f}",
                             f"{other_kept:.3f}", f"{other_flops:.3f}"))
                verdicts.append(
                    f"{name}: latency target {acc * 100:.1f}% at latency {kept:.3f} vs FLOPs "
                    f"target {target:.3f} (round_to {round_to}) {other * 100:.1f}% at "
                    f"{other_kept:.3f}: {'MET' if acc >= other else 'NOT MET'}")
    print()
    print(format_table(rows, {0, 1, 2}))
    print()
    print(f"Pipeline {PIPELINE} with --calib golden_models/digits/calib.npz; latency timed by "
          f"spa-opt (onnxruntime CPU, {args.threads} threads, batch {args.batch}); FLOPs rows: "
          f"the bisection step ({args.steps} prunes) whose measured latency is closest.")
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
