"""Layout operators: channels move between axes, or into slices of an axis.

Rules:

- Transpose, Squeeze, Unsqueeze: axes move, channels stay whole; squeezing a channel
  axis pins it;
- Concat along a channel axis: each input's channels sit at its offset in the output;
- Split and Slice along a channel axis: each output sees a range (or a strided
  subset) of the input's channels; the sizes and bounds are patched by removal;
- Gather with constant indices along a channel axis: output position ``k`` is input
  channel ``indices[k]``; a scalar index pins the channel it picks. Gathering rows of
  a constant table (an embedding) produces channels;
- Expand and Tile: broadcast or repeated axes carry no new channels; a shape entry
  that encodes a channel count is patched, or followed to the tensor it was read from;
- Pad along a channel axis pins it; Shape and Size only read channel counts;
- Constant and ConstantOfShape outputs are weights of the group; a ConstantOfShape's
  shape entry is patched.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from spa_opt.passes.coupling.node import NodeCoupling
from spa_opt.passes.coupling.shapetrace import Entry
from spa_opt.passes.rules.registry import rule

_PAST_END = 1 << 62


def normalized(axis: int, rank: int) -> int:
    """``axis`` counted from the front."""
    return axis + rank if axis < 0 else axis


def axes_argument(c: NodeCoupling, input_index: int) -> list[int] | None:
    """Axes given as an attribute (old opsets) or as a constant input (new ones)."""
    from_attr = c.attr("axes")
    if from_attr is not None:
        return list(from_attr)
    return c.ints(c.input(input_index))


def follow_shape_entry(
    c: NodeCoupling,
    shape_value: ir.Value | None,
    index: int,
    out: ir.Value | None,
    axis: int,
    keep: tuple[int, ...] = (),
) -> None:
    """Make sure the shape entry that sets ``out[axis]`` can follow a removal.

    A constant entry is patched (unless it is one of ``keep``, such as Reshape's
    ``0``/``-1`` or Expand's ``1``, which follow by themselves); an entry read with
    ``Shape`` couples ``out[axis]`` with the axis it was read from; a size read with
    ``Shape`` times fixed constants (``kv_heads * n_rep``) couples each channel of that
    axis with its block of ``scale`` positions; anything else pins.
    """
    if shape_value is None or out is None:
        return
    entries = c.trace(shape_value)
    if entries is None or index >= len(entries):
        c.pin(out, axis, "its size comes from a run-time shape that could not be traced",
              "untraced-shape")
        return
    entry = entries[index]
    if entry.kind == "const":
        if entry.number not in keep:
            holder = next(i for i, v in enumerate(c.node.inputs) if v is shape_value)
            c.patch("shape-entry", f"entry {entry.index} of `{entry.source}`", out, axis,
                    entry=(holder, index))
    elif entry.kind == "dim" and entry.dim is not None:
        c.identity(entry.dim[0], entry.dim[1], out, axis)
    elif entry.dim is not None and entry.scale > 1 and _scaled_size(c, entry, out, axis):
        size = (c.dims(out) or ())[axis]
        c.link(entry.dim[0], entry.dim[1], out, axis,
               keys_b=np.arange(size) // entry.scale)  # type: ignore[operator]
    else:
        where = f" by `{entry.source}`" if entry.source else ""
        c.pin(out, axis, f"its size is computed at run time{where} from values that could "
              "not be traced", "untraced-shape")


def _scaled_size(c: NodeCoupling, entry: Entry, out: ir.Value, axis: int) -> bool:
    """Whether ``out[axis]`` is exactly ``scale`` times the size the entry reads."""
    out_dims, read = c.dims(out), c.dims(entry.dim[0])
    if out_dims is None or read is None or out_dims[axis] is None:
        return False
    source = read[entry.dim[1]]
    return source is not None and out_dims[axis] == source * entry.scale


@rule("Transpose")
def transpose(c: NodeCoupling) -> None:
    """Output axis ``j`` is input axis ``perm[j]``."""
    dims = c.dims(c.input(0))
    if dims is None:
        return
    perm = c.attr("perm") or list(reversed(range(len(dims))))
    for out_axis, in_axis in enumerate(perm):
        c.identity(c.input(0), in_axis, c.output(0), out_axis)


@rule("Squeeze")
def squeeze(c: NodeCoupling) -> None:
    """Remaining axes keep their channels; a squeezed channel axis is pinned."""
    data, out = c.input(0), c.output(0)
    dims = c.dims(data)
    if dims is None:
        return
    axes = axes_argument(c, 1)
    if axes is None:
        if len(c.node.inputs) > 1 and c.input(1) is not None:
            c.pin_tracked(data, "Squeeze axes are computed at run time")
            return
        axes = [i for i, d in enumerate(dims) if d == 1]
    removed = {normalized(a, len(dims)) for a in axes}
    kept = [a for a in range(len(dims)) if a not in removed]
    for out_axis, in_axis in enumerate(kept):
        c.identity(data, in_axis, out, out_axis)
    for axis in removed & c.tracked(data):
        c.pin(data, axis, "Squeeze removes this single-channel axis")


@rule("Unsqueeze")
def unsqueeze(c: NodeCoupling) -> None:
    """Existing axes keep their channels at their new positions."""
    data, out = c.input(0), c.output(0)
    dims = c.dims(data)
    axes = axes_argument(c, 1)
    if dims is None or axes is None:
        c.pin_tracked(data, "Unsqueeze axes are computed at run time")
        return
    rank = len(dims) + len(axes)
    inserted = {normalized(a, rank) for a in axes}
    kept = [a for a in range(rank) if a not in inserted]
    for in_axis, out_axis in enumerate(kept):
        c.identity(data, in_axis, out, out_axis)


@rule("Concat")
def concat(c: NodeCoupling) -> None:
    """Each input's channels sit at its offset along the concatenation axis."""
    out = c.output(0)
    out_dims = c.dims(out)
    if out_dims is None:
        return
    axis = normalized(c.attr("axis", 0), len(out_dims))
    offset: int | None = 0
    for operand in c.node.inputs:
        dims = c.dims(operand)
        if operand is None or dims is None or len(dims) != len(out_dims):
            continue
        for k in range(len(dims)):
            if k != axis:
                c.identity(operand, k, out, k)
        size = dims[axis]
        if offset is None or size is None:
            c.pin(operand, axis, "Concat input of unknown size along the channel axis")
            offset = None
            continue
        c.link(operand, axis, out, axis, keys_a=np.arange(size) + offset)
        offset += size


def _split_sizes(c: NodeCoupling, size: int | None) -> list[int] | None:
    outputs = len(c.node.outputs)
    sizes = c.attr("split")
    if sizes is None and c.input(1) is not None:
        sizes = c.ints(c.input(1))
        if sizes is None:
            return None
    if sizes is None:
        if size is None:
            return None
        parts = c.attr("num_outputs", outputs)
        chunk = -(-size // parts)
        sizes = [min(chunk, size - i * chunk) for i in range(parts)]
    return list(sizes)


@rule("Split")
def split(c: NodeCoupling) -> None:
    """Output ``i`` holds the input's channels ``[offset_i, offset_i + size_i)``."""
    data = c.input(0)
    dims = c.dims(data)
    if dims is None:
        return
    axis = normalized(c.attr("axis", 0), len(dims))
    sizes = _split_sizes(c, dims[axis])
    for out in c.node.outputs:
        for k in range(len(dims)):
            if k != axis:
                c.identity(data, k, out, k)
    if sizes is None:
        c.pin(data, axis, "Split sizes are computed at run time")
        return
    offset = 0
    for out, size in zip(c.node.outputs, sizes, strict=False):
        c.link(out, axis, data, axis, keys_a=np.arange(size) + offset)
        offset += size
    c.patch("split-sizes", "split sizes", data, axis)


def _slice_arguments(c: NodeCoupling) -> tuple[list[int], list[int], list[int], list[int]] | None:
    if c.attr("starts") is not None:  # opset < 10
        starts, ends = list(c.attr("starts")), list(c.attr("ends"))
        axes = list(c.attr("axes") or range(len(starts)))
        return starts, ends, axes, [1] * len(starts)
    starts, ends = c.ints(c.input(1)), c.ints(c.input(2))
    if starts is None or ends is None:
        return None
    axes = c.ints(c.input(3)) if c.input(3) is not None else list(range(len(starts)))
    steps = c.ints(c.input(4)) if c.input(4) is not None else [1] * len(starts)
    if axes is None or steps is None:
        return None
    return starts, ends, axes, steps


@rule("Slice")
def slice_(c: NodeCoupling) -> None:
    """Output position ``k`` of a sliced axis is input position ``start + k * step``."""
    data, out = c.input(0), c.output(0)
    dims = c.dims(data)
    if dims is None:
        return
    arguments = _slice_arguments(c)
    if arguments is None:
        axes = c.ints(c.input(3)) if c.input(3) is not None else None
        if axes is None:
            c.pin_tracked(data, "Slice bounds are computed at run time", "untraced-shape")
            c.pin_tracked(out, "Slice bounds are computed at run time", "untraced-shape")
            return
        # Constant axes, bounds computed at run time (rotary halves: ``size // 2``): the
        # other axes pass through; a sliced axis that carries channels is pinned.
        sliced_axes = {normalized(a, len(dims)) for a in axes}
        for axis in range(len(dims)):
            if axis not in sliced_axes:
                c.identity(data, axis, out, axis)
            elif axis in c.tracked(data) or axis in c.tracked(out):
                c.pin(data, axis, "Slice bounds are computed at run time", "untraced-shape")
                c.pin(out, axis, "Slice bounds are computed at run time", "untraced-shape")
        return
    sliced = {}
    for start, end, axis, step in zip(*arguments, strict=False):
        sliced[normalized(axis, len(dims))] = (start, end, step)
    for axis, size in enumerate(dims):
        if axis not in sliced:
            c.identity(data, axis, out, axis)
            continue
        if size is None:
            c.pin(data, axis, "sliced along a channel axis of unknown size")
            continue
        start, end, step = sliced[axis]
        positions = np.arange(size)[slice(start, min(end, _PAST_END), step)]
        c.link(out, axis, data, axis, keys_a=positions)
        if positions.size != size:
            c.patch("slice-bounds", f"bounds on axis {axis}", data, axis)


@rule("Gather")
def gather(c: NodeCoupling) -> None:
    """Rows picked by constant indices; gathering from a constant table produces channels."""
    data, indices, out = c.input(0), c.input(1), c.output(0)
    dims, index_dims = c.dims(data), c.dims(indices)
    if dims is None or index_dims is None:
        return
    axis = normalized(c.attr("axis", 0), len(dims))
    for k in range(len(dims)):
        if k != axis:
            c.identity(data, k, out, k if k < axis else k - 1 + len(index_dims))
    for t in range(len(index_dims)):
        c.identity(indices, t, out, axis + t)
    if c.is_constant(data) and len(dims) == 2 and axis == 0:
        c.seed(data, 1, "out")  # an embedding table
    picked = c.const(indices)
    if picked is None or picked.ndim > 1 or dims[axis] is None:
        c.pin(data, axis, "Gather along the channel axis with indices computed at run time")
        return
    positions = np.where(picked < 0, picked + dims[axis], picked).astype(np.int64)
    if picked.ndim == 0:
        c.pin(data, axis, "Gather picks this channel by a constant index",
              positions=[int(positions)])
        c.consume(data, axis)
    else:
        c.link(out, axis, data, axis, keys_a=positions)
    c.patch("gather-indices", "indices", data, axis)


@rule("Expand")
def expand(c: NodeCoupling) -> None:
    """Axes of the input's size pass through; broadcast axes carry no channels."""
    data, shape, out = c.input(0), c.input(1), c.output(0)
    dims, out_dims = c.dims(data), c.dims(out)
    if dims is None or out_dims is None:
        return
    offset = len(out_dims) - len(dims)
    entries = c.trace(shape) if shape is not None else None
    shape_offset = len(out_dims) - len(entries) if entries is not None else 0
    for out_axis in range(len(out_dims)):
        in_axis = out_axis - offset
        if in_axis >= 0 and not (dims[in_axis] == 1 and out_dims[out_axis] != 1):
            c.identity(data, in_axis, out, out_axis)
        if out_axis in c.tracked(out) and out_axis - shape_offset >= 0:
            follow_shape_entry(c, shape, out_axis - shape_offset, out, out_axis, keep=(1, -1))
    if shape is not None:
        c.consume(shape, 0)


@rule("Tile")
def tile(c: NodeCoupling) -> None:
    """Output position ``k`` of a tiled axis is input position ``k % size``."""
    data, out = c.input(0), c.output(0)
    dims = c.dims(data)
    repeats = c.ints(c.input(1))
    if dims is None:
        return
    if repeats is None:
        c.pin_tracked(data, "Tile repeats are computed at run time", "untraced-shape")
        c.pin_tracked(out, "Tile repeats are computed at run time", "untraced-shape")
        return
    for axis, (size, times) in enumerate(zip(dims, repeats, strict=False)):
        if times == 1 or size is None:
            c.identity(data, axis, out, axis)
        else:
            c.link(out, axis, data, axis, keys_a=np.arange(size * times) % size)


@rule("Pad")
def pad(c: NodeCoupling) -> None:
    """Unpadded axes pass through; padding a channel axis pins it.

    Pad amounts computed at run time (TensorFlow-style "same" padding derives them
    from the spatial sizes) are traced: an axis whose two amounts are fixed zeros
    (constants, a ConstantOfShape fill, arithmetic on those) passes through; an axis
    with an amount computed from run-time sizes is treated as padded, since after a
    removal it could change, so it pins only if it carries channels. When every
    amount is known, the output's dims are stated for the solver (shape inference
    cannot size a Pad whose amounts are computed).
    """
    data, out = c.input(0), c.output(0)
    dims = c.dims(data)
    if dims is None:
        return
    amounts, numbers = _pad_amounts(c)
    axes = c.ints(c.input(3)) if c.input(3) is not None else list(range(len(dims)))
    if amounts is None or axes is None or len(amounts) != 2 * len(axes):
        c.pin_tracked(data, "Pad amounts are computed at run time", "untraced-shape")
        c.pin_tracked(out, "Pad amounts are computed at run time", "untraced-shape")
        return
    if numbers is not None and c.dims(out) != dims:  # inference could not size the output
        grown = list(dims)
        for i, a in enumerate(axes):
            axis = normalized(a, len(dims))
            if grown[axis] is not None:
                grown[axis] += numbers[i] + numbers[i + len(axes)]
        c.refine_dims(out, tuple(grown))
    padded = {
        normalized(a, len(dims))
        for i, a in enumerate(axes)
        if amounts[i] != 0 or amounts[i + len(axes)] != 0
    }
    for axis in range(len(dims)):
        if axis in padded:
            c.pin(data, axis, "Pad pads the channel axis")
            c.pin(out, axis, "Pad pads the channel axis")
        else:
            c.identity(data, axis, out, axis)


def _pad_amounts(c: NodeCoupling) -> tuple[list[int | None] | None, list[int] | None]:
    """Pad amounts as literals (None where computed at run time), and all their values.

    The first list says which axes are surely unpadded whatever a removal does; the
    second, when every amount is known now, sizes the output for the solver.
    """
    given = c.attr("pads") or c.attr("paddings") or c.ints(c.input(1))
    if given is not None:
        return list(given), list(given)
    pads = c.input(1)
    entries = c.trace(pads) if pads is not None else None
    if entries is None:
        return None, None
    numbers = [e.number for e in entries]
    known = None if any(n is None for n in numbers) else [int(n) for n in numbers]
    return [e.number if e.fixed else None for e in entries], known


@rule("Shape", "Size")
def shape_reader(c: NodeCoupling) -> None:
    """Reading a shape is fine: it follows the tensor at run time."""
    for axis in c.tracked(c.input(0)):
        c.consume(c.input(0), axis)


@rule("Constant")
def constant(c: NodeCoupling) -> None:
    """A constant's channels are sliced like an initializer's."""
    for axis in c.tracked(c.output(0)):
        c.consume(c.output(0), axis)


@rule("ConstantOfShape")
def constant_of_shape(c: NodeCoupling) -> None:
    """Filled constant: the shape entry of each channel axis is patched."""
    out = c.output(0)
    for axis in c.tracked(out):
        c.consume(out, axis)
        follow_shape_entry(c, c.input(0), axis, out, axis)
