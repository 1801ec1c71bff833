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

:func:`trace_entries` evaluates the subgraph abstractly over these three kinds. It
follows ``Shape`` (with start/end), ``Constant``/initializers, ``Gather``, ``Slice``,
``Concat``, ``Unsqueeze``, ``Squeeze``, ``Reshape``, ``Cast``, ``Identity``, and
``Where`` with a known condition (torch's ``expand(-1)`` lowering); integer
arithmetic (Add, Sub, Mul, Div, Mod, Max, Min, Equal) computes ``expr`` entries whose
number is known when its operands are. Any other producer gives unknown ``expr``
entries.
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


ConstOf = Callable[[ir.Value], "np.ndarray | None"]
DimsOf = Callable[[ir.Value], "tuple[int | None, ...] | None"]

_PASS_THROUGH = frozenset({"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape"})


def trace_entries(
    value: ir.Value, const_of: ConstOf, dims_of: DimsOf, memo: dict[int, list[Entry] | None]
) -> list[Entry] | None:
    """Entries of the 1-D (or scalar) integer tensor ``value``, None if its length is unknown."""
    key = id(value)
    if key in memo:
        return memo[key]
    memo[key] = None  # cycles cannot occur in a DAG, but stay safe
    result = _trace(value, const_of, dims_of, memo)
    memo[key] = result
    return result


def _trace(
    value: ir.Value, const_of: ConstOf, dims_of: DimsOf, memo: dict[int, list[Entry] | None]
) -> list[Entry] | None:
    data = const_of(value)
    if data is not None:
        if data.dtype.kind not in "iu" or data.ndim > 1:
            return None
        name = value.name or ""
        return [
            Entry("const", int(x), name, i) for i, x in enumerate(np.atleast_1d(data).tolist())
        ]
    node = value.producer()
    if node is None:
        return _opaque(value, dims_of, "")
    op = node.op_type if node.domain in ("", "ai.onnx") else ""
    inputs = node.inputs
    if op == "Shape":
        return _shape_entries(node, dims_of)
    if op in _PASS_THROUGH and inputs and inputs[0] is not None:
        return trace_entries(inputs[0], const_of, dims_of, memo)
    if op == "Concat":
        parts = [trace_entries(x, const_of, dims_of, memo) if x else None for x in inputs]
        if any(part is None for part in parts):
            return _opaque(value, dims_of, node.name or "")
        return [entry for part in parts for entry in part or []]
    if op == "Gather" and len(inputs) == 2 and inputs[0] is not None and inputs[1] is not None:
        source = trace_entries(inputs[0], const_of, dims_of, memo)
        indices = const_of(inputs[1])
        if source is not None and indices is not None and indices.ndim <= 1:
            picked = np.atleast_1d(indices).astype(np.int64) % max(len(source), 1)
            return [source[int(i)] for i in picked]
    if op == "Where" and len(inputs) == 3 and all(x is not None for x in inputs):
        parts = [trace_entries(x, const_of, dims_of, memo) for x in inputs]
        if all(part is not None for part in parts):
            picked = _where(*parts)  # type: ignore[arg-type]
            if picked is not None:
                return picked
    if op in _ARITHMETIC and inputs and all(x is not None for x in inputs):
        parts = [trace_entries(x, const_of, dims_of, memo) for x in inputs]
        if all(part is not None for part in parts):
            return _arithmetic(op, parts, node.name or "")  # type: ignore[arg-type]
    if op == "Slice" and inputs and inputs[0] is not None:
        source = trace_entries(inputs[0], const_of, dims_of, memo)
        bounds = [const_of(x) if x is not None else None for x in inputs[1:5]]
        if source is not None and all(b is not None for b in bounds[:2]):
            start, end = int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0])
            step = int(bounds[3].reshape(-1)[0]) if len(bounds) > 3 and bounds[3] is not None else 1
            return source[slice(start, end, step)]
    return _opaque(value, dims_of, node.name or "")


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


def _broadcast(parts: list[list[Entry]]) -> int | None:
    lengths = {len(p) for p in parts} - {1}
    return None if len(lengths) > 1 else (lengths.pop() if lengths else 1)


def _arithmetic(op: str, parts: list[list[Entry]], node_name: str) -> list[Entry] | None:
    """Numbers computed where every operand is known; provenance becomes ``expr``."""
    length = _broadcast(parts)
    if length is None or len(parts) != 2:
        return None
    function = _ARITHMETIC[op]
    result = []
    for i in range(length):
        a, b = (p[i if len(p) > 1 else 0] for p in parts)
        known = a.number is not None and b.number is not None
        number = function(a.number, b.number) if known else None
        result.append(Entry("expr", number, node_name, i))
    return result


def _where(cond: list[Entry], a: list[Entry], b: list[Entry]) -> list[Entry] | None:
    """Where with a known condition keeps the provenance of the branch it picks."""
    length = _broadcast([cond, a, b])
    if length is None:
        return None
    result = []
    for i in range(length):
        c, x, y = (p[i if len(p) > 1 else 0] for p in (cond, a, b))
        if c.number is None:
            return None
        result.append(x if c.number else y)
    return result


def _shape_entries(node: ir.Node, dims_of: DimsOf) -> list[Entry] | None:
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
    return [Entry("dim", dims[axis], dim=(source, axis)) for axis in axes]


def _opaque(value: ir.Value, dims_of: DimsOf, node_name: str) -> list[Entry] | None:
    dims = dims_of(value)
    if dims is None or len(dims) > 1:
        return None
    length = dims[0] if dims else 1
    if length is None:
        return None
    return [Entry("expr", None, node_name, i) for i in range(length)]
