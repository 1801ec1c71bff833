"""Group-level importance criteria (analyses): one score per unit of every prunable group.

Importing this package registers ``l1``, ``l2``, ``random``, ``bn-scale``, ``lamp``,
``fpgm`` and the gradient criteria ``taylor``, ``snip``, ``grasp``, ``crop`` and
``synflow`` (these need the autodiff extra when they run, never when imported). Each
fills ``context.analyses.scores``; see :mod:`.base` for the shared options ``agg``
and ``norm``. :func:`score_groups` runs one on demand; :func:`current_scores` gives the
scores a selection should use (the last criterion's, else :data:`DEFAULT_CRITERION`'s).
"""

from spa_opt.passes.criteria.base import (
    DEFAULT_CRITERION,
    CriterionOptions,
    CriterionPass,
    current_scores,
    score_groups,
)
from spa_opt.passes.criteria.bn_scale import BatchNormScaleCriterion
from spa_opt.passes.criteria.crop import CropCriterion
from spa_opt.passes.criteria.fpgm import FpgmCriterion
from spa_opt.passes.criteria.grasp import GraspCriterion
from spa_opt.passes.criteria.l1 import L1Criterion
from spa_opt.passes.criteria.l2 import L2Criterion
from spa_opt.passes.criteria.lamp import LampCriterion
from spa_opt.passes.criteria.random import RandomCriterion
from spa_opt.passes.criteria.snip import SnipCriterion
from spa_opt.passes.criteria.synflow import SynFlowCriterion
from spa_opt.passes.criteria.taylor import TaylorCriterion

__all__ = [
    "DEFAULT_CRITERION",
    "BatchNormScaleCriterion",
    "CriterionOptions",
    "CriterionPass",
    "CropCriterion",
    "FpgmCriterion",
    "GraspCriterion",
    "L1Criterion",
    "L2Criterion",
    "LampCriterion",
    "RandomCriterion",
    "SnipCriterion",
    "SynFlowCriterion",
    "TaylorCriterion",
    "current_scores",
    "score_groups",
]
