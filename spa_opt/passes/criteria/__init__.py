"""Group-level importance criteria (analyses): one score per unit of every prunable group.

Importing this package registers ``l1``, ``l2``, ``random``, ``bn-scale``, ``lamp`` and
``fpgm``. Each fills ``context.analyses["scores"]``; see :mod:`.base` for the shared
options ``agg`` and ``norm``. :func:`score_groups` runs one on demand.
"""

from spa_opt.passes.criteria.base import CriterionOptions, CriterionPass, score_groups
from spa_opt.passes.criteria.bn_scale import BatchNormScaleCriterion
from spa_opt.passes.criteria.fpgm import FpgmCriterion
from spa_opt.passes.criteria.l1 import L1Criterion
from spa_opt.passes.criteria.l2 import L2Criterion
from spa_opt.passes.criteria.lamp import LampCriterion
from spa_opt.passes.criteria.random import RandomCriterion

__all__ = [
    "BatchNormScaleCriterion",
    "CriterionOptions",
    "CriterionPass",
    "FpgmCriterion",
    "L1Criterion",
    "L2Criterion",
    "LampCriterion",
    "RandomCriterion",
    "score_groups",
]
