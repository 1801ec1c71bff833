"""Data-free obspa from synthesized inputs against obspa with real inputs and with noise.

For each trained digits model in ``golden_models/digits`` (see its README), prune with
``couple,group,obspa,prune`` (local scope, default obspa options) to ``--flops`` 0.5 and
0.35 of the FLOPs, with the layer Hessians from:

- ``data``: the 128 unlabeled training images of ``calib.npz`` (``--calib``);
- ``synth``: 128 inputs from the ``synthesize`` pass with its defaults, as obspa's
  data-free default makes them (``auto``: BatchNorm matching on ``resnet_bn``, the export
  that kept its BatchNorm nodes; class-conditional inversion on the BN-folded others);
- ``synth+range``: the same, told the range of the normalised inputs,
  ``synthesize<low=(0 - 0.305383) / 0.323652;high=(1 - 0.305383) / 0.323652>`` (pixels in
  [0, 1] normalised by the training mean and std);
- ``noise``: pink noise, ``obspa<hessian=noise>`` (the data-free default without torch).

and print the test accuracy (``test.npz``, in onnxruntime, no fine-tuning), the mean over
``--seeds`` (``--seed`` of the run: it draws the synthesized and noise inputs, and the
output positions obspa samples per layer), with the seconds ``synthesize`` took (torch
on ``--threads`` threads).
Synthesized inputs are made once per model, seed and setting, and reused for every FLOPs
target (the pass is deterministic for a seed). The goal checked underneath: data-free
(``synth``) within 2 points of ``data`` at every target.

Run from the repository root: ``python bench/synthesize.py`` (``--models resnet,vit``,
``--seeds 0``, ``--markdown`` for the tables as recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine, revision  # noqa: E402

from spa_opt.api import optimize  # noqa: E402
from spa_opt.ort import session_from_model  # noqa: E402
from spa_opt.passes._infra.context import PipelineContext  # noqa: E402

DIGITS = ROOT / "golden_models" / "digits"
CALIB = DIGITS / "calib.npz"
MEAN, STD = 0.305383, 0.323652
RANGE = f"low={(0 - MEAN) / STD!r};high={(1 - MEAN) / STD!r}"
SYNTH = {"synth": "synthesize", "synth+range": f"synthesize<{RANGE}>"}
METHODS = ("data", "synth", "synth+range", "noise")
GOAL_POINTS = 2.0


def accuracy(model, test: dict[str, np.ndarray]) -> float:
    """Top-1 test accuracy in percent."""
    session = session_from_model(model)
    logits = session.run(None, {"image": test["image"]})[0]
    return 100.0 * float((logits.argmax(axis=1) == test["label"]).mean())


def prune(name: str, keep: float, seed: int, method: str, calibration=None):
    """The pruned model and its context for one method (``calibration`` reuses inputs)."""
    path = DIGITS / f"{name}.onnx"
    if method == "data":
        model, _ = optimize(path, "couple,group,obspa,prune", target_flops=keep, seed=seed,
                            calibration=CALIB)
    elif method == "noise":
        model, _ = optimize(path, "couple,group,obspa<hessian=noise>,prune", target_flops=keep,
                            seed=seed)
    elif calibration is not None:
        model, _ = optimize(path, "couple,group,obspa,prune", target_flops=keep, seed=seed,
                            calibration=calibration)
    else:
        model, _ = optimize(path, f"{SYNTH[method]},couple,group,obspa,prune",
                            target_flops=keep, seed=seed)
    return model, PipelineContext.of(model)


def measure(name: str, flops: list[float], seeds: list[int], threads: int
            ) -> tuple[dict[tuple[str, float], list[float]], dict[str, list[float]]]:
    """Accuracies per (method, keep) over seeds, and synthesize seconds per setting."""
    import torch

    torch.set_num_threads(threads)
    test = dict(np.load(DIGITS / "test.npz"))
    results: dict[tuple[str, float], list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in seeds:
        for method in METHODS:
            calibration = None
            for keep in flops:
                start = time.perf_counter()
                model, context = prune(name, keep, seed, method, calibration)
                if method in SYNTH and calibration is None:
                    calibration = context.calibration
                    seconds.setdefault(method, []).append(
                        context.report["synthesize"]["seconds"])
                results.setdefault((method, keep), []).append(accuracy(model, test))
                print(f"  {name:12s} seed {seed} {method:12s} {keep:.2f} -> "
                      f"{results[method, keep][-1]:.1f} ({time.perf_counter() - start:.1f} s)",
                      file=sys.stderr, flush=True)
    return results, seconds


def rows(name: str, results: dict, seconds: dict, flops: list[float]) -> list[list[str]]:
    """One line per method: mean accuracy per target, synthesize seconds."""
    out = []
    for method in METHODS:
        cells = [f"{np.mean(results[method, keep]):.1f}" for keep in flops]
        spent = f"{np.mean(seconds[method]):.0f}" if method in seconds else ""
        out.append([name, method, *cells, spent])
    return out


def goals(name: str, results: dict, flops: list[float]) -> list[str]:
    """Whether ``synth`` is within GOAL_POINTS of ``data`` at every target."""
    lines = []
    for keep in flops:
        gap = np.mean(results["data", keep]) - np.mean(results["synth", keep])
        met = gap <= GOAL_POINTS
        lines.append(f"  {name:12s} {'met   ' if met else 'MISSED'} synth within "
                     f"{GOAL_POINTS:g} points of data at {keep:g} (gap {gap:+.1f})")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,resnet_bn,mobilenetv2,vit")
    parser.add_argument("--flops", default="0.5,0.35")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    flops = [float(f) for f in args.flops.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    header = ["model", "method", *[f"{keep:g} FLOPs" for keep in flops], "synthesize s"]
    table, checks = [header], []
    for name in args.models.split(","):
        results, seconds = measure(name, flops, seeds, args.threads)
        table += rows(name, results, seconds, flops)
        checks += goals(name, results, flops)
    print(f"# {machine()}; torch threads {args.threads}; seeds {args.seeds}; "
          f"{revision(ROOT, 'spa_opt', 'bench')}")
    print("test accuracy % (mean over seeds), local scope, no fine-tuning")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in table[1:]:
            print("| " + " | ".join(row) + " |")
    else:
        print(format_table(table, left={0, 1}))
    print("goals:")
    print("\n".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
