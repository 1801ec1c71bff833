"""Grow channel groups: add units to every member of a group (PreConfig's wider layers).

``precrop<preconfig=true>`` stores a growth plan (``context.analyses.growth``, group
id to units added) next to its selection; ``prune`` applies both. A group can grow when
:func:`growth_problem` finds nothing in the way:

- every member's map is the identity (the group owns the whole axis, in order), so new
  units go at the end of each member axis and no other group's positions move; a
  Concat output, a permuted or strided map, or a partial axis cannot grow;
- no member is a graph input or output and no unit is pinned (the model's interface
  and pinned channel counts never change);
- every weight member is an initializer or a ``Constant`` (a ``ConstantOfShape`` weight
  would need its shape patched);
- the only patches are depthwise ``group`` counts (``group`` equal to the channels),
  which follow the new channel count, and ``shape-entry`` patches (Reshape, Expand,
  ConstantOfShape, Resize sizes), rewritten by removal's own handler
  (:mod:`.patches`) from the new axis lengths; any other patch (Split sizes, Slice
  bounds, Gather indices, GroupNormalization's group count) excludes the group.

A grown group's units never overlap the axes a removal touches (the group owns its
axes), so growth and removal are independent edits of the same graph.

New slices of a weight member are initialised like the existing ones:

- when every existing slice along the axis is the same (a BatchNorm scale of ones, a
  shift, mean or bias of zeros, variances of one), the new slices copy it (``constant``);
- otherwise every new entry is drawn, with replacement, from the tensor's existing
  entries (``empirical``), with a generator seeded by ``--seed``, the tensor's name and
  the axis, so a run is reproducible whatever the order of the edits.

Drawing from the empirical distribution keeps each entry's scale, not the fan-in
normalisation of the layer (a Kaiming-initialised layer that doubles its inputs keeps
its per-weight standard deviation); PreConfig re-initialises and trains the widened
network, so the values only need to look like the layer's own.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.ir.tensors import NameAllocator, constant_tensor, set_constant
from spa_opt.passes.coupling.groups import Group, Member
from spa_opt.passes.pruning.patches import apply_patches

GROWABLE_PATCHES = ("group", "shape-entry")


def growth_problem(group: Group) -> str | None:
    """Why ``group`` cannot grow (see the module docstring), or None when it can."""
    if group.pinned.any():
        return f"{int(group.pinned.sum())} of its units are pinned"
    for member in group.members:
        if member.kind in ("input", "output"):
            return f"it reaches graph {member.kind} `{member.name}`"
        if not member.index_map.is_identity():
            return f"`{member.name}` axis {member.axis} holds other channels too"
        if member.kind == "weight" and constant_tensor(member.value) is None:
            return f"weight `{member.name}` is not an initializer or Constant"
    for patch in group.patches:
        if patch.kind not in GROWABLE_PATCHES:
            return f"a {patch.kind} patch at node `{patch.node}` would need rewriting"
        if patch.kind != "group":
            continue
        node = patch.owner
        weight = constant_tensor(node.inputs[1]) if node is not None and len(
            node.inputs) > 1 else None
        dims = list(weight.shape.numpy()) if weight is not None else []
        if len(dims) < 2 or dims[1] != 1 or dims[0] != node.attributes.get_int("group", 1):
            return f"the grouped convolution `{patch.node}` is not depthwise"
    return None


def new_slices(array: np.ndarray, axis: int, count: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, str]:
    """``count`` slices to append along ``axis``, and how they were made.

    Returns:
        The slices (``array``'s shape with ``count`` along ``axis``) and ``"constant"``
        (every existing slice is the same; copied) or ``"empirical"`` (drawn from the
        existing entries).
    """
    moved = np.moveaxis(array, axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    shape = (count, *moved.shape[1:])
    if rows.shape[0] and (rows == rows[:1]).all():
        made, how = np.broadcast_to(moved[:1], shape).copy(), "constant"
    else:
        made, how = rng.choice(array.reshape(-1), size=shape, replace=True), "empirical"
    return np.moveaxis(made.astype(array.dtype, copy=False), 0, axis), how


def _rng(seed: int, member: Member) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(member.name.encode()), member.axis])


def _grow_weight(member: Member, added: int, seed: int) -> str:
    """Append ``added`` units to a weight member; how the new slices were made."""
    tensor = constant_tensor(member.value)
    assert tensor is not None
    array = np.asarray(tensor.numpy())
    slices, how = new_slices(array, member.axis, added * member.index_map.block,
                             _rng(seed, member))
    set_constant(member.value, np.concatenate([array, slices], axis=member.axis))
    return how


def set_grown_shapes(groups: Iterable[Group], growth: Mapping[str, int]) -> None:
    """Give the declared shapes of grown activations their new lengths.

    Values without a declared shape stay without one; run it after
    :func:`~spa_opt.ir.shapes.temporary_shapes` has restored the model's own shapes.
    """
    for group in groups:
        added = int(growth.get(group.id, 0))
        for member in group.members:
            value = member.value
            if added <= 0 or member.kind == "weight" or value.shape is None:
                continue
            dims = list(value.shape.dims)
            if member.axis < len(dims) and isinstance(dims[member.axis], int):
                dims[member.axis] += added * member.index_map.block
                value.shape = ir.Shape(dims)


@dataclasses.dataclass
class AxisResize:
    """One member axis before and after growth (what shape-entry patches read)."""

    extent: int
    new_extent: int


class Resize:
    """New lengths of grown axes, read by the shape-entry patch handler like a removal."""

    def __init__(self) -> None:
        self.axes: dict[tuple[int, int], AxisResize] = {}

    def get(self, value: ir.Value | None, axis: int) -> AxisResize | None:
        """The resize of one axis, None when it does not grow."""
        return None if value is None else self.axes.get((id(value), axis))


def apply_growth(graph: ir.Graph, groups: Iterable[Group], growth: Mapping[str, int],
                 seed: int) -> tuple[list[dict[str, Any]], int]:
    """Grow every weight member and patch of each group.

    Run it with shapes inferred (a shape computed at run time is patched by its length),
    then :func:`set_grown_shapes` once the model's own shapes are back.

    Returns:
        One report row per grown group, and the number of nodes patched.
    """
    rows = []
    resize = Resize()
    shape_patches = []
    patched: set[int] = set()
    for group in groups:
        added = int(growth.get(group.id, 0))
        if added <= 0:
            continue
        initialised: dict[str, str] = {}
        for member in group.members:
            extent = member.index_map.extent
            resize.axes[(id(member.value), member.axis)] = AxisResize(
                extent, extent + added * member.index_map.block)
            if member.kind == "weight":
                initialised[f"{member.name}:{member.axis}"] = _grow_weight(member, added, seed)
        for patch in group.patches:
            node = patch.owner
            assert node is not None and patch.kind in GROWABLE_PATCHES
            if patch.kind == "shape-entry":
                shape_patches.append(patch)
                continue
            count = node.attributes.get_int("group", 1) + added * group.block
            node.attributes["group"] = ir.AttrInt64("group", count)
            patched.add(id(node))
        rows.append({"group": group.id, "units": group.units, "units_added": added,
                     "channels_added": added * group.block, "init": initialised})
    count = len(patched)
    if shape_patches:
        count += apply_patches(shape_patches, resize,  # type: ignore[arg-type]
                               NameAllocator(graph))
    return rows, count
