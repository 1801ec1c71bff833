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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.ir.shapes import temporary_shapes
from spa_opt.latency.timer import Timer, time_paired

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
                  measure: Callable[[np.ndarray], float | None]) -> tuple[Attempt, list[Attempt]]:
    """Replan until the measured latency meets ``keep`` (module docstring).

    Args:
        keep: The fraction of the original's latency to keep.
        plan: Budget (fraction of the predicted original) -> counts, outcome (None: the
            budget is unreachable; the attempts so far stand).
        predicted: Counts -> predicted fraction kept.
        measure: Counts -> measured fraction kept by the pruned copy (None: cannot time).

    Returns:
        The chosen attempt and every attempt, in order.
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
