"""Which channels are provably zero for every input: the lattice behind ``dead``.

The facts live on the coupling's groups: for every member axis of a group, one flag
per unit, "this unit's slices of this tensor are zero whatever the input". A unit's
positions on one member follow from its positions on another (that is what coupling
means), so facts move from a node's input members to its output members unit by unit.
The lattice is the powerset of units ordered by inclusion; each rule is monotone and
the graph is a DAG, so one pass in topological order reaches the fixpoint.

Rules, by operator family (``Z(x)``: the unit is zero on member ``x``):

- constants: a unit is zero where the weight's slices are all zero;
- moving (layout, pooling, reductions over other axes, Pad with a zero value or a
  copying mode, unary ``f`` with ``f(0) = 0``): ``Z(out) = AND Z(member inputs)``;
- sum-like (Add, Sub, Sum, Max, Min, Mean, Where's branches): as moving, and an input
  outside the group (broadcast along the axis) must be a constant that is all zero;
- product-like (Mul, And, activation MatMul): ``Z(out) = OR Z(member inputs)``, or an
  input outside the group that is an all-zero constant; Div: its numerator;
- weighted (Conv, ConvTranspose, Gemm, MatMul with a constant weight): output channel
  ``o`` is zero when its bias is zero and, for every input channel, the weight slice
  is zero or the input channel is zero (dead inputs are masked first);
- normalizations: zero scale and zero shift give a zero channel; BatchNormalization
  also maps a zero input channel to ``B - scale * mean / sqrt(var + eps)``;
- anything else: no fact (never zero).

:func:`dead_units` then calls a unit dead when it is zero wherever the group's
channels leave it (an activation member read by a node none of whose outputs carries
the group: a contraction, a reduction, an unknown op) and the group feeds no
normalizer, since removing even a zero channel changes a mean over channels. The
backward fact counts too: where the reader is a contraction whose weight slices for
the unit are all zero (its input columns), the unit is dead there whatever it carries,
so a unit that every reader multiplies by zero goes with its producer rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from spa_opt.ir.ops import WEIGHTED, ops_where
from spa_opt.ir.quant import float_weight, viewed_weight
from spa_opt.ir.tensors import constant_array
from spa_opt.passes.coupling.groups import Group, Member

MOVING = ops_where(zero="moving")
SUM_LIKE = ops_where(zero="sum")
PRODUCT = ops_where(zero="product")
NORMS = ops_where(zero="norm")

Key = tuple[int, int]


class ZeroFacts:
    """Per member axis and group: which units are zero (see the module docstring)."""

    def __init__(self, groups: Sequence[Group]) -> None:
        self.groups = groups
        self.hosted: dict[Key, list[tuple[Group, Member]]] = defaultdict(list)
        self.by_value: dict[int, list[tuple[Group, Member]]] = defaultdict(list)
        for group in groups:
            for member in group.members:
                self.hosted[(id(member.value), member.axis)].append((group, member))
                self.by_value[id(member.value)].append((group, member))
        self.units: dict[tuple[Key, str], np.ndarray] = {}

    def get(self, member: Member, group: Group) -> np.ndarray:
        """Zero flags of ``group``'s units on ``member`` (all False when unknown)."""
        key = ((id(member.value), member.axis), group.id)
        return self.units.get(key, np.zeros(group.units, dtype=bool))

    def set(self, member: Member, group: Group, flags: np.ndarray) -> None:
        """Record the zero flags of one member."""
        self.units[((id(member.value), member.axis), group.id)] = flags

    def positions(self, value: ir.Value | None, axis: int, extent: int) -> np.ndarray:
        """Position-level zero mask of one axis, from every group it hosts."""
        mask = np.zeros(extent, dtype=bool)
        if value is None:
            return mask
        for group, member in self.hosted.get((id(value), axis), ()):
            flags = self.get(member, group)
            if flags.any() and member.index_map.extent == extent:
                mask[member.index_map.take(np.flatnonzero(flags))] = True
        return mask

    def from_positions(self, value: ir.Value, axis: int, mask: np.ndarray) -> None:
        """Set unit flags of every group on one axis from a position-level mask."""
        for group, member in self.hosted.get((id(value), axis), ()):
            self.set(member, group, mask[member.index_map.positions].all(axis=1))


def _all_zero(value: ir.Value | None) -> bool:
    data = constant_array(value)
    return data is not None and not np.any(data)


def _slices_zero(data: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(data, axis, 0).reshape(data.shape[axis], -1)
    return ~np.any(moved != 0, axis=1)


def propagate(graph: ir.Graph, groups: Sequence[Group]) -> ZeroFacts:
    """Zero facts for every member of every group."""
    facts = ZeroFacts(groups)
    for group in groups:
        for member in group.weights:
            data = float_weight(member.value)  # an int8 code 0 is not 0 when zp != 0
            if data is not None and data.ndim > member.axis:
                zero = _slices_zero(data, member.axis)
                facts.set(member, group, zero[member.index_map.positions].all(axis=1))
    for node in graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        op = node.op_type
        if op in WEIGHTED and _weighted(node, facts):
            continue
        if op in NORMS:
            _norm(node, facts)
        elif (op in MOVING or op in SUM_LIKE or op in PRODUCT) and _keeps_zero(node):
            _elementwise(node, facts)
    return facts


def _keeps_zero(node: ir.Node) -> bool:
    """Whether ``f(0) = 0`` for the op's parameters (Clip with a positive floor: no)."""
    if node.op_type == "Pad":  # edge, reflect and wrap copy zeros; constant pads its value
        if node.attributes.get_string("mode", "constant") != "constant":
            return True
        value = node.inputs[2] if len(node.inputs) > 2 else None
        return value is None or _all_zero(value)
    if node.op_type == "Pow":  # x ** p with a positive constant exponent
        exponent = constant_array(node.inputs[1])
        return exponent is not None and exponent.size == 1 and float(exponent) > 0
    if node.op_type != "Clip":
        return True
    low = node.attributes.get_float("min", None) if "min" in node.attributes else None
    high = node.attributes.get_float("max", None) if "max" in node.attributes else None
    if len(node.inputs) > 1:
        low_data, high_data = constant_array(node.inputs[1]), (
            constant_array(node.inputs[2]) if len(node.inputs) > 2 else None)
        if node.inputs[1] is not None and low_data is None:
            return False
        low = None if low_data is None else float(low_data)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            if high_data is None:
                return False
            high = float(high_data)
    return (low is None or low <= 0) and (high is None or high >= 0)


def _data_inputs(node: ir.Node) -> list[ir.Value | None]:
    op = node.op_type
    if op == "Where":
        return list(node.inputs[1:3])
    if op == "Div":
        return list(node.inputs[:1])
    if op in SUM_LIKE or op in PRODUCT or op == "Concat":
        return list(node.inputs)
    return list(node.inputs[:1])


def _elementwise(node: ir.Node, facts: ZeroFacts) -> None:
    op = node.op_type
    inputs = [v for v in _data_inputs(node) if v is not None]
    for out in node.outputs:
        for group, member in facts.by_value.get(id(out), ()):
            flags = [facts.get(m, g) for v in inputs for g, m in facts.by_value.get(id(v), ())
                     if g is group]
            outside = [v for v in inputs
                       if not any(g is group for g, _ in facts.by_value.get(id(v), ()))]
            if op in PRODUCT:
                result = np.logical_or.reduce(flags) if flags else np.zeros(group.units, bool)
                if op != "Div" and any(_all_zero(v) for v in outside):
                    result = np.ones(group.units, dtype=bool)
            else:
                if not flags or (op in SUM_LIKE and not all(_all_zero(v) for v in outside)):
                    continue
                result = np.logical_and.reduce(flags)
            facts.set(member, group, np.asarray(result, dtype=bool))


def _weighted(node: ir.Node, facts: ZeroFacts) -> bool:
    """Output channels of a contraction with a constant weight; False if not one."""
    op = node.op_type
    x, weight = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    w = viewed_weight(weight)  # through a DequantizeLinear or widening Cast
    out = node.outputs[0]
    if x is None or w is None or w.ndim < 2 or x.shape is None:
        return False
    rank = len(x.shape)
    if op == "Conv":
        groups = node.attributes.get_int("group", 1)
        cout, per_group = w.shape[0], w.shape[1]
        dead_in = facts.positions(x, 1, per_group * groups)
        index = (np.arange(cout)[:, None] // (cout // groups)) * per_group + np.arange(per_group)
        live = (w.reshape(cout, per_group, -1) != 0).any(axis=2) & ~dead_in[index]
        zero, axis = ~live.any(axis=1), 1
    elif op == "ConvTranspose":
        groups = node.attributes.get_int("group", 1)
        cin, per_group = w.shape[0], w.shape[1]
        dead_in = facts.positions(x, 1, cin)
        live = (w.reshape(cin, per_group, -1) != 0).any(axis=2) & ~dead_in[:, None]
        live = live.reshape(groups, cin // groups, per_group).any(axis=1).reshape(-1)
        zero, axis = ~live, 1
    elif op == "MatMul" and w.ndim == 2:
        dead_in = facts.positions(x, rank - 1, w.shape[0])
        zero, axis = ~((w != 0) & ~dead_in[:, None]).any(axis=0), len(out.shape or ()) - 1
    elif op == "Gemm":
        a_axis = 0 if node.attributes.get_int("transA", 0) else 1
        w = w.T if node.attributes.get_int("transB", 0) else w
        dead_in = facts.positions(x, a_axis, w.shape[0])
        zero, axis = ~((w != 0) & ~dead_in[:, None]).any(axis=0), 1
    else:
        return False
    bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if bias is not None:
        zero &= np.broadcast_to(bias == 0, zero.shape) if bias.size in (1, zero.size) else False
    elif len(node.inputs) > 2 and node.inputs[2] is not None:
        zero[:] = False
    if axis >= 0:
        facts.from_positions(out, axis, zero)
    return True


def _norm(node: ir.Node, facts: ZeroFacts) -> None:
    x, out = node.inputs[0], node.outputs[0]
    scale = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    shift = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if x is None or x.shape is None or scale is None or scale.ndim != 1:
        return
    op = node.op_type
    axis = 1 if op in ("BatchNormalization", "InstanceNormalization", "GroupNormalization") \
        else len(x.shape) - 1
    if x.shape[axis] != scale.size:
        return
    shift = np.zeros_like(scale) if shift is None else shift.reshape(-1)
    zero = (scale == 0) & (shift == 0)
    if op == "BatchNormalization" and len(node.inputs) >= 5:
        mean, var = constant_array(node.inputs[3]), constant_array(node.inputs[4])
        if mean is not None and var is not None:
            eps = node.attributes.get_float("epsilon", 1e-5)
            at_zero = shift - scale * mean / np.sqrt(var + eps)
            zero |= facts.positions(x, 1, scale.size) & (np.abs(at_zero) == 0)
    facts.from_positions(out, axis, zero)


def _zero_columns(reader: ir.Node, member: Member, group: Group,
                  facts: ZeroFacts) -> np.ndarray:
    """Units whose input columns are all zero in ``reader``'s constant weight.

    Only for a contraction reading ``member`` as its data input (input 0) with its
    weight, at input 1, a member of the same group that consumes the channels (role
    ``in``): then the unit contributes nothing to the reader's output.
    """
    nothing = np.zeros(group.units, dtype=bool)
    if reader.op_type not in WEIGHTED or len(reader.inputs) < 2 or reader.domain not in (
            "", "ai.onnx") or reader.inputs[0] is not member.value:
        return nothing
    weight = reader.inputs[1]
    for other, weight_member in facts.by_value.get(id(weight), ()):
        if other is group and "in" in weight_member.roles:
            return facts.get(weight_member, group)
    return nothing


def dead_units(graph: ir.Graph, groups: Sequence[Group],
               normalized: set[Key]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Dead units per group, and groups whose zero units cannot go, with the reason."""
    facts = propagate(graph, groups)
    readers: dict[Key, list[ir.Node]] = defaultdict(list)
    for node in graph:
        if not any(out.uses() or out.is_graph_output() for out in node.outputs):
            continue  # nothing reads what it computes: not a place channels leave
        for value in node.inputs:
            if value is not None:
                for _, member in facts.by_value.get(id(value), ()):
                    readers[(id(value), member.axis)].append(node)
    dead: dict[str, np.ndarray] = {}
    blocked: dict[str, str] = {}
    for group in groups:
        if not group.prunable:
            continue
        flags = np.ones(group.units, dtype=bool)
        for member in group.members:
            if member.kind == "weight":
                continue
            for node in readers.get((id(member.value), member.axis), ()):
                carried = any(g is group for out in node.outputs
                              for g, _ in facts.by_value.get(id(out), ()))
                if not carried:
                    flags &= facts.get(member, group) | _zero_columns(node, member, group,
                                                                      facts)
        flags &= ~group.pinned
        if not flags.any():
            continue
        if any((id(m.value), m.axis) in normalized for m in group.members):
            blocked[group.id] = (f"{int(flags.sum())} zero units feed a normalization over "
                                 "the channels; removing them would change its statistics")
            continue
        dead[group.id] = flags
    return dead, blocked
