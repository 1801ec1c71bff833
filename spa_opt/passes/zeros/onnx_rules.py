"""Zero rules of ONNX-domain operators (and the contrib ops with the same semantics).

Each rule reads the facts of a node's inputs and sets those of its outputs; the kind
in :data:`spa_opt.ir.ops.OPS` (``zero=``) picks the rule. Their inputs hold plain
values (zero code 0): the driver only runs them on codes that are the number 0, or on
pure moves of quantized codes, which keep any code (see :mod:`.facts`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from spa_opt.ir.quant import viewed_weight
from spa_opt.ir.tensors import constant_array
from spa_opt.passes.zeros.facts import LITERAL, ZeroCode, ZeroFacts, all_zero


def keeps_zero(node: ir.Node) -> bool:
    """Whether ``f(0) = 0`` for the op's parameters (Clip with a positive floor: no)."""
    if node.op_type == "Pad":  # edge, reflect and wrap copy zeros; constant pads its value
        if node.attributes.get_string("mode", "constant") != "constant":
            return True
        value = node.inputs[2] if len(node.inputs) > 2 else None
        return value is None or all_zero(value)
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


def data_inputs(node: ir.Node, kind: str) -> list[ir.Value | None]:
    """The inputs whose zeros reach the output under ``kind``."""
    op = node.op_type
    if op == "Where":
        return list(node.inputs[1:3])
    if op == "Div":
        return list(node.inputs[:1])
    if kind in ("sum", "product") or op == "Concat":
        return list(node.inputs)
    return list(node.inputs[:1])


def elementwise(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """Moving, sum-like and product-like nodes, unit by unit (package docstring)."""
    if not keeps_zero(node):
        return
    inputs = [v for v in data_inputs(node, kind) if v is not None]
    for out in node.outputs:
        for group, member in facts.by_value.get(id(out), ()):
            flags = [facts.get(m, g) for v in inputs for g, m in facts.by_value.get(id(v), ())
                     if g is group]
            outside = [v for v in inputs
                       if not any(g is group for g, _ in facts.by_value.get(id(v), ()))]
            if kind == "product":
                result = np.logical_or.reduce(flags) if flags else np.zeros(group.units, bool)
                if node.op_type != "Div" and any(all_zero(v) for v in outside):
                    result = np.ones(group.units, dtype=bool)
            else:
                if not flags or (kind == "sum" and not all(all_zero(v) for v in outside)):
                    continue
                result = np.logical_and.reduce(flags)
            facts.set(member, group, np.asarray(result, dtype=bool))


def contraction_zeros(op: str, node: ir.Node, x: ir.Value | None, w: np.ndarray | None,
                      bias: ir.Value | None, out: ir.Value, facts: ZeroFacts,
                      x_code: ZeroCode = LITERAL) -> tuple[np.ndarray, int] | None:
    """Zero output channels of a ``op``-like contraction (Conv, ConvTranspose, MatMul, Gemm).

    ``w`` is the real weight (dequantized, widened), ``x_code`` the zero point the node
    reads ``x`` with; ``bias`` may be a view (DequantizeLinear, Cast) of a constant. An
    output channel is zero when its bias is and every live input channel's weight slice
    is. Returns the mask and the output axis it runs along; None when this is not such
    a contraction (no fact then).
    """
    if x is None or w is None or w.ndim < 2 or x.shape is None:
        return None
    rank = len(x.shape)
    if op == "Conv":
        groups = node.attributes.get_int("group", 1)
        cout, per_group = w.shape[0], w.shape[1]
        dead_in = facts.read_as(x, x_code, 1, per_group * groups)
        index = (np.arange(cout)[:, None] // (cout // groups)) * per_group + np.arange(per_group)
        live = (w.reshape(cout, per_group, -1) != 0).any(axis=2) & ~dead_in[index]
        zero, axis = ~live.any(axis=1), 1
    elif op == "ConvTranspose":
        groups = node.attributes.get_int("group", 1)
        cin, per_group = w.shape[0], w.shape[1]
        dead_in = facts.read_as(x, x_code, 1, cin)
        live = (w.reshape(cin, per_group, -1) != 0).any(axis=2) & ~dead_in[:, None]
        live = live.reshape(groups, cin // groups, per_group).any(axis=1).reshape(-1)
        zero, axis = ~live, 1
    elif op == "MatMul" and w.ndim == 2:
        dead_in = facts.read_as(x, x_code, rank - 1, w.shape[0])
        zero, axis = ~((w != 0) & ~dead_in[:, None]).any(axis=0), len(out.shape or ()) - 1
    elif op == "Gemm":
        a_axis = 0 if node.attributes.get_int("transA", 0) else 1
        w = w.T if node.attributes.get_int("transB", 0) else w
        dead_in = facts.read_as(x, x_code, a_axis, w.shape[0])
        zero, axis = ~((w != 0) & ~dead_in[:, None]).any(axis=0), 1
    else:
        return None
    if bias is not None:
        data = viewed_weight(bias)
        if data is None or data.size not in (1, zero.size):
            zero[:] = False
        else:
            zero &= np.broadcast_to(data.reshape(-1) == 0, zero.shape)
    return zero, axis


def contraction(op: str, node: ir.Node, x: ir.Value | None, w: np.ndarray | None,
                bias: ir.Value | None, out: ir.Value, facts: ZeroFacts,
                x_code: ZeroCode = LITERAL) -> bool:
    """:func:`contraction_zeros`, recorded on ``out``; False when not a contraction."""
    found = contraction_zeros(op, node, x, w, bias, out, facts, x_code)
    if found is None:
        return False
    zero, axis = found
    if axis >= 0:
        facts.from_positions(out, axis, zero)
    return True


def weighted(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """Conv, ConvTranspose, Gemm, and MatMul with a constant weight (else a product)."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    done = contraction(node.op_type, node, node.inputs[0], viewed_weight(weight), bias,
                       node.outputs[0], facts)
    if not done and kind == "product":
        elementwise(node, facts, kind)


def norm(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """Normalizations: zero scale and shift give a zero channel (BatchNorm: see below)."""
    x, out = node.inputs[0], node.outputs[0]
    scale = viewed_weight(node.inputs[1]) if len(node.inputs) > 1 else None
    shifted = len(node.inputs) > 2 and node.inputs[2] is not None
    shift = viewed_weight(node.inputs[2]) if shifted else None
    if x is None or x.shape is None or scale is None or scale.ndim != 1 or (
            shifted and shift is None):  # a run-time shift: unknown
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
            # a zero input channel comes out as B - scale * mean / sqrt(var + eps)
            eps = node.attributes.get_float("epsilon", 1e-5)
            at_zero = shift - scale * mean / np.sqrt(var + eps)
            zero |= facts.positions(x, 1, scale.size) & (np.abs(at_zero) == 0)
    facts.from_positions(out, axis, zero)
