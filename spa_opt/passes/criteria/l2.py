"""l2: magnitude criterion, the L2 norm of each unit's weights.

For a member tensor ``W`` with the group's axis in front and unit ``u`` at positions
``P_u`` on that axis, the Euclidean norm of the unit's whole slice::

    score_u = sqrt( sum_{p in P_u} sum_{rest} W[p, rest]^2 )

(not squared; ``lamp`` uses the squared form). Members then combine with ``agg`` and
the group is rescaled with ``norm`` (see :mod:`spa_opt.passes.criteria.base`).
"""

from __future__ import annotations

import numpy as np

from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Member
from spa_opt.passes.criteria.base import CriterionPass, MagnitudeOptions, per_unit, slice_sums


@register
class L2Criterion(CriterionPass):
    """Score units by the L2 norm of their weights, per member (analysis)."""

    name = "l2"
    Options = MagnitudeOptions

    def member_scores(
        self, tensor: np.ndarray, member: Member, axis_positions: np.ndarray
    ) -> np.ndarray:
        """Euclidean norm of each unit's slice."""
        per_position = slice_sums(np.square(tensor))
        return np.sqrt(per_unit(per_position, axis_positions))
