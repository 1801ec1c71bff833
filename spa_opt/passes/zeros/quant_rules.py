"""Zero rules of quantization: QDQ pairs, operator-form (QLinear*) and integer ops.

A zero channel crosses a quantizer as its zero point and comes back exactly:
``QuantizeLinear(0) = saturate(round(0 / s) + zp) = zp`` (a zero point lies in the
saturation range; the scale must be a nonzero constant), ``DequantizeLinear(zp) =
(zp - zp) * s = 0``, per tensor or per channel. So facts on quantized codes mean "the
codes equal the zero point the writer used" (:mod:`.facts`), and every reader checks
that it reads them with that zero point, position by position:

- ``QuantizeLinear``: the output's units are the input's, its code the zero point;
- ``DynamicQuantizeLinear``: the same, with the zero point output as the code. Zero
  channels do not move its scale or zero point (the range always includes 0:
  ``min(0, x_min)``, ``max(0, x_max)``), so removing them changes no other code;
- ``DequantizeLinear``: zero where the input is and the zero points agree;
- ``QLinearConv``/``QLinearMatMul``/``QGemm``, ``ConvInteger``/``MatMulInteger``: the
  float contraction rule on the real weight ``(w - w_zp) * w_scale`` and the int32
  bias (scale ``x_scale * w_scale``, zero point 0), the data input read with its
  zero point; the output is ``round(0) + y_zp = y_zp`` (int32 0 for the integer ops);
- ``QLinearAdd`` (sum), ``QLinearMul`` (product), ``QLinearGlobalAveragePool`` and
  ``QLinearLeakyRelu`` (moving, ``f(0) = 0``): every input read with its own zero
  point, the output coded with ``y_zp``. (``QLinearConcat`` has no rule yet: its
  output is not proved zero, which is never wrong.)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from spa_opt.ir.quant import dequantize, quantization_of
from spa_opt.ir.tensors import constant_array
from spa_opt.passes.zeros.facts import (
    LITERAL,
    UNKNOWN,
    ZeroCode,
    ZeroFacts,
    combine_positions,
    constant_code,
)
from spa_opt.passes.zeros.onnx_rules import contraction

READ_ZERO_POINTS: dict[str, tuple[tuple[int, int], ...]] = {
    "DequantizeLinear": ((0, 2),),
    "QLinearConv": ((0, 2),),
    "QLinearMatMul": ((0, 2),),
    "QGemm": ((0, 2),),
    "ConvInteger": ((0, 2),),
    "MatMulInteger": ((0, 2),),
    "QLinearAdd": ((0, 2), (3, 5)),
    "QLinearMul": ((0, 2), (3, 5)),
    "QLinearGlobalAveragePool": ((0, 2),),
    "QLinearLeakyRelu": ((0, 2),),
}
"""Quantized readers: (data input, the zero-point input it is read with) pairs."""

WRITE_ZERO_POINT: dict[str, int] = {
    "QuantizeLinear": 2, "QLinearConv": 7, "QLinearMatMul": 7, "QGemm": 8, "QLinearAdd": 7,
    "QLinearMul": 7, "QLinearGlobalAveragePool": 4, "QLinearLeakyRelu": 4, "QLinearConcat": 1,
}
"""The zero-point input of each quantizing writer's output."""


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def reader_code(node: ir.Node, value: ir.Value) -> ZeroCode:
    """The zero code ``node`` reads ``value`` with (0 for an ordinary float reader)."""
    op = node.op_type
    if op == "QLinearConcat":
        pairs = [(i, i + 2) for i in range(2, len(node.inputs), 3)]
    else:
        pairs = READ_ZERO_POINTS.get(op, ())
    codes = [constant_code(_input(node, zp), node.attributes.get_int("axis", 1)
                           if op == "DequantizeLinear" else 1)
             for data, zp in pairs if _input(node, data) is value]
    if not codes:
        return LITERAL if op not in READ_ZERO_POINTS and op != "QLinearConcat" else UNKNOWN
    return codes[0] if len(codes) == 1 else UNKNOWN


def written_code(node: ir.Node) -> ZeroCode:
    """The zero code of a quantizing writer's output 0 (0 for the integer contractions)."""
    op = node.op_type
    if op in ("ConvInteger", "MatMulInteger", "DequantizeLinear"):
        return LITERAL
    if op == "DynamicQuantizeLinear":
        return ZeroCode(value=node.outputs[2])
    if op == "QGemm" and _input(node, 7) is None:
        return LITERAL  # no y_scale: a float output
    if op == "QuantizeLinear" and node.attributes.get_int("block_size", 0):
        return UNKNOWN
    return constant_code(_input(node, WRITE_ZERO_POINT[op]), node.attributes.get_int("axis", 1))


def quantize(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """``QuantizeLinear``/``DynamicQuantizeLinear``: zero channels become the zero point."""
    if node.op_type == "QuantizeLinear":
        scale = constant_array(_input(node, 1))
        if scale is None or not np.all(scale != 0) or node.attributes.get_int("block_size", 0):
            return
    combine_positions(facts, node.outputs[0], [(node.inputs[0], LITERAL)], "moving")


def dequantize_rule(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """``DequantizeLinear``: zero where the codes are the zero point it reads them with."""
    x = node.inputs[0]
    if x is None or node.attributes.get_int("block_size", 0):
        return
    out = node.outputs[0]
    if out.shape is None:
        return
    code = reader_code(node, x)
    for axis in {member.axis for _, member in facts.by_value.get(id(out), ())}:
        extent = out.shape[axis]
        if isinstance(extent, int):
            facts.from_positions(out, axis, facts.read_as(x, code, axis, extent))


def _real_weight(value: ir.Value | None) -> np.ndarray | None:
    """The real weight of a quantized reader: dequantized codes, or None if unknown."""
    data = constant_array(value)
    if data is None:
        return None
    if data.dtype.kind not in "iu":
        return data
    q = quantization_of(value)
    return None if q is None else dequantize(data, q)


def quantized_contraction(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """QLinearConv/QLinearMatMul/QGemm and ConvInteger/MatMulInteger (module docstring)."""
    op = node.op_type
    x = node.inputs[0]
    if op in ("ConvInteger", "MatMulInteger"):
        weight, bias, like = _input(node, 1), None, op.removesuffix("Integer")
    else:
        weight = _input(node, 3)
        bias = _input(node, 6 if op == "QGemm" else 8)
        like = {"QLinearConv": "Conv", "QLinearMatMul": "MatMul", "QGemm": "Gemm"}[op]
    w = _real_weight(weight)
    if x is not None:
        contraction(like, node, x, w, bias, node.outputs[0], facts, reader_code(node, x))


def qlinear_elementwise(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearLeakyRelu."""
    sources = [(_input(node, data), reader_code(node, _input(node, data)))
               for data, _ in READ_ZERO_POINTS[node.op_type]]
    combine_positions(facts, node.outputs[0], sources, kind.removeprefix("qlinear-"))
