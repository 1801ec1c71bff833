"""obspa's ``propagate=original`` against ``propagate=pruned`` on the trained digits models.

For each digits model (``golden_models/digits``), each Hessian source (``data``: the 128
unlabeled training images of ``calib.npz``; ``noise``: the data-free pink noise) and
each FLOPs target, the script runs ``couple,group,obspa<propagate=P;hessian=H>,prune``
through ``spa_opt.api.optimize`` with both ``P`` in the same run and prints the test
accuracy of the result on the 360 test images (onnxruntime), the dense accuracy beside
it, and the seconds of each run. Local scope, seed 0, default obspa options otherwise.

Run from the repository root::

    python bench/propagate.py                          # resnet, mobilenetv2, vit; 0.5, 0.35
    python bench/propagate.py --models vit --targets 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import format_table, machine, revision  # noqa: E402
from spa_opt.api import optimize  # noqa: E402

DIGITS = ROOT / "golden_models" / "digits"


def accuracy(model: ir.Model | Path, test: dict[str, np.ndarray]) -> float:
    """Test accuracy of ``model`` in onnxruntime."""
    source = str(model) if isinstance(model, Path) else ir.to_proto(model).SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": test["image"]})[0]
    return float((logits.argmax(1) == test["label"]).mean())


def main() -> None:
    """Print the table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet,mobilenetv2,vit")
    parser.add_argument("--targets", default="0.5,0.35")
    parser.add_argument("--sources", default="data,noise")
    args = parser.parse_args()
    test = dict(np.load(DIGITS / "test.npz"))
    rows = [["model", "dense", "source", "target", "original %", "pruned %", "original s",
             "pruned s"]]
    for name in args.models.split(","):
        dense = accuracy(DIGITS / f"{name}.onnx", test)
        for source in args.sources.split(","):
            for target in (float(t) for t in args.targets.split(",")):
                found = []
                for propagate in ("original", "pruned"):
                    started = time.perf_counter()
                    model, _ = optimize(
                        DIGITS / f"{name}.onnx",
                        f"couple,group,obspa<propagate={propagate};hessian={source}>,prune",
                        target_flops=target,
                        calibration=DIGITS / "calib.npz" if source == "data" else None)
                    found.append((accuracy(model, test), time.perf_counter() - started))
                rows.append([name, f"{dense * 100:.1f}", source, f"{target:g}",
                             f"{found[0][0] * 100:.1f}", f"{found[1][0] * 100:.1f}",
                             f"{found[0][1]:.1f}", f"{found[1][1]:.1f}"])
                print(format_table(rows, {0, 2}).splitlines()[-1], flush=True)
    print()
    print(format_table(rows, {0, 2}))
    print(machine())
    print(revision(ROOT, "spa_opt"))


if __name__ == "__main__":
    main()
