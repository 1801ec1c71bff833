"""ONNX operators in torch eager mode: one small function per operator, in a table.

Every rule has the signature ``rule(node: NodeCall, *inputs) -> Tensor | tuple``;
``inputs`` are torch tensors (``None`` for omitted optional inputs) and the rule
returns the node's outputs in order. Rules are grouped by family:
:mod:`.elementwise`, :mod:`.nn` (convolution, normalisation, pooling) and
:mod:`.shape` (layout, indexing, reductions). An operator missing from the table is
reported by name when the graph is lifted, never half-way through a forward pass.
"""

from __future__ import annotations

from spa_opt.autodiff.ops import elementwise, nn, shape  # noqa: F401  (fill RULES)
from spa_opt.autodiff.ops.registry import RULES, NodeCall, rule

__all__ = ["RULES", "NodeCall", "rule"]
