"""Dead-code elimination: nodes nobody reads, unused initializers, functions and opsets.

Rules (onnx_ir's ready passes, in this order):

- a node none of whose outputs reaches a graph output is removed, unless it has
  side effects onnx_ir knows about; unused initializers go with it;
- model-local functions no node calls are removed;
- opset imports no node uses are removed.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import (
    RemoveUnusedFunctionsPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
)

from spa_opt.passes._infra.base import SpaPass
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register


def _sizes(model: ir.Model) -> tuple[int, int]:
    nodes = sum(1 for _ in model.graph.all_nodes())
    initializers = sum(len(g.initializers) for g in model.graphs())
    return nodes, initializers


@register
class DeadCodeEliminationPass(SpaPass):
    """Remove dead nodes, unused initializers, functions and opset imports."""

    name = "dce"

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Apply the rules of the module docstring."""
        nodes, initializers = _sizes(model)
        modified = False
        for step in (RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(),
                     RemoveUnusedOpsetsPass()):
            modified |= step(model).modified
        nodes_after, initializers_after = _sizes(model)
        self.count("nodes-removed", nodes - nodes_after)
        self.count("initializers-removed", initializers - initializers_after)
        return ir.passes.PassResult(model, modified)
