"""Plan a selection: eligibility, candidates and targets, shared by ``prune`` and ``obspa``.

A group is eligible when it is prunable, no ``--ignore`` pattern matches a node it
touches, the criterion scored it (when targets need scores), and every patch can
follow a removal. Each eligible group becomes a
:class:`~spa_opt.passes.pruning.select.Candidate`, and
:func:`~spa_opt.passes.pruning.select.select` turns the candidates and the targets
into unit counts.

Planning is a pure function of its inputs (model, groups, targets, scores, dead units):
it never runs a criterion. Which scores to plan from when no criterion ran is the
caller's choice (:func:`spa_opt.passes.criteria.current_scores`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from spa_opt.latency.timer import LatencySpec
from spa_opt.passes._infra.context import Targets
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.pruning.costmodel import CostModel
from spa_opt.passes.pruning.patches import problem
from spa_opt.passes.pruning.select import Candidate, Metrics, candidate, ignored_by, select
from spa_opt.passes.pruning.trial import plan_measured

if TYPE_CHECKING:
    from spa_opt.latency.model import LatencyModel


@dataclasses.dataclass
class Plan:
    """Units to remove per group id, the groups skipped with why, the target outcome."""

    selection: dict[str, np.ndarray]
    skipped: list[dict[str, str]]
    target: dict[str, Any] | None


def names_of(graph: ir.Graph) -> dict[int, set[str]]:
    """Names of the nodes that read or write each value, keyed by the value's id."""
    names: dict[int, set[str]] = defaultdict(set)
    for node in graph.all_nodes():
        for value in (*node.inputs, *node.outputs):
            if value is not None and node.name:
                names[id(value)].add(node.name)
    return names


def eligible(model: ir.Model, groups: list[Group], targets: Targets,
             scores: dict[str, np.ndarray] | None, dead: dict[str, np.ndarray] | None = None,
             unscored: dict[str, str] | None = None
             ) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The candidates (eligible groups with their removal order) and the skipped groups.

    Args:
        model: The model the groups describe.
        groups: Its groups.
        targets: What to achieve (``--ignore`` patterns, scope and ratio cap included).
        scores: Per group unit scores; None when no target needs them (the order is
            then dead units first, then group order).
        dead: Per group, the mask of provably dead units (the ``dead`` analysis).
        unscored: Why the criterion left some groups without a score, for the report.
    """
    names = names_of(model.graph)
    unscored = unscored or {}
    skipped: list[dict[str, str]] = []
    candidates = []
    for group in groups:
        if not group.prunable:
            continue
        why = ignored_by(group, targets.ignore, names)
        if not why and scores is not None and group.id not in scores:
            why = unscored.get(group.id, "the criterion gave it no score")
        why = why or next(filter(None, map(problem, group.patches)), "")
        if why:
            skipped.append({"group": group.id, "why": why})
            continue
        found = candidate(group, scores.get(group.id) if scores is not None else None,
                          None if dead is None else dead.get(group.id), targets)
        if found.order.size:
            candidates.append(found)
    return candidates, skipped


def plan_selection(model: ir.Model, groups: list[Group], targets: Targets,
                   scores: dict[str, np.ndarray] | None,
                   dead: dict[str, np.ndarray] | None = None,
                   unscored: dict[str, str] | None = None,
                   latency: LatencySpec | None = None,
                   input_dims: Mapping[str, int] | None = None, io: str = "keep",
                   measure_latency: bool = True) -> Plan:
    """Choose the units to remove from scores, dead units and targets.

    Args:
        model: The model the groups describe.
        groups: Its groups.
        targets: What to achieve; without any target only dead units go.
        scores: Per group unit scores, needed when ``targets.given`` (a group without
            one is skipped as unscored); ignored otherwise.
        dead: Per group, the mask of provably dead units, removed first.
        unscored: Why the criterion left some groups without a score, for the report.
        latency: How latency is measured, for a latency target or ``round_to`` auto
            (None: the CPU provider on every core, the default cache).
        input_dims: Sizes of symbolic input dims, for the timed feeds and layers.
        io: The coupling's ``io`` mode, to group the pruned copies a latency target
            times (:mod:`spa_opt.passes.pruning.trial`).
        measure_latency: Check latency plans on pruned copies timed beside the original
            (:mod:`spa_opt.passes.pruning.trial`; False: the latency model's prediction
            alone).
    """
    if targets.given and scores is None:
        raise ValueError("plan_selection: targets are given but no scores")
    candidates, skipped = eligible(model, groups, targets,
                                   scores if targets.given else None, dead, unscored)
    latency_model = None
    if targets.needs_latency:
        def latency_model(cost: CostModel) -> LatencyModel:
            from spa_opt.latency import build_latency_model

            return build_latency_model(model, cost, len(candidates), latency or LatencySpec(),
                                       input_dims)

    metrics = Metrics(lambda: CostModel(model, [c.group for c in candidates]), latency_model)
    counts, outcome = select(candidates, targets, metrics)
    if targets.needs_latency and candidates and measure_latency:
        counts, outcome = plan_measured(model, candidates, targets, metrics, io)
    selection = {c.group.id: np.sort(c.order[:k])
                 for c, k in zip(candidates, counts, strict=True) if k}
    return Plan(selection, skipped, outcome)
