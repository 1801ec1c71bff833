"""group: turn coupled channels into groups with members, blocks and pins (analysis).

Rules:

- reads ``couplings`` from the context; when ``couple`` did not run earlier in the
  pipeline it runs it first with its defaults (an analysis is computed on demand);
- groups units that occupy the same member axes (see
  :mod:`spa_opt.passes.coupling.groups`), orders them by their first member in graph
  order, and stores them in the context as ``groups``;
- adds every group to the report (``groups``) with its members, index maps, block
  size, pins in words, and the constants removal will patch, and a ``coupling``
  summary: how many groups, how many prunable, and the share of weighted output
  channels that land in a prunable group (coverage).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.passes._infra.base import SpaPass
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.couple import couple_model
from spa_opt.passes.coupling.groups import Group, build_groups


def coverage(groups: list[Group]) -> dict[str, Any]:
    """Share of produced channels that land in a prunable group.

    Produced channels are the output channels of Conv/Gemm/MatMul weights and of
    embedding tables; biases are not counted again.
    """
    total = free = 0
    for group in groups:
        for member in group.weights:
            rank = len(member.value.shape or ())
            if "out" not in member.roles or member.index_map.extent <= 1 or rank < 2:
                continue
            channels = member.index_map.positions.size
            total += channels
            if group.prunable:
                free += int((~group.pinned).sum()) * member.index_map.block
    return {"channels": total, "prunable": free, "share": free / total if total else 0.0}


def summarize(groups: list[Group]) -> dict[str, Any]:
    """The report's ``coupling`` summary."""
    return {
        "groups": len(groups),
        "prunable": sum(g.prunable for g in groups),
        "pinned": sum(not g.prunable for g in groups),
        "coverage": coverage(groups),
    }


def groups_of(model: ir.Model, context: PipelineContext, *, rebuild: bool = False) -> list[Group]:
    """The context's ``groups``, computed on demand (the way ``group`` computes them).

    When ``groups`` is absent (or ``rebuild``), groups the context's ``couplings``,
    running the coupling analysis with its defaults first when those are absent too,
    and stores both in ``context.analyses``. Reports nothing: that is ``group``'s job.
    """
    groups = context.analyses.groups
    if groups is not None and not rebuild:
        return groups
    coupling = context.analyses.couplings
    if coupling is None:
        coupling = couple_model(model, io=context.io)
        context.analyses.couplings = coupling
    groups = build_groups(coupling, model.graph)
    context.analyses.groups = groups
    return groups


@register
class GroupPass(SpaPass):
    """Build channel groups from the couplings: members, block sizes, pins (analysis)."""

    name = "group"
    preserves_analyses = True

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Group and report."""
        groups = groups_of(model, context, rebuild=True)
        context.report["groups"] = [g.to_dict() for g in groups]
        context.report["coupling"] = summarize(groups)
        self.count("groups", len(groups))
        self.count("prunable", sum(g.prunable for g in groups))
        self.count("units", int(np.sum([g.units for g in groups])))
        return ir.passes.PassResult(model, False)
