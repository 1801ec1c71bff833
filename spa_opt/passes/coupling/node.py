"""What one operator rule says about one node: the vocabulary of every rule.

A rule receives a :class:`NodeCoupling` and states facts about the node's channel
axes through it:

- ``link(a, b, keys_a, keys_b)``: element ``i`` of axis ``a`` and element ``j`` of
  axis ``b`` must be removed together when ``keys_a[i] == keys_b[j]`` (``None`` keys
  are the identity, a negative key links nothing). Identity (elementwise ops), offsets
  (Concat), strides (Slice), repetitions (Tile), blocks (heads, groups) and
  permutations (DepthToSpace) are all key arrays;
- ``seed(a, role)``: the axis is a source: an output channel of a weighted operator
  or a weight's input axis;
- ``consume(a)``: the node takes channels on this axis and needs nothing patched
  (Shape reads them, a reduction sums them away);
- ``patch(kind, detail)``: a constant or attribute that encodes a channel count the
  removal must rewrite (a Reshape target, Split sizes, a Conv's group count);
- ``pin(a, detail)``: channels on this axis cannot be removed, with the reason;
- ``stores(stored, view)``: ``view`` is the weight ``stored`` read through a
  ``DequantizeLinear`` or a widening ``Cast`` (int8 codes, bf16 storage): the roles the
  view's consumers state on its axes are the stored tensor's, so the tensor the file
  holds is the group's weight member.

Any tracked axis of the node's inputs or outputs that a rule neither links, consumes
nor pins is pinned by the solver: a rule can be incomplete, never unsafe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

Dims = tuple[int | None, ...]

WEIGHT_VIEWS = frozenset({"DequantizeLinear", "Cast"})
"""Operators whose output is a weight when every input is one: ``DequantizeLinear`` of
int8 codes (QDQ graphs) and ``Cast`` of bf16/fp16 storage to float (fold-constants keeps
widening Casts so the model keeps its dtype)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Link:
    """Element-wise coupling between two channel axes (see the module docstring)."""

    a: tuple[ir.Value, int]
    b: tuple[ir.Value, int]
    keys_a: np.ndarray | None = None
    keys_b: np.ndarray | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Pin:
    """Channels of one axis (all, or some positions) that must stay, and why."""

    axis: tuple[ir.Value, int]
    code: str
    detail: str
    node: str | None
    positions: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Patch:
    """A constant or attribute encoding a channel count that removal rewrites."""

    node: str
    kind: str
    detail: str
    axis: tuple[ir.Value, int] | None = None
    """The channel axis whose new size the patch writes."""
    entry: tuple[int, int] | None = None
    """For shape entries: which input of the node holds the shape, and which entry."""
    owner: ir.Node | None = dataclasses.field(default=None, compare=False, repr=False)
    """The node itself (names are optional in ONNX and may repeat)."""


class NodeCoupling:
    """The facts one rule states about one node, plus read access to the solver state."""

    def __init__(self, node: ir.Node, state: Any) -> None:
        self.node = node
        self._state = state
        self.links: list[Link] = []
        self.seeds: list[tuple[ir.Value, int]] = []
        self.roles: list[tuple[tuple[ir.Value, int], str]] = []
        self.pins: list[Pin] = []
        self.patches: list[Patch] = []
        self.handled: set[tuple[int, int]] = set()
        self.normalizes: list[tuple[ir.Value, int]] = []
        self.views: list[tuple[ir.Value, ir.Value]] = []

    # ------------------------------------------------------------------ reading
    @property
    def options(self) -> Any:
        """The couple pass's options (head policy and the like)."""
        return self._state.options

    def input(self, index: int) -> ir.Value | None:
        """Input ``index``, or None when it is absent or omitted."""
        inputs = self.node.inputs
        return inputs[index] if index < len(inputs) else None

    def output(self, index: int) -> ir.Value | None:
        """Output ``index``, or None when the node has fewer outputs."""
        outputs = self.node.outputs
        return outputs[index] if index < len(outputs) else None

    def dims(self, value: ir.Value | None) -> Dims | None:
        """Static dims of ``value`` (None entries for symbolic ones), None if rank unknown."""
        return None if value is None else self._state.dims(value)

    def refine_dims(self, value: ir.Value | None, dims: Dims) -> None:
        """State static dims of an output that shape inference could not size.

        Only for dims the rule knows exactly (run-time pad amounts the shape tracer
        evaluated); dims inference already knows are kept.
        """
        if value is not None:
            self._state.refine(value, tuple(dims))

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """The value's data when it is a constant (initializer or Constant), else None."""
        return None if value is None else self._state.const(value)

    def is_constant(self, value: ir.Value | None) -> bool:
        """Whether ``value`` is a weight: an initializer or a constant node's output."""
        if value is None:
            return False
        if value.const_value is not None:
            return True
        producer = value.producer()
        if producer is None or producer.domain not in ("", "ai.onnx"):
            return False
        if producer.op_type in WEIGHT_VIEWS:  # a quantized or half-precision weight
            return bool(producer.inputs) and all(
                x is None or self.is_constant(x) for x in producer.inputs)
        return producer.op_type in ("Constant", "ConstantOfShape") and all(
            x is None or self.const(x) is not None for x in producer.inputs)

    def ints(self, value: ir.Value | None) -> list[int] | None:
        """A constant integer tensor as a flat list, else None."""
        data = self.const(value)
        if data is None or data.dtype.kind not in "iu":
            return None
        return [int(x) for x in data.reshape(-1)]

    def tracked(self, value: ir.Value | None) -> frozenset[int]:
        """Axes of ``value`` that carry channels so far."""
        return frozenset() if value is None else self._state.tracked_axes(value)

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute's Python value, or ``default``."""
        attribute = self.node.attributes.get(name)
        return default if attribute is None else attribute.value

    def trace(self, value: ir.Value) -> list[Any] | None:
        """Provenance of each entry of a 1-D shape tensor (see :mod:`.shapetrace`)."""
        return self._state.trace(value)

    # ------------------------------------------------------------------ stating
    def link(
        self,
        a: ir.Value | None,
        axis_a: int,
        b: ir.Value | None,
        axis_b: int,
        keys_a: np.ndarray | None = None,
        keys_b: np.ndarray | None = None,
    ) -> None:
        """Couple elements of ``a[axis_a]`` and ``b[axis_b]`` with equal keys."""
        if a is None or b is None:
            return
        self.links.append(Link((a, axis_a), (b, axis_b), keys_a, keys_b))
        self.handled.add((id(a), axis_a))
        self.handled.add((id(b), axis_b))

    def identity(self, a: ir.Value | None, axis_a: int, b: ir.Value | None, axis_b: int) -> None:
        """Couple two axes position by position."""
        self.link(a, axis_a, b, axis_b)

    def seed(self, value: ir.Value | None, axis: int, role: str | None = None) -> None:
        """Mark an axis as a source of channels, with the weight's role if it is one."""
        if value is None:
            return
        self.seeds.append((value, axis))
        if role is not None:
            self.role(value, axis, role)

    def role(self, value: ir.Value | None, axis: int, role: str) -> None:
        """Say what a weight axis is to the group: ``out``, ``in`` or ``param``."""
        if value is not None:
            self.roles.append(((value, axis), role))

    def consume(self, value: ir.Value | None, axis: int, *, normalizes: bool = False) -> None:
        """The node takes channels on this axis and needs nothing patched.

        ``normalizes`` marks a reduction over the channel axis (a LayerNorm's mean, an
        exported RMSNorm's ReduceMean): removing channels there is valid but lossy,
        which the dead-channel analysis and the correctness tests need to know.
        """
        if value is None:
            return
        self.handled.add((id(value), axis))
        if normalizes:
            self.normalizes.append((value, axis))

    def pin(
        self,
        value: ir.Value | None,
        axis: int,
        detail: str,
        code: str = "rule",
        positions: Sequence[int] | None = None,
    ) -> None:
        """Channels on this axis (or at ``positions``) must stay, because ``detail``."""
        if value is None:
            return
        where = None if positions is None else np.asarray(positions, dtype=np.int64)
        self.pins.append(Pin((value, axis), code, detail, self.node.name, where))
        if positions is None:
            self.handled.add((id(value), axis))

    def pin_tracked(self, value: ir.Value | None, detail: str, code: str = "rule") -> None:
        """Pin every tracked axis of ``value``."""
        for axis in self.tracked(value):
            self.pin(value, axis, detail, code)

    def patch(
        self,
        kind: str,
        detail: str,
        value: ir.Value | None = None,
        axis: int | None = None,
        entry: tuple[int, int] | None = None,
    ) -> None:
        """Record a constant or attribute that removal must rewrite."""
        where = None if value is None or axis is None else (value, axis)
        self.patches.append(Patch(self.node.name or "", kind, detail, where, entry, self.node))

    def stores(self, stored: ir.Value | None, view: ir.Value | None) -> None:
        """``view`` is the constant ``stored`` dequantized or cast: roles on it are ``stored``'s."""
        if stored is not None and view is not None:
            self.views.append((stored, view))

    def is_handled(self, value: ir.Value, axis: int) -> bool:
        """Whether a rule said something about this axis."""
        return (id(value), axis) in self.handled


def node_label(node: ir.Node) -> str:
    """``Op`` or ``domain::Op``, as users see operator names."""
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
