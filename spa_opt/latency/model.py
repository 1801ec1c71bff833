"""The latency model: the model's measured latency as a function of the units removed.

Selection asks "if group ``g`` lost ``k_g`` units, how long would the model take?"
many times; :class:`LatencyModel` answers from a table measured once (and cached on
disk), reading every layer's widths as the removal would leave them, like
:class:`~spa_opt.passes.pruning.costmodel.CostModel` reads dimensions.

The maths. Let ``T`` be the whole model's measured latency and ``t_n(w)`` the measured
latency of timed layer ``n`` (a Conv, ConvTranspose, Gemm or MatMul touching a group,
:data:`~spa_opt.latency.layers.TIMED_OPS`) alone at widths ``w``. Then

    L(k) = Σ_n t_n(w_n(k)) + R · r(k),     R = T - Σ_n t_n(w_n(0)),

where ``w_n(k)`` are layer ``n``'s widths after removing ``k`` and ``r(k)`` is the
FLOPs of everything else (elementwise ops, normalisations, untimed layers) after the
removal over before: memory-bound ops take time in proportion to the elements they
touch. ``L(0) = T`` exactly. If the layers alone add up to more than ``T`` (onnxruntime
fuses across layers in the whole model), ``R = 0`` and every ``t_n`` is scaled by
``T / Σ_n t_n(w_n(0))`` instead.

One layer's latency over its widths:

- a layer's *variables* are its distinct resized axes (a Conv has two: input channels,
  shared by the input and the weight's second axis, and output channels; a depthwise
  Conv one); a layer with more than two is measured along one joint width (every
  variable at the same kept fraction);
- each variable is measured at the widths of :data:`GRID_FRACTIONS` of its extent,
  snapped to multiples of 16 (extents of 64 and more; 8 from 16): the tensor grid of
  the layer's variables, and ``t_n`` is the multilinear interpolation on it (below the
  smallest width, flat: a kernel narrower than a vector block does not get faster);
- kernels run slower at widths that are not a multiple of their vector block (the CPU
  provider's NCHWc block, GEMM tile sizes): at a reference width ``r`` (a multiple of
  16 near three quarters of the extent) each variable is also timed at ``r - a`` for
  ``a`` in :data:`PROBE_ALIGNMENTS`, the others at full width, giving the slowdown
  ``s_v(a) = t(r - a) / interpolated(r - a)`` (at least 1) of a width whose largest
  power-of-two divisor is ``a``; ``t_n`` is multiplied by each variable's ``s_v``.

A probed width at which onnxruntime leaves the blocked layout the full width runs in
(the CPU provider's NCHWc: read from the optimized graph, :meth:`Timer.blocked`) is
marked as *breaking* the layout: in the whole model it adds reorders to the layer's
neighbours, which no single-layer timing sees.

``--round-to auto`` (:meth:`LatencyModel.round_steps`): a group's step is the smallest
``s`` in :data:`STEPS` such that no alignment a multiple of ``s`` can still have
(``a >= s``) breaks a layout of the group's layers, and their slowdowns, averaged over
the group's layers weighted by their latency, stay within :data:`SLOWDOWN_TOLERANCE`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.latency.cache import LatencyCache
from spa_opt.latency.layers import TIMED_OPS, Layer, layer_of
from spa_opt.latency.timer import Timer

if TYPE_CHECKING:  # the latency package imports no pass
    from spa_opt.passes.pruning.costmodel import CostModel

#: Kept fractions each variable is measured at (snapped to aligned widths).
GRID_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: Misalignments probed per variable: widths whose largest power-of-two divisor is one.
PROBE_ALIGNMENTS = (1, 2, 4, 8)
#: Steps ``--round-to auto`` chooses from, in channels.
STEPS = (1, 2, 4, 8, 16)
#: Largest average slowdown a step may leave (3%).
SLOWDOWN_TOLERANCE = 0.03

Hosted = tuple[tuple[int, int], ...]
"""The ``(group index, block)`` pairs an axis hosts: axes hosting the same resize alike."""


def _alignment(width: int) -> int:
    """The largest power of two up to 16 dividing ``width``."""
    width = max(int(width), 1)
    return min(width & -width, 16)


def _snap(extent: int) -> int:
    return 16 if extent >= 64 else 8 if extent >= 16 else 1


def grid_widths(extent: int) -> list[int]:
    """The widths a variable of ``extent`` channels is measured at."""
    align = _snap(extent)
    found = {min(extent, max(align, round(extent * f / align) * align)) for f in GRID_FRACTIONS}
    return sorted(found | {extent})


def _weights(grid: Sequence[int], width: float) -> list[tuple[int, float]]:
    """Interpolation weights of ``width`` on ``grid`` (flat below its start).

    Below the smallest measured width a kernel does not get faster in proportion: it
    leaves its vectorised path (fewer channels than one NCHWc block) and its fixed
    cost dominates, so the smallest measurement stands.
    """
    if width <= grid[0] or len(grid) == 1:
        return [(0, 1.0 if width <= grid[0] else width / grid[0])]
    if width >= grid[-1]:
        return [(len(grid) - 1, width / grid[-1])]
    upper = int(np.searchsorted(grid, width))
    low, high = grid[upper - 1], grid[upper]
    share = (width - low) / (high - low)
    return [(upper - 1, 1.0 - share), (upper, share)]


@dataclasses.dataclass
class _Variable:
    """One resized width of a layer: the axes hosting ``parts`` (several when joint)."""

    parts: list[tuple[Hosted, int]]
    """``(hosted, extent)`` pairs; a width ``w`` keeps ``w / extent`` of each."""
    grid: list[int]
    slowdown: dict[int, float] = dataclasses.field(default_factory=dict)
    breaks: set[int] = dataclasses.field(default_factory=set)
    """Alignments at which the runtime leaves the blocked layout it runs the full width
    in: the whole model then pays reorders a single-layer timing cannot see."""

    @property
    def extent(self) -> int:
        return self.parts[0][1]

    def width(self, removed: np.ndarray) -> float:
        """The width (of the reference extent) after ``removed`` units per group."""
        fractions = [(extent - sum(int(removed[g]) * b for g, b in hosted)) / extent
                     for hosted, extent in self.parts]
        return self.extent * float(np.mean(fractions))

    def factor(self, width: float) -> float:
        return self.slowdown.get(_alignment(round(width)), 1.0)

    def groups(self) -> set[int]:
        return {g for hosted, _ in self.parts for g, _ in hosted}


@dataclasses.dataclass
class _TimedLayer:
    node: ir.Node
    variables: list[_Variable]
    build: Callable[[Sequence[float]], Layer | None]
    table: np.ndarray
    """Latency on the tensor grid of the variables' widths."""

    def base(self, widths: Sequence[float]) -> float:
        total = 0.0
        per_axis = [_weights(v.grid, w) for v, w in zip(self.variables, widths, strict=True)]
        for combo in itertools.product(*per_axis):
            index = tuple(i for i, _ in combo)
            total += float(self.table[index]) * math.prod(w for _, w in combo)
        return total

    def latency(self, widths: Sequence[float]) -> float:
        factor = math.prod(v.factor(w) for v, w in zip(self.variables, widths, strict=True))
        return self.base(widths) * factor

    def widths(self, removed: np.ndarray) -> list[float]:
        return [v.width(removed) for v in self.variables]

    @property
    def full(self) -> float:
        return float(self.table[tuple(len(v.grid) - 1 for v in self.variables)])


class LatencyModel:
    """Predicted latency (seconds) of the model as a function of units removed per group.

    Built inside ``temporary_shapes`` like the :class:`CostModel` it reads its
    dimensions and groups from; measuring happens here, once, through ``timer`` and the
    ``cache``.
    """

    def __init__(self, model: ir.Model, cost: CostModel, groups: int, timer: Timer,
                 cache: LatencyCache, feed: Mapping[str, np.ndarray],
                 input_dims: Mapping[str, int] | None = None) -> None:
        self._cost = cost
        self._groups = groups
        self._timer = timer
        self.timer = timer
        """The timer the table and the whole model were measured with."""
        self.feed = dict(feed)
        """The feed the whole model was timed on (time pruned copies on it too)."""
        self._cache = cache
        self._dims = dict(input_dims or {})
        self.measured = 0
        """Layers measured by this model (the rest came from the cache)."""
        opset = model.opset_imports.get("", 17)
        self._layers: list[tuple[int, _TimedLayer]] = []
        for index, node in enumerate(cost.affected):
            if node.op_type in TIMED_OPS and node.domain == "":
                timed = self._timed(node, opset)
                if timed is not None:
                    self._layers.append((index, timed))
        cache.save()
        self.before = timer.time_model(model, self.feed)
        """The whole model's measured latency, seconds."""
        zero = np.zeros(groups, dtype=np.int64)
        timed_sum = sum(t.full for _, t in self._layers)
        self._scale = 1.0
        self._rest = self.before - timed_sum
        if self._rest < 0:
            self._scale, self._rest = self.before / timed_sum, 0.0
        self._rest_flops0 = self._rest_flops(zero)

    # --- measuring ----------------------------------------------------------------------
    def _concrete(self, value: ir.Value) -> list[int] | None:
        if value.shape is None:
            return None
        return [d if isinstance(d, int) else int(self._dims.get(str(d), 1))
                for d in value.shape]

    def _blocked(self, layer: Layer) -> bool:
        key = "layout|" + layer.signature()
        found = self._cache.get(key)
        if found is None:
            found = float(self._timer.blocked(layer))
            self._cache.put(key, found)
        return bool(found)

    def _time(self, layer: Layer) -> float:
        signature = layer.signature()
        seconds = self._cache.get(signature)
        if seconds is None:
            seconds = self._timer.time_layer(layer)
            self._cache.put(signature, seconds)
            self.measured += 1
        return seconds

    def _timed(self, node: ir.Node, opset: int) -> _TimedLayer | None:
        """Measure ``node``'s table and slowdowns; None when it cannot run alone."""
        base = [None if v is None else self._concrete(v) for v in node.inputs]
        axes: dict[Hosted, int] = {}
        where: list[tuple[int, int, Hosted]] = []
        for position, value in enumerate(node.inputs):
            for axis, hosted in self._cost.axes_of(value):
                dims = base[position]
                if dims is None or axis >= len(dims):
                    continue
                key = tuple(hosted)
                axes.setdefault(key, dims[axis])
                where.append((position, axis, key))
        if not axes:
            return None
        parts = list(axes.items())
        if len(parts) <= 2:
            variables = [_Variable([part], grid_widths(part[1])) for part in parts]
        else:
            variables = [_Variable(parts, grid_widths(parts[0][1]))]

        def build(widths: Sequence[float]) -> Layer | None:
            fraction = {key: w / v.extent for v, w in zip(variables, widths, strict=True)
                        for key, _ in v.parts}
            dims = [None if d is None else list(d) for d in base]
            for position, axis, key in where:
                dims[position][axis] = max(1, round(base[position][axis] * fraction[key]))
            return layer_of(node, dims, opset)

        try:
            grids = [v.grid for v in variables]
            table = np.zeros([len(g) for g in grids])
            for index in itertools.product(*(range(len(g)) for g in grids)):
                layer = build([g[i] for g, i in zip(grids, index, strict=True)])
                if layer is None:
                    return None
                table[index] = self._time(layer)
            timed = _TimedLayer(node, variables, build, table)
            self._probe(timed)
        except InputError:
            return None  # not runnable alone: its time stays in the remainder
        return timed

    def _probe(self, timed: _TimedLayer) -> None:
        """Measure each variable's slowdown at misaligned widths (module docstring)."""
        full = [v.extent for v in timed.variables]
        whole = timed.build(full)
        blocked = whole is not None and self._blocked(whole)
        for position, variable in enumerate(timed.variables):
            align = _snap(variable.extent)
            if variable.extent < 16:
                continue
            reference = max(align, (round(variable.extent * 0.75) // align) * align)
            for shift in PROBE_ALIGNMENTS:
                if shift >= align or reference - shift < 1:
                    continue
                widths = list(full)
                widths[position] = reference - shift
                layer = timed.build(widths)
                expected = timed.base(widths)
                if layer is None or expected <= 0:
                    continue
                variable.slowdown[shift] = max(1.0, self._time(layer) / expected)
                if blocked and not self._blocked(layer):
                    variable.breaks.add(shift)

    # --- answering ----------------------------------------------------------------------
    def _rest_flops(self, removed: np.ndarray) -> float:
        costs = self._cost.node_costs(removed)
        timed = sum(costs[i].flops for i, _ in self._layers)
        return float(self._cost.cost(removed).flops - timed)

    def predict(self, removed_units: np.ndarray) -> float:
        """Predicted seconds if group ``i`` lost ``removed_units[i]`` units."""
        removed = np.asarray(removed_units)
        layers = sum(t.latency(t.widths(removed)) for _, t in self._layers)
        ratio = self._rest_flops(removed) / self._rest_flops0 if self._rest_flops0 else 1.0
        return self._scale * layers + self._rest * ratio

    def group_share(self, removed_units: np.ndarray) -> list[float]:
        """Per group, the predicted seconds of the timed layers it resizes."""
        removed = np.asarray(removed_units)
        shares = [0.0] * self._groups
        for _, timed in self._layers:
            seconds = self._scale * timed.latency(timed.widths(removed))
            for group in {g for v in timed.variables for g in v.groups()}:
                shares[group] += seconds
        return shares

    def measured_share(self, removed_units: np.ndarray) -> list[float]:
        """Per group, the timed layers it resizes measured at the exact widths (cached)."""
        removed = np.asarray(removed_units)
        shares = [0.0] * self._groups
        for _, timed in self._layers:
            layer = timed.build([round(w) for w in timed.widths(removed)])
            if layer is None:
                continue
            try:
                seconds = self._scale * self._time(layer)
            except InputError:
                continue
            for group in {g for v in timed.variables for g in v.groups()}:
                shares[group] += seconds
        self._cache.save()
        return shares

    def round_steps(self) -> list[int]:
        """Per group, the ``--round-to auto`` step in channels (module docstring)."""
        penalties: list[dict[int, float]] = [dict.fromkeys(STEPS, 0.0) for _ in
                                             range(self._groups)]
        weights = [0.0] * self._groups
        for _, timed in self._layers:
            for variable in timed.variables:
                for group in variable.groups():
                    weights[group] += timed.full
                    for step in STEPS:
                        if any(a >= step for a in variable.breaks):
                            penalties[group][step] = math.inf
                            continue
                        worst = max((s for a, s in variable.slowdown.items() if a >= step),
                                    default=1.0)
                        penalties[group][step] += timed.full * (worst - 1.0)
        steps = []
        for group in range(self._groups):
            weight = weights[group]
            steps.append(next((s for s in STEPS if weight == 0 or
                               penalties[group][s] / weight <= SLOWDOWN_TOLERANCE), 16))
        return steps
