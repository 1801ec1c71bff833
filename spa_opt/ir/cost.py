"""Parameter and FLOPs counting over ONNX operators.

Conventions, chosen to match what pruning papers and Torch-Pruning report:

- ``params``: elements of floating-point weights: initializers, ``Constant``
  nodes and ``ConstantOfShape`` nodes with a constant shape (the model-zoo graphs
  store their weights that way), and of quantized weights (integer initializers a
  ``DequantizeLinear`` or a quantized operator reads as its weight,
  :func:`spa_opt.ir.quant.quantization_of`). Other integer tensors (shapes, indices)
  are not params.
- ``macs``: multiply-accumulates of contractions:
  - Conv: ``|Y| * C_in/group * prod(kernel)`` = ``|Y| * prod(W.shape[1:])``
  - ConvTranspose: ``|X| * C_out/group * prod(kernel)`` = ``|X| * prod(W.shape[1:])``
  - Gemm: ``M * N * K``; MatMul (any batch, weight or activation on either side,
    so attention's ``Q·Kᵀ`` and ``A·V`` count): ``|Y| * K``
  - their quantized forms the same: QLinearConv and ConvInteger as Conv,
    QLinearMatMul and MatMulInteger as MatMul, ``com.microsoft`` QGemm as Gemm
  - fused attention (``com.microsoft`` Attention, MultiHeadAttention,
    GroupQueryAttention; ONNX Attention): ``Q·Kᵀ`` and ``A·V``, ``rows * T * (q + v)``
    for ``rows`` query positions, ``T`` keys (past included) and the query and output
    widths, plus Attention's packed projection ``rows * C * (q + k + v)``;
    FusedMatMul as MatMul (on its logical layout), FusedConv as Conv, MatMulNBits
    ``|Y| * K``, whose ``N x K`` weights count as params (its uint8 codes do not)
- ``flops``: ``2 * macs`` plus one operation per output element of bias adds,
  elementwise ops and pooling windows, and a small constant per element for
  normalizations and softmax (the ``flops`` column of :mod:`spa_opt.ir.ops`).

Symbolic dimensions count as 1 (batch size one), so numbers are per sample.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import onnx_ir as ir

from spa_opt.ir.ops import OPS, op_info
from spa_opt.ir.quant import quantization_of
from spa_opt.ir.shapes import temporary_shapes

#: Operations per output element of ops that are not contractions (from the op table).
PER_ELEMENT_FLOPS: dict[str, int] = {
    op: info.flops for op, info in OPS.items() if isinstance(info.flops, int) and info.flops}


@dataclasses.dataclass
class Cost:
    """Totals for a model or one node."""

    params: int = 0
    macs: int = 0
    flops: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs, self.flops + other.flops)


DimsOf = Callable[["ir.Value | None"], "list[int] | None"]
"""How a count reads a value's dimensions: from the IR, or as they would be after pruning."""


def value_dims(value: ir.Value | None) -> list[int] | None:
    """The value's dimensions with symbolic ones counted as 1 (None if unknown)."""
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else 1 for d in value.shape]


def _numel(value: ir.Value | None, dims_of: DimsOf) -> int | None:
    dims = dims_of(value)
    return None if dims is None else math.prod(dims)


def _is_float(dtype: ir.DataType | None) -> bool:
    return dtype is not None and dtype.is_floating_point()


#: Quantized contractions: op -> (the float op it computes, its data and weight inputs).
_QUANTIZED_CONTRACTIONS = {"QLinearConv": ("Conv", 0, 3), "ConvInteger": ("Conv", 0, 1),
                           "QLinearMatMul": ("MatMul", 0, 3), "MatMulInteger": ("MatMul", 0, 1),
                           "QGemm": ("Gemm", 0, 3)}


def is_param(value: ir.Value) -> bool:
    """Whether an initializer counts as parameters: float, or a quantized weight."""
    tensor = value.const_value
    if tensor is None:
        return False
    if _is_float(tensor.dtype):
        return True
    return tensor.dtype.is_integer() and quantization_of(value) is not None


# --- onnxruntime contrib ops and ONNX opset-23 attention -------------------------------
def _rows_of(dims: list[int]) -> int:
    """Elements per last-axis entry (batch x sequence): axes fused attention never prunes."""
    return math.prod(dims[:-1])


def _past_length(node: ir.Node, index: int, axis: int, dims_of: DimsOf) -> int:
    past = node.inputs[index] if len(node.inputs) > index else None
    dims = dims_of(past)
    return dims[axis] if dims and len(dims) > axis else 0


def _ms_attention_macs(node: ir.Node, dims_of: DimsOf) -> int:
    """Packed projection ``|X| * (q+k+v)`` plus ``Q.K^T`` and ``A.V``: ``rows * T * (q + v)``."""
    x, w, out = dims_of(node.inputs[0]), dims_of(node.inputs[1]), dims_of(node.outputs[0])
    if not x or not w or not out or len(w) != 2:
        return 0
    rows, v = _rows_of(out), out[-1]
    sizes = node.attributes.get_ints("qkv_hidden_sizes", ())
    q = v if not sizes or sizes[0] == sizes[2] else v * sizes[0] // sizes[2]
    total = x[-2] + _past_length(node, 4, 3, dims_of) if len(x) == 3 else 1
    return rows * w[0] * w[1] + rows * total * (q + v)


def _attention_macs(node: ir.Node, dims_of: DimsOf) -> int:
    """MultiHeadAttention, GroupQueryAttention, ONNX Attention: ``(|Q| + |Y|) * T``.

    ``Q.K^T`` costs ``H_q`` per score and ``A.V`` ``H_v``; per query row and key position
    that is the query width plus the output width. ``T`` is the key length plus the past.
    """
    out = dims_of(node.outputs[0])
    query = dims_of(node.inputs[0])
    if not out or not query:
        return 0
    key = dims_of(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    op = node.op_type
    if op == "GroupQueryAttention":
        past_index, query_width = 3, out[-1]  # packed or not, q has the output's width
    elif op == "MultiHeadAttention":
        past_index = 6
        query_width = query[2] * query[4] if len(query) == 5 else query[-1]
    else:  # ONNX Attention: 4-D [B, N, S, H] or 3-D [B, S, N*H]
        past_index = 4
        query_width = query[1] * query[3] if len(query) == 4 else query[-1]
    out_width = out[1] * out[3] if len(out) == 4 else out[-1]
    rows = query[0] * (query[2] if len(query) == 4 else query[1])  # batch x query positions
    sequence = query[2] if len(query) == 4 else query[1]
    if key is None or op == "GroupQueryAttention":
        length = sequence
    else:
        length = key[2] if len(key) == 4 else key[1]
    if not (op == "MultiHeadAttention" and key is not None and len(key) == 4):
        length += _past_length(node, past_index, 2, dims_of)  # [B, N, P, H] caches
    return rows * length * (query_width + out_width)


def _fused_matmul_macs(node: ir.Node, dims_of: DimsOf) -> int:
    """``|Y| * K``, ``K`` read from A's logical layout (transBatchA, transA)."""
    a, y = dims_of(node.inputs[0]), _numel(node.outputs[0], dims_of)
    if not a or y is None:
        return 0
    order = list(range(len(a)))
    if node.attributes.get_int("transBatchA", 0) and len(a) > 2:
        order = [*range(1, len(a) - 1), 0, len(a) - 1]
    if node.attributes.get_int("transA", 0) and len(a) > 1:
        order[-1], order[-2] = order[-2], order[-1]
    return y * a[order[-1]]


def _conv_like_macs(node: ir.Node, dims_of: DimsOf) -> int:
    weight, seen = dims_of(node.inputs[1]), _numel(node.outputs[0], dims_of)
    return seen * math.prod(weight[1:]) if weight and seen is not None else 0


def _nbits_k(node: ir.Node, dims_of: DimsOf) -> int:
    """``K``: the input's last dim (what a plan leaves of it), else the attribute."""
    a = dims_of(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
    return a[-1] if a and isinstance(a[-1], int) and a[-1] > 0 \
        else node.attributes.get_int("K", 0)


def _nbits_macs(node: ir.Node, dims_of: DimsOf) -> int:
    """``|Y| * K``: the packed rows are dequantized on the fly."""
    y = _numel(node.outputs[0], dims_of)
    return 0 if y is None else y * _nbits_k(node, dims_of)


_CONTRIB_MACS: dict[tuple[str, str], Callable[[ir.Node, DimsOf], int]] = {
    ("com.microsoft", "Attention"): _ms_attention_macs,
    ("com.microsoft", "MultiHeadAttention"): _attention_macs,
    ("com.microsoft", "GroupQueryAttention"): _attention_macs,
    ("", "Attention"): _attention_macs,
    ("com.microsoft", "FusedMatMul"): _fused_matmul_macs,
    ("com.microsoft", "FusedConv"): _conv_like_macs,
    ("com.microsoft", "MatMulNBits"): _nbits_macs,
}
# --- end contrib ops ---------------------------------------------------------------------


def _node_macs(node: ir.Node, dims_of: DimsOf) -> int:
    op = node.op_type
    contrib = _CONTRIB_MACS.get(("" if node.domain == "ai.onnx" else node.domain, op))
    if contrib is not None:
        return contrib(node, dims_of)
    if op in _QUANTIZED_CONTRACTIONS:
        op, data, weight = _QUANTIZED_CONTRACTIONS[op]
        if op == "Conv" and len(node.inputs) > weight:
            w, y = dims_of(node.inputs[weight]), _numel(node.outputs[0], dims_of)
            return y * math.prod(w[1:]) if w and y is not None else 0
        a, y = dims_of(node.inputs[data]), _numel(node.outputs[0], dims_of)
        if not a or y is None:
            return 0
        transposed = op == "Gemm" and node.attributes.get_int("transA", 0)
        return y * (a[0] if transposed else a[-1])
    if op in ("Conv", "ConvTranspose"):
        weight = dims_of(node.inputs[1])
        seen = _numel(node.outputs[0] if op == "Conv" else node.inputs[0], dims_of)
        return seen * math.prod(weight[1:]) if weight and seen is not None else 0
    if op == "Gemm":
        a, y = dims_of(node.inputs[0]), _numel(node.outputs[0], dims_of)
        if not a or y is None:
            return 0
        k = a[0] if node.attributes.get_int("transA", 0) else a[-1]
        return y * k
    if op == "MatMul":
        a, y = dims_of(node.inputs[0]), _numel(node.outputs[0], dims_of)
        return y * a[-1] if a and y is not None else 0
    return 0


def _node_flops(node: ir.Node, macs: int, dims_of: DimsOf) -> int:
    op = node.op_type
    output = _numel(node.outputs[0], dims_of) if node.outputs else None
    if output is None:
        return 2 * macs
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    if op in ("Conv", "ConvTranspose", "Gemm"):
        return 2 * macs + (output if has_bias else 0)
    per_element = op_info(op, node.domain).flops
    if isinstance(per_element, int) and not macs and _shape_arithmetic(node):
        return 0
    if per_element == "window":
        kernel = node.attributes.get_ints("kernel_shape", ())
        return output * math.prod(kernel)
    if per_element == "reduce":
        return _numel(node.inputs[0], dims_of) or 0
    return 2 * macs + output * per_element


def _shape_arithmetic(node: ir.Node) -> bool:
    """Integer arithmetic on shape vectors and scalars: bookkeeping, not the model's work.

    Exporters compute ``Reshape`` targets at run time and pruning patches them with an
    ``Add(shape, delta)``; counting those would make the cost of a pruned model depend on
    how its shapes are spelled.
    """
    return bool(node.outputs) and all(
        out.dtype is not None and out.dtype.is_integer() and out.shape is not None
        and len(out.shape) <= 1 for out in node.outputs)


def _node_params(node: ir.Node, dims_of: DimsOf) -> int:
    if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
        # The packed uint8 codes are not float params; the N x K weights they stand for
        # are, so a 4-bit model counts as many weights as its float source.
        rows = dims_of(node.outputs[0])
        return rows[-1] * _nbits_k(node, dims_of) if rows else 0
    if node.op_type == "Constant":
        value = node.outputs[0]
        return (_numel(value, dims_of) or 0) if _is_float(value.dtype) else 0
    if node.op_type == "ConstantOfShape":
        if not _is_float(node.outputs[0].dtype or ir.DataType.FLOAT):
            return 0
        known = _numel(node.outputs[0], dims_of)
        if known is not None:
            return known
        shape = node.inputs[0].const_value if node.inputs and node.inputs[0] else None
        return 0 if shape is None else math.prod(int(d) for d in shape.numpy().reshape(-1))
    return 0


def node_cost(node: ir.Node, dims_of: DimsOf = value_dims) -> Cost:
    """Cost of one node; its weights are counted by :func:`count_cost`, not here.

    Args:
        node: The node.
        dims_of: Where dimensions come from; the pruning planner passes the
            dimensions a selection would leave, to cost it without editing the graph.
    """
    macs = _node_macs(node, dims_of)
    return Cost(params=_node_params(node, dims_of), macs=macs,
                flops=_node_flops(node, macs, dims_of))


def initializer_params(graph: ir.Graph, dims_of: DimsOf = value_dims) -> int:
    """Floating-point initializer elements of one graph."""
    total = 0
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and is_param(value):
            total += math.prod(dims_of(value) or tensor.shape.numpy())
    return total


def count_cost(model: ir.Model, infer_shapes: bool = True) -> Cost:
    """Count params, MACs and FLOPs of ``model``'s main graph and its subgraphs.

    Args:
        model: The model; it is left exactly as it was.
        infer_shapes: Infer intermediate shapes for the count, then restore the
            shapes the model had, so counting never adds value_info to an output.
            Without it, nodes whose shapes are unknown count as zero.
    """
    if not infer_shapes:
        return _count(model)
    with temporary_shapes(model, symbolic=True):  # the dims the planner saw
        return _count(model)


def _count(model: ir.Model) -> Cost:
    total = Cost()
    for graph in model.graphs():
        total.params += initializer_params(graph)
        for node in graph:
            total += node_cost(node)
    return total
