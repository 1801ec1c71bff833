"""Where each entry of a run-time shape tensor comes from.

The TorchScript exporter writes ``x.view(b, s, heads, dim)`` as
``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``: the channel count a Reshape
produces is then spread over a small integer subgraph. To remove channels safely the
analysis must know, for each entry of such a shape tensor, whether it is

- a constant (an initializer or ``Constant`` element: removal rewrites it),
- a dimension read at run time with ``Shape`` (it follows the tensor it reads, so
  removal needs no patch, provided that tensor's axis is coupled with the entry), or
- anything else (arithmetic on run-time dimensions, data-dependent values): removal
  cannot patch it, and the channels are pinned.

:func:`trace_tensor` evaluates the subgraph abstractly over these three kinds, on
tensors of any rank (numpy arrays of :class:`Entry`), because exporters build shape
arguments in two dimensions too: TensorFlow-style "same" padding computes pad
amounts as ``Concat -> Reshape [-1, 2] -> Slice (step -1) -> Transpose -> Reshape``.
It follows ``Shape`` (with start/end), ``Constant``/initializers, ``ConstantOfShape``
(its fill is a constant of that node), ``Gather``, ``Slice`` (any steps),
``Concat``, ``Unsqueeze``, ``Squeeze``, ``Reshape``, ``Flatten``, ``Transpose``,
``Cast``, ``Identity``, and ``Where`` with a known condition (torch's ``expand(-1)``
lowering); integer arithmetic (Add, Sub, Mul, Div, Mod, Max, Min, Equal) computes
``expr`` entries whose number is known when its operands are. Any other producer
gives unknown ``expr`` entries. :func:`trace_entries` is the 1-D view rules use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir


@dataclasses.dataclass(frozen=True, eq=False)
class Entry:
    """One entry of a shape tensor and where it comes from."""

    kind: str
    """``const``, ``dim`` or ``expr``."""
    number: int | None = None
    """Its static value, when known."""
    source: str = ""
    """For ``const``: the constant's name; for ``expr``: the node that computes it."""
    index: int = 0
    """For ``const``: the position inside that constant."""
    dim: tuple[ir.Value, int] | None = None
    """For ``dim``: the tensor and axis ``Shape`` reads."""
    fixed: bool = False
    """Computed from constants alone, never from a size read at run time: a removal
    cannot change it (a ``const``, or arithmetic on ``const`` entries)."""
    scale: int = 1
    """For an ``expr`` with ``dim`` set: the entry is ``scale * size(dim)``, a size read
    at run time times fixed constants (GQA's ``kv_heads * n_rep``), which follows a
    removal by itself, one block of ``scale`` positions per channel of ``dim``."""


ConstOf = Callable[[ir.Value], "np.ndarray | None"]
DimsOf = Callable[[ir.Value], "tuple[int | None, ...] | None"]

_SAME = frozenset({"Cast", "Identity"})

Traced = np.ndarray
"""An integer tensor traced entry by entry: a numpy array of :class:`Entry` objects."""


def trace_entries(
    value: ir.Value, const_of: ConstOf, dims_of: DimsOf, memo: dict[int, Traced | None]
) -> list[Entry] | None:
    """Entries of the 1-D (or scalar) integer tensor ``value``, None if unknown."""
    traced = trace_tensor(value, const_of, dims_of, memo)
    if traced is None or traced.ndim > 1:
        return None
    return list(traced.reshape(-1))


def trace_tensor(
    value: ir.Value, const_of: ConstOf, dims_of: DimsOf, memo: dict[int, Traced | None]
) -> Traced | None:
    """Entries of the integer tensor ``value`` of any rank, None if not traceable."""
    key = id(value)
    if key in memo:
        return memo[key]
    memo[key] = None  # cycles cannot occur in a DAG, but stay safe
    result = _trace(value, const_of, dims_of, memo)
    memo[key] = result
    return result


def _array(entries: list[Entry], shape: tuple[int, ...] | None = None) -> Traced:
    """``entries`` as an object array of ``shape`` (a vector when None; () is a scalar)."""
    array = np.empty(len(entries), dtype=object)
    array[:] = entries
    return array.reshape((len(entries),) if shape is None else shape)


def _numbers(traced: Traced | None) -> list[int] | None:
    """The known numbers of a traced tensor, flattened; None if any is unknown."""
    if traced is None or any(e.number is None for e in traced.reshape(-1)):
        return None
    return [int(e.number) for e in traced.reshape(-1)]


def _trace(
    value: ir.Value, const_of: ConstOf, dims_of: DimsOf, memo: dict[int, Traced | None]
) -> Traced | None:
    data = const_of(value)
    if data is not None:
        if data.dtype.kind not in "iu":
            return None
        name = value.name or ""
        flat = [Entry("const", int(x), name, i, fixed=True)
                for i, x in enumerate(data.reshape(-1).tolist())]
        return _array(flat, data.shape)
    node = value.producer()
    if node is None:
        return _opaque(value, dims_of, "")
    op = node.op_type if node.domain in ("", "ai.onnx") else ""

    def arg(index: int) -> Traced | None:
        x = node.inputs[index] if index < len(node.inputs) else None
        return None if x is None else trace_tensor(x, const_of, dims_of, memo)

    result = _OPS[op](node, arg) if op in _OPS else None
    if op == "Shape":
        result = _shape_entries(node, dims_of)
    elif op in _ARITHMETIC and len(node.inputs) == 2:
        a, b = arg(0), arg(1)
        if a is not None and b is not None:
            result = _arithmetic(op, a, b, node.name or "")
    elif op == "Where" and len(node.inputs) == 3:
        parts = [arg(0), arg(1), arg(2)]
        if all(part is not None for part in parts):
            result = _where(*parts)  # type: ignore[arg-type]
    if isinstance(result, Entry):  # numpy hands back a 0-d object result as the object
        result = _array([result], ())
    return result if result is not None else _opaque(value, dims_of, node.name or "")


Arg = Callable[[int], "Traced | None"]


def _same(node: ir.Node, arg: Arg) -> Traced | None:
    return arg(0)


def _flat(data: Traced | None) -> Traced | None:
    """A vector or scalar kept as a vector: what a reshape of unknown target leaves of it."""
    return data.reshape(-1) if data is not None and data.ndim <= 1 else None


def _reshape(node: ir.Node, arg: Arg) -> Traced | None:
    data, shape = arg(0), _numbers(arg(1))
    if data is None or shape is None:
        return _flat(data)
    target = [data.shape[i] if d == 0 and i < data.ndim else d for i, d in enumerate(shape)]
    try:
        return data.reshape(target)
    except ValueError:
        return None


def _axes(node: ir.Node, arg: Arg, index: int) -> list[int] | None:
    attribute = node.attributes.get("axes")
    if attribute is not None:
        return list(attribute.as_ints())
    return _numbers(arg(index)) if index < len(node.inputs) and node.inputs[index] else None


def _unsqueeze(node: ir.Node, arg: Arg) -> Traced | None:
    data, axes = arg(0), _axes(node, arg, 1)
    if data is None or axes is None:
        return _flat(data)
    rank = data.ndim + len(axes)
    for axis in sorted(a + rank if a < 0 else a for a in axes):
        data = np.expand_dims(data, axis)
    return data


def _squeeze(node: ir.Node, arg: Arg) -> Traced | None:
    data = arg(0)
    if data is None:
        return None
    axes = _axes(node, arg, 1)
    if axes is None:
        return data.reshape([d for d in data.shape if d != 1]) if len(node.inputs) < 2 \
            else _flat(data)
    return np.squeeze(data, axis=tuple(a + data.ndim if a < 0 else a for a in axes))


def _concat(node: ir.Node, arg: Arg) -> Traced | None:
    parts = [arg(i) for i in range(len(node.inputs))]
    if any(part is None for part in parts) or not parts:
        return None
    axis = node.attributes.get_int("axis", 0)
    try:
        return np.concatenate([np.atleast_1d(p) for p in parts], axis=axis)  # type: ignore[misc]
    except ValueError:  # numpy's AxisError is a ValueError too
        return None


def _gather(node: ir.Node, arg: Arg) -> Traced | None:
    data, indices = arg(0), arg(1)
    picked = _numbers(indices)
    if data is None or indices is None or picked is None or data.ndim == 0:
        return None
    axis = node.attributes.get_int("axis", 0)
    size = data.shape[axis]
    index = np.array([i % size if size else 0 for i in picked]).reshape(indices.shape)
    return np.take(data, index, axis=axis)


def _slice(node: ir.Node, arg: Arg) -> Traced | None:
    data = arg(0)
    starts, ends = _numbers(arg(1)), _numbers(arg(2))
    if data is None or starts is None or ends is None or data.ndim == 0:
        return None
    axes = _numbers(arg(3)) if len(node.inputs) > 3 and node.inputs[3] else list(
        range(len(starts)))
    steps = _numbers(arg(4)) if len(node.inputs) > 4 and node.inputs[4] else [1] * len(starts)
    if axes is None or steps is None or 0 in steps:
        return None
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        index[axis + data.ndim if axis < 0 else axis] = slice(start, end, step)
    return data[tuple(index)]


def _transpose(node: ir.Node, arg: Arg) -> Traced | None:
    data = arg(0)
    if data is None:
        return None
    perm = node.attributes.get("perm")
    return np.transpose(data, list(perm.as_ints()) if perm is not None else None)


def _constant_of_shape(node: ir.Node, arg: Arg) -> Traced | None:
    """A filled tensor: every entry is the fill value, a constant of this node."""
    shape = _numbers(arg(0))
    if shape is None:
        return None
    fill = node.attributes.get("value")
    number = int(fill.value.numpy().reshape(-1)[0]) if fill is not None else 0
    entries = [Entry("const", number, node.name or "", i, fixed=True)
               for i in range(int(np.prod(shape)))]
    return _array(entries, tuple(shape))


_OPS: dict[str, Callable[[ir.Node, Arg], Traced | None]] = {
    **dict.fromkeys(_SAME, _same),
    "Reshape": _reshape,
    "Flatten": lambda node, arg: None if (d := arg(0)) is None else d.reshape(
        int(np.prod(d.shape[: node.attributes.get_int("axis", 1)])), -1),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Gather": _gather,
    "Slice": _slice,
    "Transpose": _transpose,
    "ConstantOfShape": _constant_of_shape,
}
"""Layout ops evaluated on traced tensors; Shape, arithmetic and Where are below."""


_ARITHMETIC = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a // b if b else None,
    "Mod": lambda a, b: a % b if b else None,
    "Max": max,
    "Min": min,
    "Equal": lambda a, b: int(a == b),
}


def _arithmetic(op: str, a: Traced, b: Traced, node_name: str) -> Traced | None:
    """Numbers computed where every operand is known; provenance becomes ``expr``.

    Two facts hold without the numbers: a size read at run time is never negative,
    so ``Equal(size, -1)`` is 0 (torch's ``-1`` "keep this size" test); and a size times
    a fixed positive constant is a monomial that keeps its ``dim`` (see ``Entry.scale``).
    """
    function = _ARITHMETIC[op]

    def combine(x: Entry, y: Entry) -> Entry:
        known = x.number is not None and y.number is not None
        number = function(x.number, y.number) if known else None
        if op == "Equal" and number is None and _negative_vs_size(x, y):
            return Entry("expr", 0, node_name)
        if op == "Mul" and (monomial := _monomial(x, y) or _monomial(y, x)) is not None:
            dim, scale = monomial
            return Entry("expr", number, node_name, dim=dim, scale=scale)
        return Entry("expr", number, node_name, fixed=x.fixed and y.fixed)

    try:
        return np.frompyfunc(combine, 2, 1)(a, b)
    except ValueError:  # shapes that do not broadcast
        return None


def _negative_vs_size(x: Entry, y: Entry) -> bool:
    """One side is a size read at run time, the other a known negative number."""
    return any(s.kind == "dim" and o.number is not None and o.number < 0
               for s, o in ((x, y), (y, x)))


def _monomial(x: Entry, y: Entry) -> tuple[tuple[ir.Value, int], int] | None:
    """``(dim, scale)`` when ``x`` is a size (or a monomial) and ``y`` a fixed positive."""
    if x.dim is None or not y.fixed or y.number is None or y.number < 1:
        return None
    if x.kind == "dim" or (x.kind == "expr" and x.scale >= 1):
        return x.dim, x.scale * y.number
    return None


def _where(cond: Traced, a: Traced, b: Traced) -> Traced | None:
    """Where keeps the provenance of the branch each known condition entry picks.

    An entry whose condition is unknown becomes an unknown ``expr``: the others stay
    traced, so one run-time batch size does not hide a constant head count beside it.
    """
    def pick(c: Entry, x: Entry, y: Entry) -> Entry:
        if c.number is None:
            return Entry("expr", None, "Where")
        return x if c.number else y

    try:
        return np.frompyfunc(pick, 3, 1)(cond, a, b)
    except ValueError:
        return None


def _shape_entries(node: ir.Node, dims_of: DimsOf) -> Traced | None:
    source = node.inputs[0]
    dims = dims_of(source) if source is not None else None
    if source is None or dims is None:
        return None
    rank = len(dims)
    start_attr = node.attributes.get("start")
    end_attr = node.attributes.get("end")
    start = start_attr.value if start_attr is not None else 0
    end = end_attr.value if end_attr is not None else rank
    axes = range(rank)[slice(start, end)]
    return _array([Entry("dim", dims[axis], dim=(source, axis)) for axis in axes])


def _opaque(value: ir.Value, dims_of: DimsOf, node_name: str) -> Traced | None:
    dims = dims_of(value)
    if dims is None or any(d is None for d in dims):
        return None
    count = int(np.prod(dims)) if dims else 1
    entries = [Entry("expr", None, node_name, i) for i in range(count)]
    return _array(entries, tuple(dims))
