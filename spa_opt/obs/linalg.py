"""Structured Optimal Brain Surgeon on one layer: the linear algebra, numpy and scipy only.

A layer computes ``Y = W X`` with ``W`` of shape ``(rows, d)`` and ``X`` its ``d`` input
columns (im2col columns for a convolution, a constant-one column for a bias). Its
reconstruction error after a weight change ``dW`` is ``tr(dW H dWᵀ) / 2`` with the
layer-wise Hessian ``H = 2 X Xᵀ / N``.

Removing the block of columns ``M`` (one channel: its kernel positions) and updating the
rest optimally costs (OBS for column blocks, as in OBC/ExactOBS and ZipLM)::

    cost(M)  = 1/2 · Σ_rows w_M · [(H⁻¹)_MM]⁻¹ · w_Mᵀ
    ΔW       = -W_:M · [(H⁻¹)_MM]⁻¹ · (H⁻¹)_M:
    H⁻¹_KK  ← H⁻¹_KK - (H⁻¹)_KM · [(H⁻¹)_MM]⁻¹ · (H⁻¹)_MK      (Schur complement, K kept)

After the downdate ``H⁻¹_KK`` is the inverse Hessian of the remaining columns, so the
next removal is costed exactly. Removing several blocks one after another ends in the
same weights as removing their union at once, which is the least-squares optimum of
the kept columns under ``H``::

    W'_K = W · H_:K · (H_KK)⁻¹          (W'_M = 0)

:func:`reconstruct` uses that form (one Cholesky of ``H_KK``); :func:`block_costs` and
:func:`remove` use the inverse form, which :func:`spa_opt.obs.order.solve_order` applies
to rank a group's units greedily or in rounds. Everything is float64.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

DEFAULT_DAMP = 0.01
"""Fraction of the mean diagonal added to ``H``'s diagonal: keeps ``H`` positive definite
when there are fewer samples than columns or collinear inputs (the usual 1% of OBC and
SparseGPT)."""


def dampen(hessian: np.ndarray, fraction: float = DEFAULT_DAMP) -> np.ndarray:
    """Make ``hessian`` safely positive definite, in place, and return it.

    A dead input (zero diagonal: never active on the calibration data) gets ``H_ii = 1``
    with no correlations, so it can be removed at the cost of its own weights. Then
    ``fraction`` of the mean diagonal is added to every diagonal entry.
    """
    diagonal = np.einsum("ii->i", hessian)
    dead = diagonal <= 0
    if dead.any():
        hessian[dead, :] = 0.0
        hessian[:, dead] = 0.0
        diagonal[dead] = 1.0
    diagonal += fraction * float(diagonal.mean())
    return hessian


def inverse(hessian: np.ndarray) -> np.ndarray:
    """``H⁻¹`` of a positive-definite ``H`` from its Cholesky factor (a new array)."""
    factor, info = scipy.linalg.lapack.dpotrf(hessian, lower=1, clean=0)
    if info:
        raise np.linalg.LinAlgError(f"Hessian is not positive definite (minor {info})")
    inv, info = scipy.linalg.lapack.dpotri(factor, lower=1)
    if info:
        raise np.linalg.LinAlgError(f"Hessian inverse failed ({info})")
    # dpotri fills the lower triangle; mirror it in place, one column block at a time
    # (no index arrays and no d x d temporaries)
    size = inv.shape[0]
    for start in range(0, size, 512):
        end = min(start + 512, size)
        block = inv[start:end, start:end]
        block[...] = np.tril(block) + np.tril(block, -1).T
        inv[start:end, end:] = inv[end:, start:end].T
    return inv


def block_costs(weight: np.ndarray, hinv: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """OBS cost of removing each column block alone: ``(len(blocks),)``.

    Args:
        weight: ``(rows, d)`` current weights.
        hinv: ``(d, d)`` current inverse Hessian.
        blocks: ``(units, b)`` column indices of each block.
    """
    if blocks.size == 0:
        return np.zeros(len(blocks))
    sub = hinv[blocks[:, :, None], blocks[:, None, :]]  # (units, b, b)
    w = np.ascontiguousarray(weight[:, blocks].transpose(1, 2, 0))  # (units, b, rows)
    solved = np.linalg.solve(sub, w)
    return 0.5 * np.einsum("ubr,ubr->u", w, solved)


def remove(weight: np.ndarray, hinv: np.ndarray, columns: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Remove ``columns`` jointly with the optimal update of the rest.

    Args:
        weight: ``(rows, d)`` current weights.
        hinv: ``(d, d)`` current inverse Hessian.
        columns: Column indices to remove.

    Returns:
        ``(weight, hinv, kept, cost)``: the updated weights and inverse Hessian of the
        kept columns only (new arrays of width ``d - len(columns)``), the kept column
        indices (into the old numbering), and the cost of the removal.
    """
    kept = np.setdiff1d(np.arange(weight.shape[1]), columns, assume_unique=True)
    block = hinv[np.ix_(columns, columns)]
    factor = scipy.linalg.cho_factor(block, lower=True, check_finite=False)
    w_m = weight[:, columns]
    coupling = hinv[np.ix_(columns, kept)]  # (H⁻¹)_MK
    solved_w = scipy.linalg.cho_solve(factor, w_m.T, check_finite=False)  # S⁻¹ w_Mᵀ
    cost = 0.5 * float(np.einsum("rm,mr->", w_m, solved_w))
    new_weight = weight[:, kept] - solved_w.T @ coupling
    new_hinv = hinv[np.ix_(kept, kept)]
    new_hinv -= coupling.T @ scipy.linalg.cho_solve(factor, coupling, check_finite=False)
    return new_weight, new_hinv, kept, cost


def reconstruct(weight: np.ndarray, hessian: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Weights with ``removed`` columns zero and the rest least-squares optimal under ``H``.

    Equal to removing the columns one block at a time with :func:`remove`, in any order.
    """
    result = np.zeros_like(weight)
    if removed.size == 0:
        return weight.copy()
    kept = np.setdiff1d(np.arange(weight.shape[1]), removed)
    if kept.size == 0:
        return result
    factor = scipy.linalg.cho_factor(hessian[np.ix_(kept, kept)], lower=True,
                                     check_finite=False)
    # W'_K = W_K + W_M H_MK H_KK⁻¹
    correction = scipy.linalg.cho_solve(factor, hessian[np.ix_(kept, removed)],
                                        check_finite=False)  # H_KK⁻¹ H_KM
    result[:, kept] = weight[:, kept] + weight[:, removed] @ correction.T
    return result


def error(weight: np.ndarray, new_weight: np.ndarray, hessian: np.ndarray) -> float:
    """Reconstruction error ``tr(dW H dWᵀ) / 2`` of replacing ``weight`` by ``new_weight``."""
    delta = new_weight - weight
    return 0.5 * float(np.einsum("rd,rd->", delta @ hessian, delta))


def energy(weight: np.ndarray, hessian: np.ndarray) -> float:
    """``tr(W H Wᵀ) / 2``: the error of removing everything, the scale errors compare to."""
    return 0.5 * float(np.einsum("rd,rd->", weight @ hessian, weight))
