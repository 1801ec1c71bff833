"""Meet a latency target on measured latency: prune a copy, time it, correct, replan.

The latency model (:mod:`spa_opt.latency.model`) times layers alone. In the whole
model onnxruntime also decides layouts across layers: the CPU provider's NCHWc
transformer keeps a chain of convolutions in its blocked layout only while their
widths allow it (input channels a multiple of 4 here), and a width that breaks the
chain adds reorders to its neighbours that no single-layer timing sees. So the
prediction is used to *rank* selections, and the target is met on the *measured*
latency of the pruned model:

1. plan with the model's prediction against the budget ``b_0 = keep``;
2. prune a copy of the model with that selection (weights are not reconstructed:
   latency does not depend on their values) and time it in alternation with the
   original, the same way: the measured kept fraction ``m_i`` (a ratio within one
   round, steadier than two timings apart on a busy machine);
3. if ``m_i`` is within :data:`TOLERANCE` of ``keep``, stop; else correct the budget
   by the observed error, ``b_{i+1} = b_i · keep / m_i``, and replan (at most
   :data:`ATTEMPTS` plans).

Among the plans timed, the chosen one is the least pruned whose measured latency
meets ``keep · (1 + TOLERANCE)``, else the fastest. Every attempt is in the report.

With ``--round-to auto`` the per-group steps of the latency model are one *scheme*;
the uniform steps 8 and 16 are two more, planned and timed the same way (single-layer
timings of layers that take tens of microseconds are noisy, and a step the model
finds harmless alone can still cost in the whole model). For a latency target the
chosen scheme is the one meeting it with the most FLOPs kept (the least pruning);
for a FLOPs or params target, the one measuring fastest. The report lists each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.latency.timer import Timer, time_paired
from spa_opt.passes._infra.context import Targets
from spa_opt.passes.pruning.select import Candidate, Metrics, select

#: How far from the target the measured latency may be (either way) to stop replanning.
TOLERANCE = 0.05
#: Most plans timed for one target.
ATTEMPTS = 4


def pruned_copy(model: ir.Model, selection: Mapping[str, np.ndarray], io: str
                ) -> ir.Model | None:
    """A copy of ``model`` with ``selection`` removed; None if its groups differ.

    The copy is grouped afresh (groups name values of their own graph); a group id
    whose unit count differs in the copy means the grouping is not reproducible, and
    nothing is timed.
    """
    from spa_opt.passes.couple import couple_model
    from spa_opt.passes.coupling.groups import build_groups
    from spa_opt.passes.dce import DeadCodeEliminationPass
    from spa_opt.passes.pruning.apply import apply_removal, set_new_shapes
    from spa_opt.passes.pruning.removal import Removal

    copy = ir.from_proto(ir.to_proto(model))
    groups = build_groups(couple_model(copy, io=io), copy.graph)
    by_id = {g.id: g for g in groups}
    for gid, units in selection.items():
        if gid not in by_id or (len(units) and int(np.max(units)) >= by_id[gid].units):
            return None
    with temporary_shapes(copy, symbolic=True):
        removal = Removal(groups, dict(selection))
        patches = [p for g in groups if g.id in selection for p in g.patches]
        apply_removal(copy.graph, removal, patches)
    set_new_shapes(removal)
    DeadCodeEliminationPass()(copy)
    return copy


@dataclasses.dataclass
class Attempt:
    """One plan timed: the budget it was planned for, its prediction and measurement."""

    budget: float
    predicted: float
    """Predicted fraction of the original's latency kept."""
    measured: float
    """Measured fraction kept (timed in alternation with the original)."""
    counts: np.ndarray
    outcome: dict[str, Any] | None


def meet_measured(keep: float,
                  plan: Callable[[float], tuple[np.ndarray, Any] | None],
                  predicted: Callable[[np.ndarray], float],
                  measure: Callable[[np.ndarray], float | None]
                  ) -> tuple[Attempt | None, list[Attempt]]:
    """Replan until the measured latency meets ``keep`` (module docstring).

    Args:
        keep: The fraction of the original's latency to keep.
        plan: Budget (fraction of the predicted original) -> counts, outcome (None: the
            budget is unreachable; the attempts so far stand).
        predicted: Counts -> predicted fraction kept.
        measure: Counts -> measured fraction kept by the pruned copy (None: cannot time).

    Returns:
        The chosen attempt (None when the first budget is unreachable; measured NaN when
        the copy cannot be timed) and every attempt timed, in order.
    """
    attempts: list[Attempt] = []
    budget = keep
    for _ in range(ATTEMPTS):
        planned = plan(budget)
        if planned is None:
            break
        counts, outcome = planned
        if any(np.array_equal(counts, a.counts) for a in attempts):
            break  # the budget moved less than one unit: nothing new to time
        kept = measure(counts)
        if kept is None:
            return Attempt(budget, predicted(counts), float("nan"), counts, outcome), attempts
        attempts.append(Attempt(budget, predicted(counts), kept, counts, outcome))
        if abs(kept - keep) <= TOLERANCE * keep:
            break
        budget = min(1.0, budget * keep / kept)
    if not attempts:
        return None, attempts
    meeting = [a for a in attempts if a.measured <= keep * (1 + TOLERANCE)]
    chosen = (max(meeting, key=lambda a: a.measured) if meeting
              else min(attempts, key=lambda a: a.measured))
    return chosen, attempts


def time_selection(model: ir.Model, timer: Timer, io: str,
                   feed: Mapping[str, np.ndarray]) -> Callable[[Mapping[str, np.ndarray]],
                                                               float | None]:
    """A function giving the latency kept by ``model`` pruned by a selection.

    The copy and the original are timed in alternation (:func:`time_paired`), so the
    fraction does not depend on how fast the machine was when the original was first
    timed.
    """

    def measure(selection: Mapping[str, np.ndarray]) -> float | None:
        copy = pruned_copy(model, selection, io)
        return None if copy is None else time_paired(timer, model, copy, feed, 1).ratio

    return measure


#: Uniform steps ``--round-to auto`` also times beside the latency model's per-group ones.
UNIFORM_STEPS = (8, 16)


@dataclasses.dataclass
class _Scheme:
    name: str
    counts: np.ndarray
    outcome: dict[str, Any] | None
    kept: float | None
    """Measured fraction of the original's latency kept (None: could not time)."""
    flops: float
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    budget: float | None = None


def plan_measured(model: ir.Model, candidates: list[Candidate], targets: Targets,
                  metrics: Metrics, io: str) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Plan a latency target or ``round_to`` auto on measured latency (module docstring)."""
    latency = metrics.latency
    measure = time_selection(model, latency.timer, io, latency.feed)
    zero = np.zeros(len(candidates), dtype=np.int64)
    flops_before = metrics.value("flops", zero)

    def timed(counts: np.ndarray) -> float | None:
        return measure({c.group.id: np.sort(c.order[:k])
                        for c, k in zip(candidates, counts, strict=True) if k})

    schemes: list[tuple[str, list[int] | None]] = [("latency model", None)]
    if targets.round_to == "auto":
        schemes += [(f"all {s}", [s] * len(candidates)) for s in UNIFORM_STEPS]
    found: list[_Scheme] = []
    for name, steps in schemes:
        if targets.target_latency is not None:
            scheme = _meet_scheme(name, steps, candidates, targets, metrics, timed)
        else:
            counts, outcome = select(candidates, targets, metrics, steps)
            same = next((f for f in found if np.array_equal(f.counts, counts)), None)
            scheme = _Scheme(name, counts, outcome, same.kept if same else timed(counts), 0.0)
        if scheme is None:
            continue
        scheme.flops = metrics.value("flops", scheme.counts) / flops_before
        found.append(scheme)
    chosen = _choose(found, targets.target_latency)
    _report(chosen, found, targets.target_latency)
    return chosen.counts, chosen.outcome


def _meet_scheme(name: str, steps: list[int] | None, candidates: list[Candidate],
                 targets: Targets, metrics: Metrics,
                 timed: Callable[[np.ndarray], float | None]) -> _Scheme | None:
    """One scheme's plan for a latency target, replanned until measured (None: none)."""
    latency = metrics.latency
    keep = targets.target_latency

    def plan(budget: float) -> tuple[np.ndarray, dict[str, Any] | None] | None:
        try:
            return select(candidates, dataclasses.replace(targets, target_latency=budget),
                          metrics, steps)
        except InputError:
            if budget == keep and steps is None:
                raise  # unreachable on the latency model's own steps: the user's error
            return None  # a corrected budget (or a coarser scheme) reaches nothing

    chosen, attempts = meet_measured(
        keep, plan, lambda counts: latency.predict(counts) / latency.before, timed)
    if chosen is None:
        return None
    measured = None if np.isnan(chosen.measured) else chosen.measured
    return _Scheme(name, chosen.counts, chosen.outcome, measured, 0.0, attempts, chosen.budget)


def _choose(found: list[_Scheme], keep: float | None) -> _Scheme:
    """The latency target met with the most FLOPs kept; else the fastest measured."""
    timed = [f for f in found if f.kept is not None]
    if not timed:
        return found[0]
    if keep is not None:
        meeting = [f for f in timed if f.kept <= keep * (1 + TOLERANCE)]
        if meeting:
            return max(meeting, key=lambda f: (f.flops, -f.kept))
    return min(timed, key=lambda f: f.kept)


def _report(chosen: _Scheme, found: list[_Scheme], keep: float | None) -> None:
    """Write the measured figures and the schemes into the chosen plan's outcome."""
    outcome = chosen.outcome
    if outcome is None:
        return
    detail = outcome.get("latency_model")
    if detail is not None:
        detail["scheme"] = chosen.name
        detail["schemes"] = [{"scheme": f.name, "measured_kept": f.kept, "flops_kept": f.flops}
                             for f in found]
    entry = outcome.get("latency")
    if entry is None or keep is None:
        return
    entry["keep"] = keep
    entry["budget"] = chosen.budget
    entry["attempts"] = [{"budget": a.budget, "predicted": a.predicted, "measured": a.measured}
                         for a in chosen.attempts]
    if chosen.kept is not None:
        entry["reached"] = chosen.kept <= keep * (1 + TOLERANCE)
        outcome["reached"] = all(v["reached"] for v in outcome.values()
                                 if isinstance(v, dict) and "reached" in v)
