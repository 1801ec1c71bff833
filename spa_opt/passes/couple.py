"""couple: find which channels must be removed together (analysis).

Rules:

- shapes are inferred for the duration of the pass (with data propagation, so shape
  subgraphs with static inputs resolve) and restored afterwards: the model is not
  changed;
- the solver of :mod:`spa_opt.passes.coupling.solver` tracks channel axes forward and
  backward from every weighted operator, then unites coupled channels into removal
  units with index maps; operators without a rule pin what reaches them;
- channels reaching graph inputs and outputs are pinned, except at key/value-cache
  inputs and outputs when the run's ``io`` is ``rewrite`` (``--io rewrite``);
- the result goes to the context as ``couplings``, read by ``group``; setting it
  clears every analysis derived from earlier couplings (groups, scores, dead units,
  selections, reconstructed weights: see :mod:`spa_opt.passes._infra.context`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import onnx_ir as ir

from spa_opt.ir.shapes import temporary_shapes
from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.solver import CoupleOptions, Coupling, solve


@dataclasses.dataclass
class CouplePassOptions:
    """Options of ``couple``."""

    heads: Literal["whole", "dim"] = option(
        "whole",
        "how an axis split in two (heads) couples: remove whole heads, or the head "
        "dimension uniformly across heads",
    )


def couple_model(model: ir.Model, heads: str = "whole", io: str = "keep") -> Coupling:
    """Run the coupling analysis on ``model`` without changing it.

    ``heads`` and ``io``: see :class:`~spa_opt.passes.coupling.solver.CoupleOptions`.
    """
    with temporary_shapes(model, symbolic=True):
        return solve(model.graph, CoupleOptions(heads=heads, io=io))


@register
class CouplePass(SpaPass):
    """Couple channels by mask propagation on a dataflow-lattice solver (analysis)."""

    name = "couple"
    Options = CouplePassOptions
    preserves_analyses = True

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Solve and store the couplings in the context."""
        coupling = couple_model(model, self.options.heads, context.io)
        context.analyses.couplings = coupling  # clears everything derived from older ones
        for key, value in coupling.stats.items():
            self.count(key, value)
        return ir.passes.PassResult(model, False)
