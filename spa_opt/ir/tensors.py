"""Tensor edits that keep the IR consistent.

onnx_ir does not update ``Value.shape`` or ``Value.dtype`` when ``const_value``
changes, and it keeps a ``Constant`` node's attribute separate from the value it
produces. A stale shape is saved as is and only the full checker catches it later,
far from the edit that caused it. Every weight edit in spa-opt goes through
:func:`set_constant`, which updates data, shape, dtype and the producing
``Constant`` attribute together.

:func:`lazy_take` slices a tensor along one axis without reading it: the slice is
computed when the tensor is serialized, so a memory-mapped model over 2 GB can be
pruned without loading every weight into RAM first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir


def set_constant(value: ir.Value, data: np.ndarray | ir.TensorProtocol) -> None:
    """Give ``value`` new constant data, keeping its shape, dtype and producer in step.

    Args:
        value: An initializer or the output of a ``Constant`` node.
        data: The new contents, as an array or an onnx_ir tensor.
    """
    tensor = data if isinstance(data, ir.TensorProtocol) else ir.tensor(data, name=value.name)
    if value.name is not None:
        tensor.name = value.name
    value.const_value = tensor
    value.shape = ir.Shape(tensor.shape)
    value.dtype = tensor.dtype
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        producer.attributes.clear()
        producer.attributes["value"] = ir.AttrTensor("value", tensor)


def lazy_take(tensor: ir.TensorProtocol, indices: Sequence[int], axis: int) -> ir.LazyTensor:
    """Select ``indices`` along ``axis`` of ``tensor``, deferring the read to save time.

    Args:
        tensor: Any onnx_ir tensor, typically a memory-mapped ``ExternalTensor``.
        indices: Positions to keep, in the order they should appear.
        axis: The axis to select along (negative counts from the end).

    Returns:
        A tensor whose data is computed only when serialized or converted to numpy.
    """
    index = np.asarray(indices, dtype=np.int64)
    rank = len(tensor.shape)
    axis = axis % rank
    dims = list(tensor.shape.numpy())
    dims[axis] = len(index)

    def take() -> ir.TensorProtocol:
        return ir.tensor(np.take(tensor.numpy(), index, axis=axis), name=tensor.name)

    return ir.LazyTensor(take, dtype=tensor.dtype, shape=ir.Shape(dims), name=tensor.name)
