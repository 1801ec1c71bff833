"""The coupling analysis behind the ``couple`` and ``group`` passes."""

from spa_opt.passes.coupling.node import Link, NodeCoupling, Patch, Pin
from spa_opt.passes.coupling.solver import AxisInfo, CoupleOptions, Coupling, solve

__all__ = [
    "AxisInfo",
    "CoupleOptions",
    "Coupling",
    "Link",
    "NodeCoupling",
    "Patch",
    "Pin",
    "solve",
]
