"""Layer-wise Hessians ``H = 2 X Xᵀ / N`` from activations, one accumulator per input.

Everything here works on plain arrays and a plain :class:`Geometry` (the convolution's
kernel, strides, pads, dilations), not on graph objects: the graph side
(:func:`spa_opt.passes.obspa_graph.layers.geometry`) reads a node's attributes into a
:class:`Geometry`, and :func:`spa_opt.passes.obspa_graph.propagate.accumulate` feeds
the activations in.

``X`` holds one column per output position the layer computes:

- ``Conv``: im2col columns, ``C·K`` rows in the weight's ``(c, k...)`` order, over every
  batch item and output position, zero padding included as zeros (``pads``,
  ``auto_pad``, ``strides`` and ``dilations`` as the node has them);
- ``Gemm`` / ``MatMul``: the activation's last axis, every leading position a column.

A constant-one row is always appended, so the bias column's Hessian entries come for
free; layers without a bias drop it. Layers that read the same activation the same way
(the q, k and v projections of one attention block, a SwiGLU's gate and up) share one
accumulator. Products are one float32 ``syrk`` per batch, summed in float64
(:class:`Accumulator` has the measured precision).

When a batch has more than ``positions`` columns per sample (a high-resolution early
convolution, a long sequence), a seeded random subset of that many per sample is used:
``XXᵀ/N`` is an average, so a subset estimates it without bias, and the cost, which is
``2·N·d²`` for ``N`` columns of width ``d``, falls in proportion.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import scipy.linalg


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a layer reads its activation: everything that shapes ``X``."""

    kind: str
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"

    @classmethod
    def conv(cls, kernel: tuple[int, ...], strides: tuple[int, ...] | None = None,
             pads: tuple[int, ...] | None = None, dilations: tuple[int, ...] | None = None,
             auto_pad: str = "NOTSET") -> Geometry:
        """A convolution's geometry, missing parameters at ONNX ``Conv``'s defaults.

        For callers that hold plain parameters rather than a node (a remote worker, a
        test): stride and dilation 1, no padding.
        """
        nd = len(kernel)
        return cls("conv", tuple(kernel), tuple(strides or (1,) * nd),
                   tuple(pads or (0,) * (2 * nd)), tuple(dilations or (1,) * nd), auto_pad)


def _same_pads(size: tuple[int, ...], geo: Geometry) -> list[tuple[int, int]]:
    pads = []
    for n, k, s, d in zip(size, geo.kernel, geo.strides, geo.dilations, strict=True):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if geo.auto_pad == "SAME_UPPER" else (large, small))
    return pads


def _pads(spatial: tuple[int, ...], geo: Geometry) -> list[tuple[int, int]]:
    nd = len(geo.kernel)
    if geo.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(spatial, geo)
    if geo.auto_pad == "VALID":
        return [(0, 0)] * nd
    return [(geo.pads[i], geo.pads[i + nd]) for i in range(nd)]


_COPY_RATIO = 4
"""Input positions per gathered value above which a layer reads its input as it is
(see :func:`_conv_columns`). Chosen, not tuned: a 1x1 layer sampling 256 of 56x56
positions (ratio 12) gathered in 0.15 ms as it is against 0.89 ms through the copy; the
crossover itself was not measured."""


def _channels_last(x: np.ndarray, pads: list[tuple[int, int]]) -> np.ndarray:
    """``x`` as ``(n, padded spatial..., c)``, zero padding around, in one pass."""
    spatial = x.shape[2:]
    padded = np.zeros((x.shape[0], *(n + a + b for n, (a, b) in zip(spatial, pads, strict=True)),
                       x.shape[1]), dtype=x.dtype)
    inner = (slice(None), *(slice(a, a + n) for n, (a, _) in zip(spatial, pads, strict=True)))
    padded[inner] = np.moveaxis(x, 1, -1)
    return padded


def _conv_columns(x: np.ndarray, geo: Geometry, max_positions: int,
                  rng: np.random.Generator) -> np.ndarray:
    """A convolution's ``X`` for one batch, as :func:`features` returns it.

    Gathered one kernel offset at a time from a channels-last copy of the padded input,
    so every read is a run of ``c`` contiguous values: gathering whole windows from the
    channels-first input read each value ``H·W`` elements from the last and took 2-3x as
    long on ResNet-50's 3x3 layers. An unpadded layer that reads few of its input's
    positions (a 1x1 convolution sampling 256 of 56x56) gathers from the input as it is
    instead: the copy would cost more than the strided reads it saves.
    """
    pads = _pads(tuple(x.shape[2:]), geo)
    padded = tuple(n + a + b for n, (a, b) in zip(x.shape[2:], pads, strict=True))
    out_shape = tuple((p - ((k - 1) * d + 1)) // s + 1 for p, k, s, d in zip(
        padded, geo.kernel, geo.strides, geo.dilations, strict=True))
    count = x.shape[0] * int(np.prod(out_shape))
    flat = np.sort(rng.choice(count, max_positions, replace=False)) \
        if count > max_positions else np.arange(count)
    where = np.unravel_index(flat, (x.shape[0], *out_shape))
    channels, taps = x.shape[1], int(np.prod(geo.kernel))
    as_is = not any(a or b for a, b in pads) and \
        x.shape[0] * int(np.prod(padded)) > _COPY_RATIO * len(flat) * taps
    source = x if as_is else _channels_last(x, pads)
    out = np.empty((len(flat), channels * taps + 1), dtype=np.float32)
    # the weight's (c, k...) order: channel-major, the kernel offsets inside; splitting
    # the contiguous last axis is always a view, so the writes below land in ``out``
    by_tap = out[:, :-1].reshape(len(flat), channels, taps)
    for tap, offset in enumerate(itertools.product(*(range(k) for k in geo.kernel))):
        at = tuple(o * s + k * d for o, s, k, d in zip(where[1:], geo.strides, offset,
                                                           geo.dilations, strict=True))
        # (columns, c) either way: indices split by the channel slice come first
        by_tap[:, :, tap] = source[(where[0], slice(None), *at)] if as_is \
            else source[(where[0], *at)]
    out[:, -1] = 1.0
    return out.T


def features(x: np.ndarray, geo: Geometry, max_positions: int,
             rng: np.random.Generator) -> np.ndarray:
    """``X`` for one batch: ``(d + 1, columns)`` float32 (Fortran order), the last row ones.

    Columns come in the order of their positions (batch item, then output position,
    row-major); a seeded sample of ``max_positions`` of them when there are more.
    """
    if geo.kind == "conv":
        return _conv_columns(x, geo, max_positions, rng)
    cols = x.reshape(-1, x.shape[-1])
    if cols.shape[0] > max_positions:
        cols = cols[np.sort(rng.choice(cols.shape[0], max_positions, replace=False))]
    # Built as (columns, d + 1) rows and returned transposed: a Fortran-ordered view that
    # BLAS takes as it is, where filling a C-ordered (d + 1, columns) would transpose.
    out = np.empty((cols.shape[0], cols.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = cols
    out[:, -1] = 1.0
    return out.T


def mirror_upper(matrix: np.ndarray, block: int = 512) -> np.ndarray:
    """Fill the lower triangle from the upper, in place, one block at a time.

    No index arrays and no ``d x d`` temporary: a ``d = 11008`` Hessian's index arrays
    alone would take 970 MB.
    """
    size = matrix.shape[0]
    for start in range(0, size, block):
        end = min(start + block, size)
        diagonal = matrix[start:end, start:end]
        diagonal[...] = np.triu(diagonal) + np.triu(diagonal, 1).T
        matrix[end:, start:end] = matrix[start:end, end:].T
    return matrix


FLUSH_BYTES = 64 << 20
"""Bytes of held columns (per accumulator) that go through one ``ssyrk`` together."""

GROUP_COLUMNS = 16384
"""Columns summed in float32 before they are added to the float64 total: the size of
one batch the class docstring measured (4e-7 relative error at width 2,049)."""


_ADD_ROWS = 256
"""Rows of the float64 total per step of a group's addition (a few MB of each operand)."""

MIN_GROUPS = 16
"""Groups a calibration set is cut into at least: the data-parallel shards of a Ray run
start on group boundaries, so fewer groups would leave workers idle."""


def flush_every(columns_per_batch: int, batches: int) -> int:
    """Batches per float64 addition: a group of at most :data:`GROUP_COLUMNS` columns.

    ``columns_per_batch`` is an upper bound (positions per sample times samples);
    ``batches`` the number of calibration batches, cut into at least
    :data:`MIN_GROUPS` groups where there are that many.
    """
    by_columns = max(1, GROUP_COLUMNS // max(columns_per_batch, 1))
    return max(1, min(by_columns, batches // MIN_GROUPS))


class Accumulator:
    """Running ``Σ X Xᵀ`` and column count for one activation read one way.

    Products are BLAS ``ssyrk`` calls (upper triangle, half a GEMM's work) of the
    float32 columns into a float32 scratch, added to the float64 total per group (its
    lower triangle only); the upper triangle is filled once, in :meth:`hessian`.
    Measured against float64 products on ``|N(0,1)| + 0.5`` columns of width 513 (a
    post-activation mean, the hard case for cancellation): a float32 running sum drifts
    to 1.5e-6 relative error after 262,144 columns, the per-batch float64 total stays at
    1.1e-7 (4e-7 for one batch of 16,384 columns of width 2,049). The Hessians are
    damped by 1% of their mean diagonal, so either is far below what changes a
    reconstruction.

    With ``flush_every = K`` the batches ``[jK, (j+1)K)`` (global batch indices) are a
    group: their products are summed in the float32 scratch (``ssyrk`` with
    ``beta = 1``, columns held up to :data:`FLUSH_BYTES` for each call) and added to the
    float64 total once per group, so the total costs one ``d x d`` addition per K
    batches instead of per batch. With one 128-token sample per batch and
    ``d = 11008`` (a 7B down projection) the per-batch additions (0.5-1.7 s each) and
    128-column ``ssyrk`` calls took 115 of the pass's 183 s. A group is at most
    :data:`GROUP_COLUMNS` columns, the float32 sum the error above was measured for, and
    a calibration set is cut into at least :data:`MIN_GROUPS` groups (128 such batches:
    groups of 8, 16 additions instead of 128).
    Groups are fixed by the batch indices and the calls within them by the batches, so
    shards of consecutive batches that start on multiples of K (:mod:`.shard`) sum
    exactly what one accumulator over every batch sums.
    """

    def __init__(self, geo: Geometry, max_positions: int, seed: int, width: int,
                 flush_every: int = 1) -> None:
        self.geometry = geo
        self.width = width
        self.max_positions = max_positions
        self.seed = seed
        self.flush_every = max(1, int(flush_every))
        """Batches per group, one float64 addition each (see the class docstring)."""
        self._pending: list[np.ndarray] = []
        self._pending_bytes = 0
        self._in_group = False
        """Whether the scratch holds products of the current group not yet in ``total``."""
        self.batches = 0
        """Batches added so far: the default index of the next one."""
        self.total: np.ndarray | None = None
        """Upper triangle of ``Σ X Xᵀ`` (float64; the lower triangle is not kept)."""
        self._scratch: np.ndarray | None = None
        self.count = 0

    def add(self, activation: np.ndarray, batch: int | None = None) -> None:
        """Accumulate one batch of the activation.

        The positions a wide batch keeps are drawn from ``(seed, batch)``, with
        ``batch`` counting the batches added unless given: a shard of the calibration
        set accumulated elsewhere (:mod:`.shard`) passes the batches' global indices and
        draws exactly what one accumulator over every batch would.
        """
        x = np.asarray(activation, dtype=np.float32)
        samples = x.shape[0] if x.ndim > 1 else 1
        index = self.batches if batch is None else batch
        self.batches += 1
        rng = np.random.default_rng((self.seed, index))
        cols = features(x, self.geometry, self.max_positions * samples, rng)
        self.count += cols.shape[1]
        self._pending.append(cols)
        self._pending_bytes += cols.nbytes
        if self._pending_bytes >= FLUSH_BYTES:
            self._syrk()
        if (index + 1) % self.flush_every == 0:
            self._flush()

    def _syrk(self) -> None:
        """The held columns' product into the scratch (added to the group's so far)."""
        if not self._pending:
            return
        # each a fresh (d + 1, m) array (features copies), joined along the columns
        cols = self._pending[0] if len(self._pending) == 1 else \
            np.concatenate(self._pending, axis=1)
        self._pending = []
        self._pending_bytes = 0
        size = cols.shape[0]
        if self._scratch is None:
            self._scratch = np.zeros((size, size), dtype=np.float32, order="F")
        # cols is a Fortran-ordered (d + 1, m) view: trans=0 computes cols colsᵀ with no
        # copy of the columns (a C-ordered one goes transposed, trans=1, no copy either).
        fortran = cols.flags.f_contiguous
        with np.errstate(over="ignore", invalid="ignore"):  # checked by the caller
            self._scratch = scipy.linalg.blas.ssyrk(
                1.0, cols if fortran else cols.T, beta=1.0 if self._in_group else 0.0,
                c=self._scratch, trans=0 if fortran else 1, lower=0, overwrite_c=1)
        self._in_group = True

    def _flush(self) -> None:
        """The group's products into the float64 total: one ``d x d`` addition."""
        self._syrk()
        if not self._in_group:
            return
        if self.total is None:
            self.total = np.zeros(self._scratch.shape, dtype=np.float64)
        # The scratch's upper triangle, read through its C-ordered transpose, is the lower
        # triangle of that transpose: added row block by row block, both operands
        # contiguous and half the matrix touched (mixing the F-ordered scratch into the
        # C-ordered total whole took 0.47 s per d = 11009 addition, this 0.06 s).
        source = self._scratch.T
        size = source.shape[0]
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, size, _ADD_ROWS):
                end = min(start + _ADD_ROWS, size)
                self.total[start:end, :end] += source[start:end, :end]
        self._in_group = False

    def drop_scratch(self) -> None:
        """Free the float32 product (before the accumulator travels), held columns summed."""
        self._flush()
        self._scratch = None

    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other``'s sums (a shard of the same activation, read the same way) to these.

        ``Σ X Xᵀ`` over a union of samples is the sum of the shards' sums, so shards can
        be accumulated anywhere and merged in any order.
        """
        if other.geometry != self.geometry or other.width != self.width:
            raise ValueError("merging accumulators of different layers")
        self._flush()
        other._flush()
        if other.total is None:
            return self
        if self.total is None:
            self.total = other.total.copy()
        else:
            self.total += other.total
        self.count += other.count
        self.batches += other.batches
        return self

    def hessian(self, with_bias: bool, copy: bool = True) -> np.ndarray:
        """``2 X Xᵀ / N`` (float64), with or without the bias row and column.

        With ``copy=False`` the accumulator's own sum becomes the Hessian (no ``d x d``
        copy) and the accumulator cannot be used any more.
        """
        self._flush()
        if self.total is None or self.count == 0:
            raise ValueError("no activations were accumulated")
        size = self.total.shape[0] if with_bias else self.total.shape[0] - 1
        lower = self.total[:size, :size]
        result = lower.copy() if copy else lower
        mirror_upper(result.T)  # the sums are in the lower triangle (see _flush)
        result *= 2.0 / self.count
        if not copy:
            self.total = None
            self._scratch = None
        return result
