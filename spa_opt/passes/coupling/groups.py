"""Groups: removal units that share the same members, with their index maps and pins.

The solver labels every channel element with its unit. Units whose elements sit on
the same member axes, with the same number of positions on each, form a group: a
Conv's output channels and everything they reach, a residual stream, the heads of one
attention layer. Grouping is by a signature hash of ``(axis, block)`` pairs, so it is
one vectorised pass over the tracked axes.

A group is prunable when it has at least two units, at least one weight that
produces or consumes its channels, and at least one unit free of pins. Every other
group states why not; partly pinned groups list how many units are pinned and why.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.ir.lattice import IndexMap, PinReason
from spa_opt.passes.coupling.node import Patch
from spa_opt.passes.coupling.solver import AxisInfo, Coupling


@dataclasses.dataclass
class Member:
    """One axis of one tensor that a group's units occupy."""

    value: ir.Value
    axis: int
    index_map: IndexMap
    kind: str
    """``weight`` (initializer or constant), ``input``, ``output`` or ``value``."""
    roles: tuple[str, ...] = ()
    """For weights: ``out`` (produces the channels), ``in`` (consumes them), ``scale``,
    ``shift`` or ``param`` (per-channel parameters)."""

    @property
    def name(self) -> str:
        """The tensor's name."""
        return self.value.name or ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        positions = self.index_map.positions
        return {
            "name": self.name,
            "axis": self.axis,
            "kind": self.kind,
            "roles": list(self.roles),
            "extent": self.index_map.extent,
            "block": self.index_map.block,
            "map": describe_map(self.index_map),
            "first_unit": positions[0].tolist() if len(positions) else [],
        }


@dataclasses.dataclass
class Group:
    """Channels that must be removed together, one unit at a time."""

    id: str
    members: list[Member]
    units: int
    pinned: np.ndarray
    """Per unit: whether it must stay."""
    reasons: list[PinReason]
    patches: list[Patch]

    @property
    def block(self) -> int:
        """Positions per unit on the group's first producing weight (or first member)."""
        return self.primary.index_map.block

    @property
    def primary(self) -> Member:
        """The member that best names the group, whatever the node order.

        Its producing weight with the largest block (a query projection rather than a
        key projection under GQA), then the highest rank (a weight before its bias),
        then by name and axis; without one, the same order over all members. Only
        declared ranks count (weights, graph inputs and outputs): an activation's rank
        depends on whether shapes happen to be inferred when the name is asked for.
        """
        producers = [m for m in self.members if "out" in m.roles] or self.members
        return min(producers, key=lambda m: (-m.index_map.block, -_declared_rank(m),
                                             m.name, m.axis))

    @property
    def channels(self) -> int:
        """Channels on the primary member."""
        return self.units * self.block

    @property
    def weights(self) -> list[Member]:
        """Members that are weights."""
        return [m for m in self.members if m.kind == "weight"]

    @property
    def prunable(self) -> bool:
        """Whether at least one unit can go."""
        return not self.why_not()

    def why_not(self) -> list[str]:
        """Why the group cannot be pruned at all (empty when it can)."""
        reasons = []
        if self.pinned.all():
            reasons.extend(str(r) for r in self.reasons)
        if self.units < 2:
            reasons.append("a single unit: removing it would empty the layer")
        if not any(r in ("out", "in") for m in self.weights for r in m.roles):
            reasons.append("no weight produces or consumes these channels")
        return reasons

    def pins(self) -> list[dict[str, Any]]:
        """The pin reasons by kind: what, where it first happens, at how many nodes.

        One row per distinct reason text, in the order the analysis met them, so a
        user sees the first node to look at rather than every repetition of it.
        """
        rows: dict[str, dict[str, Any]] = {}
        for reason in self.reasons:
            row = rows.setdefault(reason.detail, {"code": reason.code, "reason": reason.detail,
                                                  "first_node": reason.node, "nodes": 0})
            if reason.node is not None:
                row["first_node"] = row["first_node"] or reason.node
                row["nodes"] += 1
        return list(rows.values())

    def summary(self) -> dict[str, Any]:
        """A compact, stable description: what golden expectation files record."""
        return {
            "id": self.id,
            "primary": f"{self.primary.name}:{self.primary.axis}",
            "units": self.units,
            "block": self.block,
            "prunable": self.prunable,
            "pinned_units": int(self.pinned.sum()),
            "why_not": self.why_not(),
            "members": [
                f"{m.name}:{m.axis} block={m.index_map.block} {describe_map(m.index_map)}"
                + (f" [{','.join(m.roles)}]" if m.roles else "")
                for m in self.members
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the ``groups`` entries of the report)."""
        return {
            "id": self.id,
            "primary": f"{self.primary.name}:{self.primary.axis}",
            "units": self.units,
            "block": self.block,
            "channels": self.channels,
            "prunable": self.prunable,
            "pinned_units": int(self.pinned.sum()),
            "reasons": sorted({str(r) for r in self.reasons}) if self.pinned.any() else [],
            "pins": self.pins() if self.pinned.any() else [],
            "why_not": self.why_not(),
            "members": [m.to_dict() for m in self.members],
            "patches": [
                {"node": p.node, "kind": p.kind, "detail": p.detail} for p in self.patches
            ],
        }


def describe_map(index_map: IndexMap) -> str:
    """A few words for a map: identity, offset, strided, blocks, or permuted."""
    positions = index_map.positions
    flat = positions.reshape(-1)
    if index_map.is_identity():
        return "identity" if index_map.block == 1 else f"blocks of {index_map.block}"
    if flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
        return f"offset {int(flat[0])}"
    if flat.size > 1 and np.unique(np.diff(flat)).size == 1:
        return f"stride {int(flat[1] - flat[0])} from {int(flat[0])}"
    return "permuted"


def _declared_rank(member: Member) -> int:
    """The member's rank when the model declares it; 0 for inferred activations."""
    value = member.value
    declared = (value.const_value is not None or value.is_graph_input()
                or value.is_graph_output())
    return len(value.shape or ()) if declared else 0


def _member_kind(value: ir.Value, graph: ir.Graph) -> str:
    if value.const_value is not None or (
        value.producer() is not None and value.producer().op_type in ("Constant", "ConstantOfShape")
    ):
        return "weight"
    if value.is_graph_input():
        return "input"
    if value.is_graph_output():
        return "output"
    return "value"


def build_groups(coupling: Coupling, graph: ir.Graph) -> list[Group]:
    """Group the solver's units (see the module docstring)."""
    axes = [info for info in coupling.axes if info.extent]
    if not axes:
        return []
    labels = coupling.labels
    per_axis = []
    signature = np.zeros(labels.size, dtype=np.uint64)
    rng = np.random.default_rng(0)
    salts = rng.integers(1, 2**63 - 1, size=len(axes), dtype=np.int64).astype(np.uint64)
    on_axes = np.zeros(labels.size, dtype=bool)
    for index, info in enumerate(axes):
        axis_labels = labels[info.base : info.base + info.extent]
        units, counts = np.unique(axis_labels, return_counts=True)
        per_axis.append((info, axis_labels, units, counts))
        mixed = salts[index] * (counts.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + 1)
        signature[units] ^= mixed
        on_axes[units] = True
    unit_labels = np.flatnonzero(on_axes)
    _, group_of_unit = np.unique(signature[unit_labels], return_inverse=True)
    group_of = np.full(labels.size, -1, dtype=np.int64)
    group_of[unit_labels] = group_of_unit
    # Order groups by their first member axis, units by position there.
    members: dict[int, list[tuple[AxisInfo, np.ndarray, np.ndarray]]] = defaultdict(list)
    for info, axis_labels, units, _ in per_axis:
        for g in np.unique(group_of[units]):
            members[int(g)].append((info, axis_labels, units[group_of[units] == g]))
    rank = np.full(labels.size, -1, dtype=np.int64)
    pinned_labels = _pinned(coupling, labels.size)
    reasons_of: dict[int, list[PinReason]] = defaultdict(list)
    for ids, reason in coupling.pins:
        for g in np.unique(group_of[labels[ids]]) if ids.size else ():
            if g >= 0 and reason not in reasons_of[int(g)]:
                reasons_of[int(g)].append(reason)
    patches_of: dict[tuple[int, int], list[Patch]] = defaultdict(list)
    for patch in coupling.patches:
        if patch.axis is not None:
            patches_of[(id(patch.axis[0]), patch.axis[1])].append(patch)
    groups = []
    ordered = sorted(members.items(), key=lambda kv: (kv[1][0][0].order, _first_position(kv[1][0])))
    for number, (g, group_members) in enumerate(ordered):
        info, axis_labels, units = group_members[0]
        positions = np.flatnonzero(np.isin(axis_labels, units))
        first_seen = axis_labels[positions]
        _, first_index = np.unique(first_seen, return_index=True)
        unit_order = first_seen[np.sort(first_index)]
        rank[unit_order] = np.arange(unit_order.size)
        built = [
            _member(info, axis_labels, rank, unit_order.size, coupling, graph)
            for info, axis_labels, _ in group_members
        ]
        patches = [
            patch
            for info, _, _ in group_members
            for patch in patches_of.get((id(info.value), info.axis), ())
        ]
        pinned = pinned_labels[unit_order]
        groups.append(Group(f"g{number}", built, unit_order.size, pinned, reasons_of[g], patches))
        rank[unit_order] = -1
    return groups


def _first_position(member: tuple[AxisInfo, np.ndarray, np.ndarray]) -> int:
    _, axis_labels, units = member
    hits = np.flatnonzero(np.isin(axis_labels, units))
    return int(hits[0]) if hits.size else 0


def _member(
    info: AxisInfo,
    axis_labels: np.ndarray,
    rank: np.ndarray,
    units: int,
    coupling: Coupling,
    graph: ir.Graph,
) -> Member:
    unit_rank = rank[axis_labels]
    positions = np.flatnonzero(unit_rank >= 0)
    order = np.lexsort((positions, unit_rank[positions]))
    block = positions.size // max(units, 1)
    index_map = IndexMap(positions[order].reshape(units, block), info.extent or 0)
    roles = tuple(sorted(coupling.roles.get((id(info.value), info.axis), ())))
    return Member(info.value, info.axis, index_map, _member_kind(info.value, graph), roles)


def _pinned(coupling: Coupling, size: int) -> np.ndarray:
    pinned = np.zeros(size, dtype=bool)
    for ids, _ in coupling.pins:
        if ids.size:
            pinned[coupling.labels[ids]] = True
    return pinned
