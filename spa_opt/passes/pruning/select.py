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
from typing import TYPE_CHECKING, Any

import numpy as np

from spa_opt.errors import InputError
from spa_opt.passes._infra.context import Targets
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.pruning.costmodel import CostModel

if TYPE_CHECKING:
    from spa_opt.latency.model import LatencyModel


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


class Metrics:
    """The measures a target can bound, as functions of the units removed per group.

    FLOPs and params come from the :class:`CostModel`; latency from the measured
    :class:`~spa_opt.latency.model.LatencyModel` (predicted seconds). Each is built on
    first use: a FLOPs target never measures latency.
    """

    def __init__(self, cost_model: Callable[[], CostModel],
                 latency_model: Callable[[CostModel], LatencyModel] | None = None) -> None:
        self._cost_factory, self._latency_factory = cost_model, latency_model
        self._cost: CostModel | None = None
        self._latency: LatencyModel | None = None

    @property
    def cost(self) -> CostModel:
        """The cost model."""
        if self._cost is None:
            self._cost = self._cost_factory()
        return self._cost

    @property
    def latency(self) -> LatencyModel:
        """The latency model (measured on first use)."""
        if self._latency is None:
            if self._latency_factory is None:
                raise ValueError("select: a latency target or round_to=auto needs a "
                                 "latency model")
            self._latency = self._latency_factory(self.cost)
        return self._latency

    def value(self, metric: str, removed: np.ndarray) -> float:
        """``metric`` (flops, params, latency) after removing ``removed`` units per group."""
        if metric == "latency":
            return self.latency.predict(removed)
        return getattr(self.cost.cost(removed), metric)


def round_steps(candidates: Sequence[Candidate], targets: Targets, metrics: Metrics) -> list[int]:
    """Per candidate, the channel step kept widths are multiples of.

    Dead units alone go exactly (no target: step 1); ``auto`` asks the latency model.
    """
    if not targets.given:
        return [1] * len(candidates)
    if targets.round_to == "auto":
        return metrics.latency.round_steps() if candidates else []
    return [int(targets.round_to)] * len(candidates)


def select(candidates: Sequence[Candidate], targets: Targets, metrics: Metrics,
           steps: Sequence[int] | None = None) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Units to remove per candidate (counts), and the target's outcome for the report.

    ``steps`` (channels, per candidate) overrides the rounding ``targets`` implies.
    """
    goals = {"flops": targets.target_flops, "params": targets.target_params,
             "latency": targets.target_latency}
    goals = {metric: keep for metric, keep in goals.items() if keep is not None}
    if not candidates:
        return np.zeros(0, dtype=np.int64), _outcome(goals, targets, metrics, [], None, [])
    keys = np.concatenate([c.keys for c in candidates])
    owner = np.concatenate([np.full(c.order.size, i) for i, c in enumerate(candidates)])
    position = np.concatenate([np.arange(c.order.size) for c in candidates])
    merged = owner[np.lexsort((position, owner, keys))]
    n_dead = sum(c.dead for c in candidates)
    steps = list(steps) if steps is not None else round_steps(candidates, targets, metrics)

    def rounded(raw: Sequence[int]) -> np.ndarray:
        return np.array([_rounded(c, int(k), step)
                         for c, k, step in zip(candidates, raw, steps, strict=True)])

    def counts(prefix: int) -> np.ndarray:
        return rounded(np.bincount(merged[:prefix], minlength=len(candidates)))

    if not goals:
        if targets.ratio is None:
            return counts(n_dead), None
        if targets.scope == "local":
            return rounded([max(c.dead, min(c.order.size, _ratio_count(c.group.units,
                                                                        targets.ratio)))
                            for c in candidates]), None
        blocks = np.array([c.group.block for c in candidates])[merged]
        total = sum(c.group.units * c.group.block for c in candidates)
        need = targets.ratio * total
        prefix = int(np.searchsorted(np.cumsum(blocks), need - 1e-9) + 1) if need > 0 else 0
        return counts(max(min(prefix, merged.size), n_dead)), None
    zero = np.zeros(len(candidates), dtype=np.int64)
    needed = [n_dead]
    for metric, keep in goals.items():
        goal = keep * metrics.value(metric, zero)
        low, high = n_dead, merged.size
        while low < high:  # the shortest prefix at or under the goal
            middle = (low + high) // 2
            if metrics.value(metric, counts(middle)) <= goal:
                high = middle
            else:
                low = middle + 1
        if metric == "latency" and metrics.value(metric, counts(low)) > goal:
            _unreachable_latency(keep, metrics, zero, counts(low))
        needed.append(low)
    chosen = counts(max(needed))
    return chosen, _outcome(goals, targets, metrics, candidates, chosen, steps)


def _unreachable_latency(keep: float, metrics: Metrics, zero: np.ndarray,
                         everything: np.ndarray) -> None:
    """Refuse a latency target no selection reaches, saying how close the best gets."""
    before, best = metrics.value("latency", zero), metrics.value("latency", everything)
    raise InputError(
        f"--target-latency {keep:g}: unreachable; with every removable unit gone the "
        f"latency model predicts {best / before:.3f} of the measured {before * 1e3:.3g} ms "
        "(the rest is in layers and groups that cannot shrink: pinned, ignored, capped "
        "by --ratio, or the last unit of a group)")


def _outcome(goals: Mapping[str, float], targets: Targets, metrics: Metrics,
             candidates: Sequence[Candidate], chosen: np.ndarray | None,
             steps: Sequence[int]) -> dict[str, Any] | None:
    """The target's outcome for the report (None without a FLOPs, params or latency target).

    ``chosen`` is None when no group is eligible: nothing can be removed, which the
    report says instead of leaving the outcome out. A latency target's figures are the
    latency model's prediction, in seconds; ``prune`` adds the measured ones.
    """
    if not goals:
        return None
    zero = np.zeros(len(candidates), dtype=np.int64)
    after = zero if chosen is None else chosen
    outcome: dict[str, Any] = {"scope": targets.scope}
    reached = True
    for metric, keep in goals.items():
        before, now = metrics.value(metric, zero), metrics.value(metric, after)
        met = now <= keep * before
        reached &= met
        outcome[metric] = {"keep": keep, "before": before, "expected": now,
                           "achieved": now / before if before else 1.0, "reached": met}
    if candidates and ("latency" in goals or targets.round_to == "auto"):
        outcome["latency_model"] = _latency_detail(metrics, candidates, after, steps)
    outcome["reached"] = reached
    if not reached:
        outcome["why_not"] = (
            "no group can be pruned (every group is pinned, ignored or unscored: see the "
            "report's groups and skipped groups)" if chosen is None else
            "every removable unit is already selected; the rest is pinned, ignored, "
            "capped by --ratio or the last unit of a group (see the skipped groups and "
            "the pinned groups in the report)")
    return outcome


def _latency_detail(metrics: Metrics, candidates: Sequence[Candidate], chosen: np.ndarray,
                    steps: Sequence[int]) -> dict[str, Any]:
    """What the latency model measured and predicts, per group, for the report."""
    latency = metrics.latency
    zero = np.zeros_like(chosen)
    before, after = latency.group_share(zero), latency.group_share(chosen)
    measured = latency.measured_share(chosen)
    return {"measured_before": latency.before, "predicted_after": latency.predict(chosen),
            "layers_measured": latency.measured, "round_steps": list(steps),
            "groups": [
                {"group": c.group.id, "channels": c.group.channels,
                 "kept": c.group.channels - int(k) * c.group.block, "step": step,
                 "predicted_before": b, "predicted_after": a, "measured_after": m}
                for c, k, step, b, a, m in zip(candidates, chosen, steps, before, after,
                                               measured, strict=True)]}
