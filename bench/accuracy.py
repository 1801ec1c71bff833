"""Test accuracy after pruning without fine-tuning: magnitude criteria against obspa.

For each trained digits model in ``golden_models/digits`` (see its README), prune to
``--target-flops`` 0.75, 0.5 and 0.35 in the local and the global scope with:

- ``l1``, ``l2``, ``fpgm``: magnitude criteria, weights only sliced;
- ``obspa data``: obspa with its Hessians from the 128 unlabeled training images of
  ``calib.npz`` (``--calib``);
- ``obspa noise``: obspa with no inputs at all (its data-free default);
- ``obspa white``: the same with white instead of pink noise, for reference;
- ``obspa bn``: obspa from BatchNormalization statistics, on ``resnet_bn`` (the export that
  kept them; the others have none).

and print the test accuracy (``test.npz``, measured in onnxruntime) as one table per model,
with the issue's goals checked underneath:

- with calibration inputs: within 1 point of the unpruned model at 0.5, 3 points at 0.35;
- data-free: at 0.5, lose at most a third of what l1 loses; at 0.75, within 2 points.

Run: ``python bench/accuracy.py`` (``--models resnet,vit``, ``--flops 0.5``,
``--markdown`` for the tables as recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import format_table, machine

from spa_opt.api import optimize
from spa_opt.ir import load_model
from spa_opt.ort import session_from_model

DIGITS = Path(__file__).resolve().parent.parent / "golden_models" / "digits"
CALIB = DIGITS / "calib.npz"
METHODS = {
    "l1": ("couple,group,l1,prune", None),
    "l2": ("couple,group,l2,prune", None),
    "fpgm": ("couple,group,fpgm,prune", None),
    "obspa data": ("couple,group,obspa,prune", CALIB),
    "obspa noise": ("couple,group,obspa<hessian=noise>,prune", None),
    "obspa white": ("couple,group,obspa<hessian=noise;noise=white>,prune", None),
    "obspa bn": ("couple,group,obspa<hessian=bn>,prune", None),
}
DATA_FREE = ("obspa noise", "obspa bn")


def accuracy(model, test: dict[str, np.ndarray]) -> float:
    session = session_from_model(model)
    logits = session.run(None, {"image": test["image"]})[0]
    return float((logits.argmax(axis=1) == test["label"]).mean())


def measure(name: str, flops: list[float], scopes: list[str]) -> tuple[float, dict]:
    test = dict(np.load(DIGITS / "test.npz"))
    path = DIGITS / f"{name}.onnx"
    dense = accuracy(load_model(path), test)
    results: dict[tuple[str, str, float], float] = {}
    for method, (pipeline, calib) in METHODS.items():
        if method == "obspa bn" and name != "resnet_bn":
            continue
        for scope in scopes:
            for keep in flops:
                start = time.perf_counter()
                model, report = optimize(path, pipeline, target_flops=keep, scope=scope,
                                         calibration=calib)
                results[method, scope, keep] = accuracy(model, test)
                data = report.to_dict()
                kept = data["flops"]["after"] / data["flops"]["before"]
                print(f"  {name:12s} {method:12s} {scope:6s} {keep:.2f} -> flops {kept:.3f} "
                      f"acc {results[method, scope, keep]:.4f} "
                      f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    return dense, results


def table(name: str, dense: float, results: dict, flops: list[float], scopes: list[str]
          ) -> list[list[str]]:
    header = ["method"] + [f"{scope} {keep:g}" for scope in scopes for keep in flops]
    rows = [header, ["unpruned"] + [f"{100 * dense:.1f}"] * (len(header) - 1)]
    for method in METHODS:
        if (method, scopes[0], flops[0]) in results:
            rows.append([method] + [f"{100 * results[method, s, k]:.1f}"
                                    for s in scopes for k in flops])
    return rows


def goals(dense: float, results: dict, scopes: list[str]) -> list[str]:
    lines = []
    for scope in scopes:
        checks = []
        if ("obspa data", scope, 0.5) in results:
            checks.append(("data, 0.5: within 1 point", dense - results["obspa data", scope, 0.5]
                           <= 0.01))
        if ("obspa data", scope, 0.35) in results:
            checks.append(("data, 0.35: within 3 points",
                           dense - results["obspa data", scope, 0.35] <= 0.03))
        for method in DATA_FREE:
            if (method, scope, 0.5) in results and ("l1", scope, 0.5) in results:
                l1_loss = dense - results["l1", scope, 0.5]
                loss = dense - results[method, scope, 0.5]
                checks.append((f"{method}, 0.5: loses <= 1/3 of l1's {100 * l1_loss:.1f}",
                               loss <= l1_loss / 3))
            if (method, scope, 0.75) in results:
                checks.append((f"{method}, 0.75: within 2 points",
                               dense - results[method, scope, 0.75] <= 0.02))
        lines += [f"  {scope:6s} {'met ' if ok else 'MISSED'}  {text}" for text, ok in checks]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,resnet_bn,mobilenetv2,vit")
    parser.add_argument("--flops", default="0.75,0.5,0.35")
    parser.add_argument("--scopes", default="local,global")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    flops = [float(f) for f in args.flops.split(",")]
    scopes = args.scopes.split(",")
    print(f"# {machine()}")
    for name in args.models.split(","):
        dense, results = measure(name, flops, scopes)
        rows = table(name, dense, results, flops, scopes)
        print(f"\n## {name} (test accuracy %, no fine-tuning; columns: scope, FLOPs kept)")
        if args.markdown:
            print("| " + " | ".join(rows[0]) + " |")
            print("|" + "---|" * len(rows[0]))
            for row in rows[1:]:
                print("| " + " | ".join(row) + " |")
        else:
            print(format_table(rows, left={0}))
        print("goals:")
        print("\n".join(goals(dense, results, scopes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
