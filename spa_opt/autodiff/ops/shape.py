"""Layout, indexing, constants and reductions.

Shapes are computed eagerly, so dynamic shapes (``Shape`` feeding ``Reshape``) cost
nothing special: every shape input is read as Python ints when the node runs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from spa_opt.autodiff.ops.registry import NodeCall, as_ints, rule, torch_dtype


def _axes(call: NodeCall, given: torch.Tensor | None) -> list[int] | None:
    """Axes from the ``axes`` input (newer opsets) or attribute (older ones)."""
    return as_ints(given) if given is not None else call.ints("axes")


@rule("Reshape")
def _reshape(call: NodeCall, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = as_ints(shape)
    if not call.int("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@rule("Flatten")
def _flatten(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    axis = call.int("axis", 1) % (x.ndim + 1) if x.ndim else 0
    return x.reshape(math.prod(x.shape[:axis]), -1)


@rule("Transpose")
def _transpose(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return x.permute(call.ints("perm", list(range(x.ndim))[::-1]))


@rule("Concat")
def _concat(call: NodeCall, *xs: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(xs[0].dtype, xs[-1].dtype)
    return torch.cat([x.to(dtype) for x in xs], dim=call.int("axis"))


@rule("Split")
def _split(call: NodeCall, x: torch.Tensor, split: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, ...]:
    axis = call.int("axis", 0)
    sizes = as_ints(split) if split is not None else call.ints("split")
    outputs = len(call.node.outputs)
    if sizes is None:
        chunk = math.ceil(x.shape[axis] / (call.int("num_outputs") or outputs))
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(outputs)]
    return tuple(torch.split(x, sizes, dim=axis))


@rule("Slice")
def _slice(call: NodeCall, x: torch.Tensor, starts: torch.Tensor | None = None,
           ends: torch.Tensor | None = None, axes: torch.Tensor | None = None,
           steps: torch.Tensor | None = None) -> torch.Tensor:
    start_list = as_ints(starts) if starts is not None else call.ints("starts")
    end_list = as_ints(ends) if ends is not None else call.ints("ends")
    axis_list = _axes(call, axes) or list(range(len(start_list)))
    step_list = as_ints(steps) or [1] * len(start_list)
    for start, end, axis, step in zip(start_list, end_list, axis_list, step_list, strict=False):
        axis %= x.ndim
        indices = range(*slice(start, end, step).indices(x.shape[axis]))
        if step == 1:
            x = x.narrow(axis, indices.start, len(indices))
        else:
            x = x.index_select(axis, torch.tensor(list(indices), dtype=torch.long))
    return x


def _positive(indices: torch.Tensor, size: int) -> torch.Tensor:
    indices = indices.long()
    return torch.where(indices < 0, indices + size, indices)


@rule("Gather")
def _gather(call: NodeCall, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    axis = call.int("axis", 0) % x.ndim
    flat = _positive(indices, x.shape[axis]).reshape(-1)
    out = x.index_select(axis, flat)
    return out.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1:])


@rule("GatherElements")
def _gather_elements(call: NodeCall, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    axis = call.int("axis", 0) % x.ndim
    return torch.gather(x, axis, _positive(indices, x.shape[axis]))


@rule("Unsqueeze")
def _unsqueeze(call: NodeCall, x: torch.Tensor, axes: torch.Tensor | None = None
               ) -> torch.Tensor:
    axis_list = _axes(call, axes)
    rank = x.ndim + len(axis_list)
    for axis in sorted(a % rank for a in axis_list):
        x = x.unsqueeze(axis)
    return x


@rule("Squeeze")
def _squeeze(call: NodeCall, x: torch.Tensor, axes: torch.Tensor | None = None
             ) -> torch.Tensor:
    axis_list = _axes(call, axes)
    if axis_list is None:
        return x.squeeze()
    keep = [d for i, d in enumerate(x.shape) if i not in {a % x.ndim for a in axis_list}]
    return x.reshape(keep)


@rule("Shape")
def _shape(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    dims = list(x.shape)[call.int("start", 0): call.int("end", None)]
    return torch.tensor(dims, dtype=torch.int64)


@rule("Size")
def _size(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


def constant_tensor(tensor: object, call: NodeCall) -> torch.Tensor:
    """An ONNX tensor (initializer or attribute) as a torch tensor of the working dtype."""
    array = np.array(tensor.numpy())  # a writable copy: torch cannot share read-only memory
    out = torch.from_numpy(array)
    return out.to(call.float_dtype) if out.is_floating_point() else out


@rule("Constant")
def _constant(call: NodeCall) -> torch.Tensor:
    tensor = call.tensor("value")
    if tensor is not None:
        return constant_tensor(tensor, call)
    for name, dtype in (("value_float", call.float_dtype), ("value_int", torch.int64)):
        attr = call.node.attributes.get(name)
        if attr is not None:
            return torch.tensor(attr.value, dtype=dtype)
    for name, dtype in (("value_floats", call.float_dtype), ("value_ints", torch.int64)):
        attr = call.node.attributes.get(name)
        if attr is not None:
            return torch.tensor(list(attr.value), dtype=dtype)
    raise NotImplementedError("Constant without a numeric value")


@rule("ConstantOfShape")
def _constant_of_shape(call: NodeCall, shape: torch.Tensor) -> torch.Tensor:
    tensor = call.tensor("value")
    fill = torch.zeros((), dtype=call.float_dtype) if tensor is None else \
        constant_tensor(tensor, call).reshape(())
    return torch.full(as_ints(shape), fill.item(), dtype=fill.dtype)


@rule("Expand")
def _expand(call: NodeCall, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    return x.expand(torch.broadcast_shapes(x.shape, tuple(as_ints(shape))))


@rule("Tile")
def _tile(call: NodeCall, x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    return x.repeat(as_ints(repeats))


@rule("Range")
def _range(call: NodeCall, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor
           ) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@rule("Trilu")
def _trilu(call: NodeCall, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    diagonal = 0 if k is None else int(k)
    return torch.triu(x, diagonal) if call.int("upper", 1) else torch.tril(x, diagonal)


@rule("CumSum")
def _cumsum(call: NodeCall, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    dim = int(axis) % x.ndim
    if call.int("reverse", 0):
        x = x.flip(dim)
    out = x.cumsum(dim)
    if call.int("exclusive", 0):
        out = out - x
    return out.flip(dim) if call.int("reverse", 0) else out


@rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
      "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")
def _reduce(call: NodeCall, x: torch.Tensor, axes: torch.Tensor | None = None
            ) -> torch.Tensor:
    axis_list = _axes(call, axes)
    keep = bool(call.int("keepdims", 1))
    if not axis_list:
        if call.int("noop_with_empty_axes", 0):
            return x
        axis_list = list(range(x.ndim))
    dims = sorted(a % x.ndim for a in axis_list)
    op = call.op_type
    if op == "ReduceProd":
        for dim in reversed(dims):
            x = x.prod(dim, keepdim=keep)
        return x
    if op == "ReduceLogSumExp":
        return torch.logsumexp(x, dims, keepdim=keep)
    source = {"ReduceL1": x.abs(), "ReduceSumSquare": x * x, "ReduceL2": x * x}.get(op, x)
    fn = {"ReduceMean": torch.mean, "ReduceMax": torch.amax, "ReduceMin": torch.amin}.get(
        op, torch.sum)
    out = fn(source, dim=dims, keepdim=keep)
    return out.sqrt() if op == "ReduceL2" else out


@rule("ArgMax", "ArgMin")
def _arg_extreme(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    axis, keep = call.int("axis", 0), bool(call.int("keepdims", 1))
    fn = torch.argmax if call.op_type == "ArgMax" else torch.argmin
    return fn(x, dim=axis, keepdim=keep)


@rule("TopK")
def _topk(call: NodeCall, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
    values, indices = torch.topk(x, int(k), dim=call.int("axis", -1),
                                 largest=bool(call.int("largest", 1)),
                                 sorted=bool(call.int("sorted", 1)))
    return values, indices


@rule("NonZero")
def _nonzero(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(x).transpose(0, 1)


@rule("DepthToSpace", "SpaceToDepth")
def _depth_space(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    b = call.int("blocksize")
    n, c, h, w = x.shape
    if call.op_type == "SpaceToDepth":
        y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * b * b, h // b, w // b)
    if call.string("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@rule("OneHot")
def _one_hot(call: NodeCall, indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor
             ) -> torch.Tensor:
    size = int(depth)
    hot = torch.nn.functional.one_hot(_positive(indices, size), size).to(values.dtype)
    out = values[0] + hot * (values[1] - values[0])
    return out.movedim(-1, call.int("axis", -1))


__all__ = ["constant_tensor", "torch_dtype"]
