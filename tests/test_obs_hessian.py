"""The Hessian accumulator: syrk in place, float64 totals, shards that merge.

- a batch-by-batch ``ssyrk`` accumulation equals ``2 X Xᵀ / N`` formed in float64 within
  the precision the module documents, for linear and convolution geometries;
- two shards merged equal one accumulator fed both (Hessians are sums), also with
  batches summed in groups when the shards start on group bounds;
- ``hessian(copy=False)`` gives the same matrix without keeping the sum;
- ``mirror_upper`` fills the lower triangle exactly, across block edges;
- a convolution's columns are its im2col columns, written out loop by loop in the test,
  for strides, dilations, explicit and ``SAME`` padding, one to three spatial axes, and a
  sampled subset is those columns at the sampled positions.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spa_opt.obs.hessian import (
    GROUP_COLUMNS,
    MIN_GROUPS,
    Accumulator,
    Geometry,
    features,
    flush_every,
    mirror_upper,
)


def _reference(batches: list[np.ndarray], geo: Geometry) -> np.ndarray:
    cols = np.hstack([features(b, geo, 10**9, np.random.default_rng(0)).astype(np.float64)
                      for b in batches])
    return 2.0 * cols @ cols.T / cols.shape[1]


@pytest.mark.parametrize("geo", [Geometry("linear"), Geometry.conv((3, 3), pads=(1, 1, 1, 1))])
def test_accumulation_equals_float64_reference(geo: Geometry) -> None:
    rng = np.random.default_rng(0)
    shape = (4, 7, 33) if geo.kind == "linear" else (2, 5, 9, 9)
    batches = [(np.abs(rng.normal(size=shape)) + 0.5).astype(np.float32) for _ in range(3)]
    accumulator = Accumulator(geo, 10**9, 0, 0)
    for batch in batches:
        accumulator.add(batch)
    found = accumulator.hessian(with_bias=True)
    expected = _reference(batches, geo)
    np.testing.assert_allclose(found, expected, rtol=2e-6, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_array_equal(found, found.T)
    without = accumulator.hessian(with_bias=False)
    np.testing.assert_array_equal(without, found[:-1, :-1])


def test_merged_shards_equal_one_accumulator() -> None:
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(3, 16)).astype(np.float32) for _ in range(4)]
    whole, left, right = (Accumulator(Geometry("linear"), 10**9, 0, 16) for _ in range(3))
    for i, batch in enumerate(batches):
        whole.add(batch)
        (left if i % 2 else right).add(batch)
    merged = left.merge(right)
    assert merged.count == whole.count
    np.testing.assert_allclose(merged.hessian(True), whole.hessian(True), rtol=1e-12)
    with pytest.raises(ValueError, match="different layers"):
        left.merge(Accumulator(Geometry("linear"), 10**9, 0, 8))


def test_hessian_without_copy_releases_the_sum() -> None:
    accumulator = Accumulator(Geometry("linear"), 10**9, 0, 5)
    accumulator.add(np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32))
    kept = accumulator.hessian(True)
    np.testing.assert_array_equal(accumulator.hessian(True, copy=False), kept)
    with pytest.raises(ValueError, match="no activations"):
        accumulator.hessian(True)


def test_mirror_upper_across_blocks() -> None:
    full = np.random.default_rng(3).normal(size=(37, 37))
    full = full + full.T
    np.testing.assert_array_equal(mirror_upper(np.triu(full), block=8), full)


def test_batches_summed_in_groups_give_the_same_hessian_and_shards_on_group_bounds_exactly(
        ) -> None:
    """``flush_every=K``: one float64 addition per K batches. The Hessian is the
    per-batch one to float32 rounding; shards starting on multiples of K (as ``_sharded``
    cuts them) merge to exactly the grouped whole, positions drawn per global batch index
    as before."""
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=(2, 40, 12)).astype(np.float32) for _ in range(7)]
    geometry = Geometry("linear")
    per_batch = Accumulator(geometry, 16, 0, 12)
    grouped = Accumulator(geometry, 16, 0, 12, flush_every=3)
    for batch in batches:
        per_batch.add(batch)
        grouped.add(batch)
    assert grouped.count == per_batch.count == 7 * 2 * 16
    np.testing.assert_allclose(grouped.hessian(True), per_batch.hessian(True), rtol=1e-5,
                               atol=1e-6)  # float32 sums in another grouping
    first, second = (Accumulator(geometry, 16, 0, 12, flush_every=3) for _ in range(2))
    for index, batch in enumerate(batches):
        (first if index < 3 else second).add(batch, batch=index)
    first.drop_scratch()  # what a shard does before it travels
    np.testing.assert_allclose(first.merge(second).hessian(True), grouped.hessian(True),
                               rtol=1e-12)
    every = flush_every(128, 1 << 16)  # one 128-token sample per batch, many batches
    assert every > 1 and 128 * every <= GROUP_COLUMNS and flush_every(1 << 20, 1 << 16) == 1
    # 128 batches: at least MIN_GROUPS groups, so a Ray run still has shards to spread
    assert -(-128 // flush_every(128, 128)) >= MIN_GROUPS and flush_every(128, 8) == 1


def test_columns_held_past_the_flush_budget_go_through_ssyrk_within_the_group(
        monkeypatch) -> None:
    """A group larger than FLUSH_BYTES of columns: several ssyrk calls summed in float32
    (beta = 1), one float64 addition, the same Hessian."""
    import spa_opt.obs.hessian as hessian

    rng = np.random.default_rng(5)
    batches = [rng.normal(size=(3, 10)).astype(np.float32) for _ in range(6)]
    reference = Accumulator(Geometry("linear"), 100, 0, 10)
    for batch in batches:
        reference.add(batch)
    monkeypatch.setattr(hessian, "FLUSH_BYTES", 2 * 11 * 3 * 4)  # two batches' columns
    grouped = Accumulator(Geometry("linear"), 100, 0, 10, flush_every=6)
    for batch in batches:
        grouped.add(batch)
    np.testing.assert_allclose(grouped.hessian(True), reference.hessian(True), rtol=1e-5,
                               atol=1e-6)


def _naive_im2col(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...],
                  pads: list[tuple[int, int]], dilations: tuple[int, ...]) -> np.ndarray:
    """Every column, one window at a time: (c·k..., positions) in (n, out...) order."""
    padded = np.pad(x, [(0, 0), (0, 0), *pads])
    out = [(p - (k - 1) * d - 1) // s + 1 for p, k, s, d in
           zip(padded.shape[2:], kernel, strides, dilations, strict=True)]
    columns = []
    for n in range(x.shape[0]):
        for position in itertools.product(*(range(o) for o in out)):
            window = [padded[(n, c, *(p * s + k * d for p, s, k, d in
                                       zip(position, strides, offset, dilations, strict=True)))]
                      for c in range(x.shape[1])
                      for offset in itertools.product(*(range(k) for k in kernel))]
            columns.append(window)
    return np.array(columns, dtype=np.float32).T


@pytest.mark.parametrize(("shape", "geo", "pads"), [
    ((2, 3, 7, 6), Geometry.conv((3, 3), pads=(1, 1, 1, 1)), [(1, 1), (1, 1)]),
    ((1, 4, 9, 8), Geometry.conv((3, 2), strides=(2, 1), pads=(0, 1, 2, 0),
                                 dilations=(1, 2)), [(0, 2), (1, 0)]),
    ((2, 2, 11), Geometry.conv((5,), strides=(3,), dilations=(2,)), [(0, 0)]),
    ((1, 2, 4, 5, 3), Geometry.conv((2, 3, 1), pads=(1, 0, 0, 0, 1, 0)),
     [(1, 0), (0, 1), (0, 0)]),
    ((1, 3, 7, 7), Geometry.conv((3, 3), strides=(2, 2), auto_pad="SAME_UPPER"),
     [(1, 1), (1, 1)]),
    ((1, 3, 6, 6), Geometry.conv((2, 2), auto_pad="SAME_LOWER"), [(1, 0), (1, 0)]),
    # unpadded, few positions read: the sampled half is gathered from the input as it is
    ((1, 3, 12, 12), Geometry.conv((1, 1), strides=(2, 2)), [(0, 0), (0, 0)]),
])
def test_conv_columns_are_the_im2col_columns(shape: tuple[int, ...], geo: Geometry,
                                             pads: list[tuple[int, int]]) -> None:
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    expected = _naive_im2col(x, geo.kernel, geo.strides, pads, geo.dilations)
    found = features(x, geo, 10**9, np.random.default_rng(0))
    np.testing.assert_array_equal(found[:-1], expected)
    np.testing.assert_array_equal(found[-1], 1.0)
    assert found.flags.f_contiguous
    # a sample of the positions: the same draw picks the same columns, in order
    keep = expected.shape[1] // 2
    sampled = features(x, geo, keep, np.random.default_rng(5))
    picked = np.sort(np.random.default_rng(5).choice(expected.shape[1], keep, replace=False))
    np.testing.assert_array_equal(sampled[:-1], expected[:, picked])
