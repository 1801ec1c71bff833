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

import numpy as np
import scipy.linalg
from numpy.lib.stride_tricks import sliding_window_view


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


def im2col_view(x: np.ndarray, geo: Geometry) -> np.ndarray:
    """A strided view ``(n, c, out..., k...)`` of the padded input's windows."""
    nd = len(geo.kernel)
    spatial = tuple(x.shape[2:])
    if geo.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(spatial, geo)
    elif geo.auto_pad == "VALID":
        pads = [(0, 0)] * nd
    else:
        pads = [(geo.pads[i], geo.pads[i + nd]) for i in range(nd)]
    padded = np.pad(x, [(0, 0), (0, 0), *pads]) if any(a or b for a, b in pads) else x
    span = tuple((k - 1) * d + 1 for k, d in zip(geo.kernel, geo.dilations, strict=True))
    windows = sliding_window_view(padded, span, axis=tuple(range(2, 2 + nd)))
    steps = (slice(None),) * 2 + tuple(slice(None, None, s) for s in geo.strides) + \
        tuple(slice(None, None, d) for d in geo.dilations)
    return windows[steps]


def features(x: np.ndarray, geo: Geometry, max_positions: int,
             rng: np.random.Generator) -> np.ndarray:
    """``X`` for one batch: ``(d + 1, columns)`` float32 (Fortran order), the last row ones."""
    if geo.kind == "conv":
        view = im2col_view(x, geo)
        nd = len(geo.kernel)
        count = view.shape[0] * int(np.prod(view.shape[2: 2 + nd]))
        width = view.shape[1] * int(np.prod(view.shape[2 + nd:]))
        if count > max_positions:
            flat = np.sort(rng.choice(count, max_positions, replace=False))
            index = np.unravel_index(flat, (view.shape[0], *view.shape[2: 2 + nd]))
            picked = view[(index[0], slice(None), *index[1:])]  # (m, c, k...)
            cols = picked.reshape(len(flat), width)
        else:
            order = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
            cols = view.transpose(order).reshape(count, width)
    else:
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


class Accumulator:
    """Running ``Σ X Xᵀ`` and column count for one activation read one way.

    Each batch's product is one BLAS ``ssyrk`` (upper triangle, half a GEMM's work) of
    the float32 columns into a float32 scratch, added to the float64 total at once; the
    lower triangle is filled once, in :meth:`hessian`. Measured against float64
    products on ``|N(0,1)| + 0.5`` columns of width 513 (a post-activation mean, the
    hard case for cancellation): a float32 running sum drifts to 1.5e-6 relative error
    after 262,144 columns, the per-batch float64 total stays at 1.1e-7 (4e-7 for one
    batch of 16,384 columns of width 2,049). The Hessians are damped by 1% of their mean
    diagonal, so either is far below what changes a reconstruction; the float64 total
    costs one ``d x d`` addition per batch.
    """

    def __init__(self, geo: Geometry, max_positions: int, seed: int, width: int) -> None:
        self.geometry = geo
        self.width = width
        self.max_positions = max_positions
        self.seed = seed
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
        size = cols.shape[0]
        if self._scratch is None:
            self._scratch = np.zeros((size, size), dtype=np.float32, order="F")
            self.total = np.zeros((size, size), dtype=np.float64)
        # cols is a Fortran-ordered (d + 1, m) view: trans=0 computes cols colsᵀ with no
        # copy of the columns (a C-ordered one goes transposed, trans=1, no copy either).
        fortran = cols.flags.f_contiguous
        with np.errstate(over="ignore", invalid="ignore"):  # checked by the caller
            product = scipy.linalg.blas.ssyrk(1.0, cols if fortran else cols.T, beta=0.0,
                                              c=self._scratch, trans=0 if fortran else 1,
                                              lower=0, overwrite_c=1)
            self.total += product
        self._scratch = product
        self.count += cols.shape[1]

    def drop_scratch(self) -> None:
        """Free the per-batch float32 product (before the accumulator travels)."""
        self._scratch = None

    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other``'s sums (a shard of the same activation, read the same way) to these.

        ``Σ X Xᵀ`` over a union of samples is the sum of the shards' sums, so shards can
        be accumulated anywhere and merged in any order.
        """
        if other.geometry != self.geometry or other.width != self.width:
            raise ValueError("merging accumulators of different layers")
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
        if self.total is None or self.count == 0:
            raise ValueError("no activations were accumulated")
        size = self.total.shape[0] if with_bias else self.total.shape[0] - 1
        upper = self.total[:size, :size]
        result = upper.copy() if copy else upper
        mirror_upper(result)
        result *= 2.0 / self.count
        if not copy:
            self.total = None
            self._scratch = None
        return result
