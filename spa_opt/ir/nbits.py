"""onnxruntime's ``MatMulNBits`` weights: the packed layout, read as real values and repacked.

``MatMulNBits(A [..., K], B, scales, zero_points, g_idx, bias)`` (``com.microsoft``)
stores the ``N x K`` weight quantized in blocks of ``block_size`` consecutive input
channels (``K`` padded to whole blocks): ``B [N, blocks, block_size * bits / 8]`` uint8
holds the codes packed low bits first, ``scales [N, blocks]`` (or flattened
``[N * blocks]``) one scale per block, and ``zero_points`` either packed the same way
(uint8 ``[N, ceil(blocks * bits / 8)]``, or flattened), or unpacked in the scales'
type and shape; absent, every zero point is ``2 ** (bits - 1)``. The weight is
``(code - zero_point) * scale``.

Axes 0 and 1 of ``B`` are output rows and input blocks, so :func:`dequantized` keeps
them and unpacks axis 2 into the block's channels: ``[N, blocks, block_size]``, the
shape the criteria index by the group members ``B:0`` (rows) and ``B:1`` (blocks).
Removing whole blocks needs no requantization: the remaining blocks' bytes, scales and
zero points are kept as they are; only packed zero points (two 4-bit ones per byte)
are repacked (:func:`repack_zero_points`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from spa_opt.ir.tensors import constant_array

MS = "com.microsoft"


@dataclasses.dataclass(frozen=True)
class NBits:
    """The attributes of one MatMulNBits node and its quantization constants."""

    node: ir.Node
    rows: int
    k: int
    bits: int
    block_size: int

    @property
    def blocks(self) -> int:
        """Blocks per row: ``ceil(K / block_size)``."""
        return -(-self.k // self.block_size)

    def input(self, index: int) -> ir.Value | None:
        """Input ``index`` of the node, None when absent."""
        inputs = self.node.inputs
        return inputs[index] if index < len(inputs) else None


def nbits_of(node: ir.Node) -> NBits | None:
    """The MatMulNBits view of ``node``, None for another operator or bad attributes."""
    if node.op_type != "MatMulNBits" or node.domain != MS:
        return None
    attrs = node.attributes
    rows, k = attrs.get_int("N", 0), attrs.get_int("K", 0)
    bits, block = attrs.get_int("bits", 4), attrs.get_int("block_size", 0)
    if not (rows and k and block) or bits not in (2, 4, 8):
        return None
    return NBits(node, rows, k, bits, block)


def reader_of(value: ir.Value | None) -> NBits | None:
    """The MatMulNBits reading ``value`` as its packed weight ``B``, if that is its only use."""
    if value is None:
        return None
    uses = list(value.uses())
    if len(uses) != 1 or uses[0][1] != 1:
        return None
    return nbits_of(uses[0][0])


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Codes packed low bits first along the last axis; the first ``count`` of them."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    codes = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :count]


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of :func:`unpack`: codes along the last axis, padded with zeros."""
    per_byte = 8 // bits
    width = codes.shape[-1]
    padded = np.zeros((*codes.shape[:-1], -(-width // per_byte) * per_byte), np.uint8)
    padded[..., :width] = codes
    grouped = padded.reshape(*codes.shape[:-1], -1, per_byte).astype(np.uint16)
    shifts = np.arange(per_byte, dtype=np.uint16) * bits
    return (grouped << shifts).sum(axis=-1).astype(np.uint8)


def zero_points(q: NBits) -> np.ndarray | None:
    """``[N, blocks]`` zero points in float64 (the default when absent); None if not constant."""
    value = q.input(3)
    if value is None:
        return np.full((q.rows, q.blocks), float(1 << (q.bits - 1)))
    data = constant_array(value)
    if data is None:
        return None
    if data.dtype != np.uint8:  # unpacked, in the scales' type
        return data.reshape(q.rows, q.blocks).astype(np.float64)
    per_row = data.reshape(q.rows, -1)
    return unpack(per_row, q.bits, q.blocks).astype(np.float64)


def dequantized(packed: np.ndarray, q: NBits) -> np.ndarray | None:
    """``B`` as real values ``[N, blocks, block_size]`` (padding past ``K`` is zero)."""
    scales = constant_array(q.input(2))
    zeros = zero_points(q)
    if scales is None or zeros is None or packed.shape[:2] != (q.rows, q.blocks):
        return None
    codes = unpack(packed, q.bits, q.block_size).astype(np.float64)
    real = (codes - zeros[..., None]) * scales.reshape(q.rows, q.blocks, 1).astype(np.float64)
    pad = q.blocks * q.block_size - q.k
    if pad:
        real[:, -1, q.block_size - pad:] = 0.0
    return real


def repack_zero_points(data: np.ndarray, q: NBits, kept_blocks: np.ndarray,
                       rows: int) -> np.ndarray:
    """Packed uint8 zero points of ``rows`` rows keeping only ``kept_blocks``, same layout."""
    per_row = data.reshape(rows, -1)
    codes = unpack(per_row, q.bits, q.blocks)[:, kept_blocks]
    repacked = pack(codes, q.bits)
    return repacked.reshape(-1) if data.ndim == 1 else repacked
