"""Reshape-like operators: channel axes split, merge or move between positions.

A tensor is a flat array; axis ``i`` of size ``d`` with stride ``s`` (the product of
the sizes after it) is the digit range ``[s, s*d)`` of the flat index. Comparing the
ranges of an input axis ``i`` and an output axis ``j`` of a Reshape gives every rule:

- equal ranges: the same axis (identity);
- ``i`` inside ``j`` (a merge, such as ``[c, h, w] -> [c*h*w]`` or heads merged back):
  output position ``t`` belongs to input channel ``(t*s_j // s_i) % d_i``, so each
  channel owns a block of positions;
- ``j`` inside ``i`` (a split, such as ``[h*d] -> [h, d]``): input channel ``c`` falls
  in output row ``(c*s_i // s_j) % d_j``, so channels go in blocks. A split offers
  several output axes; the ``heads`` option picks the major one (whole heads) or the
  minor one (the head dimension across heads). An axis that is taken apart downstream
  (a fused qkv projection reshaped to ``[b, n, 3, h, d]`` and unbound along the 3)
  is skipped: heads stay the units. A channel shuffle (split, transpose
  swapping the two parts, merge) always takes the minor one: a slot in every group,
  so the group count stays;
- partly overlapping ranges mix a channel axis with others: pinned.

Going backward through a merge is not allowed to invent channels: an output axis
built only from axes that carry none pins. Every output axis that carries channels
must have a shape entry removal can patch (see ``follow_shape_entry``).

DepthToSpace and SpaceToDepth are fixed instances: output channel ``c % C'`` (DCR)
or ``c // b^2`` (CRD) for DepthToSpace, input channel ``k % C`` for SpaceToDepth.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from spa_opt.passes.coupling.node import Dims, NodeCoupling
from spa_opt.passes.rules.layout import follow_shape_entry
from spa_opt.passes.rules.registry import rule


def _ranges(dims: Dims) -> list[tuple[int, int] | None]:
    """``(stride, size)`` of every axis, None where a size after it is unknown."""
    result: list[tuple[int, int] | None] = [None] * len(dims)
    stride: int | None = 1
    for axis in range(len(dims) - 1, -1, -1):
        size = dims[axis]
        result[axis] = (stride, size) if stride is not None and size is not None else None
        stride = stride * size if stride is not None and size is not None else None
    return result


def _relation(a: tuple[int, int], b: tuple[int, int]) -> str:
    """How digit range ``a`` sits against ``b``: same, inside, contains, apart, mixed."""
    (sa, da), (sb, db) = a, b
    lo_a, hi_a, lo_b, hi_b = sa, sa * da, sb, sb * db
    if (lo_a, hi_a) == (lo_b, hi_b):
        return "same"
    if hi_a <= lo_b or hi_b <= lo_a:
        return "apart"
    if lo_b <= lo_a and hi_a <= hi_b and lo_a % lo_b == 0 and hi_b % hi_a == 0:
        return "inside"
    if lo_a <= lo_b and hi_b <= hi_a and lo_b % lo_a == 0 and hi_a % hi_b == 0:
        return "contains"
    return "mixed"


_PLACEHOLDERS = (1_000_003, 1_000_033, 1_000_037, 1_000_039, 1_000_081, 1_000_099)
"""Stand-in sizes for symbolic dims both sides share (large primes: no accidental
divisibility between them and real channel counts)."""


def _shared_suffix(data: ir.Value, out: ir.Value, in_dims: Dims, out_dims: Dims
                   ) -> tuple[Dims, Dims]:
    """Dims with a symbolic trailing run that both sides share given stand-in sizes.

    The innermost axes of ``[b, kv, n_rep, past + seq, hd] -> [b, kv * n_rep, past + seq,
    hd]`` are the same axes on both sides whatever ``past + seq`` is at run time: equal
    trailing dims have equal strides. Giving the shared symbolic ones one stand-in size
    on both sides lets the digit ranges of the axes before them be compared.
    """
    if data.shape is None or out.shape is None:
        return in_dims, out_dims
    ins, outs = list(in_dims), list(out_dims)
    used = 0
    for k in range(1, min(len(ins), len(outs)) + 1):
        a, b = data.shape[-k], out.shape[-k]
        if isinstance(a, int) and isinstance(b, int):
            if a != b:
                break
            continue
        if isinstance(a, int) or isinstance(b, int) or a.value is None or a.value != b.value \
                or used == len(_PLACEHOLDERS):
            break
        ins[-k] = outs[-k] = _PLACEHOLDERS[used]
        used += 1
    return tuple(ins), tuple(outs)


def couple_reshape(c: NodeCoupling, data: ir.Value | None, out: ir.Value | None) -> None:
    """Link channel axes of ``data`` and ``out`` as the flat layout dictates."""
    in_dims, out_dims = c.dims(data), c.dims(out)
    if data is None or out is None or in_dims is None or out_dims is None:
        return
    in_dims, out_dims = _shared_suffix(data, out, in_dims, out_dims)
    in_ranges, out_ranges = _ranges(in_dims), _ranges(out_dims)
    tracked_in, tracked_out = c.tracked(data), c.tracked(out)
    mixed = "Reshape mixes the channel axis with other axes"
    for i, in_range in enumerate(in_ranges):
        if in_range is None or in_range[1] == 1:
            if i in tracked_in:
                c.pin(data, i, "reshaped along a channel axis of size 1 or of unknown layout")
            continue
        relations = {
            j: _relation(in_range, r) for j, r in enumerate(out_ranges) if r and r[1] > 1
        }
        if "mixed" in relations.values() and (i in tracked_in or tracked_out & set(relations)):
            c.pin(data, i, mixed)
            for j, kind in relations.items():
                if kind == "mixed":
                    c.pin(out, j, mixed)
            continue
        for j, kind in relations.items():
            if kind == "same":
                c.identity(data, i, out, j)
            elif kind == "inside" and (i in tracked_in or j in tracked_out):
                merge = (np.arange(out_dims[j]) * out_range_stride(out_ranges, j)) // in_range[0]
                if i in tracked_in:
                    c.link(out, j, data, i, keys_a=merge % in_range[1])
        splits = [j for j, kind in relations.items() if kind == "contains"]
        if splits and not any(kind in ("same", "inside") for kind in relations.values()):
            chosen = {j for j in splits if j in tracked_out}
            if i in tracked_in:
                chosen.add(_split_axis(c, out, splits, out_ranges))
            for j in chosen:
                keys = (np.arange(in_range[1]) * in_range[0] // out_range_stride(out_ranges, j))
                c.link(data, i, out, j, keys_a=keys % out_dims[j])
    for j in tracked_out:
        if not c.is_handled(out, j):
            c.pin(out, j, "Reshape builds this channel axis from axes that carry no channels")


def _split_axis(
    c: NodeCoupling, out: ir.Value, splits: list[int], ranges: list[tuple[int, int] | None]
) -> int:
    """The output axis a split couples through (see the module docstring)."""
    by_stride = sorted(splits, key=lambda j: -out_range_stride(ranges, j))
    if c.options.heads == "dim" or _is_channel_shuffle(out, splits):
        return by_stride[-1]
    for axis in by_stride:
        if not _taken_apart(out, axis):
            return axis
    return by_stride[0]


_TAKE_APART = {"Gather": "axis", "Split": "axis"}


def _taken_apart(value: ir.Value, axis: int, depth: int = 4) -> bool:
    """Whether ``value[axis]`` is split into separate tensors downstream (q, k, v).

    A fused projection reshaped to ``[b, n, 3, heads, dim]`` and unbound along the
    ``3`` axis: that axis separates q, k and v, so heads, not it, are the units.
    """
    for user in value.consumers():
        op = user.op_type
        if op == "Transpose" and depth:
            perm = list(user.attributes["perm"].value) if "perm" in user.attributes else None
            if perm is not None and axis in perm and _taken_apart(
                user.outputs[0], perm.index(axis), depth - 1
            ):
                return True
        elif op in _TAKE_APART:
            attribute = user.attributes.get(_TAKE_APART[op])
            rank = len(value.shape) if value.shape is not None else 0
            picked = attribute.value if attribute is not None else 0
            if rank and picked % rank == axis:
                return True
        elif op in ("Slice", "Squeeze") and len(user.inputs) > 1 and user.inputs[1] is not None:
            axes = user.inputs[3 if op == "Slice" else 1]
            data = axes.const_value.numpy().reshape(-1) if axes and axes.const_value else None
            rank = len(value.shape) if value.shape is not None else 0
            if data is not None and rank and axis in {int(a) % rank for a in data}:
                return True
    return False


def _is_channel_shuffle(out: ir.Value, split_axes: list[int]) -> bool:
    """Whether ``out`` is transposed with its split axes swapped, then merged back.

    A channel shuffle (``[c] -> [g, c/g] -> transpose -> [c]``) keeps its group count:
    it couples through the minor axis, a slot in every group, not whole groups.
    """
    users = out.consumers()
    if len(users) != 1 or users[0].op_type != "Transpose" or len(split_axes) != 2:
        return False
    perm_attr = users[0].attributes.get("perm")
    if perm_attr is None:
        return False
    perm = list(perm_attr.value)
    first, second = sorted(split_axes)
    swapped = perm.index(second) + 1 == perm.index(first)
    after = users[0].outputs[0].consumers()
    return swapped and len(after) == 1 and after[0].op_type == "Reshape"


def out_range_stride(ranges: list[tuple[int, int] | None], axis: int) -> int:
    """Stride of ``axis`` (known: only axes with known ranges are compared)."""
    found = ranges[axis]
    assert found is not None
    return found[0]


@rule("Reshape")
def reshape(c: NodeCoupling) -> None:
    """Layout-driven coupling; every channel entry of the target shape is patchable."""
    couple_reshape(c, c.input(0), c.output(0))
    out = c.output(0)
    for axis in c.tracked(out):
        follow_shape_entry(c, c.input(1), axis, out, axis, keep=(0, -1))
    for axis in c.tracked(c.input(1)):
        c.consume(c.input(1), axis)


@rule("Flatten")
def flatten(c: NodeCoupling) -> None:
    """A Reshape to two axes; nothing to patch."""
    couple_reshape(c, c.input(0), c.output(0))


def _block_rearrangement(c: NodeCoupling) -> tuple[int, int] | None:
    """Input and output channel counts of DepthToSpace/SpaceToDepth; links the batch axis."""
    dims, out_dims = c.dims(c.input(0)), c.dims(c.output(0))
    if dims is None or out_dims is None or dims[1] is None or out_dims[1] is None:
        return None
    c.identity(c.input(0), 0, c.output(0), 0)
    return dims[1], out_dims[1]


@rule("DepthToSpace")
def depth_to_space(c: NodeCoupling) -> None:
    """Input channel ``c`` lands in output channel ``c % C'`` (DCR) or ``c // b^2`` (CRD)."""
    counts = _block_rearrangement(c)
    if counts is None:
        return
    block = c.attr("blocksize", 1)
    channels = np.arange(counts[0])
    keys = channels // (block * block) if c.attr("mode", "DCR") == "CRD" else channels % counts[1]
    c.link(c.input(0), 1, c.output(0), 1, keys_a=keys)


@rule("SpaceToDepth")
def space_to_depth(c: NodeCoupling) -> None:
    """Output channel ``k`` comes from input channel ``k % C``."""
    counts = _block_rearrangement(c)
    if counts is not None:
        c.link(c.output(0), 1, c.input(0), 1, keys_a=np.arange(counts[1]) % counts[0])
