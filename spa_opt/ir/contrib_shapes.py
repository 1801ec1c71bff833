"""Output shapes of onnxruntime contrib ops that neither ONNX nor its symbolic inference know.

ONNX's shape inference has no schema for ``com.microsoft`` operators, and onnxruntime's
symbolic inference (:mod:`spa_opt.ir.shapes`) knows only some of them: in a QOperator
graph from ``quantize_static`` it sizes ``QLinearAdd`` but not
``QLinearGlobalAveragePool`` or ``QGemm``, so every value after the pooling, the
default-domain ``Flatten`` included, stays unshaped, and the classifier's input channels
are pinned for want of a shape. One row per operator here gives the output dims from
the input dims; :func:`fill` applies the table, and the caller re-runs ONNX's inference
so the default-domain ops behind a filled value get their shapes too.

A row returns None when the inputs it needs are not known; it never guesses.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

Dims = tuple[int | str | None, ...]
ShapeRule = Callable[[ir.Node, list[Dims | None]], Dims | None]

_MS = "com.microsoft"


def _attr(node: ir.Node, name: str, default: int) -> int:
    attribute = node.attributes.get(name)
    return default if attribute is None else int(attribute.value)


def _global_pool(node: ir.Node, inputs: list[Dims | None]) -> Dims | None:
    """``[N, C, *spatial]`` to ``[N, C, 1, ...]`` (channels last: ``[N, 1, ..., C]``)."""
    dims = inputs[0]
    if dims is None or len(dims) < 3:
        return None
    channel = len(dims) - 1 if _attr(node, "channels_last", 0) else 1
    return tuple(d if k in (0, channel) else 1 for k, d in enumerate(dims))


def _qgemm(node: ir.Node, inputs: list[Dims | None]) -> Dims | None:
    """``op(A) [M, K] @ op(B) [K, N]``: ``[M, N]``."""
    a, b = inputs[0], inputs[3] if len(inputs) > 3 else None
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    rows = a[1] if _attr(node, "transA", 0) else a[0]
    cols = b[0] if _attr(node, "transB", 0) else b[1]
    return (rows, cols)


def _same_as_input(node: ir.Node, inputs: list[Dims | None]) -> Dims | None:
    """Elementwise: the input's dims."""
    return inputs[0] if inputs else None


def _qlinear_concat(node: ir.Node, inputs: list[Dims | None]) -> Dims | None:
    """Data inputs at 2, 5, 8, ...: their dims with the concatenation axis summed."""
    data = inputs[2::3]
    if not data or any(d is None or len(d) != len(data[0]) for d in data):  # type: ignore[arg-type]
        return None
    first = data[0]
    assert first is not None
    axis = _attr(node, "axis", 0) % len(first)
    sizes = [d[axis] for d in data if d is not None]
    total = sum(s for s in sizes if isinstance(s, int)) if all(
        isinstance(s, int) for s in sizes) else None
    return tuple(total if k == axis else d for k, d in enumerate(first))


SHAPE_RULES: dict[tuple[str, str], ShapeRule] = {
    (_MS, "QLinearGlobalAveragePool"): _global_pool,
    (_MS, "QGemm"): _qgemm,
    (_MS, "QLinearLeakyRelu"): _same_as_input,
    (_MS, "QLinearSigmoid"): _same_as_input,
    (_MS, "QLinearSoftmax"): _same_as_input,
    (_MS, "QLinearConcat"): _qlinear_concat,
}
"""(domain, op) -> output 0's dims from the inputs' dims; output 0 takes the dtype of
the output zero point when the node has one (QOperator outputs are its type), else of
input 0."""

_OUTPUT_ZERO_POINT = {"QGemm": 8, "QLinearGlobalAveragePool": 4, "QLinearLeakyRelu": 4,
                      "QLinearSigmoid": 4, "QLinearSoftmax": 4, "QLinearConcat": 1}


def _dims(value: ir.Value | None) -> Dims | None:
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim)
                                                else None) for d in value.shape.dims)


def _dtype(node: ir.Node) -> ir.DataType | None:
    at = _OUTPUT_ZERO_POINT.get(node.op_type)
    for index in (at, 0):
        if index is not None and index < len(node.inputs) and node.inputs[index] is not None:
            found = node.inputs[index].dtype  # type: ignore[union-attr]
            if found is not None:
                return found
    return None


def fill(model: ir.Model) -> int:
    """Shape the unshaped outputs of the table's operators; how many were filled."""
    filled = 0
    for node in model.graph:  # topological: a filled output feeds the next row
        domain = "" if node.domain == "ai.onnx" else node.domain
        shape_rule = SHAPE_RULES.get((domain, node.op_type))
        if shape_rule is None or not node.outputs or node.outputs[0].shape is not None:
            continue
        dims = shape_rule(node, [_dims(v) for v in node.inputs])
        if dims is None:
            continue
        out = node.outputs[0]
        out.shape = ir.Shape(list(dims))
        if out.type is None and (dtype := _dtype(node)) is not None:
            out.type = ir.TensorType(dtype)
        filled += 1
    return filled
