"""Quantized and half-precision weights: reading them as the float values they stand for.

A weight member of a group is the tensor the file stores. In a QDQ graph that is an
int8/uint8 (or int4, int16, int32 for biases) tensor read through
``DequantizeLinear(codes, scale, zero_point, axis, block_size)``; in an operator-form
graph it is read by ``QLinearConv``/``QLinearMatMul``/``ConvInteger``/``MatMulInteger``
with its own scale and zero point; a ``MatMulNBits`` weight is packed 2/4/8-bit codes
with per-block scales (:mod:`spa_opt.ir.nbits`); in an fp16/bf16 graph it is a
half-precision tensor.
What a criterion, the dead analysis or obspa must see is the real-valued weight
``(codes - zero_point) * scale``, in float32/float64, never the raw codes: an int8
``0`` with a zero point of 128 is not a zero weight, and two channels with equal codes
and different per-channel scales do not have equal magnitudes.

:func:`float_weight` is that view (``constant_array`` plus dequantization or
widening); :func:`quantization_of` finds how a stored tensor is quantized, and
:func:`quantize` writes float values back as codes with the same scales (obspa's
re-quantization).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from spa_opt.ir.nbits import dequantized, reader_of
from spa_opt.ir.tensors import constant_array

_QUANT_DOMAINS = ("", "ai.onnx", "com.microsoft")

#: Operator-form readers of a quantized weight: op -> (weight input, scale input or
#: None, zero-point input, the weight axis a per-channel scale / zero point runs along).
#: Scales of ConvInteger/MatMulInteger are applied after them (a Mul), so only the zero
#: point is known at the node: ``codes - zero_point`` is proportional to the weight.
OPERATOR_READERS: dict[str, tuple[int, int | None, int, int]] = {
    "QLinearConv": (3, 4, 5, 0),
    "QLinearMatMul": (3, 4, 5, -1),
    "ConvInteger": (1, None, 3, 0),
    "MatMulInteger": (1, None, 3, -1),
    "QGemm": (3, 4, 5, -1),
}

#: Readers whose attribute transposes the stored weight: set, the per-output-channel
#: scale runs along the stored axis 0 (QGemm with ``transB=1`` stores ``B`` as ``[N, K]``,
#: as quantize_static writes every classifier).
TRANSPOSED_BY: dict[str, str] = {"QGemm": "transB"}


@dataclasses.dataclass(frozen=True)
class Quantization:
    """How a stored integer tensor maps to real values: ``(codes - zero_point) * scale``."""

    scale: np.ndarray | None
    """None when the node applies no scale (ConvInteger, MatMulInteger)."""
    zero_point: np.ndarray | None
    axis: int
    block_size: int
    reader: ir.Node


def _param(node: ir.Node, index: int | None) -> tuple[bool, np.ndarray | None]:
    """(known, data) of an optional constant input: absent inputs are known (None)."""
    if index is None or index >= len(node.inputs) or node.inputs[index] is None:
        return True, None
    data = constant_array(node.inputs[index])
    return data is not None, data


def quantization_of(value: ir.Value | None) -> Quantization | None:
    """How ``value`` (an integer constant) is dequantized by the node that reads it.

    A ``DequantizeLinear`` reading it at input 0, or an operator-form quantized op
    reading it as its weight, with constant scale and zero point; None otherwise (an
    integer tensor that is not a quantized weight, or one read in several ways).
    """
    if value is None:
        return None
    found = None
    for node, index in value.uses():
        if node.domain not in _QUANT_DOMAINS:
            return None
        if node.op_type == "DequantizeLinear" and index == 0:
            scale_at, zero_at = 1, 2
            axis = node.attributes.get_int("axis", 1)
            block = node.attributes.get_int("block_size", 0)
        elif node.op_type in OPERATOR_READERS and index == OPERATOR_READERS[node.op_type][0]:
            _, scale_at, zero_at, axis = OPERATOR_READERS[node.op_type]
            block = 0
            if node.op_type in TRANSPOSED_BY and node.attributes.get_int(
                    TRANSPOSED_BY[node.op_type], 0):
                axis = 0
        else:
            return None
        known_scale, scale = _param(node, scale_at)
        known_zero, zero = _param(node, zero_at)
        if not (known_scale and known_zero) or (scale_at is not None and scale is None):
            return None
        here = Quantization(scale, zero, axis, block, node)
        if found is not None and not _same(found, here):
            return None
        found = here
    return found


def _same(a: Quantization, b: Quantization) -> bool:
    def equal(x: np.ndarray | None, y: np.ndarray | None) -> bool:
        return (x is None and y is None) or (
            x is not None and y is not None and np.array_equal(x, y))

    return equal(a.scale, b.scale) and equal(a.zero_point, b.zero_point) and (
        a.axis == b.axis and a.block_size == b.block_size)


def expand(param: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """Broadcast a per-tensor, per-axis or blocked parameter to ``shape``."""
    param = np.asarray(param)
    rank = len(shape)
    if param.size == 1:
        return param.reshape(())
    axis = axis % rank
    if block_size:
        return np.repeat(param, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)
    view = [1] * rank
    view[axis] = -1
    return param.reshape(view)


def dequantize(codes: np.ndarray, q: Quantization) -> np.ndarray:
    """``(codes - zero_point) * scale`` in float64."""
    real = codes.astype(np.float64)
    if q.zero_point is not None:
        real = real - expand(q.zero_point.astype(np.float64), codes.shape, q.axis, q.block_size)
    if q.scale is not None:
        real = real * expand(q.scale.astype(np.float64), codes.shape, q.axis, q.block_size)
    return real


def quantize(real: np.ndarray, q: Quantization, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """Codes of ``dtype`` for ``real`` with ``q``'s scale and zero point, and how many clipped.

    Rounds half to even, as ``QuantizeLinear`` does, and saturates to the integer range.
    """
    scale = 1.0 if q.scale is None else expand(
        q.scale.astype(np.float64), real.shape, q.axis, q.block_size)
    zero = 0.0 if q.zero_point is None else expand(
        q.zero_point.astype(np.float64), real.shape, q.axis, q.block_size)
    codes = np.rint(real / scale) + zero
    info = np.iinfo(dtype)
    clipped = int(np.count_nonzero((codes < info.min) | (codes > info.max)))
    return np.clip(codes, info.min, info.max).astype(dtype), clipped


def is_half(dtype: np.dtype) -> bool:
    """float16 or bfloat16 (ml_dtypes' bfloat16 is not a numpy float kind)."""
    return dtype == np.float16 or dtype.name == "bfloat16"


def float_weight(value: ir.Value | None) -> np.ndarray | None:
    """A constant as the real values it stands for (see the module docstring).

    Integer codes with a known quantization come back dequantized in float64 (the
    packed 4-bit codes of a MatMulNBits as ``[N, blocks, block_size]``, so axes 0 and 1
    are still the stored rows and blocks);
    float16/bfloat16 come back as float32; anything else as :func:`constant_array`
    gives it (None when ``value`` is not a constant).
    """
    data = constant_array(value)
    if data is None:
        return None
    if data.dtype.kind in "iu":
        packed = reader_of(value) if data.dtype == np.uint8 else None
        if packed is not None:  # MatMulNBits: [N, blocks, block_size] real values
            real = dequantized(data, packed)
            return data if real is None else real
        q = quantization_of(value)
        return data if q is None else dequantize(data, q)
    if is_half(data.dtype):
        return data.astype(np.float32)
    return data


_VIEWS = frozenset({"DequantizeLinear", "Cast", "Identity"})


def viewed_weight(value: ir.Value | None) -> np.ndarray | None:
    """:func:`float_weight` of ``value``, or of the constant it is a view of.

    A contraction in a QDQ or half-precision graph reads its weight through
    ``DequantizeLinear`` or a widening ``Cast`` of the stored constant: the values it
    multiplies by are the stored tensor's real values.
    """
    data = float_weight(value)
    if data is not None or value is None:
        return data
    producer = value.producer()
    if producer is None or producer.op_type not in _VIEWS or not producer.inputs:
        return None
    if producer.domain not in ("", "ai.onnx", "com.microsoft"):
        return None
    return float_weight(producer.inputs[0])
