"""One layer, as onnxruntime would run it alone: what the latency model measures.

A :class:`Layer` is a node's operator, attributes and input shapes (at some width),
with which inputs are weights. It is the unit the latency table is keyed by: two
layers with the same signature run the same kernel on the same shapes, so they are
timed once (ResNet-50's 53 convolutions are 23 signatures at full width).

:func:`layer_model` builds the single-node model that times it: activations are graph
inputs, weights are initializers (onnxruntime prepacks them as it does in the real
model), random values of the node's dtypes. A grouped convolution's ``group``
attribute follows its widths (input channels / weight's second axis), so a depthwise
layer stays depthwise at every width.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

#: The operators the latency model times one by one: the contractions that dominate
#: a model's latency and whose time depends on the widths in ways FLOPs do not tell.
TIMED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclasses.dataclass(frozen=True)
class LayerInput:
    """One input of a layer: its dimensions, element type, and whether it is a weight."""

    dims: tuple[int, ...]
    dtype: ir.DataType
    weight: bool


@dataclasses.dataclass(frozen=True)
class Layer:
    """A node's operator, attributes and inputs at given widths."""

    op_type: str
    domain: str
    opset: int
    attributes: tuple[tuple[str, Any], ...]
    inputs: tuple[LayerInput | None, ...]
    """None for an absent optional input."""

    def signature(self) -> str:
        """A stable text key: same signature, same kernel on the same shapes."""
        parts = [f"{self.domain}:{self.op_type}@{self.opset}"]
        parts += [f"{name}={value!r}" for name, value in self.attributes]
        for item in self.inputs:
            parts.append("-" if item is None else
                         f"{'w' if item.weight else 'x'}{item.dtype.name}"
                         f"[{','.join(map(str, item.dims))}]")
        text = "|".join(parts)
        return text if len(text) <= 200 else hashlib.sha1(text.encode()).hexdigest()

    def flops(self) -> int:
        """Multiply-adds x 2 of a contraction (for sanity checks and fake timers)."""
        dims = [i.dims if i is not None else () for i in self.inputs]
        if self.op_type in ("Conv", "ConvTranspose"):
            return 2 * int(np.prod(dims[0])) * int(np.prod(dims[1][0:1]) *
                                                    np.prod(dims[1][2:]))
        if self.op_type in ("Gemm", "MatMul"):
            a, b = dims[0], dims[1]
            transposed = self.op_type == "Gemm" and dict(self.attributes).get("transB", 0)
            columns = b[0] if transposed else (b[-1] if len(b) > 1 else 1)
            return 2 * int(np.prod(a)) * int(columns)
        return int(np.prod(dims[0])) if dims and dims[0] else 0


def _attribute_value(attr: ir.Attr) -> Any:
    value = attr.value
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    return value


def layer_of(node: ir.Node, dims: Sequence[Sequence[int] | None], opset: int) -> Layer | None:
    """The layer ``node`` would be with its inputs at ``dims`` (None: not timeable).

    A node whose attributes are graphs or tensors, or whose input dtypes are unknown, is
    not timed alone (its cost stays in the model's measured remainder).
    """
    attributes = []
    for name, attr in sorted(node.attributes.items()):
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS,
                         ir.AttributeType.TENSOR, ir.AttributeType.TENSORS):
            return None
        attributes.append((name, _attribute_value(attr)))
    inputs: list[LayerInput | None] = []
    for value, shape in zip(node.inputs, dims, strict=True):
        if value is None:
            inputs.append(None)
            continue
        if shape is None or value.dtype is None:
            return None
        inputs.append(LayerInput(tuple(int(d) for d in shape), value.dtype,
                                 value.const_value is not None))
    if node.op_type == "Conv" and len(inputs) > 1 and inputs[0] and inputs[1]:
        channels, per_group = inputs[0].dims[1], inputs[1].dims[1]
        if per_group < 1 or channels % per_group:
            return None
        attributes = [(n, v) for n, v in attributes if n != "group"]
        attributes.append(("group", channels // per_group))
        attributes.sort()
    return Layer(node.op_type, node.domain, opset, tuple(attributes), tuple(inputs))


def _random(item: LayerInput, rng: np.random.Generator) -> np.ndarray:
    dtype = item.dtype.numpy()
    if np.issubdtype(dtype, np.floating):
        return (rng.standard_normal(item.dims) * 0.1).astype(dtype)
    return rng.integers(0, 2, item.dims).astype(dtype)


def layer_model(layer: Layer, seed: int = 0) -> tuple[ir.Model, dict[str, np.ndarray]]:
    """The single-node model that runs ``layer``, and a feed for its activations."""
    rng = np.random.default_rng(seed)
    graph_inputs, initializers, values, feed = [], [], [], {}
    for index, item in enumerate(layer.inputs):
        if item is None:
            values.append(None)
            continue
        value = ir.Value(name=f"in{index}", shape=ir.Shape(item.dims),
                         type=ir.TensorType(item.dtype))
        data = _random(item, rng)
        if item.weight:
            value.const_value = ir.tensor(data, name=value.name)
            initializers.append(value)
        else:
            graph_inputs.append(value)
            feed[value.name] = data
        values.append(value)
    attributes = [ir.convenience.convert_attribute(name, list(v) if isinstance(v, tuple) else v)
                  for name, v in layer.attributes]
    node = ir.Node(layer.domain, layer.op_type, values, attributes=attributes, name="layer")
    output = node.outputs[0]
    output.name = "out"
    first = next(i for i in layer.inputs if i is not None)
    output.type = ir.TensorType(first.dtype)
    opsets = {"": layer.opset} if not layer.domain else {"": 17, layer.domain: 1}
    graph = ir.Graph(graph_inputs, [output], nodes=[node], initializers=initializers,
                     opset_imports=opsets, name="layer")
    return ir.Model(graph, ir_version=10), feed
