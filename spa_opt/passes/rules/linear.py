"""Contractions: Gemm, MatMul and plain Einsum, written once over index letters.

Each operand axis gets a letter; the output's axes are letters too. Rules:

- a letter shared by operands and the output (a batch axis, an attention head axis)
  is the same channel axis everywhere it appears (size-1 axes broadcast);
- a contracted letter (in operands, not in the output) couples the operands' axes
  with each other and stops there: ``q @ k^T`` couples the head dimensions of q and k,
  ``x @ W`` consumes x's features in W's rows;
- with a constant operand (a weight), its output letters are sources (role ``out``)
  and its contracted letters seed the other operand's axis (role ``in``);
- Gemm's ``C`` broadcasts into the output; its channel axis has the role ``out``.

An Einsum with a repeated letter in one operand (a diagonal) pins its channels.
"""

from __future__ import annotations

import string

import onnx_ir as ir

from spa_opt.passes.coupling.node import NodeCoupling
from spa_opt.passes.rules.elementwise import broadcast_into
from spa_opt.passes.rules.registry import rule


def contract(
    c: NodeCoupling, operands: list[tuple[ir.Value | None, str]], out: ir.Value | None, letters: str
) -> None:
    """Couple ``operands`` (value, letters per axis) into ``out`` (``letters``)."""
    places: dict[str, list[tuple[ir.Value, int]]] = {}
    for value, spec in operands:
        dims = c.dims(value)
        if value is None or dims is None:
            continue
        for axis, letter in enumerate(spec):
            if dims[axis] == 1 and len(operands) > 1:
                continue  # broadcast
            places.setdefault(letter, []).append((value, axis))
    out_dims = c.dims(out)
    for axis, letter in enumerate(letters):
        if out is not None and out_dims is not None:
            places.setdefault(letter, []).append((out, axis))
    for letter, where in places.items():
        first = where[0]
        for other in where[1:]:
            c.identity(first[0], first[1], other[0], other[1])
        constants = [(v, a) for v, a in where if c.is_constant(v)]
        if not constants:
            continue
        produced = letter in letters
        for value, axis in constants:
            c.seed(value, axis, "out" if produced else "in")


def _matmul_letters(rank_a: int, rank_b: int) -> tuple[str, str, str]:
    batch = string.ascii_lowercase[: max(rank_a, rank_b, 2) - 2]
    spec_a = "K" if rank_a == 1 else batch[len(batch) - (rank_a - 2):] + "MK"
    spec_b = "K" if rank_b == 1 else batch[len(batch) - (rank_b - 2):] + "KN"
    out = batch + ("M" if rank_a > 1 else "") + ("N" if rank_b > 1 else "")
    return spec_a, spec_b, out


@rule("MatMul")
def matmul(c: NodeCoupling) -> None:
    """``[..., M, K] @ [..., K, N]`` with numpy batch broadcasting."""
    a, b = c.input(0), c.input(1)
    dims_a, dims_b = c.dims(a), c.dims(b)
    if dims_a is None or dims_b is None:
        return
    spec_a, spec_b, out = _matmul_letters(len(dims_a), len(dims_b))
    contract(c, [(a, spec_a), (b, spec_b)], c.output(0), out)


@rule("Gemm")
def gemm(c: NodeCoupling) -> None:
    """``op(A) @ op(B) + C`` with the transposes as letter orders."""
    spec_a = "KM" if c.attr("transA", 0) else "MK"
    spec_b = "NK" if c.attr("transB", 0) else "KN"
    out = c.output(0)
    contract(c, [(c.input(0), spec_a), (c.input(1), spec_b)], out, "MN")
    bias = c.input(2)
    if broadcast_into(c, bias, out):
        dims = c.dims(bias) or ()
        c.role(bias, len(dims) - 1, "out")


def _einsum_specs(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    equation = equation.replace(" ", "")
    left, _, right = equation.partition("->")
    specs = left.split(",")
    if len(specs) != len(ranks):
        return None
    free = [ch for ch in string.ascii_uppercase if ch not in equation]
    widest = max((r - len(s.replace("...", "")) for s, r in zip(specs, ranks, strict=True)),
                 default=0)
    ellipsis = "".join(free[:widest])
    expanded = []
    for spec, rank in zip(specs, ranks, strict=True):
        extra = rank - len(spec.replace("...", ""))
        expanded.append(spec.replace("...", ellipsis[len(ellipsis) - extra:] if extra else ""))
    if not _:
        counts = {ch: left.count(ch) for ch in left if ch.isalpha()}
        right = ellipsis + "".join(sorted(ch for ch, n in counts.items() if n == 1))
    else:
        right = right.replace("...", ellipsis)
    return expanded, right


@rule("Einsum")
def einsum(c: NodeCoupling) -> None:
    """A plain contraction: letters couple axes; a diagonal pins."""
    operands = list(c.node.inputs)
    ranks = [len(c.dims(v) or ()) for v in operands]
    parsed = _einsum_specs(c.attr("equation", ""), ranks)
    if parsed is None or any(len(set(s)) != len(s) for s in parsed[0]):
        for value in (*operands, c.output(0)):
            c.pin_tracked(value, "Einsum that is not a plain contraction")
        return
    specs, out = parsed
    contract(c, list(zip(operands, specs, strict=True)), c.output(0), out)
