"""The order a group's units go in, by structured OBS over all the group's consumers.

One group, one task (the unit of parallel work): its consumer layers, each with its
weights ``W``, dampened Hessian ``H`` and the columns of every unit. The task:

1. inverts every ``H`` (Cholesky);
2. costs each remaining unit as the sum over consumers of its OBS cost
   (:func:`~spa_opt.obs.linalg.block_costs`);
3. removes the cheapest unit (``greedy``) or the cheapest ``ceil(removable / rounds)``
   (``blocks``) from every consumer at once, updating the kept weights and downdating
   every ``H⁻¹`` in place (:func:`~spa_opt.obs.linalg.remove_in_place`); then back to 2.

A unit's score is its cost when it was removed, raised to be strictly above the score
of the unit removed before it, so sorting by score gives back the removal order (what
``prune``'s selection needs) and scores compare across groups for the global scope.
Costs are normalised per group by the layer output energy ``tr(W H Wᵀ)/2`` summed over
consumers (``relative``) or not at all (``none``).

``precision="float32"`` keeps the working ``W`` and ``H⁻¹`` in float32: ``spotrf`` +
``spotri`` and ``ssyrk`` downdates, 1.3-2.3x faster than float64 as measured by
``bench/order_precision.py`` (``docs/benchmarks.md``). Only the ranking sees the
rounding (reconstruction solves from the float64 ``H``). Should the float32 downdates
lose positive definiteness (a non-positive pivot or cost), the task starts again in
float64 and says so in ``OrderResult.precision``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Literal

import numpy as np

from spa_opt.obs.linalg import (
    block_costs,
    energy,
    inverse_lower,
    remove_in_place,
    take_block,
)


@dataclasses.dataclass
class Consumer:
    """One consumer layer of a group, as arrays."""

    name: str
    weight: np.ndarray
    """``(rows, d)``, float64 (float32 is enough for a float32 ordering of float32
    weights); Fortran order is what the ordering works in (no transposing copy). Only
    ``Wᵀ W`` matters, so any matrix with the same Gram matrix gives the same scores
    (:func:`~spa_opt.obs.linalg.gram_root`: ``d`` rows instead of ``rows``)."""
    hessian: np.ndarray
    """``(d, d)`` dampened float64."""
    blocks: np.ndarray
    """``(units, b)`` columns of every group unit."""


@dataclasses.dataclass
class OrderTask:
    """Everything one group's ordering needs; no graph objects, so it can travel."""

    group: str
    units: int
    removable: np.ndarray
    """Unit indices that may go (pinned ones may not)."""
    consumers: list[Consumer]
    order: Literal["greedy", "blocks"] = "blocks"
    rounds: int = 32
    norm: Literal["none", "relative"] = "none"
    precision: Literal["float64", "float32"] = "float64"


@dataclasses.dataclass
class OrderResult:
    """A group's scores: ``+inf`` for units that may not go."""

    group: str
    scores: np.ndarray
    seconds: float
    steps: int
    precision: str = "float64"
    """What the ordering ran in: ``float64`` also when float32 was asked for and lost
    positive definiteness."""


class _PrecisionLost(ArithmeticError):
    """A float32 downdate made a pivot or a cost non-positive."""


def _strictly_increasing(costs: list[float]) -> np.ndarray:
    out = np.empty(len(costs))
    previous = -np.inf
    for i, cost in enumerate(costs):
        previous = max(float(cost), float(np.nextafter(previous, np.inf)))
        out[i] = previous
    return out


COMPACT_BELOW = 0.6
"""A consumer's working ``W`` and ``H⁻¹`` are compacted to their remaining columns once
fewer than this fraction of them remain."""


class _Working:
    """One consumer's current ``W`` and ``H⁻¹``, downdated in place, compacted seldom.

    Downdating in place keeps the removed columns as zeros, so the arrays are not
    copied every round; but every later downdate then also runs over those zeros. When
    fewer than ``COMPACT_BELOW`` of the columns remain, the arrays are cut to the
    remaining ones (one copy). The copies then sum to less than the arrays' first size
    over a whole ordering, and the flops stay within a quarter of always compacting.
    """

    def __init__(self, consumer: Consumer, dtype: type[np.floating]) -> None:
        # Fortran order: a unit's columns are contiguous, so the rounds' reads, updates
        # and zeroing of W_:M are whole-row copies of W.T (linalg._columns)
        self.weight = np.array(consumer.weight, dtype=dtype, order="F")
        # the one Cholesky of this Hessian; H⁻¹ in its lower triangle, Fortran order
        self.hinv = inverse_lower(consumer.hessian, dtype)
        self.index = np.arange(self.weight.shape[1])
        """Original column -> its column in the working arrays (-1: gone)."""
        self.alive = self.weight.shape[1]

    def where(self, blocks: np.ndarray) -> np.ndarray:
        """Working columns of original column blocks."""
        return self.index[blocks]

    def remove(self, columns: np.ndarray) -> None:
        """Remove original ``columns`` (downdate in place; compact when few remain)."""
        remove_in_place(self.weight, self.hinv, self.index[columns])
        self.index[columns] = -1
        self.alive -= columns.size
        if self.alive < COMPACT_BELOW * self.weight.shape[1]:
            kept = np.flatnonzero(np.isin(np.arange(self.weight.shape[1]),
                                          self.index[self.index >= 0]))
            self.weight = self.weight.T[kept].T  # whole columns: one copy, Fortran order
            # through the C-ordered transpose: one copy, Fortran order, lower stays lower
            self.hinv = take_block(self.hinv.T, kept, kept).T
            lookup = np.full(self.index.size, -1)
            lookup[kept] = np.arange(kept.size)
            alive = self.index >= 0
            self.index[alive] = lookup[self.index[alive]]


def solve_order(task: OrderTask) -> OrderResult:
    """Run the task (see the module docstring)."""
    start = time.perf_counter()
    if task.precision == "float32":
        try:
            scores, steps = _ranked(task, np.float32)
            return OrderResult(task.group, scores, time.perf_counter() - start, steps,
                               "float32")
        except (_PrecisionLost, np.linalg.LinAlgError):
            pass
    scores, steps = _ranked(task, np.float64)
    return OrderResult(task.group, scores, time.perf_counter() - start, steps)


def _ranked(task: OrderTask, dtype: type[np.floating]) -> tuple[np.ndarray, int]:
    """The scores and the number of downdate rounds, with ``W`` and ``H⁻¹`` in ``dtype``."""
    scores = np.full(task.units, np.inf)
    remaining = np.asarray(task.removable, dtype=np.int64)
    if remaining.size == 0 or not task.consumers:
        return scores, 0
    scale = 1.0
    if task.norm == "relative":  # tr(W H Wᵀ) is a rows x d² product: only when used
        scale = sum(energy(c.weight, c.hessian) for c in task.consumers) or 1.0
    # One Cholesky (in ``inverse_lower``) per consumer; after it, every round downdates
    # the consumer's ``W`` and the lower triangle of its ``H⁻¹`` in place at full size
    # (removed columns become zero), so unit columns keep their indices and no round
    # copies the kept block.
    state = [_Working(c, dtype) for c in task.consumers]
    step = 1 if task.order == "greedy" else max(1, math.ceil(remaining.size / task.rounds))
    removed: list[int] = []
    costs_seen: list[float] = []
    steps = 0
    while remaining.size:
        costs = np.zeros(remaining.size)
        for work, consumer in zip(state, task.consumers, strict=True):
            costs += block_costs(work.weight, work.hinv, work.where(consumer.blocks[remaining]))
        if dtype is not np.float64 and not np.all(costs >= 0):  # NaN too
            raise _PrecisionLost(task.group)
        ranked = np.argsort(costs, kind="stable")
        take = ranked[:step]
        removed.extend(remaining[take].tolist())
        costs_seen.extend(costs[take].tolist())
        if take.size == remaining.size:  # the last units: no need to downdate
            break
        picked = remaining[take]
        for work, consumer in zip(state, task.consumers, strict=True):
            work.remove(consumer.blocks[picked].ravel())
        remaining = np.delete(remaining, take)
        steps += 1
    scores[np.asarray(removed)] = _strictly_increasing([c / scale for c in costs_seen])
    return scores, steps
