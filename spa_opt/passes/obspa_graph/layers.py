"""Consumer layers: where a group's channels meet a weight, seen as ``Y = W X``.

Removing a unit of a group removes columns in every layer that consumes its channels
through a weight. Such a layer is a :class:`Layer` when:

- it is a ``Conv`` with ``group = 1`` (weight ``(O, C, k...)``, columns ``c·K + k``
  over the ``K`` kernel positions, im2col order), a ``Gemm`` (``transA = 0``, the
  weight as ``B``, either ``transB``) or a ``MatMul`` whose second input is a rank-2
  constant ``(K, N)`` (the activation may have any leading axes);
- the weight is an initializer or ``Constant`` used by that node alone, so a rewritten
  weight changes nothing else (model-zoo ``ConstantOfShape`` weights are costed but
  not rewritten).

Depthwise and grouped convolutions are not consumers: each output channel there reads
only its own input channels, so removing a channel removes the whole row and leaves
nothing to reconstruct; the next weighted layer carries the cost. A bias (``Conv``'s
third input, ``Gemm``'s ``C`` of shape ``(N,)``, or a constant ``(N,)`` added right
after a ``MatMul``) joins ``W`` as a last column fed by a constant one, so the
reconstruction can absorb the mean of what was removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from spa_opt.ir.tensors import constant_array, constant_tensor
from spa_opt.obs.hessian import Geometry
from spa_opt.passes.coupling.groups import Group, Member

Kind = Literal["conv", "gemm", "matmul"]


@dataclasses.dataclass(eq=False)
class Layer:
    """One weighted node seen as ``Y = W X`` (see the module docstring)."""

    node: ir.Node
    kind: Kind
    weight: ir.Value
    activation: ir.Value
    bias: ir.Value | None
    in_axis: int
    """Axis of the weight that indexes input channels."""
    rewritable: bool
    """Whether reconstructed weights can be written back."""

    @property
    def name(self) -> str:
        """The node's name, else its weight's."""
        return self.node.name or self.weight.name or self.node.op_type

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The weight's shape."""
        return tuple(int(d) for d in self.weight.shape)

    @property
    def kernel(self) -> tuple[int, ...]:
        """Spatial kernel shape (empty for Gemm and MatMul)."""
        return self.weight_shape[2:] if self.kind == "conv" else ()

    @property
    def kernel_size(self) -> int:
        """Columns per input channel."""
        return int(np.prod(self.kernel, dtype=np.int64)) if self.kernel else 1

    @property
    def width(self) -> int:
        """Columns of ``W`` without the bias column."""
        return self.weight_shape[self.in_axis] * self.kernel_size

    @property
    def order(self) -> Literal["C", "F"]:
        """The memory order in which :meth:`matrix` is a plain cast of the stored weight.

        ``F`` for a MatMul's (or ``transB=0`` Gemm's) ``(K, N)``, ``C`` otherwise.
        """
        return "F" if self.kind != "conv" and self.in_axis == 0 else "C"

    @property
    def rows(self) -> int:
        """Rows of ``W`` (output channels)."""
        return int(np.prod(self.weight_shape, dtype=np.int64)) // max(self.width, 1)

    def columns(self, positions: np.ndarray) -> np.ndarray:
        """Column indices of each unit, ``(units, block·K)``, from its weight-axis positions."""
        k = self.kernel_size
        cols = positions[:, :, None] * k + np.arange(k)
        return cols.reshape(positions.shape[0], -1)

    def matrix(self, with_bias: bool, order: Literal["C", "F"] = "C",
               dtype: type[np.floating] = np.float64) -> np.ndarray:
        """``W`` as float64 (or ``dtype``) ``(rows, width [+1])``, the bias (or 0) last.

        One allocation, cast and transposed in a single copy: on a 32000 x 2048 lm_head a
        float64 copy followed by a contiguous transpose and a bias ``hstack`` held three
        0.5 GB arrays at once. ``order="F"`` (what obspa's ordering works in) makes that
        copy a plain cast for a MatMul's ``(K, N)`` weight, whose rows are ``W``'s columns.
        """
        tensor = self.weight.const_value
        source = constant_array(self.weight)
        if self.kind == "conv":
            rows = source.reshape(source.shape[0], -1)
        elif self.in_axis == 0:  # MatMul or Gemm transB=0: (K, N)
            rows = source.T
        else:
            rows = source
        width = rows.shape[1]
        data = np.empty((rows.shape[0], width + (1 if with_bias else 0)), dtype, order=order)
        data[:, :width] = rows
        del rows, source
        if isinstance(tensor, ir.ExternalTensor):
            # a float64 copy was made: give the memory-mapped pages back (they would
            # otherwise stay resident, every layer's, until the model is saved); a mapping
            # an array elsewhere still views stays (BufferError), the next read maps again
            with contextlib.suppress(BufferError):
                tensor.release()
        if with_bias:
            bias = constant_array(self.bias) if self.bias is not None else None
            data[:, width] = 0.0 if bias is None else np.asarray(bias, dtype).reshape(-1)
        return data

    def unmatrix(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The weight (and bias when ``matrix`` has its column) in the model's layout."""
        dtype = self.weight.dtype.numpy() if self.weight.dtype is not None else np.float32
        width = self.width
        rows = matrix[:, :width]
        bias = matrix[:, width] if matrix.shape[1] > width else None
        if self.kind == "conv":
            weight = rows.reshape(self.weight_shape)
        elif self.in_axis == 0:
            weight = rows.T
        else:
            weight = rows
        weight = np.ascontiguousarray(weight, dtype=dtype)
        if bias is not None:
            bias_dtype = self.bias.dtype.numpy() if self.bias is not None and \
                self.bias.dtype is not None else dtype
            bias = bias.astype(bias_dtype)
        return weight, bias


def _single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _matmul_bias(node: ir.Node, rows: int) -> ir.Value | None:
    """A constant ``(N,)`` added to the MatMul's output right after it, if any."""
    output = node.outputs[0]
    uses = output.uses()
    if len(uses) != 1 or output.is_graph_output():
        return None
    add, _ = uses[0]
    if add.op_type != "Add" or add.domain != "":
        return None
    other = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
    tensor = constant_tensor(other)
    if tensor is None or tuple(tensor.shape) != (rows,) or not _single_use(other):
        return None
    return other


def layer_of(member: Member) -> Layer | None:
    """The consumer layer behind a group member, or None when it is not one."""
    if member.kind != "weight" or "in" not in member.roles:
        return None
    weight = member.value
    uses = weight.uses()
    if not uses or weight.shape is None or constant_array(weight) is None:
        return None
    node, index = uses[0]
    if index != 1 or node.domain != "" or node.inputs[0] is None:
        return None
    shape = [d for d in weight.shape]
    if not all(isinstance(d, int) for d in shape):
        return None
    rewritable = _single_use(weight) and constant_tensor(weight) is not None
    bias = None
    if node.op_type == "Conv":
        if node.attributes.get_int("group", 1) != 1 or member.axis != 1:
            return None
        kind: Kind = "conv"
        bias = node.inputs[2] if len(node.inputs) > 2 else None
    elif node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0) or len(shape) != 2:
            return None
        if member.axis != (1 if node.attributes.get_int("transB", 0) else 0):
            return None
        if node.attributes.get_float("alpha", 1.0) != 1.0:
            return None
        kind = "gemm"
        rows = shape[1 - member.axis]
        candidate = node.inputs[2] if len(node.inputs) > 2 else None
        if candidate is not None and node.attributes.get_float("beta", 1.0) == 1.0:
            tensor = constant_tensor(candidate)
            if tensor is not None and tuple(tensor.shape) == (rows,):
                bias = candidate
    elif node.op_type == "MatMul":
        if len(shape) != 2 or member.axis != 0:
            return None
        kind = "matmul"
        bias = _matmul_bias(node, shape[1])
    else:
        return None
    if bias is not None and (constant_tensor(bias) is None or not _single_use(bias)):
        bias = None
    return Layer(node, kind, weight, node.inputs[0], bias, member.axis, rewritable)


def consumers(group: Group) -> list[tuple[Layer, np.ndarray]]:
    """The group's consumer layers, each with its columns per unit ``(units, b)``."""
    found = []
    for member in group.members:
        layer = layer_of(member)
        if layer is not None:
            found.append((layer, layer.columns(member.index_map.positions)))
    return found


def geometry(layer: Layer) -> Geometry:
    """How the layer reads its activation, from the node's attributes."""
    if layer.kind != "conv":
        return Geometry("linear")
    attrs = layer.node.attributes
    nd = len(layer.kernel)
    return Geometry(
        "conv",
        layer.kernel,
        tuple(attrs.get_ints("strides", [1] * nd)),
        tuple(attrs.get_ints("pads", [0] * (2 * nd))),
        tuple(attrs.get_ints("dilations", [1] * nd)),
        attrs.get_string("auto_pad", "NOTSET"),
    )


def key_of(layer: Layer) -> tuple[int, Geometry]:
    """Layers with equal keys read the same activation the same way: one accumulator."""
    return id(layer.activation), geometry(layer)
