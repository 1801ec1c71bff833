"""Infer value types and shapes with ONNX shape inference.

Rules:

- shapes and dtypes inferred by ``onnx.shape_inference`` (with data propagation,
  so shapes computed by Shape/Gather/Concat subgraphs resolve) are written back to
  the IR; large initializers are stripped for the call, so models over 2 GB work;
- inference is a hint, not a verdict: when it fails the model is left as it was
  and the ``failed`` counter says so. Use ``check`` to verify a model.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register


def _shaped_values(model: ir.Model) -> int:
    return sum(
        1
        for node in model.graph.all_nodes()
        for value in node.outputs
        if value.shape is not None and value.dtype is not None
    )


@register
class ShapeInferPass(SpaPass):
    """Infer types and shapes of intermediate values (needed for FLOPs and coupling)."""

    name = "shape-infer"
    preserves_analyses = True

    @dataclasses.dataclass
    class Options:
        """Options of shape-infer."""

        data_prop: bool = option(True, "propagate constant shape computations")

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Run inference; count values that gained a shape."""
        before = _shaped_values(model)
        result = ShapeInferencePass(strict_mode=False, data_prop=self.options.data_prop)(model)
        after = _shaped_values(model)
        total = sum(len(node.outputs) for node in model.graph.all_nodes())
        self.count("values-shaped", after - before)
        self.count("values-unshaped", total - after)
        return result
