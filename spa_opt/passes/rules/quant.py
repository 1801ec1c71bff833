"""Quantized graphs: QDQ pairs pass channels through, quantized operators act like float ones.

Rules (``x`` the quantized or dequantized tensor, ``axis`` its attribute, default 1):

- ``QuantizeLinear``, ``DequantizeLinear`` (ONNX and ``com.microsoft``): every axis of
  ``x`` is the same axis of the output, so activation Q/DQ pairs are pass-through;
  - a per-tensor scale or zero point (a scalar, or one element) carries no channels
    and stays as it is;
  - per-axis (1-D, opset 13): ``scale[c]`` and ``zero_point[c]`` are group members
    (role ``param``) at channel ``c`` of ``x[axis]``, sliced with it;
  - blocked (``block_size = B`` > 0, opset 21; scale of ``x``'s rank, ``ceil(C / B)``
    entries on ``axis``): the ``B`` channels of one block and their one scale entry are
    one removal unit (keys ``c // B``), so a block goes whole and ``block_size`` stays
    valid (removing whole blocks keeps every later channel in its block, a trailing
    partial block included); the scale's other axes follow ``x``'s position by position.
    Blocks rather than pins: a blocked weight is still prunable, at block granularity;
  - ``DequantizeLinear`` of a constant (a QDQ weight: int8 codes, an int32 bias) is
    that weight: its output is a constant to the consumer's rule (MatMul seeds it) and
    the roles the consumer states on it (``out``, ``in``) are the stored codes'
    (:meth:`~spa_opt.passes.coupling.node.NodeCoupling.stores`), so the int8 tensor is
    the group's weight member, scored dequantized (:func:`spa_opt.ir.quant.float_weight`);
- ``DynamicQuantizeLinear``: ``x`` passes through to ``y``; its scale and zero point are
  scalars computed from the tensor's range (which always includes 0, so removing a
  zero channel leaves them unchanged);
- ``QLinearConv`` (``x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B``) and
  ``ConvInteger`` (``x, w, x_zp, w_zp``): the Conv rule on ``x``, ``w`` and ``B``
  (grouped and depthwise alike); a per-output-channel ``w_scale``/``w_zp`` ``[M]`` is a
  member (role ``param``) at output channel ``m``;
- ``QLinearMatMul`` (``a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp``) and
  ``MatMulInteger`` (``A, B, a_zp, b_zp``): the MatMul rule on ``a`` and ``b``; a
  per-column ``b`` parameter ``[N]`` follows ``b``'s last axis, a per-row ``a``
  parameter ``[M]`` follows ``a``'s second-to-last axis;
- ``com.microsoft`` QOperator ops that onnxruntime's ``quantize_static`` emits:
  ``QGemm`` (the Gemm rule on ``A``, ``B`` at input 3 and ``C`` at input 6, per-column
  ``b_scale``/``b_zp``), ``QLinearAdd``/``QLinearMul`` (``A`` at 0 and ``B`` at 3
  broadcast into the output), ``QLinearGlobalAveragePool`` and
  ``QLinearAveragePool`` (channels on axis 1, or the last with ``channels_last``),
  ``QLinearLeakyRelu``/``QLinearSigmoid``/``QLinearSoftmax`` (every axis passes
  through); ``QLinearConcat`` (``Y_scale, Y_zp``, then ``(X, scale, zp)`` triples) is
  the Concat rule on its data inputs. Scales and zero points of these are per tensor.

Per-tensor activation scales make pruning exact only up to re-quantization: a removed
channel never changes another channel's codes, so a QDQ graph prunes exactly like its
float twin, quantization error aside.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import onnx_ir as ir

from spa_opt.passes.coupling.node import NodeCoupling
from spa_opt.passes.rules.conv import _grouped
from spa_opt.passes.rules.elementwise import broadcast_into, link_all_axes
from spa_opt.passes.rules.layout import concat, normalized
from spa_opt.passes.rules.linear import _matmul_letters, contract, gemm
from spa_opt.passes.rules.registry import rule

_MS = "com.microsoft"


class _Renumbered:
    """A view of a NodeCoupling whose ``input(i)`` is the node's input ``order[i]``.

    Lets the float rules (Conv, MatMul, Gemm, Concat) run unchanged on quantized
    operators that interleave scales and zero points with their data inputs; every
    fact stated goes to the wrapped coupling.
    """

    def __init__(self, coupling: NodeCoupling, order: tuple[int | None, ...]) -> None:
        self._coupling = coupling
        self._order = order
        self.node = _Node(coupling.node, order)

    def input(self, index: int) -> ir.Value | None:
        where = self._order[index] if index < len(self._order) else None
        return None if where is None else self._coupling.input(where)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._coupling, name)


class _Node:
    """The node as the float rule expects it: ``inputs`` renumbered, the rest as is."""

    def __init__(self, node: ir.Node, order: tuple[int | None, ...]) -> None:
        self._node = node
        present = [node.inputs[i] if i is not None and i < len(node.inputs) else None
                   for i in order]
        while present and present[-1] is None:
            present.pop()
        self.inputs = tuple(present)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


def _renumbered(c: NodeCoupling, *order: int | None) -> NodeCoupling:
    return cast(NodeCoupling, _Renumbered(c, order))


def _broadcast_dims(c: NodeCoupling, *operands: ir.Value | None) -> tuple[int | None, ...] | None:
    """Numpy broadcasting of the operands' static dims (None where unknown)."""
    shapes = [c.dims(v) for v in operands if v is not None]
    if not shapes or any(s is None for s in shapes):
        return None
    return _broadcast_dims_of(*[s for s in shapes if s is not None])


def _broadcast_dims_of(*shapes: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """Numpy broadcasting of static dims (None where unknown)."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[int | None] = []
    for axis in range(rank):
        sizes = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
        known = {d for d in sizes if d is not None and d != 1}
        out.append(known.pop() if len(known) == 1 else (1 if sizes == {1} else None))
    return tuple(out)


def _size_contrib_output(c: NodeCoupling, dims: tuple[int | None, ...] | None) -> None:
    """Onnx infers no shapes for ``com.microsoft`` ops (or what follows them): state them."""
    if dims is not None:
        c.refine_dims(c.output(0), dims)


def _per_tensor(c: NodeCoupling, param: ir.Value | None) -> bool:
    dims = c.dims(param)
    return param is None or dims is None or all(d == 1 for d in dims)


def _per_channel(c: NodeCoupling, param: ir.Value | None, target: ir.Value | None,
                 axis: int) -> None:
    """A 1-D parameter whose entry ``k`` belongs to channel ``k`` of ``target[axis]``."""
    if _per_tensor(c, param):
        return
    c.link(param, 0, target, axis)
    c.role(param, 0, "param")


@rule("QuantizeLinear", "DequantizeLinear")
@rule("QuantizeLinear", "DequantizeLinear", domain=_MS)
def quantize_linear(c: NodeCoupling) -> None:
    """Pass-through; per-axis and blocked scales and zero points are members."""
    data, out = c.input(0), c.output(0)
    link_all_axes(c, data, out)
    if c.node.op_type == "DequantizeLinear" and c.is_constant(data):
        c.stores(data, out)
    dims = c.dims(data)
    if dims is None:
        return
    axis = normalized(c.attr("axis", 1), len(dims)) if dims else 0
    block = c.attr("block_size", 0) or 0
    for param in (c.input(1), c.input(2)):
        if _per_tensor(c, param):
            continue
        if not block:
            _per_channel(c, param, data, axis)
            continue
        param_dims = c.dims(param) or ()
        if dims[axis] is None or len(param_dims) != len(dims):
            c.pin_tracked(data, "blocked quantization with an unknown channel count")
            continue
        for k, size in enumerate(param_dims):
            if k == axis:
                c.link(data, axis, param, axis, keys_a=np.arange(dims[axis]) // block)
            elif size != 1:
                c.identity(data, k, param, k)
            else:
                continue
            c.role(param, k, "param")


@rule("DynamicQuantizeLinear")
def dynamic_quantize_linear(c: NodeCoupling) -> None:
    """``y`` follows ``x``; the scale and zero point are scalars."""
    link_all_axes(c, c.input(0), c.output(0))


def _quantized_conv(c: NodeCoupling, order: tuple[int | None, ...], weight_scale: int | None,
                    weight_zero: int) -> None:
    data_dims, weight_dims = c.dims(c.input(0)), c.dims(c.input(order[1] or 0))
    if data_dims and weight_dims:
        _size_contrib_output(c, (data_dims[0], weight_dims[0], *[None] * (len(data_dims) - 2)))
    _grouped(_renumbered(c, *order), weight_out_axis=0, weight_in_axis=1)
    out = c.output(0)
    for index in (weight_scale, weight_zero):
        if index is not None:
            _per_channel(c, c.input(index), out, 1)


@rule("QLinearConv")
def qlinear_conv(c: NodeCoupling) -> None:
    """The Conv rule on ``x``, ``w`` (input 3), ``B`` (input 8); ``w_scale``/``w_zp`` per ``m``."""
    _quantized_conv(c, (0, 3, 8), 4, 5)


@rule("ConvInteger")
def conv_integer(c: NodeCoupling) -> None:
    """The Conv rule on ``x`` and ``w``; ``w_zero_point`` per output channel."""
    _quantized_conv(c, (0, 1, None), None, 3)


def _quantized_matmul(c: NodeCoupling, a_at: int, b_at: int,
                      a_params: tuple[int, ...], b_params: tuple[int, ...]) -> None:
    a, b = c.input(a_at), c.input(b_at)
    dims_a, dims_b = c.dims(a), c.dims(b)
    if dims_a is None or dims_b is None:
        return
    spec_a, spec_b, out = _matmul_letters(len(dims_a), len(dims_b))
    if len(dims_a) >= 2 and len(dims_b) >= 2:
        batch = _broadcast_dims_of(dims_a[:-2], dims_b[:-2])
        _size_contrib_output(c, (*batch, dims_a[-2], dims_b[-1]))
    contract(c, [(a, spec_a), (b, spec_b)], c.output(0), out)
    for index in b_params:
        _per_channel(c, c.input(index), b, len(dims_b) - 1)
    for index in a_params:
        if len(dims_a) >= 2:
            _per_channel(c, c.input(index), a, len(dims_a) - 2)


@rule("QLinearMatMul")
def qlinear_matmul(c: NodeCoupling) -> None:
    """The MatMul rule on ``a`` and ``b`` (input 3); per-column ``b_scale``/``b_zp``."""
    _quantized_matmul(c, 0, 3, (1, 2), (4, 5))


@rule("MatMulInteger")
def matmul_integer(c: NodeCoupling) -> None:
    """The MatMul rule on ``A`` and ``B``; per-row ``a_zp``, per-column ``b_zp``."""
    _quantized_matmul(c, 0, 1, (2,), (3,))


@rule("QGemm", domain=_MS)
def qgemm(c: NodeCoupling) -> None:
    """The Gemm rule on ``A``, ``B`` (input 3) and ``C`` (input 6); per-column ``b`` params."""
    dims_a, dims_b = c.dims(c.input(0)), c.dims(c.input(3))
    if dims_b and len(dims_b) == 2:  # Gemm operands are matrices, whatever is known of A
        rows = None if not dims_a or len(dims_a) != 2 else dims_a[1 if c.attr("transA", 0) else 0]
        cols = dims_b[0] if c.attr("transB", 0) else dims_b[1]
        _size_contrib_output(c, (rows, cols))
    gemm(_renumbered(c, 0, 3, 6))
    out = c.output(0)
    for index in (4, 5):
        _per_channel(c, c.input(index), out, 1)


@rule("QLinearAdd", "QLinearMul", domain=_MS)
def qlinear_binary(c: NodeCoupling) -> None:
    """``A`` (input 0) and ``B`` (input 3) broadcast into the output."""
    _size_contrib_output(c, _broadcast_dims(c, c.input(0), c.input(3)))
    out = c.output(0)
    for index in (0, 3):
        operand = c.input(index)
        if broadcast_into(c, operand, out) and c.is_constant(operand):
            for axis, size in enumerate(c.dims(operand) or ()):
                if size != 1:
                    c.role(operand, axis, "param")


@rule("QLinearGlobalAveragePool", "QLinearAveragePool", domain=_MS)
def qlinear_pool(c: NodeCoupling) -> None:
    """Channels stay on their axis; batch passes; spatial axes never carry channels."""
    data, out = c.input(0), c.output(0)
    dims = c.dims(data)
    if dims is None:
        return
    channel = len(dims) - 1 if c.attr("channels_last", 0) else 1
    spatial = 1 if c.node.op_type == "QLinearGlobalAveragePool" else None
    _size_contrib_output(c, tuple(d if k in (0, channel) else spatial
                                  for k, d in enumerate(dims)))
    c.identity(data, 0, out, 0)
    c.identity(data, channel, out, channel)


@rule("QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax", domain=_MS)
def qlinear_unary(c: NodeCoupling) -> None:
    """Every axis passes through (Softmax's axis is consumed by its normalization)."""
    data = c.input(0)
    _size_contrib_output(c, c.dims(data))
    link_all_axes(c, data, c.output(0))
    if c.node.op_type == "QLinearSoftmax":
        dims = c.dims(data)
        if dims:
            axis = normalized(c.attr("axis", -1), len(dims))
            if axis in c.tracked(data):
                c.pin(data, axis, "QLinearSoftmax normalizes over this axis")


@rule("QLinearConcat", domain=_MS)
def qlinear_concat(c: NodeCoupling) -> None:
    """The Concat rule on the data inputs (2, 5, 8, ...)."""
    data = tuple(range(2, len(c.node.inputs), 3))
    shapes = [c.dims(c.input(i)) for i in data]
    if shapes and all(s is not None and len(s) == len(shapes[0]) for s in shapes):
        axis = normalized(c.attr("axis", 0), len(shapes[0]))
        sizes = [s[axis] for s in shapes]  # type: ignore[index]
        total = None if any(x is None for x in sizes) else sum(sizes)  # type: ignore[misc]
        _size_contrib_output(c, tuple(total if k == axis else d
                                      for k, d in enumerate(shapes[0])))  # type: ignore[arg-type]
    concat(_renumbered(c, *data))
