"""Run a spa-opt pipeline on an onnx-graphsurgeon graph.

TensorRT toolchains hold their models as ``gs.Graph``. The graph is exported to
ONNX, optimized, and imported back, so names, opsets and tensor data survive the
trip. Exported graphs keep their weights in memory; for models over 2 GB, go
through files and :func:`spa_opt.optimize` instead.
"""

from __future__ import annotations

from typing import Any

import onnx_graphsurgeon as gs
import onnx_ir as ir

from spa_opt.api import Pipeline, optimize
from spa_opt.report import Report


def optimize_graph(graph: gs.Graph, pipeline: Pipeline, **kwargs: Any) -> tuple[gs.Graph, Report]:
    """Run ``pipeline`` on ``graph`` and return a new graph and the report.

    Args:
        graph: The graph; it is not modified.
        pipeline: Pipeline text or passes, as for :func:`spa_opt.optimize`.
        **kwargs: Targets and options of :func:`spa_opt.optimize`.

    Returns:
        The optimized graph and the run's report.
    """
    proto = gs.export_onnx(graph)
    model, report = optimize(proto, pipeline, **kwargs)
    return gs.import_onnx(ir.to_proto(model)), report
