"""dead: find channels that are zero for every input and can go losslessly (analysis).

Rules:

- propagates zero facts per group unit through the graph with the rules of
  :mod:`spa_opt.passes.zeros` (zero weight slices and biases, zero
  normalization scale and shift, multiplication by a zero channel, ...);
- a unit is dead when it is zero wherever the group's channels are read by a node
  that does not pass them on (a contraction, a reduction): a nonzero producer row
  multiplied by a zero gate still counts, as in squeeze-excitation and SwiGLU;
- zero units of a group that feeds a normalization over its channels are not dead:
  removing them would change the mean; the report says which;
- stores ``dead`` (group id to a flag per unit) in the context; ``prune`` without a
  target then removes exactly these units, and the outputs do not change.
"""

from __future__ import annotations

import onnx_ir as ir

from spa_opt.ir.shapes import temporary_shapes
from spa_opt.passes._infra.base import SpaPass
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.group import groups_of
from spa_opt.passes.zeros import dead_units


@register
class DeadPass(SpaPass):
    """Find provably zero channel groups, removable without changing outputs (analysis)."""

    name = "dead"
    preserves_analyses = True

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Propagate zero facts and store the dead units."""
        groups = groups_of(model, context)
        coupling = context.analyses.couplings
        normalized = {(id(value), axis) for _, value, axis in coupling.normalizers}
        with temporary_shapes(model):
            dead, blocked = dead_units(model.graph, groups, normalized)
        context.analyses.dead = dead
        by_id = {g.id: g for g in groups}
        context.report["dead"] = {
            "groups": [{"group": gid, "units": flags.nonzero()[0].tolist(),
                        "channels": int(flags.sum()) * by_id[gid].block}
                       for gid, flags in dead.items()],
            "blocked": [{"group": gid, "why": why} for gid, why in blocked.items()],
        }
        self.count("groups-dead", len(dead))
        self.count("units-dead", sum(int(flags.sum()) for flags in dead.values()))
        self.count("groups-blocked", len(blocked))
        return ir.passes.PassResult(model, False)
