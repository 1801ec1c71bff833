"""Stages: the graph cut where the fewest activations cross, so obspa holds one at a time.

obspa needs every consumer layer's input activation for the whole calibration set. Run
as one onnxruntime session, a decoder's every block's activations exist at once. Cut
into stages, only the values that cross a cut are stored between stages, and a stage's
own activations are dropped once its Hessians are accumulated.

Rules, on the graph's nodes in topological order (position ``p`` is just before node
``p``):

- a value is *static* when it depends on initializers only (shape arithmetic,
  ``Constant``, folded weights): any stage that reads it recomputes it, so it never
  crosses a cut;
- the *live set* at ``p`` is every non-static value made before ``p`` and read by a node
  at or after ``p`` (graph inputs are always at hand and graph outputs are not needed
  for Hessians, so neither counts);
- between two consecutive consumer-layer nodes, the cut is the position with the
  smallest live set, and it is taken only when that set is no larger than the smallest
  live set anywhere between the first and the last layer: in a residual network the
  block boundaries (the residual stream alone), in a transformer the points between
  attention and MLP where only the residual stream and the block-invariant values
  (mask, rotary tables) are live; inside a block the skip connection adds one;
- a stage runs only the nodes its targets need (its layers' activations and the values
  later stages read), found backward from them; it reads the values earlier stages
  left (its *inputs*) and the graph inputs;
- a graph whose nodes carry subgraphs (``If``, ``Loop``, ``Scan``: their bodies read
  outer values invisibly to this walk) is one stage, as is a graph over
  ``MAX_STAGES`` stages merged in equal runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import onnx_ir as ir

MAX_STAGES = 128
"""More stages than this are merged: each stage costs an onnxruntime session."""


@dataclasses.dataclass(eq=False)
class Stage:
    """One cut of the graph: what it runs, reads, and leaves for the stages after it."""

    index: int
    nodes: list[ir.Node]
    """Nodes to run, in topological order (static producers first)."""
    inputs: list[ir.Value]
    """Values earlier stages made that this stage reads."""
    graph_inputs: list[ir.Value]
    """Graph inputs this stage reads."""
    activations: list[ir.Value]
    """Activations of this stage's consumer layers (each once)."""
    carried: list[ir.Value]
    """Values this stage makes that later stages read."""
    layer_nodes: list[ir.Node]
    """The consumer-layer nodes that belong to this stage."""

    @property
    def outputs(self) -> list[ir.Value]:
        """What the stage's session returns: activations it makes, then carried values."""
        made = {id(v) for node in self.nodes for v in node.outputs}
        seen: set[int] = set()
        out = []
        for value in [*self.activations, *self.carried]:
            if id(value) in made and id(value) not in seen:
                seen.add(id(value))
                out.append(value)
        return out


def _has_subgraphs(nodes: Sequence[ir.Node]) -> bool:
    kinds = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
    return any(attr.type in kinds for node in nodes for attr in node.attributes.values())


def static_values(graph: ir.Graph) -> set[int]:
    """Ids of values computable from initializers alone (no graph input upstream)."""
    inputs = {id(v) for v in graph.inputs}
    static = {id(v) for name, v in graph.initializers.items() if id(v) not in inputs}
    for node in graph:
        if node.op_type.startswith("Random"):
            continue
        if all(v is None or id(v) in static for v in node.inputs):
            static.update(id(v) for v in node.outputs)
    return static


def _live_counts(nodes: list[ir.Node], static: set[int]) -> list[int]:
    """Size of the live set before each node (index ``len(nodes)``: after the last)."""
    position = {id(node): i for i, node in enumerate(nodes)}
    delta = [0] * (len(nodes) + 2)
    for i, node in enumerate(nodes):
        for value in node.outputs:
            if id(value) in static:
                continue
            readers = [position[id(n)] for n, _ in value.uses() if id(n) in position]
            if readers and max(readers) > i:
                delta[i + 1] += 1
                delta[max(readers) + 1] -= 1
    counts, running = [], 0
    for i in range(len(nodes) + 1):
        running += delta[i]
        counts.append(running)
    return counts


def _cuts(nodes: list[ir.Node], static: set[int], layer_positions: list[int]) -> list[int]:
    """Stage start positions (the first is 0)."""
    counts = _live_counts(nodes, static)
    first, last = layer_positions[0], layer_positions[-1]
    floor = min(counts[first + 1: last + 1], default=0)
    cuts = [0]
    for a, b in itertools.pairwise(layer_positions):
        if b <= a:
            continue
        best = min(range(a + 1, b + 1), key=lambda p: (counts[p], -p))
        if counts[best] <= floor:
            cuts.append(best)
    return cuts


def _merge(cuts: list[int]) -> list[int]:
    if len(cuts) <= MAX_STAGES:
        return cuts
    run = math.ceil(len(cuts) / (MAX_STAGES // 2))
    return cuts[::run]


def _backward(targets: list[ir.Value], lo: int, hi: int, position: dict[int, int],
              static: set[int], static_nodes: dict[int, ir.Node]) -> tuple[set[int], set[int]]:
    """What the targets need: nodes and the values earlier stages must hand over.

    The nodes are those in ``[lo, hi)`` and static producers anywhere; the values are
    the non-static ones made before ``lo`` that those nodes read.
    """
    needed: set[int] = set()
    inputs: set[int] = set()
    stack = list(targets)
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        producer = value.producer()
        if producer is None or id(producer) not in position:
            continue  # a graph input or an initializer
        at = position[id(producer)]
        if id(value) in static:
            needed.add(id(producer))
            static_nodes[id(producer)] = producer
            stack.extend(producer.inputs)
        elif at >= hi:
            continue
        elif at < lo:
            inputs.add(id(value))
        elif id(producer) not in needed:
            needed.add(id(producer))
            stack.extend(producer.inputs)
    return needed, inputs


def plan_stages(graph: ir.Graph, layer_nodes: Sequence[ir.Node],
                activations: dict[int, list[ir.Value]]) -> list[Stage]:
    """Cut ``graph`` into stages around its consumer layers (see the module docstring).

    Args:
        graph: The model's main graph, nodes in topological order.
        layer_nodes: Every consumer layer's node.
        activations: Node id -> the activations its layers read.
    """
    nodes = list(graph)
    position = {id(node): i for i, node in enumerate(nodes)}
    static = static_values(graph)
    at = sorted({position[id(n)] for n in layer_nodes if id(n) in position})
    if not at:
        return []
    cuts = [0] if _has_subgraphs(nodes) else _merge(_cuts(nodes, static, at))
    bounds = [*cuts[1:], at[-1] + 1]
    by_stage: list[list[ir.Node]] = [[] for _ in cuts]
    for node in layer_nodes:
        index = max(i for i, start in enumerate(cuts) if start <= position[id(node)])
        by_stage[index].append(node)
    graph_inputs = {id(v): v for v in graph.inputs}
    stages: list[Stage] = []
    later: dict[int, ir.Value] = {}  # values stages after the current one read
    for index in range(len(cuts) - 1, -1, -1):
        lo, hi = cuts[index], bounds[index]
        wanted = list({id(v): v for n in by_stage[index] for v in activations[id(n)]}.values())
        carried = [v for v in later.values()
                   if v.producer() is not None and lo <= position.get(id(v.producer()), -1) < hi]
        static_nodes: dict[int, ir.Node] = {}
        needed, read = _backward([*wanted, *carried], lo, hi, position, static, static_nodes)
        run = [n for n in nodes if id(n) in needed]
        values = {id(v): v for n in run for v in n.inputs if v is not None}
        values.update({id(v): v for v in wanted})
        stage_inputs = [values[i] for i in read]
        used_graph_inputs = [v for i, v in values.items() if i in graph_inputs]
        stages.append(Stage(index, run, stage_inputs, used_graph_inputs, wanted, carried,
                            by_stage[index]))
        for value in carried:
            later.pop(id(value), None)
        for value in stage_inputs:
            later[id(value)] = value
    stages.reverse()
    return [s for s in stages if s.layer_nodes]
