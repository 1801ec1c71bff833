"""What a selection removes, seen per tensor axis.

A selection names units per group. Removal works per tensor: every member of every
group is an axis of a tensor, and one axis may host several groups (a Concat output
holds the channels of each of its inputs at an offset). :class:`Removal` collects,
for every axis, the positions the selection takes away, so the steps that follow
(slicing weights, patching constants, setting shapes) each read one table:

- ``removed(value, axis)``: sorted positions that go;
- ``kept(value, axis)``: sorted positions that stay;
- ``new_extent(value, axis)``: the axis length afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from spa_opt.passes.coupling.groups import Group

Selection = Mapping[str, np.ndarray]
"""Units to remove, per group id."""


@dataclasses.dataclass
class AxisRemoval:
    """Positions removed from one axis of one tensor."""

    value: ir.Value
    axis: int
    extent: int
    positions: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """Positions that stay, in order."""
        return np.setdiff1d(np.arange(self.extent), self.positions, assume_unique=True)

    @property
    def new_extent(self) -> int:
        """Axis length after removal."""
        return self.extent - self.positions.size


class Removal:
    """Removed positions per ``(tensor, axis)`` for a selection over groups."""

    def __init__(self, groups: Iterable[Group], selection: Selection) -> None:
        parts: dict[tuple[int, int], list[np.ndarray]] = {}
        info: dict[tuple[int, int], tuple[ir.Value, int, int]] = {}
        for group in groups:
            units = selection.get(group.id)
            if units is None or len(units) == 0:
                continue
            for member in group.members:
                key = (id(member.value), member.axis)
                info[key] = (member.value, member.axis, member.index_map.extent)
                parts.setdefault(key, []).append(member.index_map.take(units))
        self.axes: dict[tuple[int, int], AxisRemoval] = {
            key: AxisRemoval(*info[key], np.unique(np.concatenate(chunks)))
            for key, chunks in parts.items()
        }

    def __bool__(self) -> bool:
        return bool(self.axes)

    def get(self, value: ir.Value | None, axis: int) -> AxisRemoval | None:
        """The removal on one axis, None when nothing goes there."""
        return None if value is None else self.axes.get((id(value), axis))

    def new_extent(self, value: ir.Value, axis: int, old: int) -> int:
        """Length of ``value``'s ``axis`` after removal (``old`` when untouched)."""
        found = self.get(value, axis)
        return old if found is None else found.new_extent

    def by_value(self) -> dict[int, tuple[ir.Value, list[AxisRemoval]]]:
        """Removals grouped by tensor, axes in order."""
        result: dict[int, tuple[ir.Value, list[AxisRemoval]]] = {}
        for (value_id, _), removal in sorted(self.axes.items(), key=lambda kv: kv[0]):
            result.setdefault(value_id, (removal.value, []))[1].append(removal)
        return result

    def new_dims(self, value: ir.Value) -> list[int | str | None] | None:
        """``value``'s dims after removal (symbolic dims kept as they are)."""
        if value.shape is None:
            return None
        dims = list(value.shape.dims)
        for axis, dim in enumerate(dims):
            found = self.get(value, axis)
            if found is not None and isinstance(dim, int):
                dims[axis] = found.new_extent
        return dims


def count_removed_channels(groups: Iterable[Group], selection: Selection) -> int:
    """Channels removed, counted on each group's primary member."""
    return sum(len(selection.get(g.id, ())) * g.block for g in groups)
