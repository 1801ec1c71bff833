"""obspa's ordering in float64 against float32, side by side: time and the units chosen.

For synthetic layers shaped like the bench models' widest consumers (a 3x3 conv of 512
channels: 4608 columns in blocks of 9; a Llama down_proj: 5632 single columns; a residual
stream consumer: 2049), with correlated inputs and the default 1% damping, the script
orders every unit with ``precision=float64`` and ``precision=float32``
(:func:`spa_opt.obs.order.solve_order`) and prints the two times, their ratio, the share
of the same units chosen at 20% and 50% removal and the ratio of the reconstruction
errors of the two selections (float64 :func:`~spa_opt.obs.linalg.reconstruct`). Then,
with fewer samples than columns, it lowers the damping to 1e-3 and 1e-4 (condition
numbers up to about 2e5) and prints the same agreement figures.

Run from the repository root: ``python bench/order_precision.py [--threads N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spa_opt.obs.linalg import dampen, error, reconstruct
from spa_opt.obs.order import Consumer, OrderResult, OrderTask, solve_order

PRECISIONS = ("float64", "float32")


def _correlated(rng: np.random.Generator, d: int, n: int) -> np.ndarray:
    base = rng.standard_normal((d, n)).astype(np.float32)
    mix = rng.standard_normal((d, d)).astype(np.float32) / np.sqrt(d)
    x = mix @ (base * np.linspace(3, 0.05, d, dtype=np.float32)[:, None]) + 0.1 * base
    return x.astype(np.float64)


def _agreement(w: np.ndarray, h: np.ndarray, blocks: np.ndarray,
               results: dict[str, OrderResult]) -> str:
    units = len(blocks)
    parts = []
    for share in (0.2, 0.5):
        count = int(units * share)
        chosen = {p: np.sort(np.argsort(results[p].scores)[:count]) for p in PRECISIONS}
        same = np.intersect1d(chosen["float64"], chosen["float32"]).size / count
        errors = [error(w, reconstruct(w, h, blocks[chosen[p]].ravel()), h) for p in PRECISIONS]
        parts.append(f"remove {share:.0%}: same units {same:.4f}, error ratio "
                     f"{errors[1] / errors[0]:.5f}")
    return "; ".join(parts)


def _order(w: np.ndarray, h: np.ndarray, blocks: np.ndarray) -> dict[str, OrderResult]:
    units = len(blocks)
    return {p: solve_order(OrderTask("g", units, np.arange(units),
                                     [Consumer("c", w, h, blocks)], precision=p))
            for p in PRECISIONS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="BLAS threads (0: all)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with threadpool_limits(args.threads or None):
        for d, block, rows in [(4608, 9, 512), (5632, 1, 2048), (2049, 1, 5632)]:
            x = _correlated(rng, d, 8192)
            h = dampen(2.0 * x @ x.T / x.shape[1])
            w = rng.standard_normal((rows, d))
            blocks = np.arange(d).reshape(d // block, block)
            results = _order(w, h, blocks)
            t64, t32 = results["float64"].seconds, results["float32"].seconds
            print(f"{d} columns, blocks of {block}, {rows} rows: float64 {t64:.2f} s, "
                  f"float32 {t32:.2f} s ({results['float32'].precision}), speedup "
                  f"{t64 / t32:.2f}x; {_agreement(w, h, blocks, results)}", flush=True)
        d, n = 2048, 512
        for damp in (1e-2, 1e-3, 1e-4):
            x = rng.standard_normal((d, n)) * np.logspace(0, -3, d)[:, None]
            h = dampen(2.0 * x @ x.T / n, damp)
            w = rng.standard_normal((256, d))
            blocks = np.arange(d)[:, None]
            results = _order(w, h, blocks)
            print(f"{d} columns, {n} samples, damp {damp:g}, condition "
                  f"{np.linalg.cond(h):.2g}: ran in {results['float32'].precision}; "
                  f"{_agreement(w, h, blocks, results)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
