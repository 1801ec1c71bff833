"""Do two revisions of spa-opt give the same results? Pruned models and reports, side by side.

A refactor must not move what spa-opt computes. This runs the same CLI pipelines on the
golden models with the working tree and with another revision (checked out in a
temporary git worktree, put first on ``PYTHONPATH``), then compares, for every run:
the exit code, every initializer of the output model (exactly), the node operator
sequence, and the report's ``groups``, ``prune``, ``dead`` and ``obspa`` per-layer
errors. It prints one row per run and the number of differences::

    python bench/same_results.py --base 4c96ca9
    python bench/same_results.py --base 4c96ca9 --models 'digits/*' --pipelines obspa
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "golden_models"
CALIB = GOLDEN / "digits" / "calib.npz"

PIPELINES: dict[str, list[str]] = {
    "l1": ["-p", "fold-constants,couple,group,l1,prune", "--target-flops", "0.5"],
    "dead": ["-p", "couple,group,dead,prune"],
    "obspa": ["-p", "couple,group,obspa<hessian=noise;samples=8>,prune",
              "--target-flops", "0.5"],
    "obspa-data": ["-p", "couple,group,obspa,prune", "--target-flops", "0.5",
                   "--calib", str(CALIB)],
}
#: Pipelines that only make sense on some models (calibration inputs fit the digits).
ONLY: dict[str, str] = {"obspa-data": "digits/*"}


def models(pattern: str) -> list[str]:
    """Golden models (relative to golden_models/) matching ``pattern``."""
    found = sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.onnx"))
    return [m for m in found if fnmatch.fnmatch(m, pattern)]


def run(source: Path | None, model: str, pipeline: str, folder: Path) -> dict[str, Any]:
    """Run the CLI of ``source`` (None: the working tree); the outputs it left."""
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if source is not None:
        env["PYTHONPATH"] = str(source)
    out, report = folder / "out.onnx", folder / "report.json"
    command = [sys.executable, "-m", "spa_opt.cli", *PIPELINES[pipeline], "--no-progress",
               "--report", str(report), str(GOLDEN / model), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder)
    result: dict[str, Any] = {"code": done.returncode, "stderr": done.stderr.strip()[-300:]}
    if done.returncode == 0:
        proto = onnx.load(str(out))
        result["weights"] = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        result["ops"] = [n.op_type for n in proto.graph.node]
        data = json.loads(report.read_text())
        result["report"] = {key: data.get(key) for key in ("groups", "prune", "dead")}
        obspa = data.get("obspa") or {}
        result["report"]["obspa"] = [(r["layer"], r["removed"], r["error"])
                                     for r in obspa.get("layers", [])]
    return result


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two runs, in words (empty: the same)."""
    if a["code"] != b["code"]:
        return [f"exit {a['code']} vs {b['code']}: {a['stderr'] or b['stderr']}"]
    if a["code"] != 0:
        return []
    found = []
    if a["ops"] != b["ops"]:
        found.append("node operators differ")
    if a["weights"].keys() != b["weights"].keys():
        found.append("initializer names differ")
    else:
        found += [f"initializer {name} differs" for name, array in a["weights"].items()
                  if array.shape != b["weights"][name].shape
                  or not np.array_equal(array, b["weights"][name])][:3]
    found += [f"report {key} differs" for key in a["report"]
              if a["report"][key] != b["report"][key]]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--models", default="*", help="glob over golden_models/ paths")
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help=f"comma-separated, of {', '.join(PIPELINES)}")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spa-same-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach",
                        str(base), args.base], check=True)
        try:
            jobs = [(m, p) for p in args.pipelines.split(",") for m in models(args.models)
                    if fnmatch.fnmatch(m, ONLY.get(p, "*"))]

            def compare(job: tuple[str, str]) -> tuple[str, str, list[str]]:
                model, pipeline = job
                where = Path(tmp) / pipeline / model.replace("/", "_")
                ours = run(None, model, pipeline, where / "ours")
                theirs = run(base, model, pipeline, where / "base")
                return model, pipeline, differences(ours, theirs)

            with ThreadPoolExecutor(args.jobs) as pool:
                rows = list(pool.map(compare, jobs))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(base)], check=False)
    for model, pipeline, found in rows:
        print(f"{pipeline:10} {model:45} {'same' if not found else '; '.join(found)}")
    differing = sum(bool(found) for _, _, found in rows)
    print(f"{len(rows)} runs against {args.base}: {len(rows) - differing} the same, "
          f"{differing} different")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
