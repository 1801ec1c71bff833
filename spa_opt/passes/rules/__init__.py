"""Operator rules of the coupling analysis: one small function per operator.

A rule receives a :class:`~spa_opt.passes.coupling.node.NodeCoupling` and states, in
its vocabulary (link, seed, consume, patch, pin), how channels cross one node. Rules
are grouped by operator family, one module each; adding an operator is adding one
function with ``@rule("OpType")`` (the table is :mod:`.registry`). An operator without
a rule pins every channel that reaches it, so a missing rule costs coverage, never
correctness. Importing this package loads every family into the table.

Families: :mod:`.elementwise` (unary and broadcasting n-ary ops), :mod:`.layout`
(Transpose, Squeeze, Unsqueeze, Concat, Split, Slice, Gather, Expand, Tile, Pad,
Shape, constants), :mod:`.reshape` (Reshape, Flatten, DepthToSpace, SpaceToDepth),
:mod:`.conv` (Conv, ConvTranspose), :mod:`.linear` (Gemm, MatMul, Einsum),
:mod:`.norm` (Batch/Instance/Layer/Group/RMS normalization), :mod:`.reduce`
(reductions, Softmax, pooling, Resize), :mod:`.quant` (QuantizeLinear,
DequantizeLinear, DynamicQuantizeLinear, QLinearConv, QLinearMatMul, ConvInteger,
MatMulInteger and onnxruntime's QOperator ops), :mod:`.contrib_attention`
(``com.microsoft`` Attention, MultiHeadAttention, GroupQueryAttention,
RotaryEmbedding; ONNX opset-23 Attention and RotaryEmbedding), :mod:`.contrib_fused`
(onnxruntime's fused norms, Gelus, BiasAdd, BiasSplitGelu, FusedMatMul, FusedConv,
MatMulNBits).
"""

from __future__ import annotations

from spa_opt.passes.rules import (  # noqa: F401  (each family fills the rule table)
    contrib_attention,
    contrib_fused,
    conv,
    elementwise,
    layout,
    linear,
    norm,
    quant,
    reduce,
    reshape,
)
from spa_opt.passes.rules.registry import Rule, get_rule, rule, supported_ops

__all__ = ["Rule", "get_rule", "rule", "supported_ops"]
