"""One table of what spa-opt knows about each operator, besides its coupling rule.

Every analysis that treats operators by kind reads this table instead of keeping its
own set, so adding an operator is one coupling rule (:mod:`spa_opt.passes.rules`)
plus one row here. A row says:

- ``weighted``: the node applies a weight tensor at input 1 whose axes carry
  channels (Conv, ConvTranspose, Gemm, MatMul). Pruning reports these layers' weight
  shapes; the cost model counts their contraction; the checker compares their channel
  counts; obspa looks for its consumer layers among them (:data:`RECONSTRUCTIBLE`);
- ``zero``: how a channel that is zero for every input crosses the node, for the
  ``dead`` analysis (:mod:`spa_opt.passes.zeros`):

  - ``"moving"``: the output channel is zero when its input channel is (layout,
    pooling, unary ``f`` with ``f(0) = 0``);
  - ``"sum"``: zero when every input that carries the channel is zero (and inputs
    broadcast along it are all-zero constants);
  - ``"product"``: zero when any input carrying the channel is zero, or an input
    broadcast along it is an all-zero constant;
  - ``"weighted"``: contraction with a constant weight (see ``weighted``);
  - ``"norm"``: normalizations, zero when the channel's scale and shift are zero;
  - quantization and fused kinds (``"quantize"``, ``"dequantize"``,
    ``"quantized-contraction"``, ``"qlinear-*"``, ``"skip-norm"``, ``"attention"``,
    ``"nbits"``, ``"fused-conv"``): one rule each in :mod:`spa_opt.passes.zeros`;
  - ``None``: nothing is known (the channel is not proved zero);
- ``flops``: operations per output element for ops that are not contractions
  (``"reduce"``: one per *input* element, ``"window"``: one per window element);
- ``moments``: obspa's analytic Hessians carry BatchNorm moments through it unchanged.

:data:`OPS` is the default ONNX domain; :data:`CONTRIB_OPS` holds onnxruntime's
``com.microsoft`` kernels (and the ORT ops it registers in the ONNX domain, plus the
opset-23 attention ops) keyed by ``(domain, op)``; :func:`op_info` reads both. An
operator missing from them is simply unknown to these analyses (no zero facts, no
elementwise FLOPs), never an error.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

ZeroKind = Literal["moving", "sum", "product", "weighted", "norm", "quantize", "dequantize",
                   "quantized-contraction", "qlinear-sum", "qlinear-product",
                   "qlinear-moving", "skip-norm", "attention", "nbits", "fused-conv"]
FlopKind = int | Literal["reduce", "window"]


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """What spa-opt's analyses know of one operator (see the module docstring)."""

    weighted: bool = False
    zero: ZeroKind | None = None
    flops: FlopKind = 0
    moments: bool = False


def _rows(names: str, **info: object) -> dict[str, OpInfo]:
    return dict.fromkeys(names.split(), OpInfo(**info))  # type: ignore[arg-type]


OPS: dict[str, OpInfo] = {
    # Contractions with a weight at input 1.
    **_rows("Conv ConvTranspose Gemm", weighted=True, zero="weighted"),
    # MatMul: a weighted layer with a constant weight, a product of two activations
    # otherwise (attention); the dead analysis tells the two apart.
    "MatMul": OpInfo(weighted=True, zero="product"),
    # Layout and indexing: channels move, values do not change.
    **_rows("Transpose Squeeze Unsqueeze Concat Split Slice Gather Expand Tile "
            "DepthToSpace SpaceToDepth Resize Upsample Cast", zero="moving"),
    # Pad keeps a zero channel zero unless it pads with a nonzero constant (checked).
    "Pad": OpInfo(zero="moving"),
    **_rows("Reshape Flatten Identity Dropout", zero="moving", moments=True),
    # Pooling and reductions over other axes.
    **_rows("MaxPool AveragePool", zero="moving", flops="window"),
    "LpPool": OpInfo(zero="moving", flops="window"),
    "GlobalLpPool": OpInfo(zero="moving"),
    **_rows("GlobalAveragePool GlobalMaxPool ReduceSum ReduceMean ReduceMax ReduceMin "
            "ReduceL2 ReduceL1 ReduceProd ReduceSumSquare", zero="moving", flops="reduce"),
    "ReduceLogSumExp": OpInfo(flops="reduce"),
    # Unary ops with f(0) = 0, one operation per element.
    **_rows("Relu LeakyRelu PRelu Tanh Neg Abs Sqrt Erf Gelu Elu Selu Mish HardSwish "
            "Sign Floor Ceil Round Clip Pow", zero="moving", flops=1),
    **_rows("Celu Sin Softsign Asin Atan Sinh Asinh Atanh Tan ThresholdedRelu",
            zero="moving"),
    # Unary ops with f(0) != 0.
    **_rows("Sigmoid HardSigmoid Softplus Exp Log Reciprocal Swish", flops=1),
    # Broadcasting n-ary ops.
    **_rows("Add Sub Sum Max Min Mean Where", zero="sum", flops=1),
    **_rows("Mul Div", zero="product", flops=1),
    "And": OpInfo(zero="product"),
    # Normalizations (operations per element).
    "BatchNormalization": OpInfo(zero="norm", flops=2),
    **_rows("LayerNormalization InstanceNormalization GroupNormalization", zero="norm",
            flops=5),
    "RMSNormalization": OpInfo(zero="norm", flops=4),
    **_rows("Softmax LogSoftmax", flops=3),
    # --- quantization (rules: passes/rules/quant.py) ---
    # Zero facts: Q of a zero channel is its zero point's code, DQ of the zero point is 0;
    # passes/zeros/quant_rules.py checks the zero points agree.
    # Q: divide, round, add, saturate; DQ: subtract, multiply; dynamic Q also scans the
    # range.
    **_rows("QuantizeLinear", zero="quantize", flops=4),
    **_rows("DequantizeLinear", zero="dequantize", flops=2),
    **_rows("DynamicQuantizeLinear", zero="quantize", flops=6),
    # Quantized contractions: weights are not at input 1 (QLinear*) or are integer codes
    # read with zero points (ConvInteger, MatMulInteger), so not `weighted` (the dead
    # analysis would read raw codes as weights); ir/cost.py counts their MACs.
    **_rows("QLinearConv QLinearMatMul ConvInteger MatMulInteger",
            zero="quantized-contraction"),
    # --- end quantization ---
}

# --- onnxruntime contrib ops (rules: passes/rules/contrib_*.py) ---
# Keyed by (domain, op). `weighted` here means: a contraction with a constant weight
# at input 1 whose cost ir/cost.py counts (packed qkv, transposed operands, 4-bit rows
# are handled there); these ops are not in WEIGHTED, whose readers assume ONNX layouts.
# Zero kinds: the ONNX-domain ones where their semantics hold as they are (f(0) = 0
# unary ops: moving; bias-then-f(0)=0 ops: sum; FusedMatMul, alpha * A @ B: product;
# the norms with gamma at input 1), and rules of their own (passes/zeros/contrib_rules.py)
# for the skip norms, Attention, MatMulNBits and FusedConv. EmbedLayerNormalization,
# MultiHeadAttention and GroupQueryAttention give None (no fact).
CONTRIB_OPS: dict[tuple[str, str], OpInfo] = {
    **{("com.microsoft", op): info for op, info in {
        # attention: (packed qkv projection) + Q.K^T + A.V, counted by ir/cost.py
        "Attention": OpInfo(weighted=True, zero="attention"),
        **_rows("MultiHeadAttention GroupQueryAttention"),
        "RotaryEmbedding": OpInfo(flops=3),
        **_rows("SkipLayerNormalization", zero="skip-norm", flops=6),
        **_rows("SkipSimplifiedLayerNormalization", zero="skip-norm", flops=5),
        "EmbedLayerNormalization": OpInfo(flops=7),
        "LayerNormalization": OpInfo(zero="norm", flops=5),
        "SimplifiedLayerNormalization": OpInfo(zero="norm", flops=4),
        **_rows("Gelu QuickGelu", zero="moving", flops=8),
        **_rows("FastGelu BiasGelu", zero="sum", flops=9),
        "BiasAdd": OpInfo(zero="sum", flops=2),
        "BiasSplitGelu": OpInfo(zero="sum", flops=10),
        "FusedMatMul": OpInfo(weighted=True, zero="product"),
        "FusedConv": OpInfo(weighted=True, zero="fused-conv", flops=1),
        "MatMulNBits": OpInfo(weighted=True, zero="nbits"),
        # QOperator ops onnxruntime keeps in its domain (ir/cost.py counts QGemm's MACs)
        "QGemm": OpInfo(zero="quantized-contraction"),
        "QLinearAdd": OpInfo(zero="qlinear-sum"),
        "QLinearMul": OpInfo(zero="qlinear-product"),
        **_rows("QLinearGlobalAveragePool QLinearLeakyRelu", zero="qlinear-moving"),
    }.items()},
    # onnxruntime registers these in the ONNX domain (onnx.checker rejects them)
    ("", "SimplifiedLayerNormalization"): OpInfo(zero="norm", flops=4),
    # ONNX opset 23/24
    ("", "Attention"): OpInfo(),
    ("", "RotaryEmbedding"): OpInfo(flops=3),
}

CONTRIB_OPERANDS: dict[str, frozenset[int]] = {
    op: frozenset(inputs) for op, inputs in {
        "SkipLayerNormalization": (2, 3, 4), "SkipSimplifiedLayerNormalization": (2, 3),
        "EmbedLayerNormalization": (5, 6), "LayerNormalization": (1, 2),
        "SimplifiedLayerNormalization": (1,), "FastGelu": (1,), "BiasGelu": (1,),
        "BiasAdd": (1,), "BiasSplitGelu": (1,), "Attention": (2,),
        "MultiHeadAttention": (3,), "FusedConv": (2,),
    }.items()}
"""``com.microsoft`` inputs that are per-channel operands (biases, norm parameters):
fold-constants gives each reader its own copy of a shared one, as for ONNX ops."""
# --- end onnxruntime contrib ops ---

_UNKNOWN = OpInfo()


def op_info(op_type: str, domain: str = "") -> OpInfo:
    """The row of ``op_type`` in ``domain`` (empty for operators the table does not know)."""
    if domain in ("", "ai.onnx"):
        return OPS.get(op_type) or CONTRIB_OPS.get(("", op_type), _UNKNOWN)
    return CONTRIB_OPS.get((domain, op_type), _UNKNOWN)


def ops_where(**conditions: object) -> frozenset[str]:
    """Operators whose row matches every ``field=value`` given."""
    return frozenset(op for op, info in OPS.items()
                     if all(getattr(info, key) == value for key, value in conditions.items()))


WEIGHTED: frozenset[str] = ops_where(weighted=True)
"""Operators with a channel-carrying weight at input 1."""

RECONSTRUCTIBLE: frozenset[str] = frozenset({"Conv", "Gemm", "MatMul"})
"""Weighted operators obspa can see as ``Y = W X`` (ConvTranspose cannot yet)."""
