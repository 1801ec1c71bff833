"""The onnxruntime pre-optimization step on a model over 2 GB, beside plain onnxruntime.

``spa_opt.session_from_model`` builds a session from an in-memory model without
writing its weights anywhere: memory-mapped initializers go to onnxruntime as
arrays. The reference is onnxruntime opening the same model from its path. Each
side runs in a fresh process that reports its own wall time and peak memory
(VmHWM, which includes mapped file pages, and RssAnon at the end).

    python bench/ort_step.py [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

_CHILD = r"""
import json, sys, time
import numpy as np
start = time.perf_counter()
if sys.argv[1] == "spa-opt":
    import spa_opt
    model, _ = spa_opt.optimize(sys.argv[2], "dce")
    session = spa_opt.session_from_model(model)
else:
    import onnxruntime as ort
    session = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
seconds = time.perf_counter() - start
session.run(None, {"x": np.ones((1, 16384), np.float32)})
status = {l.split(":")[0]: int(l.split()[1]) // 1024 for l in open("/proc/self/status")
          if l.startswith(("VmHWM", "RssAnon", "RssFile"))}
print(json.dumps({"seconds": seconds, **status}))
"""


def _measure(tool: str, model: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _CHILD, tool, str(model)],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tmp", help="folder for the sparse 2.4 GB model")
    args = parser.parse_args()
    from conftest import write_sparse_big_model

    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        model, size = write_sparse_big_model(Path(folder))
        print(f"command: python bench/ort_step.py   (model: {size / 2**30:.2f} GiB of weights)")
        rows = {tool: _measure(tool, model) for tool in ("onnxruntime", "spa-opt")}
    print(f"{'tool':<12} {'session s':>10} {'peak MiB':>9} {'anon MiB':>9} {'file MiB':>9}")
    for tool, row in rows.items():
        print(f"{tool:<12} {row['seconds']:10.2f} {row['VmHWM']:9d} {row['RssAnon']:9d} "
              f"{row['RssFile']:9d}")
    ref, ours = rows["onnxruntime"], rows["spa-opt"]
    print(f"{'ratio':<12} {ours['seconds'] / ref['seconds']:9.2f}x "
          f"{ours['VmHWM'] / ref['VmHWM']:8.2f}x {ours['RssAnon'] / max(ref['RssAnon'], 1):8.2f}x")


if __name__ == "__main__":
    main()
