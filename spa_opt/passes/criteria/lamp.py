"""lamp: Layer-Adaptive Magnitude-based Pruning (Lee et al. 2021), for units.

LAMP scores a weight by its squared magnitude divided by the squared magnitudes of
every weight of the same layer that is at least as large. Applied to units: per
member, with ``m_u`` the squared L2 norm of unit ``u``'s slice::

    m_u     = sum_{p in P_u} sum_{rest} W[p, rest]^2
    score_u = m_u / sum_{v : m_v >= m_u} m_v

The largest unit of a member scores 1 and scores are comparable across layers. A
member whose units are all zero scores zeros. Members then combine with ``agg`` and
the group is rescaled with ``norm`` (see :mod:`spa_opt.passes.criteria.base`).
"""

from __future__ import annotations

import numpy as np

from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Member
from spa_opt.passes.criteria.base import CriterionPass, per_unit, slice_sums


@register
class LampCriterion(CriterionPass):
    """Score units by LAMP, squared magnitude over that of all larger units (analysis)."""

    name = "lamp"

    def member_scores(
        self, tensor: np.ndarray, member: Member, axis_positions: np.ndarray
    ) -> np.ndarray:
        """``m_u / sum of m_v >= m_u`` per unit."""
        m = per_unit(slice_sums(np.square(tensor)), axis_positions)
        ascending = np.sort(m)
        at_least = np.concatenate([np.cumsum(ascending[::-1])[::-1], [0.0]])
        denominator = at_least[np.searchsorted(ascending, m, side="left")]
        return np.divide(m, denominator, out=np.zeros_like(m), where=denominator > 0)
