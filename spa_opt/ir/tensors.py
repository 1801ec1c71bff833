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

import contextlib
import mmap
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
        taken = ir.tensor(np.take(tensor.numpy(), index, axis=axis), name=tensor.name)
        drop_pages(tensor)
        return taken

    return ir.LazyTensor(take, dtype=tensor.dtype, shape=ir.Shape(dims), name=tensor.name)


def drop_pages(tensor: ir.TensorProtocol) -> None:
    """Give back the resident pages of a memory-mapped tensor once it has been read.

    A mapping's touched pages count in the process's RSS for as long as it stays open;
    while a pruned model is saved every weight is read once, so without this the whole
    model (its data file, and obspa's spilled weights) ends up resident at the end of a
    run. An onnx_ir ``ExternalTensor`` is unmapped (it maps again if read again; a
    mapping an array still views stays); an array on a ``numpy.memmap`` keeps its
    mapping but its pages are dropped (``MADV_DONTNEED``: a read-only file mapping
    reads them back from the page cache). Anything else is left alone.
    """
    if isinstance(tensor, ir.ExternalTensor):
        with contextlib.suppress(BufferError):
            tensor.release()
        return
    raw = getattr(tensor, "raw", None)
    while isinstance(raw, np.ndarray) and not isinstance(raw, np.memmap):
        raw = raw.base
    # not a copy-on-write ("c") mapping: dropping its pages would drop its writes
    shared = isinstance(raw, np.memmap) and getattr(raw, "mode", "c") in ("r", "r+", "w+")
    mapping = getattr(raw, "_mmap", None) if shared else None
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(mmap.MADV_DONTNEED)


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor behind an initializer or a ``Constant`` node's ``value``, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        attribute = producer.attributes.get("value")
        if attribute is not None:
            return attribute.value
    return None


class NameAllocator:
    """Fresh value names for one graph edit: never a name the graph already uses."""

    def __init__(self, graph: ir.Graph) -> None:
        self._graph = graph
        self._taken = {v.name for v in graph.inputs} | set(graph.initializers)
        self._taken |= {v.name for node in graph.all_nodes() for v in node.outputs}

    def __call__(self, hint: str) -> str:
        """``hint``, or ``hint_N`` with the first free N."""
        name, number = hint, 0
        while name in self._taken:
            number += 1
            name = f"{hint}_{number}"
        self._taken.add(name)
        return name

    def initializer(self, data: np.ndarray, hint: str) -> ir.Value:
        """Register ``data`` as a new initializer under a fresh name."""
        name = self(hint)
        value = ir.Value(
            name=name,
            shape=ir.Shape(data.shape),
            type=ir.TensorType(ir.DataType.from_numpy(data.dtype)),
            const_value=ir.tensor(data, name=name),
        )
        self._graph.register_initializer(value)
        return value


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """A constant's data as an array: initializer, ``Constant``, ``ConstantOfShape``, Identity.

    The model-zoo graphs store weights as ``ConstantOfShape`` nodes with a constant
    shape; reading those here lets criteria and analyses treat them as the weights
    they are. Returns None for anything computed at run time.
    """
    tensor = constant_tensor(value)
    if tensor is not None:
        return np.asarray(tensor.numpy())
    producer = value.producer() if value is not None else None
    if producer is not None and producer.op_type == "Identity" and producer.domain == "":
        return constant_array(producer.inputs[0])  # TorchScript shares weights this way
    if producer is None or producer.op_type != "ConstantOfShape" or producer.domain != "":
        return None
    shape = constant_tensor(producer.inputs[0]) if producer.inputs else None
    if shape is None:
        return None
    fill = producer.attributes.get("value")
    first = fill.value.numpy().reshape(-1)[0] if fill is not None else np.float32(0)
    return np.full(tuple(int(d) for d in shape.numpy().reshape(-1)), first)
