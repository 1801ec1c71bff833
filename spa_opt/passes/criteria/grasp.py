"""grasp: gradient signal preservation (Wang et al. 2020), summed over each unit.

GraSP removes the weights whose removal reduces the gradient flow ``g^T g`` the least.
To first order, removing ``w`` changes it by ``-2 w (H g)``, so GraSP's removal score
is ``S(-w) = -w (H g)`` and high scores go first. As an importance (high is kept)::

    score_u = sum_{p in P_u} sum_{rest} W[p, rest] * (H g)[p, rest]

with ``H g`` from the double-backward trick (:mod:`spa_opt.autodiff.gradients`). The
scores are signed, so the default ``norm`` is ``minmax`` (dividing by a negative mean
would reverse the order). BatchNorm uses batch statistics by default (``mode=train``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import onnx_ir as ir

from spa_opt.passes._infra.base import option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.criteria.gradient import GradientCriterion
from spa_opt.passes.criteria.snip import AtInitOptions


@dataclasses.dataclass
class SignedOptions(AtInitOptions):
    """Signed scores: rescale with minmax by default."""

    norm: Literal["none", "mean", "max", "sum", "minmax"] = option(
        "minmax", "how a group's scores are rescaled (signed scores: minmax keeps the order)")


@register
class GraspCriterion(GradientCriterion):
    """Score units by how much they carry the gradient flow, w (H g) (analysis)."""

    name = "grasp"
    Options = SignedOptions

    def saliencies(self, graph: Any, data: list[Any], model: ir.Model,
                   context: PipelineContext) -> dict[str, Any]:
        """``w * (H g)`` for every weight (signed)."""
        from spa_opt.autodiff.gradients import hessian_gradient

        hg = hessian_gradient(graph, data)
        return {name: w.detach() * hg[name] for name, w in graph.named_initializers()}
