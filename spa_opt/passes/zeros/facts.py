"""The zero-fact store of the ``dead`` lattice, and the codes that stand for zero.

A fact says "this unit's slices of this tensor hold the tensor's *zero code*". For a
float tensor, and any tensor no quantizer wrote, the zero code is the number 0. A
quantized tensor stands for ``(code - zero_point) * scale``, so its real zero is the
zero point: ``QuantizeLinear(0) = zero_point`` exactly (``round(0 / s) = 0``, and a zero
point is always inside the saturation range) and ``DequantizeLinear(zero_point) = 0``
exactly. :class:`ZeroCode` says which code that is (a constant, scalar or per axis, or
the run-time value that holds it: ``DynamicQuantizeLinear``'s zero point output), and
:func:`agreement` whether the reader of a tensor reads it with the zero point its
writer used, position by position along one axis. A reader that does not (another
zero point, or an operator that does arithmetic on codes) learns nothing.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from spa_opt.ir.quant import quantization_of
from spa_opt.ir.tensors import constant_array
from spa_opt.passes.coupling.groups import Group, Member

Key = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ZeroCode:
    """The code that stands for real 0 in one tensor (see the module docstring)."""

    data: np.ndarray | None = None
    """A constant zero point: scalar, or one entry per position of ``axis``."""
    axis: int = 1
    value: ir.Value | None = None
    """A zero point only known at run time, identified by the value holding it."""
    known: bool = True
    """False: nothing is known (a code an unmodelled operator computed)."""

    @property
    def literal(self) -> bool:
        """Whether the zero code is the number 0 everywhere."""
        return self.known and self.value is None and (
            self.data is None or not np.any(self.data))


LITERAL = ZeroCode()
UNKNOWN = ZeroCode(known=False)


def constant_code(param: ir.Value | None, axis: int = 1) -> ZeroCode:
    """The zero code a zero-point input gives: absent is 0, a run-time one is the value."""
    if param is None:
        return LITERAL
    data = constant_array(param)
    if data is None:
        return ZeroCode(value=param)
    return ZeroCode(data=np.asarray(data).reshape(-1), axis=axis)


def agreement(a: ZeroCode, b: ZeroCode, rank: int | None, axis: int,
              extent: int) -> np.ndarray:
    """Positions of ``axis`` (``extent`` long) where codes ``a`` and ``b`` are the same."""
    if not (a.known and b.known):
        return np.zeros(extent, dtype=bool)
    if a.value is not None or b.value is not None:
        same = a.value is b.value and a.data is None and b.data is None
        return np.full(extent, same)
    da = np.zeros(1) if a.data is None else a.data
    db = np.zeros(1) if b.data is None else b.data
    if da.size == 1 and db.size == 1:
        return np.full(extent, bool(da[0] == db[0]))
    if rank is None:
        return np.zeros(extent, dtype=bool)
    axes = {c.axis % rank for c in (a, b) if c.data is not None and c.data.size > 1}
    if len(axes) != 1 or (da.size > 1 and db.size > 1 and da.size != db.size):
        return np.zeros(extent, dtype=bool)
    equal = np.broadcast_arrays(da, db)
    same = equal[0] == equal[1]
    if axes == {axis % rank} and same.size == extent:
        return same
    return np.full(extent, bool(same.all()))


def all_zero(value: ir.Value | None) -> bool:
    """Whether ``value`` is a constant whose every element is 0."""
    data = constant_array(value)
    return data is not None and not np.any(data)


def slices_zero(data: np.ndarray, axis: int) -> np.ndarray:
    """Per position of ``axis``: whether the slice of ``data`` there is all zero."""
    moved = np.moveaxis(data, axis, 0).reshape(data.shape[axis], -1)
    return ~np.any(moved != 0, axis=1)


class ZeroFacts:
    """Per member axis and group: which units are zero (see the package docstring)."""

    def __init__(self, groups: Sequence[Group]) -> None:
        self.groups = groups
        self.hosted: dict[Key, list[tuple[Group, Member]]] = defaultdict(list)
        self.by_value: dict[int, list[tuple[Group, Member]]] = defaultdict(list)
        for group in groups:
            for member in group.members:
                self.hosted[(id(member.value), member.axis)].append((group, member))
                self.by_value[id(member.value)].append((group, member))
        self.units: dict[tuple[Key, str], np.ndarray] = {}
        self.codes: dict[int, ZeroCode] = {}
        self.views: set[int] = set()
        """Members whose facts come from a constant (a weight, or a view of one)."""

    def get(self, member: Member, group: Group) -> np.ndarray:
        """Zero flags of ``group``'s units on ``member`` (all False when unknown)."""
        key = ((id(member.value), member.axis), group.id)
        return self.units.get(key, np.zeros(group.units, dtype=bool))

    def set(self, member: Member, group: Group, flags: np.ndarray) -> None:
        """Record the zero flags of one member."""
        self.units[((id(member.value), member.axis), group.id)] = flags

    def code(self, value: ir.Value | None) -> ZeroCode:
        """The zero code of ``value``: recorded for computed values, else from its readers.

        A constant's facts come from :func:`~spa_opt.ir.quant.float_weight`, which
        dequantizes exactly when :func:`~spa_opt.ir.quant.quantization_of` finds how
        it is read, so its code is that zero point (0 otherwise).
        """
        if value is None:
            return LITERAL
        if id(value) in self.codes:
            return self.codes[id(value)]
        data = constant_array(value)
        if data is not None and data.dtype.kind in "iu":
            q = quantization_of(value)
            if q is not None and q.zero_point is not None:
                return ZeroCode(data=np.asarray(q.zero_point).reshape(-1), axis=q.axis)
        return LITERAL

    def positions(self, value: ir.Value | None, axis: int, extent: int) -> np.ndarray:
        """Position-level zero mask of one axis, from every group it hosts."""
        mask = np.zeros(extent, dtype=bool)
        if value is None:
            return mask
        for group, member in self.hosted.get((id(value), axis), ()):
            flags = self.get(member, group)
            if flags.any() and member.index_map.extent == extent:
                mask[member.index_map.take(np.flatnonzero(flags))] = True
        return mask

    def read_as(self, value: ir.Value | None, code: ZeroCode, axis: int,
                extent: int) -> np.ndarray:
        """Positions of ``value``'s ``axis`` that are zero for a reader using zero ``code``."""
        mask = self.positions(value, axis, extent)
        if value is None or not mask.any():
            return mask
        rank = len(value.shape) if value.shape is not None else None
        return mask & agreement(self.code(value), code, rank, axis, extent)

    def from_positions(self, value: ir.Value, axis: int, mask: np.ndarray) -> None:
        """Set unit flags of every group on one axis from a position-level mask."""
        for group, member in self.hosted.get((id(value), axis), ()):
            self.set(member, group, mask[member.index_map.positions].all(axis=1))


def _broadcast_zero(value: ir.Value | None, code: ZeroCode) -> bool:
    """Whether a constant read with ``code`` is real zero everywhere."""
    data = constant_array(value)
    if data is None or not code.known or code.value is not None:
        return False
    if code.literal:
        return not np.any(data)
    return code.data.size == 1 and bool(np.all(data == code.data[0]))


def combine_positions(facts: ZeroFacts, out: ir.Value,
                      sources: list[tuple[ir.Value | None, ZeroCode]], kind: str) -> None:
    """Facts of ``out`` from inputs (read with zero codes) broadcast into it, axis by axis.

    An input of the output's rank with the same extent on an axis gives its positions
    read with its code there; a broadcast input (extent 1, lower rank) counts as zero
    only when it is a constant whose real value is all zero; ``kind`` combines them:
    ``sum``/``moving`` AND, ``product`` OR.
    """
    if out.shape is None:
        return
    rank = len(out.shape)
    combine = np.logical_or if kind == "product" else np.logical_and
    for axis in {member.axis for _, member in facts.by_value.get(id(out), ())}:
        extent = out.shape[axis]
        if not isinstance(extent, int):
            continue
        masks = []
        for value, code in sources:
            shape = value.shape if value is not None else None
            here = axis - (rank - len(shape)) if shape is not None else -1
            if shape is not None and here >= 0 and shape[here] == extent:
                masks.append(facts.read_as(value, code, here, extent))
            else:
                masks.append(np.full(extent, _broadcast_zero(value, code)))
        if masks:
            facts.from_positions(out, axis, combine.reduce(masks))
