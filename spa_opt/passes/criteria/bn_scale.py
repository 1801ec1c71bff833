"""bn-scale: Network Slimming's criterion, the magnitude of BatchNorm scales.

After Liu et al. 2017: a unit's score is ``|gamma|`` of the BatchNormalization that
normalizes its channels, summed over the unit's block positions::

    score_u = sum_{p in P_u} |gamma[p]|

Only members with role ``scale`` that feed a BatchNormalization's scale input take
part (LayerNorm and RMSNorm scales do not). Exported graphs usually fold BatchNorm
into the convolution before it, so many models have no group this criterion scores.
"""

from __future__ import annotations

import numpy as np

from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Member
from spa_opt.passes.criteria.base import CriterionPass, per_unit, slice_sums


@register
class BatchNormScaleCriterion(CriterionPass):
    """Score units by |gamma| of their BatchNormalization scale (analysis)."""

    name = "bn-scale"
    roles = frozenset({"scale"})
    unscored_why = "no BatchNormalization scale (exporters fold BatchNorm into convolutions)"

    def member_scores(
        self, tensor: np.ndarray, member: Member, axis_positions: np.ndarray
    ) -> np.ndarray | None:
        """``|gamma|`` per unit, or None unless a BatchNormalization reads it as scale."""
        if not any(
            use.node.op_type == "BatchNormalization" and use.idx == 1
            for use in member.value.uses()
        ):
            return None
        return per_unit(slice_sums(np.abs(tensor)), axis_positions)
