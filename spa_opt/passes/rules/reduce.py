"""Reductions, Softmax, pooling and resizing: which axes survive, and how.

Rules:

- Reduce*: kept axes pass through (at shifted positions without ``keepdims``); a
  reduction over a channel axis consumes it (valid, and marked as normalizing, since
  an exported RMSNorm's ReduceMean is one); ArgMax/ArgMin over a channel axis pin it,
  because the index they return would change meaning;
- Softmax, LogSoftmax, Hardmax: other axes pass through; normalizing over a channel
  axis pins it (removing a class or a key position changes every other value);
- MaxPool, AveragePool, LpPool, GlobalAveragePool, GlobalMaxPool, GlobalLpPool:
  batch and channel axes pass through; windowed pooling over a channel axis pins it,
  global pooling over one reduces it (a lowered LayerNorm mean);
- Resize and Upsample: axes of unchanged size pass through; a ``sizes`` entry on a
  channel axis is patched or followed to the tensor it was read from.
"""

from __future__ import annotations

from spa_opt.passes.coupling.node import NodeCoupling
from spa_opt.passes.rules.layout import axes_argument, follow_shape_entry, normalized
from spa_opt.passes.rules.registry import rule

REDUCE = (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
)


def _reduce(c: NodeCoupling, axes: list[int] | None, keepdims: bool, pins: bool) -> None:
    data, out = c.input(0), c.output(0)
    dims = c.dims(data)
    if dims is None:
        return
    reduced = set(range(len(dims))) if axes is None else {normalized(a, len(dims)) for a in axes}
    position = 0
    for axis in range(len(dims)):
        if axis not in reduced:
            c.identity(data, axis, out, position)
        elif axis in c.tracked(data):
            if pins:
                c.pin(data, axis, f"{c.node.op_type} over the channel axis")
            else:
                c.consume(data, axis, normalizes=True)
        if keepdims or axis not in reduced:
            position += 1


@rule(*REDUCE)
def reduction(c: NodeCoupling) -> None:
    """Kept axes pass through; reducing a channel axis consumes it."""
    axes = axes_argument(c, 1)
    if axes is None and c.input(1) is not None:
        c.pin_tracked(c.input(0), "reduction axes computed at run time", "untraced-shape")
        return
    if axes is not None and not axes and c.attr("noop_with_empty_axes", 0):
        dims = c.dims(c.input(0)) or ()
        for axis in range(len(dims)):
            c.identity(c.input(0), axis, c.output(0), axis)
        return
    _reduce(c, axes, bool(c.attr("keepdims", 1)), pins=False)


@rule("ArgMax", "ArgMin")
def arg_reduction(c: NodeCoupling) -> None:
    """Kept axes pass through; an index over channels pins them."""
    _reduce(c, [c.attr("axis", 0)], bool(c.attr("keepdims", 1)), pins=True)


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(c: NodeCoupling) -> None:
    """Other axes pass through; the normalized axis must not carry channels."""
    data, out = c.input(0), c.output(0)
    dims = c.dims(data)
    if dims is None:
        return
    axis = normalized(c.attr("axis", -1 if _opset(c) >= 13 else 1), len(dims))
    normalized_axes = {axis} if _opset(c) >= 13 else set(range(axis, len(dims)))
    for k in range(len(dims)):
        if k in normalized_axes:
            c.pin(data, k, f"{c.node.op_type} normalizes over the channel axis")
            c.pin(out, k, f"{c.node.op_type} normalizes over the channel axis")
        else:
            c.identity(data, k, out, k)


def _opset(c: NodeCoupling) -> int:
    graph = c.node.graph
    opsets = graph.opset_imports if graph is not None else {}
    return opsets.get("", opsets.get("ai.onnx", 13))


@rule("MaxPool", "AveragePool", "LpPool")
def pool(c: NodeCoupling) -> None:
    """Batch and channel axes pass through every output (MaxPool's indices too)."""
    for out in c.node.outputs:
        c.identity(c.input(0), 0, out, 0)
        c.identity(c.input(0), 1, out, 1)
    indices = c.output(1)  # flat positions count the channels: removal changes them
    if indices is not None and indices.uses():
        c.pin(indices, 1, "MaxPool indices encode positions that count the channels")


@rule("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def global_pool(c: NodeCoupling) -> None:
    """Batch and channel axes pass through; pooling over a channel axis reduces it.

    tf2onnx lowers a LayerNorm's mean over the hidden size of a ``[b, s, h]`` tensor
    to a GlobalAveragePool, so axes after the first two may carry channels.
    """
    data = c.input(0)
    c.identity(data, 0, c.output(0), 0)
    c.identity(data, 1, c.output(0), 1)
    for axis in c.tracked(data) - {0, 1}:
        c.consume(data, axis, normalizes=True)


@rule("Resize", "Upsample")
def resize(c: NodeCoupling) -> None:
    """Axes of unchanged size pass through; channel entries of ``sizes`` are followed."""
    data, out = c.input(0), c.output(0)
    dims, out_dims = c.dims(data), c.dims(out)
    if dims is None or out_dims is None:
        return
    sizes = c.input(3) if c.node.op_type == "Resize" else None
    listed = c.attr("axes")  # opset 18: sizes and scales list only these axes
    entry_of = {normalized(a, len(dims)): i for i, a in enumerate(listed)} if listed else None
    for axis, (size, out_size) in enumerate(zip(dims, out_dims, strict=False)):
        if size is not None and size == out_size:
            c.identity(data, axis, out, axis)
            entry = axis if entry_of is None else entry_of.get(axis)
            if sizes is not None and entry is not None and axis in c.tracked(out):
                follow_shape_entry(c, sizes, entry, out, axis)
