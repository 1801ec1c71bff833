"""Choose the units to remove: scores and targets in, units per group out.

Every target is met the same way. Each eligible group lists its removable units in
the order they should go: provably dead units first, then by ascending score; pinned
units never, and never the group's last unit (pinned units, if any, already keep the
layer alive). These per-group lists are merged into one order:

- ``local`` scope: by each unit's fractional rank in its group, ``(i + 1) / units``,
  so every prefix removes about the same share of every group;
- ``global`` scope: by score (criteria normalise scores so groups compare).

A selection is a prefix of that order, counted per group, then rounded per group so
the channels kept are a multiple of ``round_to`` (rounding keeps more, never fewer).

- ``--ratio r`` (local): each group loses ``units - floor(units * (1 - r))`` units;
  (global): the shortest prefix removing ``r`` of the eligible channels;
- ``--target-flops f`` / ``--target-params p``: the shortest prefix whose cost, from
  :class:`~spa_opt.passes.pruning.costmodel.CostModel`, is at most ``f`` (``p``) of the
  original, found by bisection (cost only falls as the prefix grows), so the result is
  within one unit (one block, ``round_to`` channels when rounding) of the target.
  With both, both hold. A ratio given with them caps what any one group may lose.
  When even the whole order cannot reach a target, it says so and why.
- no target: only the dead units go (with the ``dead`` analysis), otherwise nothing.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spa_opt.passes._infra.context import Targets
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.pruning.costmodel import CostModel


@dataclasses.dataclass
class Candidate:
    """One eligible group and the order its units would go in."""

    group: Group
    order: np.ndarray
    """Removable units, first to go first."""
    dead: int
    """How many of ``order`` (its head) are provably dead."""
    keys: np.ndarray
    """Merge keys of ``order`` for the scope."""


def ignored_by(group: Group, patterns: Sequence[str], names_of: Mapping[int, set[str]]) -> str:
    """Why ``--ignore`` keeps ``group`` whole (a node it touches matches), or ``""``."""
    for member in group.members:
        for name in sorted(names_of.get(id(member.value), ())):
            for pattern in patterns:
                if fnmatch.fnmatchcase(name, pattern):
                    return f"--ignore '{pattern}' matches node `{name}`"
    return ""


def candidate(group: Group, scores: np.ndarray | None, dead: np.ndarray | None,
              targets: Targets) -> Candidate:
    """The group's removal order and merge keys."""
    free = ~group.pinned
    dead_mask = np.zeros(group.units, bool) if dead is None else dead & free
    score = np.zeros(group.units) if scores is None else np.asarray(scores, float)
    alive = np.flatnonzero(free & ~dead_mask)
    order = np.concatenate([np.flatnonzero(dead_mask), alive[np.argsort(score[alive],
                                                                        kind="stable")]])
    cap = order.size if group.pinned.any() else min(order.size, group.units - 1)
    if targets.ratio is not None and (targets.target_flops is not None
                                      or targets.target_params is not None):
        cap = min(cap, max(int(dead_mask.sum()), _ratio_count(group.units, targets.ratio)))
    order = order[:cap]
    n_dead = min(int(dead_mask.sum()), order.size)
    if targets.scope == "local":
        keys = (np.arange(order.size) + 1.0) / group.units
    else:
        keys = score[order].astype(float)
    keys[:n_dead] = -np.inf
    return Candidate(group, order, n_dead, keys)


def _ratio_count(units: int, ratio: float) -> int:
    return units - math.floor(units * (1.0 - ratio) + 1e-9)


def round_step(round_to: int, block: int) -> int:
    """Units per ``round_to`` channels: kept units move in steps of this many.

    A unit is ``block`` channels, so keeping a multiple of ``round_to`` channels means
    keeping a multiple of ``round_to / gcd(round_to, block)`` units.
    """
    return round_to // math.gcd(round_to, block)


def _rounded(candidate: Candidate, count: int, round_to: int) -> int:
    """Fewest-channels-kept rounding: channels kept become a multiple of ``round_to``."""
    step = round_step(round_to, candidate.group.block)
    if step == 1 or count == 0:
        return count
    units = candidate.group.units
    kept = -(-(units - count) // step) * step
    return max(units - kept, 0)


def select(candidates: Sequence[Candidate], targets: Targets,
           cost_model: Callable[[], CostModel]) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Units to remove per candidate (counts), and the target's outcome for the report."""
    goals = {"flops": targets.target_flops, "params": targets.target_params}
    goals = {metric: keep for metric, keep in goals.items() if keep is not None}
    if not candidates:
        return np.zeros(0, dtype=np.int64), _outcome(goals, targets, cost_model, 0, None)
    keys = np.concatenate([c.keys for c in candidates])
    owner = np.concatenate([np.full(c.order.size, i) for i, c in enumerate(candidates)])
    position = np.concatenate([np.arange(c.order.size) for c in candidates])
    merged = owner[np.lexsort((position, owner, keys))]
    n_dead = sum(c.dead for c in candidates)

    round_to = targets.round_to if targets.given else 1  # dead units alone go exactly

    def counts(prefix: int) -> np.ndarray:
        raw = np.bincount(merged[:prefix], minlength=len(candidates))
        return np.array([_rounded(c, int(k), round_to)
                         for c, k in zip(candidates, raw, strict=True)])

    if not goals:
        if targets.ratio is None:
            return counts(n_dead), None
        if targets.scope == "local":
            raw = [max(c.dead, min(c.order.size, _ratio_count(c.group.units, targets.ratio)))
                   for c in candidates]
            return np.array([_rounded(c, k, targets.round_to)
                             for c, k in zip(candidates, raw, strict=True)]), None
        blocks = np.array([c.group.block for c in candidates])[merged]
        total = sum(c.group.units * c.group.block for c in candidates)
        need = targets.ratio * total
        prefix = int(np.searchsorted(np.cumsum(blocks), need - 1e-9) + 1) if need > 0 else 0
        return counts(max(min(prefix, merged.size), n_dead)), None
    model = cost_model()
    base = model.cost(np.zeros(len(candidates), dtype=np.int64))
    needed = [n_dead]
    for metric, keep in goals.items():
        goal = keep * getattr(base, metric)
        low, high = n_dead, merged.size
        while low < high:  # the shortest prefix at or under the goal
            middle = (low + high) // 2
            if getattr(model.cost(counts(middle)), metric) <= goal:
                high = middle
            else:
                low = middle + 1
        needed.append(low)
    chosen = counts(max(needed))
    return chosen, _outcome(goals, targets, lambda: model, len(candidates), chosen)


def _outcome(goals: Mapping[str, float], targets: Targets, cost_model: Callable[[], CostModel],
             groups: int, chosen: np.ndarray | None) -> dict[str, Any] | None:
    """The target's outcome for the report (None without a FLOPs or params target).

    ``chosen`` is None when no group is eligible: nothing can be removed, which the
    report says instead of leaving the outcome out.
    """
    if not goals:
        return None
    model = cost_model()
    base = model.cost(np.zeros(groups, dtype=np.int64))
    after = base if chosen is None else model.cost(chosen)
    outcome: dict[str, Any] = {"scope": targets.scope}
    reached = True
    for metric, keep in goals.items():
        before, now = getattr(base, metric), getattr(after, metric)
        met = now <= keep * before
        reached &= met
        outcome[metric] = {"keep": keep, "before": before, "expected": now,
                           "achieved": now / before if before else 1.0, "reached": met}
    outcome["reached"] = reached
    if not reached:
        outcome["why_not"] = (
            "no group can be pruned (every group is pinned, ignored or unscored: see the "
            "report's groups and skipped groups)" if chosen is None else
            "every removable unit is already selected; the rest is pinned, ignored, "
            "capped by --ratio or the last unit of a group (see the skipped groups and "
            "the pinned groups in the report)")
    return outcome
