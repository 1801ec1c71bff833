"""fpgm: Filter Pruning via Geometric Median (He et al. 2019), for units.

Units close to the geometric median of their layer are the most replaceable. For
each member with role ``out`` and rank 2 or more (a weight that produces the units),
with ``X_u`` unit ``u``'s whole slice flattened::

    score_u = sum_v || X_u - X_v ||_2

A low score means near the median: redundant. Biases, scales and consuming weights
do not take part; a group without a producing weight of rank 2 or more is unscored.
Members then combine with ``agg`` and the group is rescaled with ``norm``.
"""

from __future__ import annotations

import numpy as np

from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Member
from spa_opt.passes.criteria.base import CriterionPass, unit_slices

_PAIRS_PER_CHUNK = 1 << 22


@register
class FpgmCriterion(CriterionPass):
    """Score units by their summed distance to the other units of a layer (analysis)."""

    name = "fpgm"
    roles = frozenset({"out"})
    unscored_why = "no weight of rank 2 or more produces these channels"

    def member_scores(
        self, tensor: np.ndarray, member: Member, axis_positions: np.ndarray
    ) -> np.ndarray | None:
        """Summed Euclidean distance to every other unit, for producing weights."""
        if tensor.ndim < 2:
            return None
        from scipy.spatial.distance import cdist  # imported lazily: 55 ms of start-up

        slices = unit_slices(tensor, axis_positions)
        rows = max(1, _PAIRS_PER_CHUNK // max(len(slices), 1))
        return np.concatenate([
            cdist(slices[start : start + rows], slices).sum(axis=1)
            for start in range(0, len(slices), rows)
        ])
