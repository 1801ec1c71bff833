"""What obspa keeps per consumer layer, and the ``propagate=original`` reconstruction.

A :class:`LayerRecord` holds a layer's columns per group, whether its bias joins ``W``,
where its Hessian came from and the stage it belongs to. The Hessian itself lives in the
pass's :class:`~.store.SpillStore` under :func:`hessian_key`, so records of layers whose
Hessians were spilled cost nothing in memory.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from spa_opt.obs.linalg import energy, error, reconstruct
from spa_opt.passes.obspa_graph.layers import Layer


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
    def key(self) -> tuple[str, int]:
        """Where the dampened Hessian is stored."""
        return hessian_key(self.layer)

    def removed(self, selection: dict[str, np.ndarray]) -> np.ndarray:
        """Columns the selection removes from this layer."""
        parts = [blocks[selection[g]].ravel() for g, blocks in self.blocks.items()
                 if g in selection and len(selection[g])]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def hessian_key(layer: Layer) -> tuple[str, int]:
    """The store key of a layer's dampened Hessian."""
    return ("hessian", id(layer.weight))


def reconstruct_layer(record: LayerRecord, hessian: np.ndarray | None,
                      selection: dict[str, np.ndarray]
                      ) -> tuple[dict[str, Any], np.ndarray | None]:
    """One layer's new ``W`` (with the bias column) for the selection, and its report row."""
    start = time.perf_counter()
    removed = record.removed(selection)
    layer = record.layer
    row: dict[str, Any] = {
        "layer": layer.name, "op": layer.node.op_type, "weight": layer.weight.name,
        "columns": layer.width, "removed": int(removed.size), "source": record.source,
        "stage": record.stage, "error": 0.0, "relative_error": 0.0, "rewritten": False,
        "seconds": 0.0,
    }
    if removed.size == 0 or hessian is None:
        return row, None
    weight = layer.matrix(record.with_bias)
    new = reconstruct(weight, hessian, removed)
    scale = energy(weight, hessian)
    row["error"] = error(weight, new, hessian)
    row["relative_error"] = row["error"] / scale if scale > 0 else 0.0
    row["seconds"] = time.perf_counter() - start
    row["rewritten"] = layer.rewritable
    return row, new if layer.rewritable else None
