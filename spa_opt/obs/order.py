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
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Literal

import numpy as np

from spa_opt.obs.linalg import block_costs, energy, inverse, remove_in_place


@dataclasses.dataclass
class Consumer:
    """One consumer layer of a group, as arrays."""

    name: str
    weight: np.ndarray
    """``(rows, d)`` float64."""
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


@dataclasses.dataclass
class OrderResult:
    """A group's scores: ``+inf`` for units that may not go."""

    group: str
    scores: np.ndarray
    seconds: float
    steps: int


def _strictly_increasing(costs: list[float]) -> np.ndarray:
    out = np.empty(len(costs))
    previous = -np.inf
    for i, cost in enumerate(costs):
        previous = max(float(cost), float(np.nextafter(previous, np.inf)))
        out[i] = previous
    return out


def solve_order(task: OrderTask) -> OrderResult:
    """Run the task (see the module docstring)."""
    start = time.perf_counter()
    scores = np.full(task.units, np.inf)
    remaining = np.asarray(task.removable, dtype=np.int64)
    if remaining.size == 0 or not task.consumers:
        return OrderResult(task.group, scores, time.perf_counter() - start, 0)
    scale = sum(energy(c.weight, c.hessian) for c in task.consumers)
    scale = scale if task.norm == "relative" and scale > 0 else 1.0
    # One Cholesky (in ``inverse``) per consumer; after it, every round downdates the
    # consumer's ``W`` and ``H⁻¹`` in place at full size (removed columns become zero),
    # so unit columns keep their indices and no round copies the kept block.
    state = [(np.array(c.weight, dtype=np.float64, order="C"), inverse(c.hessian))
             for c in task.consumers]
    step = 1 if task.order == "greedy" else max(1, math.ceil(remaining.size / task.rounds))
    removed: list[int] = []
    costs_seen: list[float] = []
    steps = 0
    while remaining.size:
        costs = np.zeros(remaining.size)
        for (weight, hinv), consumer in zip(state, task.consumers, strict=True):
            costs += block_costs(weight, hinv, consumer.blocks[remaining])
        ranked = np.argsort(costs, kind="stable")
        take = ranked[:step]
        removed.extend(remaining[take].tolist())
        costs_seen.extend(costs[take].tolist())
        if take.size == remaining.size:  # the last units: no need to downdate
            break
        picked = remaining[take]
        for (weight, hinv), consumer in zip(state, task.consumers, strict=True):
            remove_in_place(weight, hinv, consumer.blocks[picked].ravel())
        remaining = np.delete(remaining, take)
        steps += 1
    scores[np.asarray(removed)] = _strictly_increasing([c / scale for c in costs_seen])
    return OrderResult(task.group, scores, time.perf_counter() - start, steps)
