"""Zero rules of onnxruntime's fused ``com.microsoft`` operators.

The fused ops compute what their ONNX subgraphs did, so each rule is the composition
of the ONNX rules (rows whose ONNX semantics hold as they are, Gelu or BiasAdd, reuse
``moving``/``sum`` directly):

- ``SkipLayerNormalization(input, skip, gamma, beta, bias)`` and
  ``SkipSimplifiedLayerNormalization(input, skip, gamma, bias)``: output 0 is
  ``norm(input + skip + bias) * gamma (+ beta)``, zero where gamma and beta are;
  output 3 is the sum ``input + skip + bias``;
- ``Attention(input, weights, bias, mask_index, past, ...)``: output channel ``j`` is
  ``sum_t p_t V[t, j]`` with ``V = input @ W_v + b_v``, zero where ``W_v``'s column is
  zero on every live input channel and ``b_v[j] = 0``; not with a ``past`` (cached
  values of the channel are inputs);
- ``MatMulNBits``: the MatMul rule on the dequantized ``[N, K]`` weight (not with
  ``g_idx``, which reorders ``K``);
- ``FusedConv(X, W, B, Z)``: the Conv rule, plus ``Z`` zero, when the activation keeps
  0 (Relu, LeakyRelu, Tanh, Clip around 0, none).
"""

from __future__ import annotations

import onnx_ir as ir

from spa_opt.ir import nbits
from spa_opt.ir.quant import float_weight, viewed_weight
from spa_opt.passes.zeros.facts import LITERAL, ZeroFacts, combine_positions
from spa_opt.passes.zeros.onnx_rules import contraction, contraction_zeros


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def skip_norm(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """SkipLayerNormalization, SkipSimplifiedLayerNormalization (module docstring)."""
    simplified = node.op_type == "SkipSimplifiedLayerNormalization"
    gamma = viewed_weight(_input(node, 2))
    beta_in = None if simplified else _input(node, 3)
    beta = viewed_weight(beta_in) if beta_in is not None else None
    bias = _input(node, 3 if simplified else 4)
    out = node.outputs[0]
    if gamma is not None and gamma.ndim == 1 and (beta_in is None or beta is not None):
        zero = gamma == 0
        if beta is not None:
            zero &= beta.reshape(-1) == 0
        if out.shape is not None:
            facts.from_positions(out, len(out.shape) - 1, zero)
    if len(node.outputs) > 3 and node.outputs[3] is not None:
        sources = [(v, LITERAL) for v in (node.inputs[0], _input(node, 1), bias)
                   if v is not None]
        combine_positions(facts, node.outputs[3], sources, "sum")


def attention(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """com.microsoft Attention without a past: value channels (module docstring)."""
    x, weight, out = node.inputs[0], viewed_weight(_input(node, 1)), node.outputs[0]
    bias = viewed_weight(_input(node, 2))
    if _input(node, 4) is not None or x is None or x.shape is None or out.shape is None:
        return
    if weight is None or weight.ndim != 2 or bias is None:
        return
    sizes = node.attributes.get_ints("qkv_hidden_sizes", None)
    width = weight.shape[1]
    q, k, v = (sizes if sizes else [width // 3] * 3)
    if q + k + v != width or bias.size != width:
        return
    w_v, b_v = weight[:, q + k:], bias.reshape(-1)[q + k:]
    dead_in = facts.positions(x, len(x.shape) - 1, weight.shape[0])
    zero = ~((w_v != 0) & ~dead_in[:, None]).any(axis=0) & (b_v == 0)
    facts.from_positions(out, len(out.shape) - 1, zero)


def matmul_nbits(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """MatMulNBits: the MatMul rule on the dequantized weight ``[K, N]``."""
    packed = nbits.nbits_of(node)
    if packed is None or _input(node, 4) is not None:
        return
    real = float_weight(_input(node, 1))
    if real is None or real.ndim != 3:
        return
    w = real.reshape(packed.rows, -1)[:, :packed.k].T
    contraction("MatMul", node, node.inputs[0], w, _input(node, 5), node.outputs[0], facts)


def _activation_keeps_zero(node: ir.Node) -> bool:
    name = node.attributes.get_string("activation", "")
    if name in ("", "Relu", "LeakyRelu", "Tanh"):
        return True
    if name == "Clip":
        params = node.attributes.get_floats("activation_params", [])
        return len(params) == 2 and params[0] <= 0 <= params[1]
    return False


def fused_conv(node: ir.Node, facts: ZeroFacts, kind: str) -> None:
    """FusedConv: the Conv rule, and ``Z`` zero, under an activation with ``f(0) = 0``."""
    if not _activation_keeps_zero(node):
        return
    out = node.outputs[0]
    found = contraction_zeros("Conv", node, node.inputs[0], viewed_weight(_input(node, 1)),
                              _input(node, 2), out, facts)
    if found is None:
        return
    zero, axis = found
    z = _input(node, 3)
    if z is not None:
        zero = zero & facts.positions(z, 1, zero.size)
    facts.from_positions(out, axis, zero)
