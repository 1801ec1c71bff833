"""Random valid ONNX architectures from the operator families the coupling rules cover.

Why: the rule tests build one pattern at a time; bugs live where patterns meet (a
grouped Conv behind a channel Slice, a Split whose parts join a residual sum, heads
reshaped out of a MatMul that a Concat fed). This module composes those patterns at
random, with random shapes and opsets, into graphs that the checker (full check) and
onnxruntime accept, for the properties of ``tests/fuzz/test_random_architectures.py``
and the long run of ``bench/random_architectures.py`` (issue 16).

Every decision goes through a :class:`Choices`, so one builder serves three drivers:
hypothesis (:func:`architectures`, which shrinks a counterexample block by block), a
seeded numpy generator (:class:`SeededChoices`, reproducible by seed in the bench) and
the worst cases of the hang tests (:func:`worst_graphs`: deep chains, wide Concat
trees, many-way residual joins). A graph the checker or onnxruntime refuses is a bug of
this module, never of spa-opt: :func:`validate` says which.

The blocks live in :mod:`tests.fuzz.blocks`; this module holds the driver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from spa_opt.ort import quiet_session_options

T = TypeVar("T")

OPSETS = tuple(range(13, 22))
"""Opsets drawn: 13 (the oldest with today's Split/Slice/Resize signatures) to 21."""


MAX_WEIGHTS = 2_000_000
"""Weight elements one graph may hold: the worst graphs stay well under it."""


class Choices(Protocol):
    """Where a builder's decisions come from (hypothesis, a seed, or the worst case)."""

    def integer(self, low: int, high: int) -> int:
        """An integer in ``[low, high]``."""

    def choice(self, options: Sequence[T]) -> T:
        """One of ``options`` (the first is the simplest: shrinking goes there)."""


class HypothesisChoices:
    """Decisions drawn by hypothesis, so a failing graph shrinks decision by decision."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(list(options)))


class SeededChoices:
    """Decisions from a numpy generator: the bench reproduces any graph from its seed."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def integer(self, low: int, high: int) -> int:
        return int(self._rng.integers(low, high + 1))

    def choice(self, options: Sequence[T]) -> T:
        return options[int(self._rng.integers(len(options)))]


class LargestChoices:
    """Always the largest integer and the last option: the generator's worst graphs."""

    def integer(self, low: int, high: int) -> int:
        return high

    def choice(self, options: Sequence[T]) -> T:
        return options[-1]


@dataclasses.dataclass
class Tensor:
    """A value of the graph under construction: its name and static-or-batch shape."""

    name: str
    shape: list[int | str]

    @property
    def kind(self) -> str:
        """``image`` ([N, C, H, W]), ``seq`` ([N, T, D]) or ``flat`` ([N, D])."""
        return {4: "image", 3: "seq", 2: "flat"}[len(self.shape)]

    @property
    def channels(self) -> int:
        """The channel count: axis 1 of an image, the last axis otherwise."""
        return int(self.shape[1] if self.kind == "image" else self.shape[-1])


@dataclasses.dataclass
class Limits:
    """Size limits of the blocks; the hang tests raise them."""

    channels: int = 12
    branches: int = 4
    chain: int = 3
    tree_depth: int = 2
    heads: int = 4


class Graph:
    """Nodes and initializers under construction, with fresh names and seeded weights."""

    def __init__(self, opset: int, seed: int, choices: Choices, limits: Limits) -> None:
        self.opset = opset
        self.choices = choices
        self.limits = limits
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.blocks: list[str] = []
        self._rng = np.random.default_rng(seed)
        self._count = 0
        self._elements = 0

    def fresh(self, prefix: str) -> str:
        """A name not used before."""
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, data: np.ndarray, prefix: str = "c") -> str:
        """An initializer holding ``data``."""
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.array(data), name))
        return name

    def weight(self, *shape: int, low: float | None = None) -> str:
        """Random float weights scaled by fan-in (or uniform in ``[low, low + 1]``)."""
        self._elements += int(np.prod(shape))
        if self._elements > MAX_WEIGHTS:  # a block that grows without bound is our bug
            raise AssertionError(f"the generator made over {MAX_WEIGHTS} weights")
        if low is not None:
            data = self._rng.uniform(low, low + 1.0, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            data = self._rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        return self.const(data.astype(np.float32), "w")

    def ints(self, values: Sequence[int]) -> str:
        """An int64 vector initializer (shapes, axes, split sizes)."""
        return self.const(np.asarray(values, dtype=np.int64), "i")

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1,
           **attrs: Any) -> list[str]:
        """Append a node; returns its output names."""
        names = [self.fresh("v") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names,
                                           name=self.fresh(op_type.lower() + "_"), **attrs))
        return names

    def op1(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        """Append a node with one output; returns its name."""
        return self.op(op_type, inputs, **attrs)[0]


@dataclasses.dataclass
class Architecture:
    """A generated model and how it was made (the blocks, for a reproducer)."""

    proto: onnx.ModelProto
    opset: int
    blocks: list[str]

    @property
    def nodes(self) -> int:
        """Number of nodes of the graph."""
        return len(self.proto.graph.node)

    def __repr__(self) -> str:
        ops = [n.op_type for n in self.proto.graph.node]
        return (f"Architecture(opset={self.opset}, nodes={len(ops)}, blocks={self.blocks}, "
                f"ops={ops})")


def _input(choices: Choices, limits: Limits) -> Tensor:
    """The graph input: an image, a sequence or a flat batch, batch symbolic or fixed."""
    batch: int | str = choices.choice([1, 2, "N"])
    kind = choices.choice(["image", "seq", "flat"])
    if kind == "image":
        side = choices.integer(2, 8)
        return Tensor("x", [batch, choices.integer(1, limits.channels), side, side])
    if kind == "seq":
        return Tensor("x", [batch, choices.integer(1, 6), choices.integer(2, limits.channels)])
    return Tensor("x", [batch, choices.integer(1, limits.channels)])


def generate(choices: Choices, *, max_blocks: int = 6, blocks: Sequence[str] | None = None,
             start: Tensor | None = None, limits: Limits | None = None,
             opset: int | None = None) -> Architecture:
    """Build one architecture from ``choices``.

    Args:
        choices: Where every decision comes from.
        max_blocks: At most this many blocks (at least one) when ``blocks`` is not given.
        blocks: Exact block names to apply in order (a block that does not fit the
            current tensor's kind is skipped); drawn from every family when ``None``.
        start: The graph input (drawn when ``None``).
        limits: Block size limits.
        opset: The default-domain opset (drawn from :data:`OPSETS` when ``None``).
    """
    from tests.fuzz.blocks import BLOCKS

    limits = limits or Limits()
    opset = opset if opset is not None else choices.choice(OPSETS)
    graph = Graph(opset, choices.integer(0, 2**16), choices, limits)
    x = start or _input(choices, limits)
    current = x
    outputs: list[Tensor] = []
    names = list(blocks) if blocks is not None else [
        None] * choices.integer(1, max_blocks)
    for name in names:
        usable = [b for b in BLOCKS[current.kind] if b.fits(graph, current)]
        block = (choices.choice(usable) if name is None
                 else next((b for b in usable if b.name == name), None))
        if block is None:
            continue
        if name is None and choices.integer(0, 7) == 0:
            outputs.append(current)  # an auxiliary output: its channels are pinned
        current = block.apply(graph, current)
        graph.blocks.append(block.name)
    outputs.append(current)
    return Architecture(_model(graph, x, outputs), opset, graph.blocks)


def _info(tensor: Tensor) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(tensor.name, TensorProto.FLOAT, tensor.shape)


def _model(graph: Graph, x: Tensor, outputs: list[Tensor]) -> onnx.ModelProto:
    """The model proto; an output that is the input itself goes through an Identity."""
    declared: list[Tensor] = []
    for out in outputs:
        if out.name == x.name or any(out.name == d.name for d in declared):
            out = Tensor(graph.op1("Identity", [out.name]), out.shape)
        declared.append(out)
    body = helper.make_graph(graph.nodes, "random", [_info(x)], [_info(o) for o in declared],
                             graph.initializers)
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", graph.opset)],
                             ir_version=10, producer_name="spa-opt-fuzz")


@st.composite
def architectures(draw: Callable[[st.SearchStrategy[Any]], Any], max_blocks: int = 6,
                  blocks: Sequence[str] | None = None) -> Architecture:
    """The hypothesis strategy: random valid architectures of up to ``max_blocks`` blocks."""
    return generate(HypothesisChoices(draw), max_blocks=max_blocks, blocks=blocks)


def worst_graphs() -> dict[str, Architecture]:
    """The largest graphs the generator makes, for the hang tests.

    Deep chains (over 200 nodes of convolutions, norms and activations), a wide Concat
    tree (four levels of four-way Concats over convolutions) and many-way residual joins
    (24 branches into one Sum, and an Add chain), built with :class:`LargestChoices` and
    raised :class:`Limits`.
    """
    big = Limits(channels=16, branches=24, chain=6, tree_depth=4, heads=4)
    image = Tensor("x", ["N", 8, 8, 8])
    sequence = Tensor("x", ["N", 4, 16])
    largest = LargestChoices()
    return {
        "deep-conv-chain": generate(largest, blocks=["conv", "norm", "act"] * 30,
                                    start=image, limits=big, opset=21),
        "deep-transformer": generate(largest, blocks=["attention", "mlp", "layernorm"] * 12,
                                     start=sequence, limits=big, opset=21),
        "wide-concat-tree": generate(largest, blocks=["concat-tree"], start=image, limits=big,
                                     opset=21),
        "many-way-residual": generate(largest, blocks=["residual"] * 4, start=image,
                                      limits=big, opset=21),
        "split-join-chain": generate(largest, blocks=["split", "concat", "slice"] * 20,
                                     start=image, limits=Limits(channels=16), opset=17),
    }


def random_input(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """One random feed (symbolic dims set to 2)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 2
                for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def validate(proto: onnx.ModelProto) -> None:
    """Raise unless the checker (full check) and an onnxruntime session accept ``proto``."""
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), quiet_session_options(),
                                   providers=["CPUExecutionProvider"])
    session.run(None, random_input(proto))
