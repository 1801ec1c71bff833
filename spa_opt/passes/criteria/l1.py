"""l1: magnitude criterion, the L1 norm of each unit's weights.

For a member tensor ``W`` with the group's axis in front and unit ``u`` at positions
``P_u`` on that axis::

    score_u = sum_{p in P_u} sum_{rest} |W[p, rest]|

summed over every other axis. Members then combine with ``agg`` and the group is
rescaled with ``norm`` (see :mod:`spa_opt.passes.criteria.base`).
"""

from __future__ import annotations

import numpy as np

from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Member
from spa_opt.passes.criteria.base import CriterionPass, MagnitudeOptions, per_unit, slice_sums


@register
class L1Criterion(CriterionPass):
    """Score units by the L1 norm of their weights, summed over every member (analysis)."""

    name = "l1"
    Options = MagnitudeOptions

    def member_scores(
        self, tensor: np.ndarray, member: Member, axis_positions: np.ndarray
    ) -> np.ndarray:
        """Sum of absolute values over each unit's slice."""
        per_position = slice_sums(np.abs(tensor))
        return per_unit(per_position, axis_positions)
