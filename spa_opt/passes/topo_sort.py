"""Sort nodes topologically (stable), as ONNX requires and as rewrites may break."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from spa_opt.passes._infra.base import SpaPass
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register


@register
class TopoSortPass(SpaPass):
    """Sort nodes so that every value is produced before it is read."""

    name = "topo-sort"
    preserves_analyses = True

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Delegate to onnx_ir's stable topological sort."""
        return TopologicalSortPass()(model)
