"""Shapes inferred for a moment: analyses need them, outputs should not gain them.

Counting FLOPs or checking channel consistency needs every intermediate shape,
but writing inferred shapes into the model would change what a plain ``dce`` run
saves. :func:`temporary_shapes` infers them, yields, and puts back exactly what
the model had, including the initializer order onnx_ir's inference disturbs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass


@contextlib.contextmanager
def temporary_shapes(model: ir.Model) -> Iterator[ir.Model]:
    """Infer shapes for the duration of the block, then restore the model's own."""
    values = [v for node in model.graph.all_nodes() for v in node.outputs]
    saved = [(v, v.shape, v.type) for v in values]
    # onnx_ir's inference detaches big initializers and re-adds them at the end.
    order = list(model.graph.initializers)
    try:
        ShapeInferencePass(strict_mode=False)(model)
        yield model
    finally:
        for value, shape, type_ in saved:
            value.type = type_
            value.shape = shape
        current = model.graph.initializers
        kept = [name for name in order if name in current]
        if list(current)[: len(kept)] != kept:
            added = [name for name in current if name not in set(kept)]
            for name in [*kept, *added]:
                model.graph.register_initializer(current.pop(name))
