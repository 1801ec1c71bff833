"""onnxruntime's fused ``com.microsoft`` kernels other than attention.

Rules:

- ``SkipLayerNormalization(input, skip, gamma, beta, bias)`` and
  ``SkipSimplifiedLayerNormalization(input, skip, gamma, bias)``: every axis of
  ``input`` and ``skip`` (broadcast from the right) passes to ``output`` and to the
  ``input_skip_bias_sum`` output (3, or 1 for the simplified form); ``gamma`` (role
  ``scale``), ``beta`` and ``bias`` (role ``shift``) are members on the hidden axis,
  which is normalized (pruning it is allowed and lossy, as for LayerNormalization);
  the mean and inverse-deviation outputs keep the outer axes;
- ``LayerNormalization`` and ``SimplifiedLayerNormalization`` (onnxruntime registers
  the latter in the ONNX domain, the former's contrib variants in both): as ONNX's
  LayerNormalization (:mod:`.norm`);
- ``EmbedLayerNormalization(input_ids, segment_ids, word_embedding,
  position_embedding, segment_embedding, gamma, beta, mask, position_ids)``: the three
  tables' columns (role ``out``) and ``gamma``/``beta`` are the output's hidden
  channels (normalized); ``mask_index`` carries none; ``embedding_sum`` follows;
- ``FastGelu(X, bias)``, ``BiasGelu(A, B)``, ``BiasAdd(X, bias, skip)``: inputs
  broadcast into the output from the right, a bias is a member (role ``shift``);
  ``Gelu`` and ``QuickGelu``: unary;
- ``BiasSplitGelu(X [B, HW, 2D], bias [2D])``: output channel ``j`` is made of input
  channels ``j`` and ``j + D``, which go together (the halves are read from the
  shape, no attribute to patch);
- ``FusedMatMul(A, B)`` (``alpha``, ``transA``, ``transB``, ``transBatchA``,
  ``transBatchB``): a MatMul over the operands' logical layouts (``transBatch`` moves
  the first axis behind the batch axes, ``trans`` swaps the last two);
- ``FusedConv(X, W, B, Z)``: a Conv (groups included, :mod:`.conv`) whose optional
  ``Z`` is added to the output before the activation;
- ``MatMulNBits(A [..., K], B [N, K/bs, bs*bits/8] uint8, scales, zero_points, g_idx,
  bias)``: output rows ``N`` are prunable: ``B``'s axis 0 (role ``out``), scales and
  zero points (``[N, blocks]`` row by row, or flattened ``[N * blocks]`` in blocks of
  their per-row length), ``bias`` and the output's last axis go together, and ``N`` is
  patched (``matmulnbits-n``). The input axis ``K`` goes in whole quantization blocks:
  ``block_size`` consecutive channels of ``A`` are one key, with axis 1 of ``B``, of
  2-D scales and of unpacked (float) zero points; removing a block removes its packed
  bytes, scale and zero point, so the kept weights are bit for bit what they were (no
  requantization; see docs/deployment.md for why not finer). Packed uint8 zero points
  hold several blocks per byte: the ``matmulnbits-k`` patch repacks them and writes
  ``K``. ``K`` is pinned with ``g_idx`` (act-order reads channels out of block order)
  and with scales or float zero points flattened to one axis (rows and blocks would
  share it).
"""

from __future__ import annotations

import string

import numpy as np
import onnx_ir as ir

from spa_opt.passes.coupling.node import NodeCoupling
from spa_opt.passes.rules.conv import conv
from spa_opt.passes.rules.elementwise import (
    broadcast_into,
    broadcast_with_constants,
    link_all_axes,
    unary,
)
from spa_opt.passes.rules.linear import contract
from spa_opt.passes.rules.norm import layer_norm
from spa_opt.passes.rules.registry import rule

MS = "com.microsoft"


def _hidden_members(c: NodeCoupling, out: ir.Value | None,
                    parameters: list[tuple[int, str]]) -> None:
    """1-D per-channel parameters (input index, role) of the output's last axis."""
    for index, role in parameters:
        parameter = c.input(index)
        if broadcast_into(c, parameter, out):
            c.role(parameter, 0, role)


def _skip_norm(c: NodeCoupling, parameters: list[tuple[int, str]], sum_output: int) -> None:
    data, skip, out = c.input(0), c.input(1), c.output(0)
    dims = c.dims(data)
    if dims is None:
        return
    link_all_axes(c, data, out)
    broadcast_into(c, skip, out)
    link_all_axes(c, data, c.output(sum_output))
    _hidden_members(c, out, parameters)
    last = len(dims) - 1
    if last in c.tracked(data):
        c.consume(data, last, normalizes=True)
    for index in range(1, sum_output):  # mean, inverse std-dev: [..., 1]
        extra = c.output(index)
        for axis in range(last):
            c.identity(data, axis, extra, axis)


@rule("SkipLayerNormalization", domain=MS)
def skip_layer_norm(c: NodeCoupling) -> None:
    """LayerNorm of ``input + skip + bias``; outputs 1-2 statistics, 3 the sum."""
    _skip_norm(c, [(2, "scale"), (3, "shift"), (4, "shift")], sum_output=3)


@rule("SkipSimplifiedLayerNormalization", domain=MS)
def skip_simplified_layer_norm(c: NodeCoupling) -> None:
    """RMSNorm of ``input + skip + bias``; outputs 1-2 statistics, 3 the sum."""
    _skip_norm(c, [(2, "scale"), (3, "shift")], sum_output=3)


rule("LayerNormalization", "SimplifiedLayerNormalization", domain=MS)(layer_norm)
rule("SimplifiedLayerNormalization")(layer_norm)


@rule("EmbedLayerNormalization", domain=MS)
def embed_layer_norm(c: NodeCoupling) -> None:
    """Sum of three embedding lookups, normalized: the tables' columns are channels."""
    ids, out = c.input(0), c.output(0)
    out_dims = c.dims(out)
    if out_dims is None or len(out_dims) != 3:
        return
    c.identity(ids, 0, out, 0)
    c.identity(ids, 1, out, 1)
    c.identity(c.input(1), 0, out, 0)
    c.identity(c.input(1), 1, out, 1)
    for index in (2, 3, 4):  # word, position, segment tables [rows, hidden]
        table = c.input(index)
        if table is None:
            continue
        c.link(table, 1, out, 2)
        if c.is_constant(table):
            c.seed(table, 1, "out")
        if 0 in c.tracked(table):
            c.pin(table, 0, "embedding rows are looked up by id")
    _hidden_members(c, out, [(5, "scale"), (6, "shift")])
    # the sum is normalized inside the node: mark it on what the node reads
    c.consume(c.input(2), 1, normalizes=True)
    link_all_axes(c, out, c.output(2))  # embedding_sum


@rule("FastGelu", "BiasGelu", "BiasAdd", domain=MS)
def biased_activation(c: NodeCoupling) -> None:
    """Broadcasting inputs; a constant bias on the channel axis is a member (shift)."""
    broadcast_with_constants(c, "shift")


rule("Gelu", "QuickGelu", domain=MS)(unary)


@rule("BiasSplitGelu", domain=MS)
def bias_split_gelu(c: NodeCoupling) -> None:
    """``(X + bias)[..., :D] * gelu((X + bias)[..., D:])``: channels ``j`` and ``j + D``."""
    data, bias, out = c.input(0), c.input(1), c.output(0)
    dims = c.dims(data)
    if data is None or dims is None or dims[-1] is None or dims[-1] % 2:
        c.pin_tracked(data, "BiasSplitGelu with an unknown or odd channel count")
        c.pin_tracked(bias, "BiasSplitGelu with an unknown or odd channel count")
        return
    last, half = len(dims) - 1, dims[-1] // 2
    for axis in range(last):
        c.identity(data, axis, out, axis)
    halves = np.arange(dims[-1]) % half
    c.link(data, last, out, last, halves, np.arange(half))
    c.link(bias, 0, data, last)
    c.role(bias, 0, "shift")


def _logical(rank: int, trans: int, trans_batch: int) -> list[int]:
    """Stored axis of each logical ``[batch..., rows, cols]`` axis of a FusedMatMul operand."""
    order = list(range(rank))
    if trans_batch and rank > 2:
        order = [*range(1, rank - 1), 0, rank - 1]
    if trans and rank > 1:
        order[-1], order[-2] = order[-2], order[-1]
    return order


@rule("FusedMatMul", domain=MS)
def fused_matmul(c: NodeCoupling) -> None:
    """A MatMul of the operands' logical layouts (see the module docstring)."""
    a, b = c.input(0), c.input(1)
    dims_a, dims_b = c.dims(a), c.dims(b)
    if dims_a is None or dims_b is None or len(dims_a) < 2 or len(dims_b) < 2:
        return
    rank = max(len(dims_a), len(dims_b))
    batch = string.ascii_lowercase[: rank - 2]
    letters = []
    for dims, (rows, cols), prefix in ((dims_a, "MK", "trans%sA"), (dims_b, "KN", "trans%sB")):
        logical = batch[len(batch) - (len(dims) - 2):] + rows + cols
        order = _logical(len(dims), c.attr(prefix % "", 0), c.attr(prefix % "Batch", 0))
        spec = [""] * len(dims)
        for letter, stored in zip(logical, order, strict=True):
            spec[stored] = letter
        letters.append("".join(spec))
    contract(c, [(a, letters[0]), (b, letters[1])], c.output(0), batch + "MN")


@rule("FusedConv", domain=MS)
def fused_conv(c: NodeCoupling) -> None:
    """A Conv plus activation; ``Z`` (input 3) is added to the output."""
    conv(c)
    broadcast_into(c, c.input(3), c.output(0))


def _nbits_k(c: NodeCoupling, data: ir.Value | None, packed: ir.Value | None) -> str | None:
    """Couple ``K`` in whole quantization blocks; the reason when it must stay instead.

    Block ``b`` is input channels ``b * block_size ...`` of ``A``, axis 1 of ``B`` and of
    2-D scales (and unpacked zero points); a packed zero-point tensor is repacked by the
    ``matmulnbits-k`` patch, which also writes ``K``.
    """
    block, k = int(c.attr("block_size", 0)), int(c.attr("K", 0))
    data_dims, packed_dims = c.dims(data), c.dims(packed)
    if c.input(4) is not None:
        return "MatMulNBits with g_idx (act-order) reads its input channels out of order"
    if not block or not k or not data_dims or data_dims[-1] != k or packed_dims is None \
            or len(packed_dims) != 3 or packed_dims[1] != -(-k // block):
        return "MatMulNBits with unknown block layout"
    scales, zeros = c.input(2), c.input(3)
    if len(c.dims(scales) or ()) != 2:
        return "MatMulNBits scales flattened to one axis: rows and blocks share it"
    zero_dims = c.dims(zeros)
    unpacked = zeros is not None and zeros.dtype != ir.DataType.UINT8
    if zeros is not None and (zero_dims is None or (unpacked and len(zero_dims) != 2)):
        return "MatMulNBits zero points flattened to one axis: rows and blocks share it"
    c.link(data, len(data_dims) - 1, packed, 1, keys_a=np.arange(k) // block)
    c.role(packed, 1, "in")
    for tensor in (scales, zeros if unpacked else None):
        if tensor is not None:
            c.identity(packed, 1, tensor, 1)
            c.role(tensor, 1, "param")
    c.patch("matmulnbits-k", f"K={k}", packed, 1)
    return None


@rule("MatMulNBits", domain=MS)
def matmul_nbits(c: NodeCoupling) -> None:
    """Rows ``N`` are units; ``K`` goes in whole quantization blocks (module docstring)."""
    data, packed, out = c.input(0), c.input(1), c.output(0)
    data_dims, out_dims = c.dims(data), c.dims(out)
    rows = int(c.attr("N", 0))
    if data_dims is None or out_dims is None or not rows:
        return
    k_axis = len(data_dims) - 1
    for axis in range(k_axis):
        c.identity(data, axis, out, axis)
    reason = _nbits_k(c, data, packed)
    if reason is not None:
        c.pin(data, k_axis, reason)
        for axis in (1, 2):  # blocks, bytes of a block (axis 0, the rows, stays free)
            if axis in c.tracked(packed):
                c.pin(packed, axis, reason)
        c.pin_tracked(c.input(4), reason)  # g_idx [K]
    last = len(out_dims) - 1
    c.link(packed, 0, out, last)
    c.seed(packed, 0, "out")
    for index, role in ((2, "param"), (3, "param"), (5, "out")):  # scales, zero points, bias
        tensor = c.input(index)
        dims = c.dims(tensor)
        if tensor is None or dims is None:
            continue
        if len(dims) == 2 and dims[0] == rows:  # [N, blocks] (packed zero points: bytes)
            c.link(tensor, 0, out, last)
            if reason is not None and 1 in c.tracked(tensor):
                c.pin(tensor, 1, reason)
        elif len(dims) == 1 and dims[0] is not None and dims[0] % rows == 0:
            per_row = dims[0] // rows  # flattened [N * per_row]: row n owns a block
            c.link(tensor, 0, out, last, np.arange(dims[0]) // per_row, np.arange(rows))
        else:
            c.pin_tracked(tensor, "a MatMulNBits parameter whose layout is not per row")
            continue
        c.role(tensor, 0, role)
    c.patch("matmulnbits-n", f"N={rows}", out, last)
