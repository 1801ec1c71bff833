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
to rank a group's units greedily or in rounds. Everything is float64, except that the
ordering may keep ``W`` and ``H⁻¹`` in float32 (:func:`inverse_lower` with
``dtype=np.float32``; the BLAS of :func:`remove_in_place` follows the arrays' type): the
ordering only ranks units, and :func:`reconstruct` then solves the kept columns from the
float64 ``H`` again, so rounding in the ranking never reaches the weights.
"""

from __future__ import annotations

import dataclasses
import time

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


def inverse_lower(hessian: np.ndarray, dtype: type[np.floating] = np.float64) -> np.ndarray:
    """``H⁻¹`` in the lower triangle of a new Fortran-ordered array (upper: garbage).

    What the ordering works on: ``potrf`` then ``potri`` fill the lower triangle only,
    and every later read (:func:`symmetric_take`) and downdate (:func:`remove_in_place`,
    ``syrk``) touches that triangle alone, so the matrix is never mirrored. ``dtype``
    float32 runs ``spotrf``/``spotri``, 2.5-3x faster than the float64 pair.
    """
    # our own copy (a Ray argument is read-only), factored in place; H is symmetric, so
    # the transpose of a C-ordered copy is H in Fortran order without a transposing copy
    matrix = np.array(hessian, dtype=dtype)
    if not matrix.flags.f_contiguous:
        matrix = matrix.T
    potrf, potri = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potri"), (matrix,))
    factor, info = potrf(matrix, lower=1, clean=0, overwrite_a=1)
    if info:
        raise np.linalg.LinAlgError(f"Hessian is not positive definite (minor {info})")
    inv, info = potri(factor, lower=1, overwrite_c=1)
    if info:
        raise np.linalg.LinAlgError(f"Hessian inverse failed ({info})")
    return inv if inv.flags.f_contiguous else np.asfortranarray(inv)


def inverse(hessian: np.ndarray) -> np.ndarray:
    """``H⁻¹`` of a positive-definite ``H`` from its Cholesky factor (a new, full array)."""
    inv = inverse_lower(hessian)
    # mirror the lower triangle in place, one column block at a time (no index arrays and
    # no d x d temporaries)
    size = inv.shape[0]
    for start in range(0, size, 512):
        end = min(start + 512, size)
        block = inv[start:end, start:end]
        block[...] = np.tril(block) + np.tril(block, -1).T
        inv[start:end, end:] = inv[end:, start:end].T
    return inv


def gram_root(weight: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """``R`` with ``Rᵀ R = Wᵀ W``: ``(d, d)`` upper triangular, Fortran order, ``W``'s dtype.

    The ordering sees a consumer's ``W`` only through ``Wᵀ W``: a unit's cost
    ``Σ_rows w_M S⁻¹ w_Mᵀ = tr(S⁻¹ (WᵀW)_MM)``, and the round's update ``W (I - E)``
    maps ``R`` to ``R (I - E)`` with the same Gram matrix, so ``R`` can stand for ``W``
    with ``d`` rows instead of ``rows``. Worth it when ``rows`` is a few times ``d``: a
    decoder's stacked gate and up projections (11264 x 2048) or its lm_head (32000 x
    2048) then hold 16 MB in the ordering instead of 92 and 262.

    ``R`` is the Cholesky factor of ``WᵀW`` from one ``syrk``: ``rows·d² + d³/3`` flops,
    a third of a Householder QR's ``2·rows·d²`` (0.28 s instead of 1.18 s for the
    stacked projections above, in float32). Cholesky is backward stable, so ``RᵀR``
    reproduces the Gram matrix to its own rounding, which is all the scores read.
    Where the factorization breaks down (a dead column or collinear columns: a
    singular Gram matrix whose rounding leaves a pivot at or below zero), a Householder
    QR of ``W`` (LAPACK ``geqrf``, on the array itself with ``overwrite``) gives ``R``
    instead: fine with rank-deficient ``W``.
    """
    rows, d = weight.shape
    if rows <= d:
        raise ValueError("gram_root needs more rows than columns")
    # WᵀW in the upper triangle; the Fortran view of a C-ordered W is Wᵀ, so no copy
    fortran = weight.flags.f_contiguous
    syrk = scipy.linalg.blas.get_blas_funcs("syrk", (weight,))
    gram = syrk(1.0, weight if fortran else weight.T, trans=1 if fortran else 0, lower=0)
    potrf = scipy.linalg.lapack.get_lapack_funcs("potrf", (gram,))
    factor, info = potrf(gram, lower=0, clean=1, overwrite_a=1)
    if info == 0 and np.isfinite(np.diagonal(factor)).all():
        return factor if factor.flags.f_contiguous else np.asfortranarray(factor)
    del gram, factor
    return _householder_root(weight, overwrite)


def _householder_root(weight: np.ndarray, overwrite: bool) -> np.ndarray:
    """:func:`gram_root` by a Householder QR of ``W``: for a singular Gram matrix."""
    rows, d = weight.shape
    a = weight if overwrite and weight.flags.f_contiguous and weight.flags.writeable \
        else np.array(weight, order="F")
    geqrf, geqrf_lwork = scipy.linalg.lapack.get_lapack_funcs(("geqrf", "geqrf_lwork"), (a,))
    work, info = geqrf_lwork(rows, d)
    if info:
        raise np.linalg.LinAlgError(f"geqrf workspace query failed ({info})")
    factored, _tau, _work, info = geqrf(a, lwork=int(work.real), overwrite_a=1)
    if info:
        raise np.linalg.LinAlgError(f"geqrf failed ({info})")
    return np.asfortranarray(np.triu(factored[:d]))


def take_block(matrix: np.ndarray, rows: np.ndarray, columns: np.ndarray,
               block: int = 512) -> np.ndarray:
    """``matrix[np.ix_(rows, columns)]`` as a new C-ordered array, a block of rows at a time.

    Gathering the columns of a few hundred rows at once stays in cache: a 5504 x 5504
    block of an 11008 x 11008 Hessian in 0.12 s, where ``np.ix_`` takes 0.70 s.
    """
    out = np.empty((rows.size, columns.size), dtype=matrix.dtype)
    for start in range(0, rows.size, block):
        np.take(matrix[rows[start:start + block]], columns, axis=1,
                out=out[start:start + block])
    return out


def symmetric_take(lower: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Entries ``(rows, columns)`` (broadcast) of the symmetric matrix in ``lower``.

    Only the lower triangle is read, so a full symmetric matrix gives the same.
    """
    return lower[np.maximum(rows, columns), np.minimum(rows, columns)]


def symmetric_rows(lower: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of the symmetric matrix in ``lower``'s lower triangle: ``(len(rows), d)``.

    Row ``m`` is read from column ``m`` from the diagonal down and from row ``m`` left of it.
    """
    out = np.ascontiguousarray(lower[:, rows].T)  # valid from the diagonal on
    for i, m in enumerate(rows.tolist()):
        out[i, :m] = lower[m, :m]
    return out


def _columns(weight: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``weight[:, columns]`` transposed: ``(*columns.shape, rows)``, each column contiguous.

    From a Fortran-ordered ``weight`` (as the ordering keeps it) every column is one
    contiguous row of ``weight.T``, so the gather is a copy of whole rows; from a C-ordered
    one it is the strided gather of ``rows x |columns|`` single entries (measured on a
    32000 x 2048 float32 lm_head: 19 of an ordering's 26 s were these gathers).
    """
    if weight.flags.f_contiguous and not weight.flags.c_contiguous:
        return weight.T[columns]
    return np.moveaxis(weight[:, columns], 0, -1)


def block_costs(weight: np.ndarray, hinv: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """OBS cost of removing each column block alone: ``(len(blocks),)``.

    Args:
        weight: ``(rows, d)`` current weights (Fortran order reads fastest).
        hinv: ``(d, d)`` current inverse Hessian (its lower triangle is read).
        blocks: ``(units, b)`` column indices of each block.
    """
    if blocks.size == 0:
        return np.zeros(len(blocks))
    if blocks.shape[1] == 1:  # single columns: the block inverse is a division
        columns = blocks[:, 0]
        if weight.flags.f_contiguous and not weight.flags.c_contiguous:
            # every column's squared norm in one contiguous pass, then the units' ones
            norms = np.einsum("cr,cr->c", weight.T, weight.T)[columns]
        else:
            norms = np.einsum("ru,ru->u", weight[:, columns], weight[:, columns])
        return 0.5 * norms / np.diagonal(hinv)[columns]
    if blocks.shape[1] >= WIDE_BLOCK:
        return np.array([_wide_block_cost(weight, hinv, block) for block in blocks])
    sub = symmetric_take(hinv, blocks[:, :, None], blocks[:, None, :])  # (units, b, b)
    w = np.ascontiguousarray(_columns(weight, blocks))  # (units, b, rows)
    solved = np.linalg.solve(sub, w)
    return 0.5 * np.einsum("ubr,ubr->u", w, solved)


WIDE_BLOCK = 128
"""Blocks of at least this many columns (several heads: GQA groups) are costed one at a
time through a Cholesky factor and LAPACK's threads; narrower ones (a 3x3 kernel's 9
columns, a 7x7's 49, one 64-wide head) in one batched numpy solve, without a Python loop
per unit. Measured on 4 GQA groups of 512 columns, 2048 rows: the batched LU took 0.85 s
of a 1.4 s ordering."""


def _wide_block_cost(weight: np.ndarray, hinv: np.ndarray, block: np.ndarray) -> float:
    """``w_M S⁻¹ w_Mᵀ / 2`` as ``|L⁻¹ w_Mᵀ|² / 2`` with ``S = L Lᵀ``: half an LU's flops."""
    sub = symmetric_take(hinv, block[:, None], block[None, :])
    w = _columns(weight, block)  # (b, rows)
    try:
        factor = scipy.linalg.cholesky(sub, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        if sub.dtype != np.float64:
            raise  # float32 lost definiteness: the ordering starts again in float64
        return 0.5 * float(np.einsum("br,br->", w, np.linalg.solve(sub, w)))
    y = scipy.linalg.solve_triangular(factor, w, lower=True, check_finite=False)
    return 0.5 * float(np.einsum("br,br->", y, y))


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


def remove_in_place(weight: np.ndarray, hinv: np.ndarray, columns: np.ndarray) -> float:
    """:func:`remove` without compaction, on the lower triangle of ``H⁻¹`` only.

    The Schur downdate ``H⁻¹ -= (H⁻¹)_:M S⁻¹ (H⁻¹)_M:`` with ``S = (H⁻¹)_MM`` makes the
    removed rows and columns of ``H⁻¹`` exactly zero, and the update
    ``W -= W_:M S⁻¹ (H⁻¹)_M:`` makes the removed columns of ``W`` zero, so both stay at
    full size and the remaining columns keep their indices: no per-round copy of the
    kept block. ``hinv`` is Fortran-ordered and only its lower triangle is read and
    written (as :func:`inverse_lower` makes it): the downdate is one ``dsyrk`` with
    ``beta = 1`` on the array itself, half the flops of the full ``dgemm``, and the
    matrix is never mirrored. ``weight``'s update is one ``dgemm`` into it, C- or
    Fortran-ordered; Fortran order (what the ordering keeps) also makes reading and
    zeroing ``W_:M`` contiguous. Both arrays float32 run ``ssyrk``/``sgemm`` instead.

    Returns:
        The cost of the removal.
    """
    if not hinv.flags.f_contiguous:
        raise ValueError("remove_in_place needs a Fortran-ordered H⁻¹ (inverse_lower)")
    block = symmetric_take(hinv, columns[:, None], columns[None, :])
    factor = scipy.linalg.cho_factor(block, lower=True, check_finite=False)
    coupling = symmetric_rows(hinv, columns)  # (H⁻¹)_M:, (|M|, d)
    w_mt = np.ascontiguousarray(_columns(weight, columns))  # W_Mᵀ, (|M|, rows)
    solved_w = scipy.linalg.cho_solve(factor, w_mt, check_finite=False)  # S⁻¹ W_Mᵀ
    cost = 0.5 * float(np.einsum("mr,mr->", w_mt, solved_w))
    gemm, syrk = scipy.linalg.blas.get_blas_funcs(("gemm", "syrk"), (hinv,))
    if weight.flags.f_contiguous and not weight.flags.c_contiguous:
        # W -= (S⁻¹ W_Mᵀ)ᵀ (H⁻¹)_M:  on the Fortran-ordered weight itself
        updated = gemm(-1.0, solved_w, coupling, beta=1.0, c=weight, trans_a=1,
                       overwrite_c=1)
        if not np.shares_memory(updated, weight):  # a BLAS wrapper that copied c after all
            weight[...] = updated
        weight.T[columns] = 0.0
    else:
        # the same on weight.T (Fortran order of a C-ordered weight)
        updated = gemm(-1.0, coupling, solved_w, beta=1.0, c=weight.T, trans_a=1,
                       overwrite_c=1)
        if not np.shares_memory(updated, weight):
            weight.T[...] = updated
        weight[:, columns] = 0.0
    # lower(H⁻¹) -= lower(Y Yᵀ) with Y = L⁻¹ (H⁻¹)_M: (S = L Lᵀ)
    y = scipy.linalg.solve_triangular(factor[0], coupling, lower=True, check_finite=False)
    syrk(-1.0, y, beta=1.0, c=hinv, trans=1, lower=1, overwrite_c=1)
    hinv[columns, :] = 0.0  # exactly, not to rounding
    hinv[:, columns] = 0.0
    return cost


def _reconstruct(weight: np.ndarray, hessian: np.ndarray, removed: np.ndarray,
                 overwrite: bool = False) -> tuple[np.ndarray, float]:
    """:func:`reconstruct` and its :func:`error`, in the cheaper of two formulations.

    By the Hessian (:func:`_update_by_hessian`): with ``C = H_KK⁻¹ H_KM`` (solved for
    the update anyway), the optimum's change is ``dW_K = W_M Cᵀ``, ``dW_M = -W_M``, and
    its error ``tr(dW H dWᵀ)/2`` is ``tr(W_M S W_Mᵀ)/2`` with ``S = H_MM - H_MK C``:
    ``|M|² (|K| + rows)`` flops instead of the ``rows · d²`` of :func:`error` (a
    32000-row lm_head losing 400 of its 2049 columns: 5 GFLOP instead of 270).

    The update is one ``gemm`` with ``beta=1`` into the weights (``W += W_M Ĉ`` with
    ``Ĉ`` the ``(|M|, d)`` matrix holding ``Cᵀ`` in the kept columns, zeros in the
    removed ones), so besides ``W`` only ``W_M`` and ``Ĉ`` are allocated: ``rows x |M|``
    and ``|M| x d``, not the four ``rows x d`` temporaries of indexing the kept columns.
    By the weights (:func:`_update_by_weights`): the same optimum solved for the rows,
    where there are few of them against the removed columns.

    With ``overwrite`` (and a writeable float64 ``weight``, C- or Fortran-ordered)
    ``weight`` itself becomes the result. Fortran order is a MatMul's ``(K, N)`` weight
    as stored (:meth:`~spa_opt.passes.obspa_graph.layers.Layer.matrix`), with no
    transposing copy on the way in or out, and its columns gather and zero contiguously.
    """
    fortran = weight.flags.f_contiguous and not weight.flags.c_contiguous
    if not (overwrite and weight.flags.writeable and weight.dtype == np.float64
            and (weight.flags.c_contiguous or fortran)):
        weight = np.array(weight, dtype=np.float64, order="F" if fortran else "C")
    if removed.size == 0:
        return weight, 0.0
    kept = np.setdiff1d(np.arange(weight.shape[1]), removed)
    w_m = weight.T[removed].T if fortran else weight[:, removed]  # a copy
    if kept.size == 0:
        weight[...] = 0.0
        return weight, 0.5 * float(np.einsum("rm,rm->", w_m @ hessian, w_m))
    rows, k, m = weight.shape[0], kept.size, removed.size
    # flops of the two formulations, the Cholesky of H_KK and tr(W_M · W_Mᵀ) common
    # to both aside
    by_hessian = 2 * k * k * m + 2 * rows * m * weight.shape[1] + 2 * m * m * k
    by_weights = 2 * k * m * rows + 2 * k * k * rows
    if by_weights < by_hessian:
        return _update_by_weights(weight, hessian, kept, removed, w_m, fortran)
    return _update_by_hessian(weight, hessian, kept, removed, w_m, fortran)


def _update_by_hessian(weight: np.ndarray, hessian: np.ndarray, kept: np.ndarray,
                       removed: np.ndarray, w_m: np.ndarray,
                       fortran: bool) -> tuple[np.ndarray, float]:
    """The optimum solved for the removed columns (``|M|`` right-hand sides).

    ``C = H_KK⁻¹ H_KM``, the update one ``gemm`` of ``W_M`` and ``C``, the error from
    the Schur complement: the cheaper way when the weight has many rows (a 32000-row
    lm_head).
    """
    factor = scipy.linalg.cho_factor(take_block(hessian, kept, kept), lower=True,
                                     check_finite=False)
    coupling = take_block(hessian, kept, removed)  # H_KM
    correction = scipy.linalg.cho_solve(factor, coupling, check_finite=False)  # H_KK⁻¹ H_KM
    del factor
    spread = np.zeros((removed.size, weight.shape[1]), np.float64)
    spread[:, kept] = correction.T
    # W'_K = W_K + W_M H_MK H_KK⁻¹, on the Fortran-ordered weight or on weight.T (the
    # Fortran view of a C-ordered one)
    if fortran:
        updated = scipy.linalg.blas.dgemm(1.0, w_m, spread, beta=1.0, c=weight,
                                          overwrite_c=1)
        if not np.shares_memory(updated, weight):  # BLAS wrappers that copy c after all
            weight = np.asfortranarray(updated)
    else:
        updated = scipy.linalg.blas.dgemm(1.0, spread.T, w_m.T, beta=1.0, c=weight.T,
                                          overwrite_c=1)
        if not np.shares_memory(updated, weight):
            weight = np.ascontiguousarray(updated.T)
    del spread
    if fortran:
        weight.T[removed] = 0.0
    else:
        weight[:, removed] = 0.0
    schur = take_block(hessian, removed, removed) - coupling.T @ correction
    return weight, max(0.5 * float(np.einsum("rm,rm->", w_m @ schur, w_m)), 0.0)


def _update_by_weights(weight: np.ndarray, hessian: np.ndarray, kept: np.ndarray,
                       removed: np.ndarray, w_m: np.ndarray,
                       fortran: bool) -> tuple[np.ndarray, float]:
    """The optimum solved for the weight's rows (``rows`` right-hand sides).

    ``Z = H_KK⁻¹ H_KM W_Mᵀ`` is the change of the kept columns transposed, so there is
    no ``rows x d`` product and no Schur complement; the error is
    ``(tr(W_M H_MM W_Mᵀ) - tr(Pᵀ Z)) / 2`` with ``P = H_KM W_Mᵀ``, a difference of two
    float64 sums (off by rounding of the first, ~1e-16 of it; clamped at 0). The
    cheaper way when the weight has few rows against the columns it loses (a 7B down
    projection halved: 0.80 instead of 1.47 TFLOP).
    """
    factor = scipy.linalg.cho_factor(take_block(hessian, kept, kept), lower=True,
                                     check_finite=False)
    projected = take_block(hessian, kept, removed) @ w_m.T  # P, (|K|, rows)
    solved = scipy.linalg.cho_solve(factor, projected, check_finite=False)  # Z
    del factor
    explained = float(np.einsum("kr,kr->", projected, solved))
    del projected
    whole = float(np.einsum("rm,rm->", w_m @ take_block(hessian, removed, removed), w_m))
    if fortran:
        weight.T[kept] += solved  # weight.T is the C-ordered (d, rows) array
        weight.T[removed] = 0.0
    else:
        weight[:, kept] += solved.T
        weight[:, removed] = 0.0
    return weight, max(0.5 * (whole - explained), 0.0)


def reconstruct(weight: np.ndarray, hessian: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Weights with ``removed`` columns zero and the rest least-squares optimal under ``H``.

    Equal to removing the columns one block at a time with :func:`remove`, in any order.
    """
    return _reconstruct(weight, hessian, removed)[0]


def error(weight: np.ndarray, new_weight: np.ndarray, hessian: np.ndarray) -> float:
    """Reconstruction error ``tr(dW H dWᵀ) / 2`` of replacing ``weight`` by ``new_weight``."""
    delta = new_weight - weight
    return 0.5 * float(np.einsum("rd,rd->", delta @ hessian, delta))


def energy(weight: np.ndarray, hessian: np.ndarray,
           dtype: type[np.floating] = np.float64) -> float:
    """``tr(W H Wᵀ) / 2``: the error of removing everything, the scale errors compare to.

    As ``Σ H ∘ WᵀW / 2`` with ``WᵀW`` from one ``syrk`` (its lower triangle): ``rows · d²``
    flops, half of the ``W H`` product. ``dtype=np.float32`` runs that ``syrk`` in float32
    (twice as fast; the sum stays float64): enough for a report's relative error.
    """
    syrk = scipy.linalg.blas.get_blas_funcs("syrk", dtype=dtype)
    gram = syrk(1.0, np.asarray(weight, dtype=dtype), trans=1, lower=1)
    total = 0.0
    size = gram.shape[0]
    for start in range(0, size, 512):  # column blocks: no d x d temporaries
        end = min(start + 512, size)
        square = np.tril(gram[start:end, start:end], -1)
        total += 2.0 * float(np.einsum("ij,ij->", square, hessian[start:end, start:end]))
        total += 2.0 * float(np.einsum("ij,ji->", gram[end:, start:end],
                                       hessian[start:end, end:]))
    total += float(np.einsum("ii,ii->", gram, hessian))
    return 0.5 * total


@dataclasses.dataclass
class ReconstructTask:
    """One layer's reconstruction as arrays (a unit of parallel work that can travel)."""

    weight: np.ndarray
    """``(rows, d)`` float64, the bias column included when it joins; C or Fortran order
    (the result keeps it)."""
    hessian: np.ndarray
    """``(d, d)`` dampened float64."""
    removed: np.ndarray
    """Column indices that go."""


@dataclasses.dataclass
class ReconstructResult:
    """The new weights, the error and the output energy it is measured against."""

    weight: np.ndarray
    error: float
    energy: float
    seconds: float


def solve_reconstruct(task: ReconstructTask) -> ReconstructResult:
    """:func:`reconstruct` with its :func:`error` and :func:`energy`, timed.

    The task's weights become the result (in place when the array is writeable, as a
    threads task's fresh copy is; a Ray worker's read-only view is copied once).
    """
    start = time.perf_counter()
    # before the weights are overwritten; in float32: only the report divides by it (the
    # float64 syrk was a fifth of a decoder's reconstruction, on 32000-row lm_heads)
    scale = energy(task.weight, task.hessian, np.float32)
    new, lost = _reconstruct(task.weight, task.hessian, task.removed, overwrite=True)
    return ReconstructResult(new, lost, scale, time.perf_counter() - start)
