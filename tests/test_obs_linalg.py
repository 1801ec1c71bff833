"""The structured OBS maths against direct float64 least squares on random layers."""

from __future__ import annotations

import numpy as np
import pytest

from spa_opt.obs.linalg import (
    block_costs,
    dampen,
    energy,
    error,
    inverse,
    inverse_lower,
    reconstruct,
    remove,
    remove_in_place,
    symmetric_rows,
    symmetric_take,
)
from spa_opt.obs.order import Consumer, OrderTask, solve_order


def _layer(rows: int, d: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    x = mix @ rng.standard_normal((d, n)) + 0.3  # correlated, non-centred inputs
    w = rng.standard_normal((rows, d))
    return w, x, 2.0 * x @ x.T / n


def _least_squares(w: np.ndarray, x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """argmin over W' supported on ``kept`` of ||W X - W' X||², by lstsq."""
    solution, *_ = np.linalg.lstsq(x[kept].T, (w @ x).T, rcond=None)
    full = np.zeros_like(w)
    full[:, kept] = solution.T
    return full


@pytest.mark.parametrize("block", [1, 3, 9])
def test_removing_a_block_is_the_least_squares_optimum(block: int) -> None:
    w, x, h = _layer(rows=7, d=36, n=400, seed=block)
    removed = np.arange(block) + 5
    kept = np.setdiff1d(np.arange(36), removed)
    new_w, _, kept_idx, cost = remove(w, inverse(h), removed)
    expected = _least_squares(w, x, kept)
    np.testing.assert_array_equal(kept_idx, kept)
    np.testing.assert_allclose(new_w, expected[:, kept], rtol=1e-8, atol=1e-9)
    # the cost is the error of that optimum
    np.testing.assert_allclose(cost, error(w, expected, h), rtol=1e-8)
    np.testing.assert_allclose(reconstruct(w, h, removed), expected, rtol=1e-8, atol=1e-9)


def test_sequential_removals_with_downdates_equal_the_joint_optimum() -> None:
    w, x, h = _layer(rows=5, d=30, n=300, seed=3)
    blocks = [np.array([0, 1, 2]), np.array([10, 11, 12]), np.array([27, 28, 29])]
    weight, hinv, alive = w.copy(), inverse(h), np.arange(30)
    for cols in blocks:
        local = np.searchsorted(alive, cols)
        weight, hinv, kept, _ = remove(weight, hinv, local)
        alive = alive[kept]
        # the downdated inverse is the inverse of the kept Hessian block
        np.testing.assert_allclose(hinv, np.linalg.inv(h[np.ix_(alive, alive)]), rtol=1e-7,
                                   atol=1e-9)
    removed = np.concatenate(blocks)
    expected = _least_squares(w, x, np.setdiff1d(np.arange(30), removed))
    np.testing.assert_allclose(weight, expected[:, alive], rtol=1e-7, atol=1e-9)


def test_block_costs_match_single_removals() -> None:
    w, _, h = _layer(rows=4, d=24, n=200, seed=5)
    hinv = inverse(h)
    blocks = np.arange(24).reshape(8, 3)
    costs = block_costs(w, hinv, blocks)
    for unit, cols in enumerate(blocks):
        assert costs[unit] == pytest.approx(remove(w, hinv, cols)[3], rel=1e-9)


def test_inverse_and_dampen() -> None:
    _, _, h = _layer(rows=2, d=20, n=100, seed=7)
    np.testing.assert_allclose(inverse(h) @ h, np.eye(20), atol=1e-8)
    singular = np.zeros((4, 4))
    singular[:2, :2] = [[2.0, 1.0], [1.0, 2.0]]
    damped = dampen(singular.copy(), 0.1)
    assert damped[2, 2] == damped[3, 3] > 1.0  # dead inputs become removable, not singular
    assert np.all(np.linalg.eigvalsh(damped) > 0)


def test_energy_is_the_cost_of_removing_everything() -> None:
    w, x, h = _layer(rows=3, d=10, n=100, seed=9)
    assert energy(w, h) == pytest.approx(error(w, np.zeros_like(w), h))
    assert energy(w, h) == pytest.approx(np.mean(np.sum((w @ x) ** 2, axis=0)))


def test_greedy_order_removes_cheapest_first_and_scores_increase() -> None:
    w, _, h = _layer(rows=6, d=16, n=300, seed=11)
    w[:, 4:6] *= 1e-3  # unit 2 (columns 4, 5) is nearly free to remove
    blocks = np.arange(16).reshape(8, 2)
    result = solve_order(OrderTask("g", 8, np.arange(8), [Consumer("c", w, h, blocks)],
                                   order="greedy", norm="relative"))
    order = np.argsort(result.scores, kind="stable")
    assert order[0] == 2
    assert np.all(np.diff(result.scores[order]) > 0)
    # the first greedy step is the exact single-unit optimum
    costs = block_costs(w, inverse(h), blocks) / energy(w, h)
    assert result.scores[2] == pytest.approx(costs.min())


def test_order_sums_costs_over_consumers_and_skips_pinned_units() -> None:
    w1, _, h1 = _layer(rows=4, d=8, n=200, seed=1)
    w2, _, h2 = _layer(rows=3, d=12, n=200, seed=2)
    blocks1 = np.arange(8).reshape(4, 2)
    blocks2 = np.arange(12).reshape(4, 3)
    task = OrderTask("g", 4, np.array([0, 1, 3]),
                     [Consumer("a", w1, h1, blocks1), Consumer("b", w2, h2, blocks2)],
                     order="greedy", norm="none")
    result = solve_order(task)
    assert np.isinf(result.scores[2]) and np.isfinite(result.scores[[0, 1, 3]]).all()
    both = block_costs(w1, inverse(h1), blocks1) + block_costs(w2, inverse(h2), blocks2)
    assert result.scores.min() == pytest.approx(both[[0, 1, 3]].min())


def test_blocks_order_needs_fewer_steps() -> None:
    w, _, h = _layer(rows=4, d=64, n=300, seed=4)
    blocks = np.arange(64).reshape(32, 2)
    task = OrderTask("g", 32, np.arange(32), [Consumer("c", w, h, blocks)], order="blocks",
                     rounds=4)
    result = solve_order(task)
    assert result.steps == 3  # four rounds of eight, the last without a downdate
    assert np.isfinite(result.scores).all()


@pytest.mark.parametrize("block", [1, 3])
def test_in_place_removal_equals_the_compacting_one(block: int) -> None:
    w, _, h = _layer(rows=5, d=24, n=200, seed=6)
    hinv = inverse(h)
    columns = np.arange(block) + 7
    new_w, new_hinv, kept, cost = remove(w, hinv, columns)
    w_in, hinv_in = np.array(w, order="C"), inverse_lower(h)
    assert hinv_in.flags.f_contiguous
    np.testing.assert_allclose(np.tril(hinv_in), np.tril(hinv), rtol=1e-12, atol=1e-14)
    assert remove_in_place(w_in, hinv_in, columns) == pytest.approx(cost, rel=1e-12)
    np.testing.assert_allclose(w_in[:, kept], new_w, rtol=1e-10, atol=1e-12)
    # only the lower triangle is kept up to date (the ordering reads nothing else)
    np.testing.assert_allclose(np.tril(hinv_in[np.ix_(kept, kept)]), np.tril(new_hinv),
                               rtol=1e-10, atol=1e-12)
    assert not w_in[:, columns].any() and not hinv_in[columns].any()
    assert not hinv_in[:, columns].any()
    with pytest.raises(ValueError, match="Fortran"):
        remove_in_place(w.copy(), np.ascontiguousarray(hinv[:, :-1]), columns)
    blocks = np.arange(24).reshape(-1, 1)
    np.testing.assert_allclose(block_costs(w, hinv, blocks),  # the 1x1 division path
                               0.5 * (w ** 2).sum(0) / np.diag(hinv), rtol=1e-12)


def test_symmetric_reads_of_the_lower_triangle_equal_the_full_matrix() -> None:
    _, _, h = _layer(rows=3, d=17, n=100, seed=8)
    full = inverse(h)
    lower = np.asfortranarray(np.tril(full) + np.triu(np.full_like(full, np.nan), 1))
    rows = np.array([0, 5, 16, 9])
    np.testing.assert_array_equal(symmetric_rows(lower, rows), full[rows])
    blocks = np.array([[1, 2, 3], [16, 4, 0]])
    np.testing.assert_array_equal(symmetric_take(lower, blocks[:, :, None], blocks[:, None, :]),
                                  full[blocks[:, :, None], blocks[:, None, :]])
    assert np.isfinite(block_costs(np.ones((2, 17)), lower, blocks)).all()


@pytest.mark.parametrize("block", [1, 3])
def test_float32_ordering_ranks_like_float64(block: int) -> None:
    """float32 ``W``/``H⁻¹`` round the costs, not the order, on a dampened Hessian."""
    w, _, h = _layer(rows=16, d=96, n=400, seed=7)
    dampen(h)
    units = 96 // block
    blocks = np.arange(96).reshape(units, block)
    results = {precision: solve_order(OrderTask("g", units, np.arange(units),
                                                [Consumer("c", w, h, blocks)],
                                                precision=precision))
               for precision in ("float64", "float32")}
    assert results["float32"].precision == "float32"
    assert np.array_equal(np.argsort(results["float32"].scores),
                          np.argsort(results["float64"].scores))
    np.testing.assert_allclose(results["float32"].scores, results["float64"].scores,
                               rtol=1e-3)


def test_float32_ordering_falls_back_to_float64_when_it_loses_definiteness() -> None:
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    h = (basis * np.logspace(0, -12, 64)) @ basis.T  # beyond float32's reach, undampened
    h = (h + h.T) / 2
    w = rng.standard_normal((8, 64))
    blocks = np.arange(64)[:, None]
    task = OrderTask("g", 64, np.arange(64), [Consumer("c", w, h, blocks)],
                     precision="float32")
    result = solve_order(task)
    assert result.precision == "float64"
    task.precision = "float64"
    np.testing.assert_array_equal(result.scores, solve_order(task).scores)


@pytest.mark.parametrize("block", [1, 3, 130])
def test_fortran_ordered_weights_give_the_same_costs_and_downdates(block: int) -> None:
    """The ordering keeps ``W`` in Fortran order (contiguous unit columns); the maths is
    the same as on a C-ordered ``W``, for single columns, narrow and wide blocks."""
    d = 4 * block if block > 1 else 24
    w, _, h = _layer(rows=7, d=d, n=2 * d + 100, seed=12)
    blocks = np.arange(d).reshape(-1, block)
    hinv = inverse_lower(h)
    fortran = np.asfortranarray(w)
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
    np.testing.assert_allclose(block_costs(fortran, hinv, blocks), block_costs(w, hinv, blocks),
                               rtol=1e-10)
    if block >= 128:  # the Cholesky path of wide blocks against the batched solve
        sub = inverse(h)[blocks[:, :, None], blocks[:, None, :]]
        cols = np.ascontiguousarray(w[:, blocks].transpose(1, 2, 0))
        expected = 0.5 * np.einsum("ubr,ubr->u", cols, np.linalg.solve(sub, cols))
        np.testing.assert_allclose(block_costs(fortran, hinv, blocks), expected, rtol=1e-9)
    columns = blocks[1]
    c_w, c_hinv = np.array(w, order="C"), inverse_lower(h)
    f_w, f_hinv = np.asfortranarray(w), inverse_lower(h)
    assert remove_in_place(f_w, f_hinv, columns) == pytest.approx(
        remove_in_place(c_w, c_hinv, columns), rel=1e-12)
    assert f_w.flags.f_contiguous  # updated in place, not replaced
    np.testing.assert_allclose(f_w, c_w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.tril(f_hinv), np.tril(c_hinv), rtol=1e-10, atol=1e-12)
    assert not f_w[:, columns].any()


def test_consumers_sharing_a_hessian_order_as_one_with_their_rows_stacked() -> None:
    """What obspa does for q, k and v (one input, one Hessian): the same scores as three
    consumers, from one inverse and one downdate per round."""
    w, _, h = _layer(rows=9, d=20, n=300, seed=13)
    blocks = np.arange(20).reshape(10, 2)
    apart = OrderTask("g", 10, np.arange(10),
                      [Consumer("q", w[:4], h, blocks), Consumer("k", w[4:6], h, blocks),
                       Consumer("v", w[6:], h, blocks)], rounds=4, norm="relative")
    stacked = OrderTask("g", 10, np.arange(10),
                        [Consumer("q+k+v", np.asfortranarray(w), h, blocks)], rounds=4,
                        norm="relative")
    np.testing.assert_allclose(solve_order(stacked).scores, solve_order(apart).scores,
                               rtol=1e-9)


def test_energy_in_float32_is_the_float64_one_to_rounding() -> None:
    w, _, h = _layer(rows=30, d=64, n=400, seed=14)
    assert energy(w, h, np.float32) == pytest.approx(energy(w, h), rel=1e-5)


def test_reconstruction_in_fortran_order_is_in_place_and_equals_the_c_one() -> None:
    """A MatMul's ``(K, N)`` weight is ``W`` in Fortran order: solved there, no transposing
    copy, with the same weights and error as from C order."""
    from spa_opt.obs.linalg import ReconstructTask, solve_reconstruct

    w, x, h = _layer(rows=6, d=18, n=300, seed=15)
    removed = np.array([2, 3, 11])
    expected = _least_squares(w, x, np.setdiff1d(np.arange(18), removed))
    from_c = solve_reconstruct(ReconstructTask(np.array(w, order="C"), h, removed))
    fortran = np.asfortranarray(w)
    from_f = solve_reconstruct(ReconstructTask(fortran, h, removed))
    assert np.shares_memory(from_f.weight, fortran) and from_f.weight.flags.f_contiguous
    np.testing.assert_allclose(from_f.weight, expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(from_f.weight, from_c.weight, rtol=1e-12, atol=1e-12)
    assert from_f.error == pytest.approx(from_c.error, rel=1e-10)
    assert from_f.energy == pytest.approx(energy(w, h), rel=1e-5)


@pytest.mark.parametrize(("rows", "removed"), [(4, 10), (40, 3)])
def test_both_reconstruction_formulations_give_the_least_squares_optimum(
        rows: int, removed: int) -> None:
    """Solved for the removed columns (many rows) or for the rows (many removed
    columns): the same weights, the error of that optimum, whichever is chosen."""
    from spa_opt.obs.linalg import _reconstruct, _update_by_hessian, _update_by_weights

    w, x, h = _layer(rows=rows, d=20, n=300, seed=rows)
    drop = np.arange(removed) * 2
    kept = np.setdiff1d(np.arange(20), drop)
    expected = _least_squares(w, x, kept)
    for fortran in (False, True):
        results = []
        for update in (_update_by_hessian, _update_by_weights):
            weight = np.asfortranarray(w) if fortran else w.copy()
            w_m = weight[:, drop]
            results.append(update(weight, h, kept, drop, w_m, fortran))
        for new, cost in results:
            np.testing.assert_allclose(new, expected, rtol=1e-7, atol=1e-9)
            assert cost == pytest.approx(error(w, expected, h), rel=1e-7)
    chosen, cost = _reconstruct(w, h, drop)
    np.testing.assert_allclose(chosen, expected, rtol=1e-7, atol=1e-9)
    assert cost == pytest.approx(error(w, expected, h), rel=1e-7)


def test_take_block_equals_fancy_indexing_in_either_order() -> None:
    from spa_opt.obs.linalg import take_block

    matrix = np.random.default_rng(2).normal(size=(40, 40)).astype(np.float32)
    rows, columns = np.array([0, 3, 7, 39]), np.arange(1, 40, 3)
    for source in (matrix, np.asfortranarray(matrix), matrix.T):
        taken = take_block(source, rows, columns, block=3)
        np.testing.assert_array_equal(taken, source[np.ix_(rows, columns)])
        assert taken.dtype == np.float32 and taken.flags.c_contiguous


@pytest.mark.parametrize("dead", [False, True])
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_gram_root_orders_like_the_weight_it_stands_for(dtype: type, layout: str,
                                                             dead: bool) -> None:
    """``R`` with ``Rᵀ R = Wᵀ W`` (d rows for a tall W): the same scores, for single
    columns and blocks, in either precision and layout; by Cholesky of the Gram matrix,
    and by Householder QR where a dead column makes it singular."""
    from spa_opt.obs import linalg
    from spa_opt.obs.order import Consumer, OrderTask, solve_order

    w, _, h = _layer(rows=50, d=12, n=300, seed=21)
    if dead:
        w[:, 4] = 0.0  # rank-deficient W, a singular Gram matrix
    given = np.array(w, dtype=dtype, order=layout)
    calls: list[bool] = []
    fallback = linalg._householder_root

    def householder(weight: np.ndarray, overwrite: bool) -> np.ndarray:
        calls.append(overwrite)
        return fallback(weight, overwrite)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(linalg, "_householder_root", householder)
        root = linalg.gram_root(given)
    assert bool(calls) == dead  # the QR only when the Cholesky of WᵀW breaks down
    np.testing.assert_array_equal(given, w.astype(dtype))  # W itself untouched
    assert root.shape == (12, 12) and root.dtype == dtype and root.flags.f_contiguous
    np.testing.assert_array_equal(root, np.triu(root))
    np.testing.assert_allclose(root.T.astype(np.float64) @ root, w.T @ w,
                               rtol=0, atol=1e-4 if dtype is np.float32 else 1e-10)
    for blocks in (np.arange(12)[:, None], np.arange(12).reshape(6, 2)):
        def scores(weight: np.ndarray, b: np.ndarray = blocks) -> np.ndarray:
            task = OrderTask("g", len(b), np.arange(len(b)), [Consumer("c", weight, h, b)],
                             rounds=4, precision="float64")
            return solve_order(task).scores
        np.testing.assert_allclose(scores(root.astype(np.float64)), scores(w),
                                   rtol=1e-4 if dtype is np.float32 else 1e-9)
    with pytest.raises(ValueError, match="more rows"):
        linalg.gram_root(w[:5])
