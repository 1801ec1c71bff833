"""The ordering's consumers: a group's layer records grouped, split and turned into arrays.

Layers that read one activation the same way share one stored Hessian
(:attr:`~.records.LayerRecord.key`). For a group's ordering they are taken together
(:func:`sharing`), split into runs whose Hessians and inverses fit the budget
(:func:`runs_within`), and become :class:`~spa_opt.obs.order.Consumer` arrays with
their rows stacked where their units sit in the same columns (:func:`order_consumers`).
Kept apart from the pass, which holds the phases; this holds the arrays one ordering
task needs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from spa_opt.obs.linalg import gram_root
from spa_opt.obs.order import Consumer
from spa_opt.passes.obspa_graph.records import LayerRecord
from spa_opt.passes.obspa_graph.store import SpillStore


def stored_hessian(store: SpillStore, record: LayerRecord) -> np.ndarray | None:
    """The layer's dampened Hessian from the store (``None`` before it is stored)."""
    return store.get(record.key) if record.key in store else None


def sharing(records: list[LayerRecord]) -> list[list[LayerRecord]]:
    """``records`` in stage order, those with one stored Hessian (one ``key``) together."""
    found: dict[tuple, list[LayerRecord]] = {}
    for record in sorted(records, key=lambda r: r.stage):
        found.setdefault(record.key, []).append(record)
    return list(found.values())


def runs_within(records: list[LayerRecord], budget: int, group_id: str
                ) -> list[list[LayerRecord]]:
    """A group's consumers in stage order, in runs that fit ``budget``.

    A run holds its Hessians and their inverses at once (layers sharing a Hessian always
    go in the same run, one inverse per column pattern of theirs, :func:`by_blocks`);
    one run when they all fit.
    """
    shared = sharing(records)

    def cost(same: list[LayerRecord]) -> int:
        return 2 * same[0].hessian_bytes * len(by_blocks(same, group_id))

    if sum(cost(same) for same in shared) <= budget:
        return [[r for same in shared for r in same]]
    parts: list[list[LayerRecord]] = [[]]
    held = 0
    for same in shared:
        cost_ = cost(same)
        if parts[-1] and held + cost_ > budget:
            parts.append([])
            held = 0
        parts[-1].extend(same)
        held += cost_
    return parts


def by_blocks(same: list[LayerRecord], group_id: str) -> list[list[LayerRecord]]:
    """Layers sharing a Hessian, by the columns the group's units take in them."""
    found: dict[bytes, list[LayerRecord]] = {}
    for record in same:
        blocks = record.blocks[group_id]
        found.setdefault(repr(blocks.shape).encode() + blocks.tobytes(), []).append(record)
    return list(found.values())


ROOT_ROWS = 2
"""Rows per column from which the ordering gets ``W``'s Gram root instead of ``W``: its
QR (``2 rows d²`` flops) costs more than the downdates it makes cheaper, so only where
the memory saved is most of the copy."""


def order_consumers(group_id: str, same: list[LayerRecord], store: SpillStore, precision: str
              ) -> list[Consumer]:
    """The ordering's consumers of layers sharing one Hessian: their rows stacked.

    Their costs add (``Σ_rows w_M S⁻¹ w_Mᵀ`` over both row sets) and their downdates of
    ``H⁻¹`` are the same, so one inverse serves them all: a decoder block's q, k and v
    cost one Cholesky and one downdate per round instead of three. Layers whose units
    sit in other columns of the shared input stay apart.

    The weights come in Fortran order (the ordering's) and, for a float32 ordering of
    weights (and biases, when they join) stored in 32 bits or fewer, as float32: exact,
    and half the memory of a float64 copy (a third less beside the ordering's float32
    working copy). A consumer of at least :data:`ROOT_ROWS` times as many rows as
    columns comes as its :func:`~spa_opt.obs.linalg.gram_root` ``R`` (``Rᵀ R = Wᵀ W``,
    the same costs and scores): on the 1.1B decoder the residual stream's stacked gate
    and up projections then take 16 MB in float32 instead of 92, its lm_head 16 MB
    instead of 262, twice each (the task's copy and the ordering's working one).
    """
    hessian = stored_hessian(store, same[0])
    out: list[Consumer] = []
    for members in by_blocks(same, group_id):
        narrow = precision == "float32" and all(
            _narrow(r.layer.weight) and (not r.with_bias or r.layer.bias is None
                                         or _narrow(r.layer.bias)) for r in members)
        dtype = np.float32 if narrow else np.float64
        if len(members) == 1:
            weight = members[0].layer.matrix(members[0].with_bias, "F", dtype)
        else:
            width = members[0].layer.width + members[0].with_bias
            weight = np.empty((sum(r.layer.rows for r in members), width), dtype, order="F")
            start = 0
            for record in members:
                matrix = record.layer.matrix(record.with_bias, "F", dtype)
                weight[start:start + matrix.shape[0]] = matrix
                start += matrix.shape[0]
                del matrix
        if weight.shape[0] >= ROOT_ROWS * weight.shape[1]:
            weight = gram_root(weight, overwrite=True)  # the same costs on d rows
        out.append(Consumer("+".join(r.layer.name for r in members), weight, hessian,
                            members[0].blocks[group_id]))
    return out


def _narrow(value: ir.Value) -> bool:
    """Whether ``value``'s dtype fits float32 exactly (32 bits or fewer)."""
    return value.dtype is not None and value.dtype.itemsize <= 4
