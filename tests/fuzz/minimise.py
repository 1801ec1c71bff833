"""Shrink a failing mutant to a small reproducer with the same failure kind.

Greedy reduction, each step kept only when the oracle still reports the same failure
(:meth:`Verdict.signature`): keep one graph output; cut the graph at an earlier value
(that value becomes the only output, everything it does not need goes); bypass single
nodes (readers read the node's first input). Unused nodes, initializers and inputs
are dropped after every step. The run budget bounds the time on big graphs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import onnx
from onnx import helper

from tests.fuzz.oracle import Verdict, run_model

Oracle = Callable[[onnx.ModelProto], Verdict]


def prune_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes no graph output depends on, then unread initializers and inputs."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            for attr in node.attribute:  # subgraphs read outer values
                for sub in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
                    needed.update(n for s in sub.node for n in s.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    inputs = [v for v in graph.input if v.name in needed]
    if inputs:
        del graph.input[:]
        graph.input.extend(inputs)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    graph = inferred.graph
    return {v.name: v for v in [*graph.value_info, *graph.output, *graph.input]}


def _with_outputs(model: onnx.ModelProto, names: list[str],
                  types: dict[str, onnx.ValueInfoProto]) -> onnx.ModelProto:
    candidate = _copy(model)
    del candidate.graph.output[:]
    for name in names:
        info = types.get(name) or helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                               None)
        candidate.graph.output.append(info)
    return prune_unused(candidate)


def _bypass(model: onnx.ModelProto, index: int) -> onnx.ModelProto | None:
    candidate = _copy(model)
    node = candidate.graph.node[index]
    if not node.input or not node.input[0]:
        return None
    source = node.input[0]
    del candidate.graph.node[index]
    for name in node.output:
        for other in candidate.graph.node:
            for i, read in enumerate(other.input):
                if read == name:
                    other.input[i] = source
        for output in candidate.graph.output:
            if output.name == name:
                output.name = source
    if len({o.name for o in candidate.graph.output}) != len(candidate.graph.output):
        return None
    return prune_unused(candidate)


def _candidates(model: onnx.ModelProto) -> Iterator[onnx.ModelProto]:
    """Smaller variants of ``model``, most aggressive first."""
    types = _value_types(model)
    outputs = [o.name for o in model.graph.output]
    if len(outputs) > 1:
        for name in outputs:
            yield _with_outputs(model, [name], types)
    values = [name for node in model.graph.node for name in node.output if name]
    count = len(values)
    for fraction in (0.125, 0.25, 0.5, 0.75, 0.9):
        position = int(count * fraction)
        if 0 < position < count - 1:
            yield _with_outputs(model, [values[position]], types)
    for index in reversed(range(len(model.graph.node))):
        candidate = _bypass(model, index)
        if candidate is not None:
            yield candidate


def minimise(model: onnx.ModelProto, signature: str, *, max_runs: int = 80,
             seconds: float = 180.0, oracle: Oracle | None = None) -> tuple[onnx.ModelProto, int]:
    """The smallest variant of ``model`` found that still fails with ``signature``.

    Returns the reproducer and the oracle runs spent.
    """
    check = oracle or (lambda m: run_model(m, timeout=30.0))
    best, runs, deadline = model, 0, time.monotonic() + seconds
    improved = True
    while improved and runs < max_runs and time.monotonic() < deadline:
        improved = False
        for candidate in _candidates(best):
            if runs >= max_runs or time.monotonic() >= deadline:
                break
            if len(candidate.graph.node) >= len(best.graph.node) and \
                    candidate.ByteSize() >= best.ByteSize():
                continue
            runs += 1
            verdict = check(candidate)
            if verdict.failed and verdict.signature() == signature:
                best, improved = candidate, True
                break
    return best, runs
