"""Rewrite what encodes a channel count, once the channels are gone.

The coupling rules record a :class:`~spa_opt.passes.coupling.node.Patch` wherever a
constant or attribute spells out a channel count. Removal rewrites each from the new
axis lengths in a :class:`~spa_opt.passes.pruning.removal.Removal`, never from the
old value minus a guess, so a patch is right however many groups share the axis.
One handler per kind:

- ``shape-entry`` (Reshape, Expand, ConstantOfShape, Resize sizes): the entry becomes
  the new length of the output axis it sets. A constant shape is replaced by a private
  copy (other nodes may share it); a shape computed at run time from traced constants
  gets ``Add(shape, delta)`` in front of the node, which changes exactly the patched
  entries whatever subgraph produced them;
- ``split-sizes``: Split gets explicit sizes (an input from opset 13, an attribute
  before), since equal parts may no longer be equal;
- ``slice-bounds``: start and end move left by the removed positions before them; a
  strided Slice gets the start, step and end of the positions it still picks, or, when
  the removal left them unevenly spaced, a ``Gather`` of exactly those positions in
  front of it (the Slice then takes the whole axis);
- ``gather-indices``: indices of removed rows go, the rest are renumbered;
- ``group``: a depthwise Conv's group count follows its input channels;
- ``num-groups``: GroupNormalization's group count follows its channels;
- ``head-counts`` (fused attention, rotary embeddings): every head-count attribute
  the node carries (``num_heads``, ``kv_num_heads``, ``q_num_heads``) scales with the
  patched axis, which only loses whole units (a head, or a kv head with its query
  group), so all counts keep their ratio;
- ``qkv-hidden-sizes``: com.microsoft Attention's ``[q, k, v]`` widths lose the
  removed columns of their section of the packed weight;
- ``matmulnbits-n``: MatMulNBits' ``N`` becomes the new row count of its output;
- ``matmulnbits-k``: MatMulNBits lost whole quantization blocks of ``K`` (axis 1 of
  ``B``): ``K`` becomes the kept blocks' channel count (a trailing partial block
  counted at its size), and packed uint8 zero points, several blocks to a byte, are
  repacked without the removed blocks (:func:`spa_opt.ir.nbits.repack_zero_points`).

:func:`problem` says, before selection, when a patch cannot be applied (Slice bounds
that are not constant), so the group is skipped instead of producing a wrong model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from spa_opt.ir import nbits
from spa_opt.ir.tensors import NameAllocator, constant_array, constant_tensor
from spa_opt.passes.coupling.node import Patch
from spa_opt.passes.pruning.removal import Removal

Handler = Callable[[ir.Node, list[Patch], Removal, NameAllocator], None]
_HANDLERS: dict[str, Handler] = {}


def _handles(kind: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _HANDLERS[kind] = handler
        return handler

    return register


def problem(patch: Patch) -> str | None:
    """Why ``patch`` cannot follow a removal, or None when it can."""
    node = patch.owner
    if node is None or node.graph is None:
        return f"the node `{patch.node}` to patch ({patch.kind}) is not in the graph"
    if patch.kind not in _HANDLERS:
        return f"no way to rewrite a {patch.kind} at node `{patch.node}`"
    if patch.kind == "shape-entry" and patch.entry is None:
        return f"the shape entry to rewrite at node `{patch.node}` is unknown"
    if (patch.kind == "slice-bounds" and patch.axis is not None
            and _slice_bounds(node, patch.axis[1]) is None):
        return f"the Slice bounds at node `{patch.node}` are not constant"
    return None


def apply_patches(patches: Iterable[Patch], removal: Removal, names: NameAllocator) -> int:
    """Rewrite every patched node whose channel axis lost positions; the count of nodes."""
    todo: dict[tuple[int, str], list[Patch]] = defaultdict(list)
    owners: dict[int, ir.Node] = {}
    seen: set[int] = set()
    for patch in patches:
        if id(patch) in seen or patch.axis is None or removal.get(*patch.axis) is None:
            continue
        seen.add(id(patch))
        assert patch.owner is not None
        owners[id(patch.owner)] = patch.owner
        todo[(id(patch.owner), patch.kind)].append(patch)
    for (owner, kind), node_patches in todo.items():
        _HANDLERS[kind](owners[owner], node_patches, removal, names)
    return len(todo)


def _ints(value: ir.Value | None) -> np.ndarray | None:
    tensor = constant_tensor(value)
    return None if tensor is None else np.asarray(tensor.numpy()).astype(np.int64)


def _replace_input(node: ir.Node, index: int, data: np.ndarray, names: NameAllocator) -> None:
    hint = f"{node.name or node.op_type}_{index}_pruned"
    value = names.initializer(data.astype(np.int64), hint)
    if index < len(node.inputs):
        node.replace_input_with(index, value)
    else:
        node.resize_inputs(index + 1)
        node.replace_input_with(index, value)


def _extent(removal: Removal, value: ir.Value, axis: int) -> tuple[int, int]:
    found = removal.get(value, axis)
    assert found is not None
    return found.extent, found.new_extent


@_handles("shape-entry")
def _shape_entry(node: ir.Node, patches: list[Patch], removal: Removal,
                 names: NameAllocator) -> None:
    by_holder: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for patch in patches:
        assert patch.entry is not None and patch.axis is not None
        old, new = _extent(removal, *patch.axis)
        by_holder[patch.entry[0]].append((patch.entry[1], old, new))
    for holder, entries in by_holder.items():
        shape_value = node.inputs[holder]
        assert shape_value is not None
        constant = _ints(shape_value)
        if constant is not None:
            updated = constant.reshape(-1).copy()
            for position, _, new in entries:
                updated[position] = new
            _replace_input(node, holder, updated.reshape(constant.shape), names)
            continue
        length = max(p for p, _, _ in entries) + 1
        if shape_value.shape is not None and isinstance(shape_value.shape[0], int):
            length = shape_value.shape[0]
        delta = np.zeros(length, dtype=np.int64)
        for position, old, new in entries:
            delta[position] = new - old
        delta_value = names.initializer(delta, f"{node.name or node.op_type}_shape_delta")
        patched = ir.Value(name=names(f"{node.name or node.op_type}_shape_pruned"),
                           type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([length]))
        adder = ir.Node("", "Add", [shape_value, delta_value], outputs=[patched],
                        name=names(f"{node.name or node.op_type}_shape_patch"))
        assert node.graph is not None
        node.graph.insert_before(node, adder)
        node.replace_input_with(holder, patched)


def _split_sizes(node: ir.Node, extent: int) -> list[int]:
    given = _ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    if given is not None:
        return [int(x) for x in given]
    attribute = node.attributes.get("split")
    if attribute is not None:
        return list(attribute.as_ints())
    parts = node.attributes.get_int("num_outputs", len(node.outputs))
    chunk = -(-extent // parts)
    return [min(chunk, extent - i * chunk) for i in range(parts)]


@_handles("split-sizes")
def _split(node: ir.Node, patches: list[Patch], removal: Removal, names: NameAllocator) -> None:
    data, axis = patches[0].axis  # type: ignore[misc]
    old_extent, _ = _extent(removal, data, axis)
    old_sizes = _split_sizes(node, old_extent)
    removed = removal.get(data, axis).positions  # type: ignore[union-attr]
    bounds = np.cumsum([0, *old_sizes])
    sizes = [
        size - int(np.count_nonzero((removed >= start) & (removed < start + size)))
        for start, size in zip(bounds[:-1], old_sizes, strict=True)
    ]
    opset = _opset(node)
    node.attributes.pop("num_outputs", None)
    if opset >= 13:
        node.attributes.pop("split", None)
        _replace_input(node, 1, np.array(sizes, dtype=np.int64), names)
    else:
        node.attributes["split"] = ir.AttrInt64s("split", sizes)


def _opset(node: ir.Node) -> int:
    imports = node.graph.opset_imports if node.graph is not None else {}
    return int(node.version or imports.get("", 13))


def _slice_bounds(node: ir.Node, axis: int) -> tuple[int, int, int, int] | None:
    """``(slot, start, step, end)`` of the Slice along ``axis``, None if not constant."""
    if node.attributes.get("starts") is not None:
        starts = list(node.attributes["starts"].as_ints())
        ends = list(node.attributes["ends"].as_ints())
        axes_attr = node.attributes.get("axes")
        axes = list(axes_attr.as_ints()) if axes_attr is not None else list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(node.inputs[1]), _ints(node.inputs[2])
        axes_in = node.inputs[3] if len(node.inputs) > 3 else None
        steps_in = node.inputs[4] if len(node.inputs) > 4 else None
        count = 0 if starts is None else len(starts)  # `starts or []` is False for [0]
        axes = _ints(axes_in) if axes_in is not None else np.arange(count)
        steps = _ints(steps_in) if steps_in is not None else np.ones(count, int)
        if starts is None or ends is None or axes is None or steps is None:
            return None
    data = node.inputs[0]
    rank = len(data.shape) if data is not None and data.shape is not None else None
    for slot, a in enumerate(axes):
        if (a + rank if a < 0 and rank else a) == axis:
            return slot, int(starts[slot]), int(steps[slot]), int(ends[slot])
    return None


@_handles("slice-bounds")
def _slice(node: ir.Node, patches: list[Patch], removal: Removal, names: NameAllocator) -> None:
    legacy = node.attributes.get("starts") is not None
    starts = (list(node.attributes["starts"].as_ints()) if legacy
              else [int(x) for x in _ints(node.inputs[1])])  # type: ignore[union-attr]
    ends = (list(node.attributes["ends"].as_ints()) if legacy
            else [int(x) for x in _ints(node.inputs[2])])  # type: ignore[union-attr]
    steps_in = None if legacy or len(node.inputs) < 5 else _ints(node.inputs[4])
    steps = [1] * len(starts) if steps_in is None else [int(x) for x in steps_in]
    for patch in patches:
        data, axis = patch.axis  # type: ignore[misc]
        found = removal.get(data, axis)
        bounds = _slice_bounds(node, axis)
        assert found is not None and bounds is not None
        slot, start, step, end = bounds
        extent, removed = found.extent, found.positions
        if step != 1:
            starts[slot], steps[slot], ends[slot] = _strided(node, data, axis, removal,
                                                             (start, step, end), names)
            continue

        def moved(bound: int, extent: int = extent, removed: np.ndarray = removed) -> int:
            if bound >= extent:
                return bound  # "to the end" stays "to the end"
            absolute = min(max(bound + extent if bound < 0 else bound, 0), extent)
            return absolute - int(np.count_nonzero(removed < absolute))

        starts[slot], ends[slot] = moved(start), moved(end)
    if legacy:
        node.attributes["starts"] = ir.AttrInt64s("starts", starts)
        node.attributes["ends"] = ir.AttrInt64s("ends", ends)
    else:
        _replace_input(node, 1, np.array(starts), names)
        _replace_input(node, 2, np.array(ends), names)
        if steps_in is not None:
            _replace_input(node, 4, np.array(steps), names)


_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)


def _strided(node: ir.Node, data: ir.Value, axis: int, removal: Removal,
             bounds: tuple[int, int, int], names: NameAllocator) -> tuple[int, int, int]:
    """New ``(start, step, end)`` of a strided Slice on ``axis`` of ``data``.

    The Slice keeps picking the positions it picked that survive, renumbered. When
    they are no longer evenly spaced (a removed position between two picked ones, in
    one gap and not another), no step spells them: a ``Gather`` of exactly those
    positions goes in front of the Slice, which then takes the whole axis.
    """
    start, step, end = bounds
    found = removal.get(data, axis)
    assert found is not None
    picked = np.arange(found.extent)[slice(start, end, step)]
    renumber = np.full(found.extent, -1, dtype=np.int64)
    renumber[found.kept] = np.arange(found.kept.size)
    kept = renumber[picked]
    kept = kept[kept >= 0]
    if kept.size <= 1:
        first = int(kept[0]) if kept.size else 0
        return first, 1, first + int(kept.size)
    gaps = np.diff(kept)
    if np.all(gaps == gaps[0]):
        last, gap = int(kept[-1]), int(gaps[0])
        return int(kept[0]), gap, last + gap if last + gap >= 0 else _INT64_MIN
    dims = removal.new_dims(data)
    if dims is not None:
        dims[axis] = int(kept.size)
    label = node.name or node.op_type
    gathered = ir.Value(name=names(f"{label}_picked"), type=data.type,
                        shape=ir.Shape(dims) if dims is not None else None)
    index = names.initializer(kept.astype(np.int64), f"{label}_picked_indices")
    gather = ir.Node("", "Gather", [data, index], outputs=[gathered],
                     attributes=[ir.AttrInt64("axis", axis)], name=names(f"{label}_gather"))
    assert node.graph is not None
    node.graph.insert_before(node, gather)
    node.replace_input_with(0, gathered)
    return 0, 1, _INT64_MAX


@_handles("gather-indices")
def _gather(node: ir.Node, patches: list[Patch], removal: Removal, names: NameAllocator) -> None:
    data, axis = patches[0].axis  # type: ignore[misc]
    found = removal.get(data, axis)
    indices = _ints(node.inputs[1])
    assert found is not None and indices is not None
    picked = np.where(indices < 0, indices + found.extent, indices)
    renumber = np.full(found.extent, -1, dtype=np.int64)
    renumber[found.kept] = np.arange(found.kept.size)
    new = renumber[picked]
    if picked.ndim:
        new = new[new >= 0]
    _replace_input(node, 1, new, names)


@_handles("group")
def _conv_group(node: ir.Node, patches: list[Patch], removal: Removal,
                names: NameAllocator) -> None:
    data = node.inputs[0]
    groups = node.attributes.get_int("group", 1)
    found = removal.get(data, 1)
    if found is None:
        return
    per_group = found.extent // groups
    node.attributes["group"] = ir.AttrInt64("group", found.new_extent // per_group)


@_handles("num-groups")
def _group_norm(node: ir.Node, patches: list[Patch], removal: Removal,
                names: NameAllocator) -> None:
    data, axis = patches[0].axis  # type: ignore[misc]
    found = removal.get(data, axis)
    assert found is not None
    groups = node.attributes.get_int("num_groups", 1)
    per_group = found.extent // groups
    node.attributes["num_groups"] = ir.AttrInt64("num_groups", found.new_extent // per_group)


_HEAD_COUNTS = ("num_heads", "kv_num_heads", "q_num_heads")


@_handles("head-counts")
def _head_counts(node: ir.Node, patches: list[Patch], removal: Removal,
                 names: NameAllocator) -> None:
    old, new = _extent(removal, *patches[0].axis)  # type: ignore[misc]
    for name in _HEAD_COUNTS:
        count = node.attributes.get_int(name, 0)
        if count:
            assert (count * new) % old == 0, f"{name}={count} does not scale to {new}/{old}"
            node.attributes[name] = ir.AttrInt64(name, count * new // old)


@_handles("qkv-hidden-sizes")
def _qkv_hidden_sizes(node: ir.Node, patches: list[Patch], removal: Removal,
                      names: NameAllocator) -> None:
    found = removal.get(*patches[0].axis)  # type: ignore[misc]
    assert found is not None
    sizes = list(node.attributes["qkv_hidden_sizes"].as_ints())
    bounds = np.cumsum([0, *sizes])
    new = [size - int(np.count_nonzero((found.positions >= start) & (found.positions < end)))
           for start, end, size in zip(bounds[:-1], bounds[1:], sizes, strict=True)]
    node.attributes["qkv_hidden_sizes"] = ir.AttrInt64s("qkv_hidden_sizes", new)


@_handles("matmulnbits-n")
def _matmulnbits_n(node: ir.Node, patches: list[Patch], removal: Removal,
                   names: NameAllocator) -> None:
    _, new = _extent(removal, *patches[0].axis)  # type: ignore[misc]
    node.attributes["N"] = ir.AttrInt64("N", new)


@_handles("matmulnbits-k")
def _matmulnbits_k(node: ir.Node, patches: list[Patch], removal: Removal,
                   names: NameAllocator) -> None:
    found = removal.get(*patches[0].axis)  # type: ignore[misc]
    q = nbits.nbits_of(node)
    assert found is not None and q is not None
    kept = found.kept
    sizes = np.full(q.blocks, q.block_size)
    sizes[-1] = q.k - (q.blocks - 1) * q.block_size
    zeros = q.input(3)
    if zeros is not None and zeros.dtype == ir.DataType.UINT8:
        data = constant_array(zeros)
        assert data is not None, "MatMulNBits zero points are not constant"
        rows = data.size // -(-q.blocks * q.bits // 8)  # rows are sliced already
        repacked = nbits.repack_zero_points(data, q, kept, rows)
        node.replace_input_with(3, names.initializer(repacked, f"{zeros.name}_pruned"))
    node.attributes["K"] = ir.AttrInt64("K", int(sizes[kept].sum()))
