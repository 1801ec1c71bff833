"""The building blocks of random architectures, one function per pattern family.

Why: each block is a pattern a coupling rule has to get right (grouped and depthwise
convolutions, residual sums, channel Concat/Split/Slice, heads reshaped out of a
projection, normalizations, pooling, Resize, elementwise chains with per-channel
constants), and each keeps exact track of the shape it makes, so the generated graph is
valid by construction. Blocks read every decision from ``graph.choices``; the first
option of a choice is the simplest, so hypothesis shrinks towards plain graphs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from tests.fuzz.architectures import Graph, Tensor

Apply = Callable[[Graph, Tensor], Tensor]
Fits = Callable[[Graph, Tensor], bool]


@dataclasses.dataclass(frozen=True)
class Block:
    """A named pattern: where it fits and how it extends the graph."""

    name: str
    apply: Apply
    fits: Fits = lambda graph, t: True


def _channel_axis(t: Tensor) -> int:
    return 1 if t.kind in ("image", "flat") else 2


def _with_channels(t: Tensor, name: str, channels: int) -> Tensor:
    shape = list(t.shape)
    shape[_channel_axis(t)] = channels
    return Tensor(name, shape)


def _per_channel(graph: Graph, t: Tensor, low: float | None = None) -> str:
    """A constant broadcast over ``t``'s channels ([C, 1, 1] for images, [C] otherwise)."""
    shape = (t.channels, 1, 1) if t.kind == "image" else (t.channels,)
    return graph.weight(*shape, low=low)


def conv(graph: Graph, t: Tensor, out: int | None = None, stride: int | None = None) -> Tensor:
    """A Conv: plain, grouped or depthwise; kernel 1 or 3; stride 1 or 2; bias or not."""
    choices, c = graph.choices, t.channels
    n, _, h, w = t.shape
    style = choices.choice(["plain", "grouped", "depthwise"])
    groups = 1
    if style == "grouped" and c > 1:
        groups = choices.choice([d for d in range(2, c + 1) if c % d == 0])
    elif style == "depthwise":
        groups = c
    if out is None:
        if groups == c and c > 1:
            out = c * choices.integer(1, 2 if 2 * c <= graph.limits.channels else 1)
        else:
            out = groups * choices.integer(1, max(1, graph.limits.channels // groups))
    elif out % groups:
        groups = 1
    kernel = choices.choice([1, 3])
    if stride is None:
        stride = choices.choice([1, 2]) if min(int(h), int(w)) >= 4 else 1
    pad = kernel // 2
    inputs = [t.name, graph.weight(out, c // groups, kernel, kernel)]
    if choices.integer(0, 1):
        inputs.append(graph.weight(out, low=-0.5))
    y = graph.op1("Conv", inputs, kernel_shape=[kernel, kernel], pads=[pad] * 4,
                  strides=[stride] * 2, group=groups)
    side = [(int(s) + 2 * pad - kernel) // stride + 1 for s in (h, w)]
    return Tensor(y, [n, out, *side])


def linear(graph: Graph, t: Tensor, out: int | None = None) -> Tensor:
    """MatMul by a weight (Gemm on flat inputs, sometimes transposed), bias or not."""
    choices, c = graph.choices, t.channels
    out = out if out is not None else choices.integer(1, graph.limits.channels)
    if t.kind == "flat" and choices.integer(0, 1):
        trans = choices.integer(0, 1)
        weight = graph.weight(out, c) if trans else graph.weight(c, out)
        inputs = [t.name, weight]
        if choices.integer(0, 1):
            inputs.append(graph.weight(out, low=-0.5))
        return _with_channels(t, graph.op1("Gemm", inputs, transB=trans), out)
    y = graph.op1("MatMul", [t.name, graph.weight(c, out)])
    if choices.integer(0, 1):
        y = graph.op1("Add", [y, graph.weight(out, low=-0.5)])
    return _with_channels(t, y, out)


def project(graph: Graph, t: Tensor, out: int | None = None) -> Tensor:
    """The contraction of ``t``'s kind that keeps its other dims."""
    return conv(graph, t, out, stride=1) if t.kind == "image" else linear(graph, t, out)


def norm(graph: Graph, t: Tensor) -> Tensor:
    """BatchNormalization, InstanceNormalization, GroupNormalization or LayerNorm on C."""
    c = t.channels
    options = ["batch"] if t.kind != "seq" else []  # BatchNorm's channels are axis 1
    if t.kind == "image":
        options.append("instance")
        if graph.opset >= 21:
            options.append("group")
        if graph.opset >= 17:
            options.append("layer-chw")
    if t.kind != "image" and graph.opset >= 17:
        options.append("layer")
    kind = graph.choices.choice(options)
    if kind == "batch":
        y = graph.op1("BatchNormalization", [
            t.name, graph.weight(c, low=0.5), graph.weight(c, low=-0.5),
            graph.weight(c, low=-0.5), graph.weight(c, low=0.5)], epsilon=1e-3)
    elif kind == "instance":
        y = graph.op1("InstanceNormalization",
                      [t.name, graph.weight(c, low=0.5), graph.weight(c, low=-0.5)])
    elif kind == "group":
        groups = graph.choices.choice([d for d in range(1, c + 1) if c % d == 0])
        y = graph.op1("GroupNormalization",
                      [t.name, graph.weight(c, low=0.5), graph.weight(c, low=-0.5)],
                      num_groups=groups)
    elif kind == "layer-chw":
        shape = [int(d) for d in t.shape[1:]]
        y = graph.op1("LayerNormalization",
                      [t.name, graph.weight(*shape, low=0.5), graph.weight(*shape, low=-0.5)],
                      axis=1)
    else:
        y = graph.op1("LayerNormalization",
                      [t.name, graph.weight(c, low=0.5), graph.weight(c, low=-0.5)], axis=-1)
    return Tensor(y, list(t.shape))


def _unary(graph: Graph, t: Tensor) -> str:
    """One elementwise op that keeps the shape."""
    options = ["relu", "sigmoid", "tanh", "leaky", "mul-channel", "mul-scalar", "add-scalar",
               "add-channel", "div-channel", "swish", "clip"]
    if graph.opset >= 14:
        options.append("hardswish")
    kind = graph.choices.choice(options)
    x = t.name
    if kind in ("relu", "sigmoid", "tanh", "hardswish"):
        return graph.op1({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh",
                          "hardswish": "HardSwish"}[kind], [x])
    if kind == "leaky":
        return graph.op1("LeakyRelu", [x], alpha=0.1)
    if kind == "mul-channel":
        return graph.op1("Mul", [_per_channel(graph, t, low=0.5), x])
    if kind == "mul-scalar":
        return graph.op1("Mul", [x, graph.const(np.float32(0.5))])
    if kind == "add-scalar":
        return graph.op1("Add", [graph.const(np.float32(0.25)), x])
    if kind == "add-channel":
        return graph.op1("Add", [x, _per_channel(graph, t, low=-0.5)])
    if kind == "div-channel":
        return graph.op1("Div", [x, _per_channel(graph, t, low=0.5)])
    if kind == "swish":
        return graph.op1("Mul", [x, graph.op1("Sigmoid", [x])])
    return graph.op1("Clip", [x, graph.const(np.float32(-1.0)), graph.const(np.float32(1.0))])


def act(graph: Graph, t: Tensor) -> Tensor:
    """A chain of one to ``limits.chain`` elementwise ops."""
    for _ in range(graph.choices.integer(1, graph.limits.chain)):
        t = Tensor(_unary(graph, t), list(t.shape))
    return t


def residual(graph: Graph, t: Tensor) -> Tensor:
    """Branches of zero to two channel-keeping contractions joined by Add or Sum."""
    choices, c = graph.choices, t.channels
    skip = project(graph, t, c) if choices.integer(0, 1) and choices.integer(0, 1) else t
    branches = [skip.name]
    for _ in range(choices.integer(1, graph.limits.branches)):
        b = t
        for depth in range(choices.integer(0, 2)):
            if depth:
                b = Tensor(_unary(graph, b), list(b.shape))
            b = project(graph, b, c)
        branches.append(b.name)
    if choices.choice(["add", "sum"]) == "sum":
        return Tensor(graph.op1("Sum", branches), list(t.shape))
    y = branches[0]
    for other in branches[1:]:
        y = graph.op1("Add", [y, other])
    return Tensor(y, list(t.shape))


def _concat(graph: Graph, t: Tensor, parts: list[Tensor]) -> Tensor:
    axis = _channel_axis(t)
    axis = graph.choices.choice([axis, axis - len(t.shape)])
    y = graph.op1("Concat", [p.name for p in parts], axis=axis)
    return _with_channels(t, y, sum(p.channels for p in parts))


def concat(graph: Graph, t: Tensor) -> Tensor:
    """Two or more branches (identity or a contraction of any width) concatenated."""
    choices, parts = graph.choices, []
    for _ in range(choices.integer(2, max(2, graph.limits.branches))):
        # Narrow branches: a chain of Concats would otherwise grow without bound.
        width = choices.integer(1, graph.limits.channels)
        parts.append(t if not choices.integer(0, 2) else project(graph, t, width))
    return _concat(graph, t, parts)


def concat_tree(graph: Graph, t: Tensor) -> Tensor:
    """Nested Concats over narrow contractions: a tree of ``limits.tree_depth`` levels."""
    def subtree(depth: int) -> Tensor:
        if depth == 0:
            return project(graph, t, graph.choices.integer(1, 3))
        fanout = graph.choices.integer(2, max(2, min(4, graph.limits.branches)))
        return _concat(graph, t, [subtree(depth - 1) for _ in range(fanout)])
    return subtree(graph.choices.integer(1, graph.limits.tree_depth))


def split(graph: Graph, t: Tensor) -> Tensor:
    """Split the channels, maybe transform each part, join by Concat (any order) or Add."""
    choices, c = graph.choices, t.channels
    count = choices.integer(2, min(c, 4))
    sizes, left = [], c
    for i in range(count - 1):
        size = choices.integer(1, left - (count - 1 - i))
        sizes.append(size)
        left -= size
    sizes.append(left)
    axis = _channel_axis(t)
    if graph.opset >= 18 and len(set(sizes)) == 1 and choices.integer(0, 1):
        names = graph.op("Split", [t.name], count, axis=axis, num_outputs=count)
    else:
        names = graph.op("Split", [t.name, graph.ints(sizes)], count, axis=axis)
    parts = []
    for name, size in zip(names, sizes, strict=True):
        part = _with_channels(t, name, size)
        step = choices.choice(["keep", "act", "project"])
        if step == "act":
            part = act(graph, part)
        elif step == "project":
            part = project(graph, part, size)
        parts.append(part)
    join = choices.choice(["concat", "reversed", "first", "add"])
    if join == "add" and len(set(sizes)) == 1:
        y = parts[0].name
        for other in parts[1:]:
            y = graph.op1("Add", [y, other.name])
        return Tensor(y, list(parts[0].shape))
    if join == "first":
        return parts[0]
    return _concat(graph, t, parts[::-1] if join == "reversed" else parts)


def slice_(graph: Graph, t: Tensor) -> Tensor:
    """Slice one axis (channels mostly), with exporters' spellings of the bounds."""
    choices = graph.choices
    axis = _channel_axis(t)
    if t.kind == "image":
        axis = choices.choice([1, 2, 3])
    extent = int(t.shape[axis])
    start = choices.integer(0, extent - 1)
    stop = choices.integer(start + 1, extent)
    step = choices.choice([1, 2]) if stop - start > 1 else 1
    end_form = choices.choice(["exact", "max", "negative"])
    end = {"exact": stop, "max": 2**63 - 1 if stop == extent else stop,
           "negative": stop - extent if stop < extent else stop}[end_form]
    begin = start - extent if start and choices.integer(0, 1) else start
    axis_form = axis - len(t.shape) if choices.integer(0, 1) else axis
    inputs = [t.name, graph.ints([begin]), graph.ints([end]), graph.ints([axis_form])]
    if step != 1 or choices.integer(0, 1):
        inputs.append(graph.ints([step]))
    shape = list(t.shape)
    shape[axis] = len(range(start, stop, step))
    return Tensor(graph.op1("Slice", inputs), shape)


def pool(graph: Graph, t: Tensor) -> Tensor:
    """Max or average pooling (2x2 stride 2, 3x3 same) or a global pool."""
    n, c, h, w = t.shape
    options = ["global-avg", "global-max", "max3", "avg3"]
    if min(int(h), int(w)) >= 2:
        options += ["max2", "avg2"]
    kind = graph.choices.choice(options)
    if kind.startswith("global"):
        op = "GlobalAveragePool" if kind == "global-avg" else "GlobalMaxPool"
        return Tensor(graph.op1(op, [t.name]), [n, c, 1, 1])
    op = "MaxPool" if kind.startswith("max") else "AveragePool"
    if kind.endswith("2"):
        y = graph.op1(op, [t.name], kernel_shape=[2, 2], strides=[2, 2])
        return Tensor(y, [n, c, int(h) // 2, int(w) // 2])
    extra = {"count_include_pad": 1} if op == "AveragePool" else {}
    y = graph.op1(op, [t.name], kernel_shape=[3, 3], pads=[1, 1, 1, 1], **extra)
    return Tensor(y, list(t.shape))


def resize(graph: Graph, t: Tensor) -> Tensor:
    """Resize by 2 (nearest or linear) from constant scales."""
    n, c, h, w = t.shape
    mode = graph.choices.choice(["nearest", "linear"])
    scales = graph.const(np.asarray([1, 1, 2, 2], dtype=np.float32), "s")
    y = graph.op1("Resize", [t.name, "", scales], mode=mode)
    return Tensor(y, [n, c, 2 * int(h), 2 * int(w)])


def squeeze_excite(graph: Graph, t: Tensor) -> Tensor:
    """Global pool, bottleneck 1x1 Convs, Sigmoid gate multiplied into the channels."""
    c = t.channels
    hidden = graph.choices.integer(1, max(1, c))
    s = graph.op1("GlobalAveragePool", [t.name])
    s = graph.op1("Conv", [s, graph.weight(hidden, c, 1, 1), graph.weight(hidden, low=-0.5)],
                  kernel_shape=[1, 1])
    s = graph.op1("Relu", [s])
    s = graph.op1("Conv", [s, graph.weight(c, hidden, 1, 1), graph.weight(c, low=-0.5)],
                  kernel_shape=[1, 1])
    gate = graph.op1("Sigmoid", [s])
    return Tensor(graph.op1("Mul", [t.name, gate]), list(t.shape))


def channels_last(graph: Graph, t: Tensor) -> Tensor:
    """Transpose to NHWC, a MatMul over channels (a 1x1 conv as exported), back to NCHW."""
    n, _, h, w = t.shape
    y = graph.op1("Transpose", [t.name], perm=[0, 2, 3, 1])
    out = graph.choices.integer(1, graph.limits.channels)
    y = graph.op1("MatMul", [y, graph.weight(t.channels, out)])
    return Tensor(graph.op1("Transpose", [y], perm=[0, 3, 1, 2]), [n, out, h, w])


def shuffle(graph: Graph, t: Tensor) -> Tensor:
    """ShuffleNet's channel shuffle: Reshape [N, g, C/g, H, W], swap g and C/g, back."""
    _, c, h, w = t.shape
    groups = graph.choices.choice([d for d in range(2, c) if c % d == 0])
    y = graph.op1("Reshape", [t.name, graph.ints([0, groups, c // groups, h, w])])
    y = graph.op1("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return Tensor(graph.op1("Reshape", [y, graph.ints([0, c, h, w])]), list(t.shape))


def spatial_concat(graph: Graph, t: Tensor) -> Tensor:
    """Branches of equal width concatenated along height: their channels go together."""
    width = graph.choices.integer(1, graph.limits.channels)
    parts = [project(graph, t, width) for _ in range(graph.choices.integer(2, 3))]
    y = graph.op1("Concat", [p.name for p in parts], axis=graph.choices.choice([2, -2]))
    n, _, h, w = t.shape
    return Tensor(y, [n, width, int(h) * len(parts), w])


def to_sequence(graph: Graph, t: Tensor) -> Tensor:
    """Image to tokens: Reshape [N, C, H*W] then Transpose to [N, H*W, C]."""
    n, c, h, w = t.shape
    y = graph.op1("Reshape", [t.name, graph.ints([0, c, -1])])
    y = graph.op1("Transpose", [y], perm=[0, 2, 1])
    return Tensor(y, [n, int(h) * int(w), c])


def image_to_flat(graph: Graph, t: Tensor) -> Tensor:
    """A classifier head's start: global pool then Flatten, or Flatten / Reshape directly."""
    n, c, h, w = t.shape
    kind = graph.choices.choice(["pool-flatten", "flatten", "reshape"])
    if kind == "pool-flatten":
        y = graph.op1("Flatten", [graph.op1("GlobalAveragePool", [t.name])], axis=1)
        return Tensor(y, [n, c])
    if kind == "flatten":
        return Tensor(graph.op1("Flatten", [t.name], axis=1), [n, c * int(h) * int(w)])
    y = graph.op1("Reshape", [t.name, graph.ints([0, -1])])
    return Tensor(y, [n, c * int(h) * int(w)])


def sequence_to_flat(graph: Graph, t: Tensor) -> Tensor:
    """The first token (Gather), the mean over tokens, or every token flattened."""
    n, length, d = t.shape
    kind = graph.choices.choice(["first-token", "mean", "flatten"])
    if kind == "first-token":
        y = graph.op1("Gather", [t.name, graph.const(np.asarray(0, dtype=np.int64))], axis=1)
        return Tensor(y, [n, d])
    if kind == "mean":
        if graph.opset >= 18:
            y = graph.op1("ReduceMean", [t.name, graph.ints([1])], keepdims=0)
        else:
            y = graph.op1("ReduceMean", [t.name], axes=[1], keepdims=0)
        return Tensor(y, [n, d])
    return Tensor(graph.op1("Flatten", [t.name], axis=1), [n, int(length) * int(d)])


def attention(graph: Graph, t: Tensor) -> Tensor:
    """Multi-head self-attention: projections reshaped into heads, softmax, output, skip."""
    choices, d_model = graph.choices, t.channels
    heads = choices.integer(1, graph.limits.heads)
    head_dim = choices.integer(1, 4)
    width = heads * head_dim
    if choices.choice(["separate", "fused"]) == "fused":
        qkv = graph.op1("MatMul", [t.name, graph.weight(d_model, 3 * width)])
        q, k, v = graph.op("Split", [qkv, graph.ints([width] * 3)], 3, axis=-1)
    else:
        q, k, v = (linear(graph, t, width).name for _ in range(3))
    def heads_of(x: str, perm: list[int]) -> str:
        y = graph.op1("Reshape", [x, graph.ints([0, 0, heads, head_dim])])
        return graph.op1("Transpose", [y], perm=perm)
    q = heads_of(q, [0, 2, 1, 3])
    k = heads_of(k, [0, 2, 3, 1])
    v = heads_of(v, [0, 2, 1, 3])
    scores = graph.op1("MatMul", [q, k])
    scores = graph.op1("Mul", [scores, graph.const(np.float32(head_dim ** -0.5))])
    probs = graph.op1("Softmax", [scores], axis=-1)
    y = graph.op1("MatMul", [probs, v])
    y = graph.op1("Transpose", [y], perm=[0, 2, 1, 3])
    y = graph.op1("Reshape", [y, graph.ints([0, 0, width])])
    y = graph.op1("MatMul", [y, graph.weight(width, d_model)])
    return Tensor(graph.op1("Add", [t.name, y]), list(t.shape))


def mlp(graph: Graph, t: Tensor) -> Tensor:
    """Up projection, activation, down projection, residual Add."""
    hidden = linear(graph, t, graph.choices.integer(1, 2 * graph.limits.channels))
    options = ["relu", "sigmoid", "swish", "glu"] + (["gelu"] if graph.opset >= 20 else [])
    kind = graph.choices.choice(options)
    if kind == "glu":  # SwiGLU: a gate projection multiplied into the up projection
        gate = linear(graph, t, hidden.channels).name
        h = graph.op1("Mul", [graph.op1("Mul", [gate, graph.op1("Sigmoid", [gate])]),
                              hidden.name])
    elif kind == "swish":
        h = graph.op1("Mul", [hidden.name, graph.op1("Sigmoid", [hidden.name])])
    else:
        h = graph.op1({"relu": "Relu", "sigmoid": "Sigmoid", "gelu": "Gelu"}[kind],
                      [hidden.name])
    down = linear(graph, Tensor(h, hidden.shape), t.channels)
    return Tensor(graph.op1("Add", [t.name, down.name]), list(t.shape))


def _multi_channel(graph: Graph, t: Tensor) -> bool:
    return t.channels >= 2


def _composite(graph: Graph, t: Tensor) -> bool:
    return any(t.channels % d == 0 for d in range(2, t.channels))


def _opset(minimum: int) -> Fits:
    return lambda graph, t: graph.opset >= minimum


def _small_image(graph: Graph, t: Tensor) -> bool:
    return int(t.shape[2]) <= 8


def _flattenable(graph: Graph, t: Tensor) -> bool:
    return int(np.prod([int(d) for d in t.shape[1:]])) <= 256


_COMMON = [Block("act", act), Block("residual", residual), Block("concat", concat),
           Block("split", split, _multi_channel), Block("slice", slice_)]

BLOCKS: dict[str, list[Block]] = {
    "image": [Block("conv", conv), Block("norm", norm), *_COMMON,
              Block("concat-tree", concat_tree), Block("pool", pool),
              Block("resize", resize, _small_image), Block("se", squeeze_excite),
              Block("channels-last", channels_last), Block("to-sequence", to_sequence),
              Block("shuffle", shuffle, _composite), Block("spatial-concat", spatial_concat),
              Block("to-flat", image_to_flat, _flattenable)],
    "seq": [Block("linear", linear), Block("layernorm", norm, _opset(17)), *_COMMON,
            Block("attention", attention), Block("mlp", mlp),
            Block("to-flat", sequence_to_flat, _flattenable)],
    "flat": [Block("linear", linear), Block("norm", norm), *_COMMON, Block("mlp", mlp)],
}
"""The blocks that fit each tensor kind, simplest first."""
