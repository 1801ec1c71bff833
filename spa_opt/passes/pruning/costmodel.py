"""What a removal would cost, without editing the graph.

Selection against a FLOPs or parameter target asks the same question many times:
"if group ``g`` lost ``k_g`` units, what would the model cost?". Pruning a copy each
time would be far too slow, and cost is not additive over groups (a Conv between two
pruned groups shrinks on both sides). :class:`CostModel` answers it exactly with the
formulas of :mod:`spa_opt.ir.cost`, reading every tensor's dimensions as the removal
would leave them: a member axis of extent ``E`` hosting units of block ``b`` from
groups ``g`` becomes ``E - sum_g k_g * b``. Only the nodes that touch a member are
recounted, so one evaluation is a short loop over them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.ir.cost import Cost, initializer_params, is_param, node_cost, value_dims
from spa_opt.passes.coupling.groups import Group


def _removing(removed_units: np.ndarray) -> Callable[[int, Sequence[tuple[int, int]]], int]:
    """The integer resize of :meth:`CostModel.evaluate` for unit counts removed per group."""

    def resize(extent: int, slots: Sequence[tuple[int, int]]) -> int:
        return extent - sum(int(removed_units[group]) * block for group, block in slots)

    return resize


class CostModel:
    """Params, MACs and FLOPs of the model as a function of units removed per group.

    Shapes must be inferred while the model is built (the prune pass builds it inside
    ``temporary_shapes``); evaluations afterwards only read what it captured.
    """

    def __init__(self, model: ir.Model, groups: Sequence[Group]) -> None:
        self._slots: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for index, group in enumerate(groups):
            for member in group.members:
                self._slots[id(member.value)].append((member.axis, index, member.index_map.block))
        self._dims: dict[int, list[int] | None] = {}
        self._affected: list[ir.Node] = []
        self._weights: list[ir.Value] = []
        base = Cost()
        for graph in model.graphs():
            base.params += initializer_params(graph)
            for value in graph.initializers.values():
                if id(value) in self._slots:
                    if is_param(value):  # as counted in the base (int8 codes: yes)
                        self._weights.append(value)
                elif not value.uses() and not value.is_graph_output():
                    # Removal ends with dead-code elimination: unused weights go too.
                    tensor = value.const_value
                    if tensor is not None and is_param(value):
                        base.params -= int(np.prod(tensor.shape.numpy()))
            for node in graph:
                cost = node_cost(node)
                base += cost
                if any(id(v) in self._slots for v in (*node.inputs, *node.outputs) if v):
                    self._affected.append(node)
        self._axes: dict[int, list[tuple[int, list[tuple[int, int]]]]] = {}
        for key, hosted in self._slots.items():
            self._dims[key] = None
            by_axis: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for axis, group, block in hosted:
                by_axis[axis].append((group, block))
            self._axes[key] = sorted(by_axis.items())
        for node in self._affected:
            for value in (*node.inputs, *node.outputs):
                if value is not None and id(value) in self._slots:
                    self._dims[id(value)] = value_dims(value)
        for value in self._weights:
            self._dims[id(value)] = value_dims(value) or list(value.const_value.shape.numpy())
        self.base = base
        unchanged = sum((node_cost(node) for node in self._affected), Cost())
        unchanged.params += sum(int(np.prod(self._dims[id(v)])) for v in self._weights)
        self._rest = Cost(base.params - unchanged.params, base.macs - unchanged.macs,
                          base.flops - unchanged.flops)

    def cost(self, removed_units: np.ndarray) -> Cost:
        """Cost if group ``i`` lost ``removed_units[i]`` units (counts, not which ones).

        A negative count adds units (``precrop<preconfig=true>`` grows groups).
        """
        total = self.evaluate(_removing(removed_units))
        return Cost(int(total.params), int(total.macs), int(total.flops))

    def evaluate(self, resize: Callable[[int, Sequence[tuple[int, int]]], Any]) -> Cost:
        """The cost with every member axis of extent ``E`` resized to ``resize(E, slots)``.

        ``slots`` lists the ``(group index, block)`` pairs the axis hosts. :meth:`cost`
        resizes with integers; :mod:`~spa_opt.passes.posynomial` resizes with
        polynomials in each group's kept fraction, which the formulas of
        :mod:`spa_opt.ir.cost` multiply and add like integers, so the cost comes out as
        a polynomial, exactly (the fields of the result are then polynomials too).
        """
        dims_of = self._dims_function(resize)
        total = Cost(self._rest.params, self._rest.macs, self._rest.flops)
        for node in self._affected:
            total += node_cost(node, dims_of)
        for value in self._weights:
            total.params += math.prod(dims_of(value))
        return total

    def node_costs(self, removed_units: np.ndarray) -> list[Cost]:
        """The cost of each :attr:`affected` node if group ``i`` lost ``removed_units[i]``."""
        dims_of = self._dims_function(_removing(removed_units))
        return [node_cost(node, dims_of) for node in self._affected]

    def _dims_function(self, resize: Callable[[int, Sequence[tuple[int, int]]], Any]
                       ) -> Callable[[ir.Value | None], list[Any] | None]:
        slots, dims, axes = self._slots, self._dims, self._axes

        def dims_of(value: ir.Value | None) -> list[Any] | None:
            if value is None or id(value) not in slots:
                return value_dims(value)
            found = dims[id(value)]
            if found is None:
                return None
            new: list[Any] = list(found)
            for axis, hosted in axes[id(value)]:
                if axis < len(new):
                    new[axis] = resize(new[axis], hosted)
            return new

        return dims_of

    @property
    def affected(self) -> Sequence[ir.Node]:
        """The nodes that read or write a member: the only ones a removal recounts."""
        return self._affected

    def axes_of(self, value: ir.Value | None) -> list[tuple[int, list[tuple[int, int]]]]:
        """The member axes of ``value``: ``(axis, [(group index, block), ...])``, sorted."""
        return [] if value is None else self._axes.get(id(value), [])
