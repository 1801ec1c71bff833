"""taylor: first-order Taylor importance of whole units (Molchanov et al. 2019).

Removing unit ``u`` changes the loss by about the first-order term of its weights,
``sum_{w in u} w dL/dw``. Per batch ``b`` the unit's importance is the square of that
sum, averaged over batches::

    score_u = mean_b ( sum_{p in P_u} sum_{rest} W[p, rest] * dL_b/dW[p, rest] )^2

(squared per batch so that signs of different batches do not cancel). The loss is the
cross-entropy against the calibration labels, else the model's own predictions. For a
trained model, with BatchNorm in eval mode (the default).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Member
from spa_opt.passes.criteria.base import per_unit, slice_sums
from spa_opt.passes.criteria.gradient import GradientCriterion


@register
class TaylorCriterion(GradientCriterion):
    """Score units by the squared first-order change of the loss on removal (analysis)."""

    name = "taylor"

    def saliencies(self, graph: Any, data: list[Any], model: ir.Model,
                   context: PipelineContext) -> dict[str, Any]:
        """Per-batch ``w * dL_b/dw``, stacked on a new leading axis (batches last)."""
        import torch

        from spa_opt.autodiff.gradients import per_batch_products

        products = per_batch_products(graph, data)
        return {name: torch.stack([p[name] for p in products], dim=-1)
                for name in products[0]} if products else {}

    def member_scores(self, tensor: np.ndarray, member: Member, axis_positions: np.ndarray
                      ) -> np.ndarray:
        """Mean over batches of the squared sum of ``w * dL_b/dw`` over each unit."""
        per_batch = np.stack([per_unit(slice_sums(tensor[..., b]), axis_positions)
                              for b in range(tensor.shape[-1])])
        return np.mean(per_batch**2, axis=0)
