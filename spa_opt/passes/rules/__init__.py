"""Operator rules of the coupling analysis: one small function per operator.

A rule receives a :class:`~spa_opt.passes.coupling.node.NodeCoupling` and states, in
its vocabulary (link, seed, consume, patch, pin), how channels cross one node. Rules
are grouped by operator family, one module each; adding an operator is adding one
function with ``@rule("OpType")``. An operator without a rule pins every channel that
reaches it, so a missing rule costs coverage, never correctness.

Families: :mod:`.elementwise` (unary and broadcasting n-ary ops), :mod:`.layout`
(Transpose, Squeeze, Unsqueeze, Concat, Split, Slice, Gather, Expand, Tile, Pad,
Shape, constants), :mod:`.reshape` (Reshape, Flatten, DepthToSpace, SpaceToDepth),
:mod:`.conv` (Conv, ConvTranspose), :mod:`.linear` (Gemm, MatMul, Einsum),
:mod:`.norm` (Batch/Instance/Layer/Group/RMS normalization), :mod:`.reduce`
(reductions, Softmax, pooling, Resize).
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


from spa_opt.passes.rules import (  # noqa: E402  (registration needs rule() defined)
    conv,
    elementwise,
    layout,
    linear,
    norm,
    reduce,
    reshape,
)

__all__ = [
    "Rule",
    "conv",
    "elementwise",
    "get_rule",
    "layout",
    "linear",
    "norm",
    "reduce",
    "reshape",
    "rule",
    "supported_ops",
]
