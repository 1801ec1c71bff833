"""What obspa keeps per consumer layer, and its ``propagate=original`` reconstruction task and row.

A :class:`LayerRecord` holds a layer's columns per group, whether its bias joins ``W``,
where its Hessian came from and the stage it belongs to. The Hessian itself lives in the
pass's :class:`~.store.SpillStore` under :func:`hessian_key`, once for all layers that
read the same activation, so records of layers whose Hessians were spilled cost nothing
in memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from spa_opt.obs.linalg import ReconstructResult, ReconstructTask
from spa_opt.passes.obspa_graph.layers import Layer, key_of


@dataclasses.dataclass(eq=False)
class LayerRecord:
    """One consumer layer as obspa sees it."""

    layer: Layer
    blocks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Group id -> the layer's columns of every unit ``(units, b)``."""
    source: str = ""
    with_bias: bool = False
    stage: int = 0
    hessian_bytes: int = 0

    @property
    def key(self) -> tuple[Any, ...]:
        """Where the dampened Hessian is stored: shared by layers that read the same."""
        return hessian_key(self.layer, self.with_bias)

    def removed(self, selection: dict[str, np.ndarray]) -> np.ndarray:
        """Columns the selection removes from this layer."""
        parts = [blocks[selection[g]].ravel() for g, blocks in self.blocks.items()
                 if g in selection and len(selection[g])]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def hessian_key(layer: Layer, with_bias: bool) -> tuple[Any, ...]:
    """The store key of a layer's dampened Hessian.

    Layers that read the same activation the same way (:func:`~.layers.key_of`: a
    decoder block's q, k and v; gate and up) and agree on ``with_bias`` have one
    Hessian, stored once, and the ordering treats them as one consumer with their rows
    stacked.
    """
    return ("hessian", *key_of(layer), with_bias)


def reconstruct_task(record: LayerRecord, hessian: np.ndarray | None,
                     selection: dict[str, np.ndarray]) -> ReconstructTask | None:
    """The layer's reconstruction as arrays, or None when it loses nothing (or has no H)."""
    removed = record.removed(selection)
    if removed.size == 0 or hessian is None:
        return None
    return ReconstructTask(record.layer.matrix(record.with_bias, record.layer.order),
                           hessian, removed)


def reconstruct_row(record: LayerRecord, selection: dict[str, np.ndarray],
                    result: ReconstructResult | None
                    ) -> tuple[dict[str, Any], np.ndarray | None]:
    """The report row of a layer's reconstruction, and its new ``W`` when it is written."""
    layer = record.layer
    row: dict[str, Any] = {
        "layer": layer.name, "op": layer.node.op_type, "weight": layer.weight.name,
        "columns": layer.width, "removed": int(record.removed(selection).size),
        "source": record.source, "stage": record.stage, "error": 0.0,
        "relative_error": 0.0, "rewritten": False, "seconds": 0.0,
    }
    if result is None:
        return row, None
    row["error"] = result.error
    row["relative_error"] = result.error / result.energy if result.energy > 0 else 0.0
    row["seconds"] = result.seconds
    row["rewritten"] = layer.rewritable
    return row, result.weight if layer.rewritable else None
