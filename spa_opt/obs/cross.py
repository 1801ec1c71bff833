"""Reconstruction from the pruned network's inputs toward the original outputs.

With ``propagate=pruned`` a layer no longer sees the original network's input ``X``
but ``X̃``, what the network pruned and reconstructed upstream feeds it. Its target
stays the original layer's output on the original input, ``W X``, so it also corrects
the error of the layers before it. With ``K`` the kept columns the least-squares
problem is::

    min over W'_K   || W'_K X̃_K - W X ||²_F

whose normal equations give, with ``H̃ = 2 X̃ X̃ᵀ / N`` (dampened as every Hessian is)
and the cross term ``G = 2 X X̃ᵀ / N``::

    W'_K = W G_:K (H̃_KK)⁻¹          (W'_M = 0 for the removed columns M)

and the error, with ``H = 2 X Xᵀ / N``::

    e = ½ [tr(W'_K H̃_KK W'_Kᵀ) - 2 tr(W G_:K W'_Kᵀ) + tr(W H Wᵀ)]

When nothing upstream changed (``X̃ = X``), ``G = H`` and this is the ordinary OBS
reconstruction ``W'_K = W H_:K H_KK⁻¹``. Columns of ``X`` and ``X̃`` are drawn at the
same positions (one seeded subset for both), else ``G`` would pair unrelated columns.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.linalg

from spa_opt.obs.hessian import Geometry, features
from spa_opt.obs.linalg import dampen, energy, take_block


class CrossAccumulator:
    """Running ``Σ X̃ X̃ᵀ`` and ``Σ X X̃ᵀ`` for one activation read one way."""

    def __init__(self, geo: Geometry, max_positions: int, seed: int, width: int) -> None:
        self.geometry = geo
        self.width = width
        self.max_positions = max_positions
        self.seed = seed
        self.batches = 0
        self.pruned: np.ndarray | None = None
        self.cross: np.ndarray | None = None
        self.count = 0

    def add(self, original: np.ndarray, pruned: np.ndarray) -> None:
        """Accumulate one batch of the original and the pruned network's activation."""
        x = np.asarray(original, dtype=np.float32)
        y = np.asarray(pruned, dtype=np.float32)
        samples = x.shape[0] if x.ndim > 1 else 1
        limit = self.max_positions * samples
        seed = (self.seed, self.batches)
        cols_x = features(x, self.geometry, limit, np.random.default_rng(seed))
        cols_y = features(y, self.geometry, limit, np.random.default_rng(seed))
        self.batches += 1
        with np.errstate(over="ignore", invalid="ignore"):  # checked by the caller
            hessian = (cols_y @ cols_y.T).astype(np.float64)
            cross = (cols_x @ cols_y.T).astype(np.float64)
        if self.pruned is None:
            self.pruned, self.cross = hessian, cross
        else:
            self.pruned += hessian
            self.cross += cross
        self.count += cols_x.shape[1]

    def matrices(self, with_bias: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(H̃, G)``, both ``2 (.) / N``, with or without the bias row and column."""
        if self.pruned is None or self.cross is None or self.count == 0:
            raise ValueError("no activations were accumulated")
        size = self.pruned.shape[0] if with_bias else self.pruned.shape[0] - 1
        scale = 2.0 / self.count
        return self.pruned[:size, :size] * scale, self.cross[:size, :size] * scale


def reconstruct_cross(weight: np.ndarray, cross: np.ndarray, pruned: np.ndarray,
                      removed: np.ndarray) -> np.ndarray:
    """``W'`` of the module docstring: removed columns zero, the rest least squares.

    Args:
        weight: ``(rows, d)`` the original weights ``W``.
        cross: ``(d, d)`` ``G = 2 X X̃ᵀ / N``.
        pruned: ``(d, d)`` dampened ``H̃ = 2 X̃ X̃ᵀ / N``.
        removed: Column indices that go.
    """
    kept = np.setdiff1d(np.arange(weight.shape[1]), removed)
    result = np.zeros_like(weight)
    if kept.size == 0:
        return result
    factor = scipy.linalg.cho_factor(take_block(pruned, kept, kept), lower=True,
                                     check_finite=False)
    target = weight @ cross[:, kept]  # W G_:K, (rows, |K|)
    result[:, kept] = scipy.linalg.cho_solve(factor, target.T, check_finite=False).T
    return result


def cross_error(weight: np.ndarray, new_weight: np.ndarray, hessian: np.ndarray,
                cross: np.ndarray, pruned: np.ndarray) -> float:
    """``e`` of the module docstring (``new_weight`` zero outside the kept columns)."""
    original = float(np.einsum("rd,rd->", weight @ hessian, weight))
    ours = float(np.einsum("rd,rd->", new_weight @ pruned, new_weight))
    mixed = float(np.einsum("rd,rd->", weight @ cross, new_weight))
    return max(0.5 * (ours - 2.0 * mixed + original), 0.0)


@dataclasses.dataclass
class CrossTask:
    """One layer's ``propagate=pruned`` solve as arrays (travels to an executor)."""

    weight: np.ndarray
    """``(rows, d)`` the original weights ``W``."""
    pruned: np.ndarray
    """``(d, d)`` undampened ``H̃``."""
    cross: np.ndarray
    """``(d, d)`` ``G``."""
    hessian: np.ndarray
    """``(d, d)`` the original dampened ``H`` (for the error only)."""
    removed: np.ndarray
    damp: float


@dataclasses.dataclass
class CrossResult:
    """The new weights (``None``: the pruned activations overflowed), error and energy."""

    weight: np.ndarray | None
    error: float
    energy: float
    seconds: float


def solve_cross(task: CrossTask) -> CrossResult:
    """Dampen ``H̃``, ridge ``G`` the same, solve, and measure the error.

    The same ridge on the cross term pulls ``W'`` toward ``W``, so an unchanged input
    (``X̃ = X``) gives back the ``propagate=original`` reconstruction exactly.
    """
    start = time.perf_counter()
    pruned, cross = task.pruned, task.cross
    if not (np.isfinite(pruned).all() and np.isfinite(cross).all()):
        return CrossResult(None, 0.0, 0.0, time.perf_counter() - start)
    if not pruned.flags.writeable:  # a payload from Ray's object store
        pruned = pruned.copy()
    diagonal = np.diag(pruned).copy()
    diagonal[diagonal <= 0] = 1.0
    ridge = task.damp * float(diagonal.mean())
    dampen(pruned, task.damp)
    pulled = cross.copy()
    pulled[np.diag_indices_from(pulled)] += ridge
    new = reconstruct_cross(task.weight, pulled, pruned, task.removed)
    del pulled
    scale = energy(task.weight, task.hessian, np.float32)  # the report's scale only
    return CrossResult(new, cross_error(task.weight, new, task.hessian, cross, pruned), scale,
                       time.perf_counter() - start)
