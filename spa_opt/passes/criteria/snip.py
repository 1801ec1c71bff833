"""snip: connection sensitivity (Lee et al. 2019), summed over each unit.

SNIP's saliency of a weight is the magnitude of its first-order effect on the loss,
``|w dL/dw|``, with the gradient of the mean loss over one or a few batches; a unit's
score is that saliency summed over its slice::

    score_u = sum_{p in P_u} sum_{rest} |W[p, rest] * dL/dW[p, rest]|

Meant for pruning at initialisation, so BatchNorm uses batch statistics by default
(``mode=train``); labels come from the calibration data, else the model's predictions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import onnx_ir as ir

from spa_opt.passes._infra.base import option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.criteria.gradient import GradientCriterion, GradientOptions


@dataclasses.dataclass
class AtInitOptions(GradientOptions):
    """Gradient criteria for pruning at initialisation: batch statistics by default."""

    mode: Literal["eval", "train"] = option(
        "train", "BatchNormalization statistics while taking gradients: running (eval) or "
        "batch (train)")


@register
class SnipCriterion(GradientCriterion):
    """Score units by their summed connection sensitivity |w dL/dw| (analysis)."""

    name = "snip"
    Options = AtInitOptions

    def saliencies(self, graph: Any, data: list[Any], model: ir.Model,
                   context: PipelineContext) -> dict[str, Any]:
        """``|w * dL/dw|`` for every weight."""
        from spa_opt.autodiff.gradients import gradient

        grads = gradient(graph, data)
        return {name: (w.detach() * grads[name]).abs()
                for name, w in graph.named_initializers()}
