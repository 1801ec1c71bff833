"""crop: gradient-flow-preserving pruning at initialisation (CroP, from EarlyCroP).

Rachwan et al. 2022 (*Winning the Lottery Ahead of Time: Efficient Early Network
Pruning*, with one of SPA's authors) keep the connections that most change the
gradient flow in either direction, the magnitude of GraSP's term, and prune whole
channels in their structured variant::

    score_u = sum_{p in P_u} sum_{rest} |W[p, rest] * (H g)[p, rest]|

BatchNorm uses batch statistics by default (``mode=train``), as at initialisation.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.criteria.gradient import GradientCriterion
from spa_opt.passes.criteria.snip import AtInitOptions


@register
class CropCriterion(GradientCriterion):
    """Score units by how much they change the gradient flow, |w (H g)| (analysis)."""

    name = "crop"
    Options = AtInitOptions

    def saliencies(self, graph: Any, data: list[Any], model: ir.Model,
                   context: PipelineContext) -> dict[str, Any]:
        """``|w * (H g)|`` for every weight."""
        from spa_opt.autodiff.gradients import hessian_gradient

        hg = hessian_gradient(graph, data)
        return {name: (w.detach() * hg[name]).abs() for name, w in graph.named_initializers()}
