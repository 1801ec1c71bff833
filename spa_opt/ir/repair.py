"""Repair on load what onnxruntime accepts but the ONNX checker does not.

Real exports and toolchains write graphs that run fine and still fail the full
checker, and every spa-opt transform ends with that checker. Two such faults are
repaired (and counted) as the model is loaded, before any pass:

- nodes out of topological order (onnxruntime sorts them itself; onnxruntime's own
  ``float16`` converter appends its input Casts at the end of the node list): the
  graph is sorted, stably, so a graph already in order is never touched;
- stale or contradictory ``value_info`` (jax2onnx writes shapes from before a
  stride-2 convolution): intermediate shape annotations are only hints, so when the
  full check fails and passes once they are dropped, they are dropped. The graph's
  inputs and outputs keep their declared types: they are the model's interface;
- a graph output declared without a shape (onnxruntime runs it, the checker requires
  one): the shape ONNX inference gives it is written, so the interface gains only
  what the graph already implies.

Anything else the checker rejects is left for the passes to report; this module
never raises on such a model and never changes one it cannot repair.
"""

from __future__ import annotations

import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.ir.check import check_model
from spa_opt.ir.shapes import temporary_shapes


def repair_model(model: ir.Model) -> dict[str, int]:
    """Sort the graph if needed and drop stale value_info; the repairs made, by name."""
    repairs: dict[str, int] = {}
    moved = _sort_if_needed(model)
    if moved:
        repairs["nodes-reordered"] = moved
    shaped = _shape_bare_outputs(model)
    if shaped:
        repairs["output-shapes-inferred"] = shaped
    dropped = _drop_stale_value_info(model)
    if dropped:
        repairs["value-info-dropped"] = dropped
    return repairs


def _out_of_order(graph: ir.Graph) -> int:
    """Nodes that read a value of this graph produced by a later node."""
    seen: set[int] = set()
    late = 0
    for node in graph:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer.graph is graph and id(producer) not in seen:
                late += 1
                break
        seen.add(id(node))
    return late


def _sort_if_needed(model: ir.Model) -> int:
    late = sum(_out_of_order(graph) for graph in model.graphs())
    if not late:
        return 0
    try:
        model.graph.sort()
    except Exception as error:  # onnx_ir raises on a cycle, in its own words
        detail = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"the graph cannot be put in topological order: {detail}") from None
    return late


def _shape_bare_outputs(model: ir.Model) -> int:
    """Give graph outputs without a shape the one inference finds; how many gained one."""
    bare = [value for value in model.graph.outputs if value.shape is None]
    if not bare:
        return 0
    try:
        with temporary_shapes(model):
            inferred = [(value, value.shape, value.type) for value in bare]
    except Exception:  # inference failing is the check's to report, not this repair's
        return 0
    shaped = 0
    for value, shape, type_ in inferred:
        if shape is not None:
            value.shape = shape
            if value.type is None:
                value.type = type_
            shaped += 1
    return shaped


def _full_check_passes(model: ir.Model) -> bool:
    try:
        check_model(model)
    except Exception:  # VerificationError, or a model the checker cannot even read
        return False
    return True


def _drop_stale_value_info(model: ir.Model) -> int:
    """Clear the annotated shapes of intermediate values when they alone fail the check."""
    annotated = [value for graph in model.graphs() for node in graph for value in node.outputs
                 if not value.is_graph_output() and (value.shape is not None
                                                     or value.type is not None)]
    if not annotated or _full_check_passes(model):
        return 0
    saved = [(value, value.shape, value.type) for value in annotated]
    for value in annotated:
        value.shape = None
        value.type = None
    if _full_check_passes(model):
        return len(annotated)
    for value, shape, type_ in saved:  # something else is wrong: leave the model as it was
        value.type = type_
        value.shape = shape
    return 0
