"""check: fail the run unless the model is valid (see :mod:`spa_opt.ir.check`).

Rules:

- the full onnx checker, strict shape inference and the channel counts onnx does not
  compare, exactly as :func:`spa_opt.ir.check.check_model` states them;
- a failure raises :class:`~spa_opt.errors.VerificationError`; the model never changes.
"""

from __future__ import annotations

import onnx_ir as ir

from spa_opt.ir.check import check_model
from spa_opt.passes._infra.base import SpaPass
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register

__all__ = ["CheckPass", "check_model"]


@register
class CheckPass(SpaPass):
    """Fail unless the model passes the onnx checker and strict shape inference."""

    name = "check"
    preserves_analyses = True

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Check; never modifies the model."""
        check_model(model)
        return ir.passes.PassResult(model, False)

