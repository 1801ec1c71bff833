"""The rule table and what a rule sees of its node."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import onnx_ir as ir
import torch

RULES: dict[str, Callable[..., Any]] = {}


def rule(*op_types: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the torch rule of the ONNX ``op_types`` (default domain)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for op_type in op_types:
            RULES[op_type] = fn
        return fn

    return register


@dataclasses.dataclass
class NodeCall:
    """One node being run: its attributes, the mode, and where running state lives."""

    node: ir.Node
    training: bool
    float_dtype: torch.dtype
    state: dict[str, torch.Tensor]
    """Running statistics the node may update in training mode (BatchNormalization),
    keyed by the ONNX value name of the statistic."""
    opset: int = 18
    """The default-domain opset the model imports (Softmax, Split and friends changed)."""

    @property
    def op_type(self) -> str:
        """The node's operator."""
        return self.node.op_type

    def int(self, name: str, default: int | None = None) -> int | None:
        """An INT attribute, or ``default``."""
        attr = self.node.attributes.get(name)
        return default if attr is None else attr.as_int()

    def float(self, name: str, default: float | None = None) -> float | None:
        """A FLOAT attribute, or ``default``."""
        attr = self.node.attributes.get(name)
        return default if attr is None else attr.as_float()

    def ints(self, name: str, default: list[int] | None = None) -> list[int] | None:
        """An INTS attribute as a list, or ``default``."""
        attr = self.node.attributes.get(name)
        return default if attr is None else list(attr.as_ints())

    def string(self, name: str, default: str | None = None) -> str | None:
        """A STRING attribute, or ``default``."""
        attr = self.node.attributes.get(name)
        return default if attr is None else attr.as_string()

    def tensor(self, name: str) -> ir.TensorProtocol | None:
        """A TENSOR attribute, or None."""
        attr = self.node.attributes.get(name)
        return None if attr is None else attr.as_tensor()


def as_ints(tensor: torch.Tensor | None) -> list[int] | None:
    """A 1-D integer tensor input (axes, shape, pads) as Python ints."""
    return None if tensor is None else [int(v) for v in tensor.reshape(-1).tolist()]


_TORCH_DTYPES = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
}


def torch_dtype(data_type: ir.DataType | int, call: NodeCall | None = None) -> torch.dtype:
    """The torch dtype of an ONNX element type; floats become the graph's working float."""
    data_type = ir.DataType(data_type)
    if call is not None and data_type.is_floating_point():
        return call.float_dtype
    try:
        return _TORCH_DTYPES[data_type]
    except KeyError:
        raise NotImplementedError(f"element type {data_type.name}") from None
