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


def _node_macs(node: ir.Node, dims_of: DimsOf) -> int:
    op = node.op_type
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
    per_element = op_info(op).flops
    if per_element == "window":
        kernel = node.attributes.get_ints("kernel_shape", ())
        return output * math.prod(kernel)
    if per_element == "reduce":
        return _numel(node.inputs[0], dims_of) or 0
    return 2 * macs + output * per_element


def _node_params(node: ir.Node, dims_of: DimsOf) -> int:
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
    with temporary_shapes(model):
        return _count(model)


def _count(model: ir.Model) -> Cost:
    total = Cost()
    for graph in model.graphs():
        total.params += initializer_params(graph)
        for node in graph:
            total += node_cost(node)
    return total
