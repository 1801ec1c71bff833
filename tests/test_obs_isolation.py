"""The OBS kernels (:mod:`spa_opt.obs`) import and run with no graph library at all.

A worker process on another machine must be able to import the kernels alone and
solve layers and groups shipped to it as arrays. So a fresh interpreter refuses, by a
``sys.meta_path`` finder, every import of onnx_ir, onnx, onnxruntime, onnxscript, torch
and the passes; then it imports every module of :mod:`spa_opt.obs` (found by listing
the package, so a new module is covered without editing this test) and runs a tiny
Hessian accumulation, ordering and reconstruction on random data.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

REFUSED = ("onnx_ir", "onnx", "onnxruntime", "onnxscript", "torch", "spa_opt.passes")

SCRIPT = r'''
import importlib
import importlib.abc
import pkgutil
import sys

REFUSED = %r


class Refuse(importlib.abc.MetaPathFinder):
    """Fail the import of any refused package or of anything under it."""

    def find_spec(self, name, path=None, target=None):
        if any(name == top or name.startswith(top + ".") for top in REFUSED):
            raise ImportError(f"spa_opt.obs must not import {name}")
        return None


already = [m for m in sys.modules if m.split(".")[0] in REFUSED]
assert not already, f"loaded before the test began: {already}"
sys.meta_path.insert(0, Refuse())

import numpy as np

import spa_opt.obs

modules = sorted(info.name for info in pkgutil.iter_modules(spa_opt.obs.__path__))
assert {"hessian", "linalg", "order", "threads"} <= set(modules), modules
for name in modules:
    importlib.import_module(f"spa_opt.obs.{name}")

from spa_opt.obs.hessian import Accumulator, Geometry
from spa_opt.obs.linalg import dampen, energy, error, reconstruct
from spa_opt.obs.order import Consumer, OrderTask, solve_order
from spa_opt.obs.threads import run_tasks

rng = np.random.default_rng(0)
channels, kernel, rows = 6, (3, 3), 5
geometry = Geometry.conv(kernel, pads=(1, 1, 1, 1))
accumulator = Accumulator(geometry, max_positions=64, seed=0, width=channels * 9)
for _ in range(3):  # three batches of activations, as propagation would feed them
    accumulator.add(rng.standard_normal((4, channels, 8, 8)).astype(np.float32))
hessian = dampen(accumulator.hessian(with_bias=True), 0.01)
weight = np.hstack([rng.standard_normal((rows, channels * 9)), rng.standard_normal((rows, 1))])
blocks = (np.arange(channels)[:, None] * 9 + np.arange(9)).astype(np.int64)
tasks = [OrderTask(f"g{i}", channels, np.arange(channels), [Consumer("conv", weight, hessian,
                                                                     blocks)], order=order)
         for i, order in enumerate(("blocks", "greedy"))]
results = run_tasks(solve_order, tasks, [weight.shape[1]] * len(tasks), jobs=2)
for result in results:
    assert np.isfinite(result.scores).all() and np.all(np.diff(np.sort(result.scores)) > 0)
first = np.argsort(results[0].scores)[:2]
removed = blocks[first].ravel()
new = reconstruct(weight, hessian, removed)
assert np.all(new[:, removed] == 0)
zeroed = weight.copy()
zeroed[:, removed] = 0
assert error(weight, new, hessian) < error(weight, zeroed, hessian) < energy(weight, hessian)

loaded = sorted(m for m in sys.modules if m.split(".")[0] in REFUSED or
                m.startswith("spa_opt.passes"))
assert not loaded, loaded
print("ok", " ".join(modules))
'''


def test_obs_imports_and_runs_without_graph_libraries() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT % (REFUSED,)], capture_output=True,
                            text=True, cwd=ROOT, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    first = result.stdout.split("\n")[0].split()
    assert first[0] == "ok", result.stdout
    # every module was imported (new ones included, by listing the package)
    assert {"cross", "hessian", "linalg", "order", "threads"} <= set(first[1:]), result.stdout
