"""The rule table of the coupling analysis: operator type to rule.

Family modules register their rules here with :func:`rule`; the solver looks them up
with :func:`get_rule`. The table knows no family: :mod:`spa_opt.passes.rules` imports
them all, so importing the package fills it.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from spa_opt.passes.coupling.node import NodeCoupling

Rule = Callable[[NodeCoupling], None]

_RULES: dict[tuple[str, str], Rule] = {}


def rule(*op_types: str, domain: str = "") -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of ``op_types`` in ``domain``."""

    def register(function: Rule) -> Rule:
        for op_type in op_types:
            _RULES[(domain, op_type)] = function
        return function

    return register


def get_rule(node: ir.Node) -> Rule | None:
    """The rule for ``node``'s operator, None when there is none."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    return _RULES.get((domain, node.op_type))


def supported_ops() -> list[str]:
    """Every operator with a rule, as ``Op`` or ``domain::Op``."""
    return sorted(f"{d}::{op}" if d else op for d, op in _RULES)
