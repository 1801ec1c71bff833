"""The coupling solver: which channel axes carry channels, then which channels go together.

Two phases, both linear in the size of the graph.

**1. Tracking (a forward/backward dataflow problem).** The lattice element of a value
is the set of its axes that carry channels; it only grows, by union. Operator rules
(:mod:`spa_opt.passes.rules`) seed axes (a Conv's output channels, a weight's input
axis) and link axes across a node; a link with one tracked end tracks the other end,
whichever way it points, so channels flow forward to consumers and backward to
biases, scales and graph inputs. A node is re-evaluated only when an axis of one of
its values becomes tracked. Each value can gain at most ``rank`` axes, so the number
of evaluations is bounded by ``N + sum(rank(v) * degree(v))`` over values ``v``: the
solver terminates on every graph, including patterns (per-head norms on q and k,
cyclic-looking residual streams) that make per-channel walkers loop.

**2. Coupling (union-find over channel elements).** Every tracked axis of static size
``n`` gets ``n`` element ids. Each link becomes a set of edges between elements (with
one virtual node per key when neither side is the identity), and connected
components, computed once by ``scipy.sparse.csgraph``, are the removal units: all
elements of a unit must go together. Offsets, strides, blocks and permutations are
key arrays, so no per-channel propagation happens; the work is
``O(sum of tracked axis lengths + edges)`` in vectorised numpy.

Pins are attached to elements, so a unit is pinned when any of its elements is: a
tracked axis at a graph input or output, an operator without a rule, a rule that
cannot carry channels on an axis, a dynamic channel count, a use inside a subgraph.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.decoder_inputs import is_cache_name
from spa_opt.ir.lattice import PinReason
from spa_opt.passes.coupling.node import Link, NodeCoupling, Patch, node_label
from spa_opt.passes.coupling.shapetrace import Entry, trace_entries
from spa_opt.passes.rules import get_rule

_SMALL_CONSTANT = 1 << 16
_SAME_SHAPE = frozenset(
    {"GroupNormalization", "LayerNormalization", "RMSNormalization", "BatchNormalization",
     "InstanceNormalization", "LRN", "Relu", "Sigmoid", "Tanh", "Gelu", "Identity", "Dropout"}
)


@dataclasses.dataclass
class CoupleOptions:
    """How the solver resolves choices a graph leaves open."""

    heads: str = "whole"
    """``whole``: an axis split in two (``[h*d] -> [h, d]``) couples through its major
    part, so attention heads are removed whole; ``dim``: through its minor part, so the
    head dimension is pruned uniformly across heads."""

    io: str = "keep"
    """``keep``: every channel axis at a graph input or output is pinned; ``rewrite``:
    not at key/value-cache inputs and outputs (:func:`spa_opt.decoder_inputs.is_cache_name`),
    whose shapes pruning then rewrites."""


@dataclasses.dataclass
class AxisInfo:
    """One tracked channel axis and its element ids."""

    value: ir.Value
    axis: int
    extent: int | None
    base: int
    order: int

    @property
    def ids(self) -> np.ndarray:
        """Element ids of every position on the axis."""
        return np.arange(self.base, self.base + (self.extent or 0), dtype=np.int64)


@dataclasses.dataclass
class Coupling:
    """The solver's result: tracked axes, removal units (labels), pins and patches."""

    axes: list[AxisInfo]
    labels: np.ndarray
    """Unit label of every element id (virtual ids included)."""
    pins: list[tuple[np.ndarray, PinReason]]
    patches: list[Patch]
    roles: dict[tuple[int, int], set[str]]
    normalizers: list[tuple[str, ir.Value, int]]
    stats: dict[str, int]


class _State:
    """Solver state the rules read through :class:`NodeCoupling`."""

    def __init__(self, graph: ir.Graph, options: CoupleOptions) -> None:
        self.graph = graph
        self.options = options
        self._tracked: dict[int, set[int]] = collections.defaultdict(set)
        self._dims: dict[int, tuple[int | None, ...] | None] = {}
        self._consts: dict[int, np.ndarray | None] = {}
        self._traces: dict[int, np.ndarray | None] = {}

    def tracked_axes(self, value: ir.Value) -> frozenset[int]:
        return frozenset(self._tracked.get(id(value), ()))

    def track(self, value: ir.Value, axis: int) -> bool:
        dims = self.dims(value)
        if dims is None or not 0 <= axis < len(dims):
            return False
        axes = self._tracked[id(value)]
        if axis in axes:
            return False
        axes.add(axis)
        return True

    def is_tracked(self, value: ir.Value, axis: int) -> bool:
        return axis in self._tracked.get(id(value), ())

    def dims(self, value: ir.Value) -> tuple[int | None, ...] | None:
        key = id(value)
        if key not in self._dims:
            self._dims[key] = _dims_of(value)
        return self._dims[key]

    def refine(self, value: ir.Value, dims: tuple[int | None, ...]) -> None:
        """Take static dims a rule computed where shape inference left them unknown."""
        known = self.dims(value)
        if known is None or len(known) != len(dims):
            self._dims[id(value)] = dims
        else:
            self._dims[id(value)] = tuple(k if k is not None else d
                                          for k, d in zip(known, dims, strict=True))

    def const(self, value: ir.Value) -> np.ndarray | None:
        key = id(value)
        if key not in self._consts:
            self._consts[key] = _const_of(value)
        return self._consts[key]

    def trace(self, value: ir.Value) -> list[Entry] | None:
        return trace_entries(value, self.const, self.dims, self._traces)


def _dims_of(value: ir.Value) -> tuple[int | None, ...] | None:
    const = value.const_value
    if const is not None:
        return tuple(int(d) for d in const.shape)
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        data = _const_of(value)
        if data is not None:
            return tuple(data.shape)
    if value.shape is None:
        # onnx infers no shape for some ops (GroupNormalization); these keep their input's.
        if producer is not None and producer.op_type in _SAME_SHAPE and producer.inputs:
            source = producer.inputs[0]
            return _dims_of(source) if source is not None and source is not value else None
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape)


def _const_of(value: ir.Value) -> np.ndarray | None:
    tensor: Any = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is None or producer.domain != "":
            return None
        if producer.op_type == "ConstantOfShape":
            return _constant_of_shape(producer)
        if producer.op_type != "Constant":
            return None
        for name, attribute in producer.attributes.items():
            if name in ("value", "sparse_value"):
                tensor = attribute.value
            elif name.startswith("value_"):
                return np.asarray(attribute.value)
    if tensor is None or int(np.prod(tensor.shape)) > _SMALL_CONSTANT:
        return None
    try:
        return np.asarray(tensor.numpy())
    except Exception:  # pragma: no cover - a tensor type numpy cannot hold
        return None


def _constant_of_shape(node: ir.Node) -> np.ndarray | None:
    shape = _const_of(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
    if shape is None or shape.size > 8 or int(np.prod(shape)) > _SMALL_CONSTANT:
        return None
    fill = node.attributes.get("value")
    values = fill.value.numpy().reshape(-1) if fill is not None else np.zeros(1, np.float32)
    return np.full(tuple(int(d) for d in shape.reshape(-1)), values[0], dtype=values.dtype)


def _evaluate(node: ir.Node, state: _State) -> tuple[NodeCoupling, bool]:
    coupling = NodeCoupling(node, state)
    rule = get_rule(node)
    if rule is not None:
        rule(coupling)
    return coupling, rule is not None


def solve(graph: ir.Graph, options: CoupleOptions | None = None) -> Coupling:
    """Couple every channel of ``graph`` (shapes must have been inferred)."""
    state = _State(graph, options or CoupleOptions())
    nodes = list(graph)
    evaluations = _track(nodes, state, graph)
    return _couple(nodes, state, graph, evaluations)


def _neighbours(value: ir.Value, graph: ir.Graph) -> Iterable[ir.Node]:
    producer = value.producer()
    if producer is not None and producer.graph is graph:
        yield producer
    for user in value.consumers():
        if user.graph is graph:
            yield user


def _unused(value: ir.Value, graph: ir.Graph) -> bool:
    """An output nobody reads (a Dropout mask): channels there need no care."""
    return value.producer() is not None and not value.uses() and not value.is_graph_output()


def _track(nodes: list[ir.Node], state: _State, graph: ir.Graph) -> int:
    pending = collections.deque(nodes)
    queued = {id(node) for node in nodes}
    evaluations = 0
    while pending:
        node = pending.popleft()
        queued.discard(id(node))
        evaluations += 1
        coupling, _ = _evaluate(node, state)
        changed = [value for value, axis in coupling.seeds if state.track(value, axis)]
        for link in coupling.links:
            (va, aa), (vb, ab) = link.a, link.b
            if _unused(va, graph) or _unused(vb, graph):
                continue
            if state.is_tracked(va, aa) and state.track(vb, ab):
                changed.append(vb)
            elif state.is_tracked(vb, ab) and state.track(va, aa):
                changed.append(va)
        for value in changed:
            for neighbour in _neighbours(value, graph):
                if id(neighbour) not in queued:
                    queued.add(id(neighbour))
                    pending.append(neighbour)
    return evaluations


class _Builder:
    """Element ids, edges and pins of the coupling phase."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.axes: list[AxisInfo] = []
        self.index: dict[tuple[int, int], AxisInfo] = {}
        self.next_id = 0
        self.virtual = 0
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.virtual_edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.pins: list[tuple[tuple[ir.Value, int], np.ndarray | None, PinReason]] = []
        self.links = 0

    def info(self, value: ir.Value, axis: int) -> AxisInfo:
        key = (id(value), axis)
        found = self.index.get(key)
        if found is None:
            dims = self.state.dims(value) or ()
            extent = dims[axis] if axis < len(dims) else None
            found = AxisInfo(value, axis, extent, self.next_id, len(self.axes))
            self.next_id += extent or 0
            self.axes.append(found)
            self.index[key] = found
        return found

    def pin(
        self, axis: tuple[ir.Value, int], reason: PinReason, positions: np.ndarray | None = None
    ) -> None:
        self.info(*axis)
        self.pins.append((axis, positions, reason))

    def add_link(self, link: Link, node: ir.Node) -> None:
        a, b = self.info(*link.a), self.info(*link.b)
        if a.extent is None or b.extent is None:
            for known, unknown in ((a, b), (b, a)):
                if known.extent is not None:
                    detail = (
                        f"the channel count of `{unknown.value.name}` axis {unknown.axis} "
                        "is not static (shape inference could not resolve it)"
                    )
                    self.pin(link.a if known is a else link.b, _reason("dynamic", detail, node))
            return
        self.links += 1
        keys_a, keys_b = link.keys_a, link.keys_b
        if keys_a is None and keys_b is None:
            if a.extent != b.extent:
                detail = (
                    f"`{a.value.name}` axis {a.axis} ({a.extent}) and `{b.value.name}` axis "
                    f"{b.axis} ({b.extent}) should match but differ"
                )
                self.pin(link.a, _reason("mismatch", detail, node))
                self.pin(link.b, _reason("mismatch", detail, node))
                return
            self.edges.append((a.ids, b.ids))
        elif keys_b is None:
            self._direct(a, b, np.asarray(keys_a, dtype=np.int64))
        elif keys_a is None:
            self._direct(b, a, np.asarray(keys_b, dtype=np.int64))
        else:
            keys_a = np.asarray(keys_a, dtype=np.int64)
            keys_b = np.asarray(keys_b, dtype=np.int64)
            size = int(max(keys_a.max(initial=-1), keys_b.max(initial=-1))) + 1
            for info, keys in ((a, keys_a), (b, keys_b)):
                valid = np.flatnonzero(keys >= 0)
                self.virtual_edges.append((info.base + valid, self.virtual + keys[valid]))
            self.virtual += size

    def _direct(self, a: AxisInfo, b: AxisInfo, keys: np.ndarray) -> None:
        valid = np.flatnonzero((keys >= 0) & (keys < (b.extent or 0)))
        self.edges.append((a.base + valid, b.base + keys[valid]))


def _reason(code: str, detail: str, node: ir.Node | None) -> PinReason:
    return PinReason(code, detail, node.name if node is not None else None)


def _couple(nodes: list[ir.Node], state: _State, graph: ir.Graph, evaluations: int) -> Coupling:
    builder = _Builder(state)
    patches: list[Patch] = []
    roles: dict[tuple[int, int], set[str]] = collections.defaultdict(set)
    normalizers: list[tuple[str, ir.Value, int]] = []
    views: list[tuple[ir.Value, ir.Value]] = []
    unknown_ops = 0
    for node in nodes:
        coupling, known = _evaluate(node, state)
        values = [v for v in (*node.inputs, *node.outputs) if v is not None]
        for value in values:
            for axis in sorted(state.tracked_axes(value)):
                builder.info(value, axis)
        if not known:
            if any(state.tracked_axes(v) for v in values):
                unknown_ops += 1
            detail = f"unknown operator `{node_label(node)}` (no coupling rule)"
            for value in values:
                for axis in state.tracked_axes(value):
                    builder.pin((value, axis), _reason("unknown-op", detail, node))
            continue
        for link in coupling.links:
            (va, aa), (vb, ab) = link.a, link.b
            if _unused(va, graph) or _unused(vb, graph):
                continue
            if state.is_tracked(va, aa) or state.is_tracked(vb, ab):
                builder.add_link(link, node)
        for pin in coupling.pins:
            if state.is_tracked(*pin.axis):
                reason = PinReason(pin.code, pin.detail, pin.node)
                builder.pin(pin.axis, reason, pin.positions)
        patches.extend(p for p in coupling.patches if p.axis is None or state.is_tracked(*p.axis))
        for (value, axis), role in coupling.roles:
            if state.is_tracked(value, axis):
                roles[(id(value), axis)].add(role)
        normalizers.extend(
            (node.name or "", v, a) for v, a in coupling.normalizes if state.is_tracked(v, a)
        )
        views.extend(coupling.views)
        for value in values:
            for axis in state.tracked_axes(value):
                if not coupling.is_handled(value, axis):
                    detail = (
                        f"the `{node.op_type}` rule cannot carry channels on axis {axis} "
                        f"of `{value.name}`"
                    )
                    builder.pin((value, axis), _reason("unsupported-axis", detail, node))
    _forward_roles(roles, views, state)
    _pin_boundaries(builder, state, graph, state.options.io)
    labels = _components(builder)
    pins = [
        (_pin_ids(builder.info(*axis), positions), reason)
        for axis, positions, reason in builder.pins
    ]
    stats = {
        "nodes": len(nodes),
        "evaluations": evaluations,
        "tracked-axes": len(builder.axes),
        "elements": builder.next_id,
        "links": builder.links,
        "unknown-ops": unknown_ops,
        "patches": len(patches),
    }
    return Coupling(builder.axes, labels, pins, patches, dict(roles), normalizers, stats)


def _forward_roles(roles: dict[tuple[int, int], set[str]],
                   views: list[tuple[ir.Value, ir.Value]], state: _State) -> None:
    """Give a stored weight the roles its dequantized or cast view has, axis by axis.

    Chains (a Cast after a DequantizeLinear) settle in as many sweeps as they are long.
    """
    changed = True
    while changed:
        changed = False
        for stored, view in views:
            for axis in state.tracked_axes(view):
                found = roles.get((id(view), axis))
                if not found or not state.is_tracked(stored, axis):
                    continue
                target = roles[(id(stored), axis)]
                if not found <= target:
                    target |= found
                    changed = True


def _pin_boundaries(builder: _Builder, state: _State, graph: ir.Graph, io: str = "keep"
                    ) -> None:
    """Pin tracked axes at graph inputs and outputs, overridable weights, subgraph uses.

    With ``io="rewrite"``, key/value-cache inputs and outputs are left free.
    """
    initializer_inputs = {id(v) for v in graph.inputs if v.const_value is not None}
    for value in graph.inputs:
        if io == "rewrite" and id(value) not in initializer_inputs and is_cache_name(value.name):
            continue
        detail = (
            f"initializer `{value.name}` is also a graph input, so it can be replaced at run time"
            if id(value) in initializer_inputs
            else f"comes from graph input `{value.name}`"
        )
        for axis in state.tracked_axes(value):
            builder.pin((value, axis), PinReason("graph-input", detail))
    for value in graph.outputs:
        if io == "rewrite" and is_cache_name(value.name):
            continue
        for axis in state.tracked_axes(value):
            detail = f"reaches graph output `{value.name}`"
            builder.pin((value, axis), PinReason("graph-output", detail))
    owners = {
        id(sub): node.name
        for node in graph
        for attribute in node.attributes.values()
        for sub in _subgraphs(attribute)
    }
    for info in list(builder.axes):
        for user in info.value.consumers():
            if user.graph is not graph:
                owner = owners.get(id(user.graph))
                detail = f"`{info.value.name}` is read inside a subgraph"
                builder.pin((info.value, info.axis), PinReason("subgraph", detail, owner))
                break


def _subgraphs(attribute: ir.Attr) -> list[ir.Graph]:
    if attribute.type == ir.AttributeType.GRAPH:
        return [attribute.value]
    if attribute.type == ir.AttributeType.GRAPHS:
        return list(attribute.value)
    return []


def _pin_ids(info: AxisInfo, positions: np.ndarray | None) -> np.ndarray:
    if info.extent is None:
        return np.zeros(0, dtype=np.int64)
    if positions is None:
        return info.ids
    positions = positions[(positions >= 0) & (positions < info.extent)]
    return info.base + positions


def _components(builder: _Builder) -> np.ndarray:
    total = builder.next_id + builder.virtual
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    sources = [a for a, _ in builder.edges] + [a for a, _ in builder.virtual_edges]
    offset = builder.next_id
    targets = [b for _, b in builder.edges] + [b + offset for _, b in builder.virtual_edges]
    if not sources:
        return np.arange(total, dtype=np.int64)
    rows = np.concatenate(sources)
    cols = np.concatenate(targets)
    from scipy.sparse import coo_matrix  # lazily: 140 ms of start-up
    from scipy.sparse.csgraph import connected_components

    matrix = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(total, total))
    _, labels = connected_components(matrix, directed=False)
    return labels.astype(np.int64)
