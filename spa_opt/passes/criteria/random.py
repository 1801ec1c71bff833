"""random: a uniform random score per unit, the baseline every criterion must beat.

Group number ``i`` (its place in ``groups``) draws ``units`` values uniform in
``[0, 1)`` from ``np.random.default_rng((seed, i))``, with ``seed`` the run's
``--seed``: the same seed gives the same scores, another seed others, and groups draw
independently. Every scored member returns the group's draw, so ``agg`` ``mean``,
``max`` and ``first`` keep it as it is, while ``sum`` and ``prod`` transform it
monotonically (the ranking never changes); ``norm`` then rescales it.
"""

from __future__ import annotations

import numpy as np

from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Group, Member
from spa_opt.passes.criteria.base import CriterionPass


@register
class RandomCriterion(CriterionPass):
    """Score units uniformly at random, deterministic per --seed (analysis)."""

    name = "random"
    _draw: np.ndarray

    def start_group(self, group: Group, index: int, context: PipelineContext) -> None:
        """Draw the group's scores from its own seeded generator."""
        rng = np.random.default_rng((context.targets.seed, index))
        self._draw = rng.random(group.units)

    def member_scores(
        self, tensor: np.ndarray, member: Member, axis_positions: np.ndarray
    ) -> np.ndarray:
        """The group's draw, whatever the member."""
        return self._draw
