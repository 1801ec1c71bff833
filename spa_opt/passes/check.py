"""Check a model: the onnx checker's full check, then strict shape inference.

Rules:

- the full checker validates the graph, its opsets and node attributes;
- strict shape inference fails on inconsistent shapes, which is what a wrong
  pruning leaves behind (a Conv whose weight no longer matches its input);
- large initializers are stripped for both calls, so models over 2 GB check;
- a failure raises :class:`~spa_opt.errors.VerificationError` with onnx's message.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass

from spa_opt.errors import VerificationError
from spa_opt.passes.base import SpaPass
from spa_opt.passes.context import PipelineContext
from spa_opt.passes.registry import register


def check_model(model: ir.Model) -> None:
    """Raise VerificationError if the model fails the full check or strict inference."""
    try:
        CheckerPass(full_check=True)(model)
    except Exception as error:  # onnx raises several unrelated types here
        cause = error.__cause__ or error
        message = " ".join(str(cause).split()) or type(cause).__name__
        raise VerificationError(f"the model is invalid: {message}") from error


@register
class CheckPass(SpaPass):
    """Fail unless the model passes the onnx checker and strict shape inference."""

    name = "check"
    preserves_analyses = True

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Check; never modifies the model."""
        check_model(model)
        return ir.passes.PassResult(model, False)

