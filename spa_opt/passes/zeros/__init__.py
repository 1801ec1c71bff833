"""Which channels are provably zero for every input: the lattice behind ``dead``.

The facts live on the coupling's groups: for every member axis of a group, one flag
per unit, "this unit's slices of this tensor are zero whatever the input" (for a
quantized tensor: hold its zero point, the code of real 0; see :mod:`.facts`). A
unit's positions on one member follow from its positions on another (that is what
coupling means), so facts move from a node's input members to its output members
unit by unit. The lattice is the powerset of units ordered by inclusion; each rule is
monotone and the graph is a DAG, so one pass in topological order reaches the fixpoint.

The operator table (:mod:`spa_opt.ir.ops`, ``zero=``) gives each operator a kind and
:data:`RULES` a rule per kind, so an operator is one table row, plus one rule when no
kind fits. Kinds (``Z(x)``: the unit is zero on member ``x``):

- constants, and views of them (``DequantizeLinear``, ``Cast``, ``Identity`` of a
  constant): a unit is zero where the real weight's slices are all zero;
- ``moving`` (layout, pooling, reductions over other axes, Pad with a zero value or a
  copying mode, unary ``f`` with ``f(0) = 0``): ``Z(out) = AND Z(member inputs)``;
- ``sum`` (Add, Sub, Sum, Max, Min, Mean, Where's branches, bias-then-``f`` fused
  ops): as moving, and an input outside the group (broadcast along the axis) must be a
  constant that is all zero;
- ``product`` (Mul, And, activation MatMul): ``Z(out) = OR Z(member inputs)``, or an
  input outside the group that is an all-zero constant; Div: its numerator;
- ``weighted`` (Conv, ConvTranspose, Gemm, MatMul with a constant weight): output
  channel ``o`` is zero when its bias is zero and, for every input channel, the weight
  slice is zero or the input channel is zero (dead inputs are masked first);
- ``norm``: zero scale and zero shift give a zero channel; BatchNormalization also
  maps a zero input channel to ``B - scale * mean / sqrt(var + eps)``;
- quantization (``quantize``, ``dequantize``, ``quantized-contraction``,
  ``qlinear-sum``/``-product``/``-moving``): :mod:`.quant_rules`;
- onnxruntime's fused ops (``skip-norm``, ``attention``, ``nbits``, ``fused-conv``):
  :mod:`.contrib_rules`;
- anything else: no fact (never zero).

The plain-value rules only run on inputs whose zero code is the number 0; the pure
moves in :data:`CODE_MOVES` also carry a quantized code along (a zero-point channel
reshaped or max-pooled is still the zero point); any other arithmetic on codes
learns nothing, and its outputs' codes are unknown.

:func:`dead_units` then calls a unit dead when it is zero wherever the group's
channels leave it (an activation member read by a node none of whose outputs carries
the group: a contraction, a reduction, an unknown op; or by a contraction whose weight
rows are in the group, which mixes the channels even when its output writes back into
the same residual stream), read there with the zero code
it holds, and the group feeds no normalizer, since removing even a zero channel
changes a mean over channels. The backward fact counts too: where the reader is a
contraction whose weight slices for the unit are all zero (its input columns), the
unit is dead there whatever it carries, so a unit that every reader multiplies by zero
goes with its producer rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from spa_opt.ir.ops import WEIGHTED, op_info
from spa_opt.ir.quant import viewed_weight
from spa_opt.passes.coupling.groups import Group, Member
from spa_opt.passes.zeros import contrib_rules, quant_rules
from spa_opt.passes.zeros.facts import (
    UNKNOWN,
    Key,
    ZeroCode,
    ZeroFacts,
    agreement,
    slices_zero,
)
from spa_opt.passes.zeros.onnx_rules import data_inputs, elementwise, norm, weighted

__all__ = ["RULES", "ZeroFacts", "dead_units", "propagate"]

Rule = Callable[[ir.Node, ZeroFacts, str], None]

RULES: dict[str, Rule] = {
    "moving": elementwise,
    "sum": elementwise,
    "product": weighted,  # a MatMul with a constant weight is a contraction
    "weighted": weighted,
    "norm": norm,
    "quantize": quant_rules.quantize,
    "dequantize": quant_rules.dequantize_rule,
    "quantized-contraction": quant_rules.quantized_contraction,
    "qlinear-sum": quant_rules.qlinear_elementwise,
    "qlinear-product": quant_rules.qlinear_elementwise,
    "qlinear-moving": quant_rules.qlinear_elementwise,
    "skip-norm": contrib_rules.skip_norm,
    "attention": contrib_rules.attention,
    "nbits": contrib_rules.matmul_nbits,
    "fused-conv": contrib_rules.fused_conv,
}
"""The rule of each zero kind of the operator table."""

CODE_AWARE = frozenset({"quantize", "dequantize", "quantized-contraction", "qlinear-sum",
                        "qlinear-product", "qlinear-moving"})
"""Kinds whose rules read quantized codes with their zero points themselves."""

CODE_MOVES = frozenset({
    "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout", "Slice",
    "Gather", "Expand", "Tile", "Split", "Concat", "DepthToSpace", "SpaceToDepth", "MaxPool",
    "GlobalMaxPool"})
"""ONNX ops that only move or select elements: a code comes out as it went in."""

_SAME_AXES = frozenset({"Identity", "Dropout", "MaxPool", "GlobalMaxPool"})
"""Moves that keep every axis where it was (a per-axis zero point stays per axis)."""


def _moved_code(node: ir.Node, facts: ZeroFacts) -> ZeroCode:
    """The code a pure move writes: its data inputs' common one (unknown if they differ)."""
    codes = [facts.code(v) for v in data_inputs(node, "moving") if v is not None]
    if not codes:
        return UNKNOWN
    first = codes[0]
    if not all(agreement(first, c, None, 0, 1).all() for c in codes[1:]):
        return UNKNOWN
    if first.data is not None and first.data.size > 1 and node.op_type not in _SAME_AXES:
        return UNKNOWN
    return first


def propagate(graph: ir.Graph, groups: Sequence[Group]) -> ZeroFacts:
    """Zero facts for every member of every group."""
    facts = ZeroFacts(groups)
    views: set[int] = set()
    for group in groups:
        for member in group.members:
            data = viewed_weight(member.value)  # an int8 code 0 is not 0 when zp != 0
            if data is not None and data.ndim > member.axis:
                views.add(id(member.value))
                zero = slices_zero(data, member.axis)
                facts.set(member, group, zero[member.index_map.positions].all(axis=1))
    facts.views = views
    for node in graph:
        if all(id(out) in views for out in node.outputs):
            continue  # a view of a constant: its facts are already exact
        kind = op_info(node.op_type, node.domain).zero
        rule = RULES.get(kind) if kind is not None else None
        if kind in CODE_AWARE:
            if node.outputs:
                facts.codes[id(node.outputs[0])] = quant_rules.written_code(node)
            rule(node, facts, kind)
            continue
        runtime = [v for v in node.inputs if v is not None and v.const_value is None]
        if all(facts.code(v).literal for v in runtime):
            if rule is not None:
                rule(node, facts, kind)
            continue
        code = (_moved_code(node, facts) if node.op_type in CODE_MOVES
                and node.domain in ("", "ai.onnx") else UNKNOWN)
        for out in node.outputs:
            facts.codes[id(out)] = code
        if code.known and rule is not None:
            rule(node, facts, kind)
    return facts


def _input_rows(reader: ir.Node, member: Member, group: Group,
                facts: ZeroFacts) -> Member | None:
    """The member of ``group`` that is ``reader``'s weight rows for ``member``'s channels.

    Only for a contraction reading ``member`` as its data input (input 0) with its
    weight, at input 1, a member of the same group that consumes the channels (role
    ``in``): the reader then mixes every one of those channels into every output
    channel, whatever group its output belongs to.
    """
    if reader.op_type not in WEIGHTED or len(reader.inputs) < 2 or reader.domain not in (
            "", "ai.onnx") or reader.inputs[0] is not member.value:
        return None
    for other, weight_member in facts.by_value.get(id(reader.inputs[1]), ()):
        if other is group and "in" in weight_member.roles:
            return weight_member
    return None


def _zero_columns(reader: ir.Node, member: Member, group: Group,
                  facts: ZeroFacts) -> np.ndarray:
    """Units whose input columns are all zero in ``reader``'s constant weight.

    They contribute nothing to the reader's output (see :func:`_input_rows`).
    """
    rows = _input_rows(reader, member, group, facts)
    return np.zeros(group.units, dtype=bool) if rows is None else facts.get(rows, group)


def _carries(reader: ir.Node, member: Member, group: Group, facts: ZeroFacts) -> bool:
    """Whether ``reader`` passes ``member``'s channels on, unit by unit, to an output.

    An output in the same group is not enough: a contraction whose output writes back
    into the residual stream it reads (``r = h + h @ W``) is in the group on both sides,
    yet mixes every input channel into every output channel.
    """
    if _input_rows(reader, member, group, facts) is not None:
        return False
    return any(g is group for out in reader.outputs for g, _ in facts.by_value.get(id(out), ()))


def _read_as_held(reader: ir.Node, member: Member, group: Group,
                  facts: ZeroFacts) -> np.ndarray:
    """Units that ``reader`` reads with the zero code ``member`` holds them in."""
    held = facts.code(member.value)
    wanted = quant_rules.reader_code(reader, member.value)
    if held.literal and wanted.literal:
        return np.ones(group.units, dtype=bool)
    shape = member.value.shape
    rank = len(shape) if shape is not None else None
    same = agreement(held, wanted, rank, member.axis, member.index_map.extent)
    return same[member.index_map.positions].all(axis=1)


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
            if member.kind == "weight" or id(member.value) in facts.views:
                continue  # weights, and views of them, are read, not computed
            for node in readers.get((id(member.value), member.axis), ()):
                if not _carries(node, member, group, facts):
                    zero = facts.get(member, group) & _read_as_held(node, member, group, facts)
                    flags &= zero | _zero_columns(node, member, group, facts)
        flags &= ~group.pinned
        if not flags.any():
            continue
        if any((id(m.value), m.axis) in normalized for m in group.members):
            blocked[group.id] = (f"{int(flags.sum())} zero units feed a normalization over "
                                 "the channels; removing them would change its statistics")
            continue
        dead[group.id] = flags
    return dead, blocked
