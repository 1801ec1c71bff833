"""Seeded ONNX model builders for the benchmarks (and, later, tests).

Each builder writes a graph with ``onnx.helper`` and numpy weights from a seeded
generator, and returns an ``onnx.ModelProto`` at IR version 10 (onnxruntime 1.31
refuses IR 14, the onnx 1.23 default) and opset 17 (the first with
LayerNormalization):

- :func:`stacked_transformer`: a GPT-style decoder stack of pre-LayerNorm blocks,
  big enough (a few hundred blocks) to pass 10,000 nodes;
- :func:`qwen3_block`: Qwen3-style attention (RMSNorm spelled out in primitive ops,
  per-head RMSNorm on q and k, grouped-query attention by Unsqueeze + Expand +
  Reshape) with a SwiGLU MLP.

Every constant is an initializer: shapes of Reshape and Expand get one initializer per
node, as exporters write them, so no two blocks share a shape constant.

Self-test (full ONNX checker plus an onnxruntime run of every builder)::

    python bench/models.py
"""

from __future__ import annotations

import math
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 17
VOCAB = 128


class _Builder:
    """Accumulates nodes and initializers under unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        """A new unique tensor or node name."""
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        """Add an initializer and return its name."""
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape: tuple[int, ...], prefix: str, scale: float | None = None) -> str:
        """A float32 random-normal initializer, scaled by ``1 / sqrt(fan_in)`` by default."""
        std = scale if scale is not None else 1.0 / math.sqrt(shape[0])
        return self.const((self.rng.standard_normal(shape) * std).astype(np.float32), prefix)

    def ints(self, values: list[int], prefix: str = "shape") -> str:
        """An int64 1-D initializer (a shape or an axes list)."""
        return self.const(np.array(values, dtype=np.int64), prefix)

    def scalar(self, value: float, prefix: str = "scalar") -> str:
        """A float32 scalar initializer."""
        return self.const(np.array(value, dtype=np.float32), prefix)

    def op(self, op_type: str, inputs: list[str], **attributes: object) -> str:
        """Add a single-output node and return its output name."""
        out = self.fresh(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=self.fresh(op_type), **attributes)
        )
        return out

    def model(
        self,
        name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
    ) -> onnx.ModelProto:
        """Wrap the nodes into a checked model at IR version 10."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="spa-opt-bench",
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model

    # ---------------------------------------------------------------- building blocks

    def linear(self, x: str, fan_in: int, fan_out: int, bias: bool, prefix: str) -> str:
        """``x @ W (+ b)`` with a ``[fan_in, fan_out]`` weight."""
        y = self.op("MatMul", [x, self.weight((fan_in, fan_out), f"{prefix}_w")])
        if bias:
            b = self.const(
                (self.rng.standard_normal(fan_out) * 0.02).astype(np.float32), f"{prefix}_b"
            )
            y = self.op("Add", [y, b])
        return y

    def layer_norm(self, x: str, size: int) -> str:
        """LayerNormalization over the last axis with random scale and shift."""
        scale = self.const(self.rng.uniform(0.5, 1.5, size).astype(np.float32), "ln_scale")
        shift = self.const((self.rng.standard_normal(size) * 0.1).astype(np.float32), "ln_bias")
        return self.op("LayerNormalization", [x, scale, shift], axis=-1, epsilon=1e-5)

    def rms_norm(self, x: str, size: int, eps: float = 1e-6) -> str:
        """RMSNorm in primitive ops: ``x * 1/sqrt(mean(x^2) + eps) * w`` over the last axis."""
        squared = self.op("Pow", [x, self.scalar(2.0, "two")])
        mean = self.op("ReduceMean", [squared], axes=[-1], keepdims=1)
        shifted = self.op("Add", [mean, self.scalar(eps, "eps")])
        root = self.op("Sqrt", [shifted])
        inverse = self.op("Reciprocal", [root])
        normed = self.op("Mul", [x, inverse])
        w = self.const(self.rng.uniform(0.5, 1.5, size).astype(np.float32), "rms_w")
        return self.op("Mul", [normed, w])

    def gelu(self, x: str) -> str:
        """Erf-based Gelu: ``0.5 * x * (1 + erf(x / sqrt(2)))``."""
        scaled = self.op("Div", [x, self.scalar(math.sqrt(2.0), "sqrt2")])
        erf = self.op("Erf", [scaled])
        one_plus = self.op("Add", [erf, self.scalar(1.0, "one")])
        product = self.op("Mul", [x, one_plus])
        return self.op("Mul", [product, self.scalar(0.5, "half")])

    def split_heads(self, x: str, seq: int, heads: int, head_dim: int, perm: list[int]) -> str:
        """``[1, seq, heads * head_dim]`` to ``[1, heads, ...]`` by Reshape + Transpose."""
        shaped = self.op("Reshape", [x, self.ints([1, seq, heads, head_dim])])
        return self.op("Transpose", [shaped], perm=perm)

    def merge_heads(self, x: str, seq: int, width: int) -> str:
        """``[1, heads, seq, head_dim]`` back to ``[1, seq, heads * head_dim]``."""
        moved = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [moved, self.ints([1, seq, width])])

    def causal_mask(self, seq: int) -> str:
        """A ``[seq, seq]`` additive mask: 0 on and below the diagonal, -1e9 above."""
        mask = np.triu(np.full((seq, seq), -1e9, dtype=np.float32), k=1)
        return self.const(mask, "causal_mask")


def stacked_transformer(
    blocks: int, hidden: int = 64, heads: int = 4, seq: int = 16, seed: int = 0
) -> onnx.ModelProto:
    """A GPT-style decoder: token embedding, ``blocks`` pre-LN blocks, final LN, LM head.

    One block (34 nodes): LayerNormalization; separate q/k/v MatMul + bias Add;
    Reshape into heads + Transpose (k straight to ``[1, h, d, s]``); ``q @ k^T``; scale
    Mul; causal-mask Add; Softmax; ``@ v``; Transpose + Reshape back; out projection
    MatMul + bias Add; residual Add; LayerNormalization; MLP MatMul + bias Add, Erf Gelu
    (5 nodes), MatMul + bias Add; residual Add. 10,000 nodes need 294 blocks
    (:func:`blocks_for_nodes`).

    Args:
        blocks: Number of transformer blocks.
        hidden: Model width.
        heads: Attention heads; ``hidden`` must be a multiple.
        seq: Static sequence length (batch is 1).
        seed: Seed of the weight generator.

    Returns:
        The model, input ``input_ids`` int64 ``[1, seq]``, output ``logits``
        float ``[1, seq, 128]``.
    """
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
    head_dim = hidden // heads
    b = _Builder(seed)
    mask = b.causal_mask(seq)  # one mask shared by every block, as exporters do
    table = b.weight((VOCAB, hidden), "embedding", scale=0.02)
    x = b.op("Gather", [table, "input_ids"], axis=0)
    for index in range(blocks):
        prefix = f"h{index}"
        h = b.layer_norm(x, hidden)
        q = b.linear(h, hidden, hidden, True, f"{prefix}_q")
        k = b.linear(h, hidden, hidden, True, f"{prefix}_k")
        v = b.linear(h, hidden, hidden, True, f"{prefix}_v")
        q = b.split_heads(q, seq, heads, head_dim, [0, 2, 1, 3])
        k = b.split_heads(k, seq, heads, head_dim, [0, 2, 3, 1])
        v = b.split_heads(v, seq, heads, head_dim, [0, 2, 1, 3])
        scores = b.op("MatMul", [q, k])
        scores = b.op("Mul", [scores, b.scalar(1.0 / math.sqrt(head_dim), "attn_scale")])
        scores = b.op("Add", [scores, mask])
        probs = b.op("Softmax", [scores], axis=-1)
        context = b.merge_heads(b.op("MatMul", [probs, v]), seq, hidden)
        x = b.op("Add", [x, b.linear(context, hidden, hidden, True, f"{prefix}_o")])
        h = b.layer_norm(x, hidden)
        h = b.gelu(b.linear(h, hidden, 4 * hidden, True, f"{prefix}_fc"))
        x = b.op("Add", [x, b.linear(h, 4 * hidden, hidden, True, f"{prefix}_proj")])
    h = b.layer_norm(x, hidden)
    logits = b.op("MatMul", [h, b.weight((hidden, VOCAB), "lm_head")])
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    return b.model(
        f"stacked_transformer_{blocks}",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, VOCAB])],
    )


def blocks_for_nodes(nodes: int) -> int:
    """The fewest :func:`stacked_transformer` blocks that give at least ``nodes`` nodes."""
    fixed = len(stacked_transformer(0, seq=4).graph.node)
    per_block = len(stacked_transformer(1, seq=4).graph.node) - fixed
    return max(1, math.ceil((nodes - fixed) / per_block))


def qwen3_block(
    layers: int = 1,
    hidden: int = 32,
    q_heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
    seq: int = 8,
    seed: int = 0,
) -> onnx.ModelProto:
    """Qwen3-style decoder layers on hidden states (no embedding, no rotary embedding).

    One layer: RMSNorm (Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, weight Mul); q, k,
    v projections without bias (``q_heads * head_dim`` need not equal ``hidden``);
    Reshape into heads, then a per-head RMSNorm on q and on k with a ``[head_dim]``
    weight, then Transpose; grouped-query attention: k and v go
    ``[1, kv, s, d] -> Unsqueeze(2) -> Expand [1, kv, rep, s, d] -> Reshape [1, q, s, d]``;
    scaled, causally masked Softmax attention; out projection; residual Add; RMSNorm;
    SwiGLU MLP ``down((gate * Sigmoid(gate)) * up)`` of width ``3 * hidden``;
    residual Add. A final RMSNorm closes the stack.

    Args:
        layers: Number of decoder layers.
        hidden: Model width.
        q_heads: Query heads.
        kv_heads: Key/value heads; ``q_heads`` must be a multiple.
        head_dim: Width of one head.
        seq: Static sequence length (batch is 1).
        seed: Seed of the weight generator.

    Returns:
        The model, input ``hidden_states`` and output ``output``, float ``[1, seq, hidden]``.
    """
    if q_heads % kv_heads:
        raise ValueError(f"q_heads {q_heads} is not a multiple of kv_heads {kv_heads}")
    rep = q_heads // kv_heads
    inter = 3 * hidden
    b = _Builder(seed)
    mask = b.causal_mask(seq)
    x = "hidden_states"
    for index in range(layers):
        prefix = f"layers{index}"
        h = b.rms_norm(x, hidden)
        q = b.linear(h, hidden, q_heads * head_dim, False, f"{prefix}_q_proj")
        k = b.linear(h, hidden, kv_heads * head_dim, False, f"{prefix}_k_proj")
        v = b.linear(h, hidden, kv_heads * head_dim, False, f"{prefix}_v_proj")
        q = b.op("Reshape", [q, b.ints([1, seq, q_heads, head_dim])])
        k = b.op("Reshape", [k, b.ints([1, seq, kv_heads, head_dim])])
        v = b.op("Reshape", [v, b.ints([1, seq, kv_heads, head_dim])])
        q = b.op("Transpose", [b.rms_norm(q, head_dim)], perm=[0, 2, 1, 3])
        k = b.op("Transpose", [b.rms_norm(k, head_dim)], perm=[0, 2, 1, 3])
        v = b.op("Transpose", [v], perm=[0, 2, 1, 3])
        repeated = []
        for tensor in (k, v):
            tensor = b.op("Unsqueeze", [tensor, b.ints([2], "axes")])
            tensor = b.op("Expand", [tensor, b.ints([1, kv_heads, rep, seq, head_dim])])
            repeated.append(b.op("Reshape", [tensor, b.ints([1, q_heads, seq, head_dim])]))
        k, v = repeated
        scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = b.op("Mul", [scores, b.scalar(1.0 / math.sqrt(head_dim), "attn_scale")])
        probs = b.op("Softmax", [b.op("Add", [scores, mask])], axis=-1)
        context = b.merge_heads(b.op("MatMul", [probs, v]), seq, q_heads * head_dim)
        attn = b.linear(context, q_heads * head_dim, hidden, False, f"{prefix}_o_proj")
        x = b.op("Add", [x, attn])
        h = b.rms_norm(x, hidden)
        gate = b.linear(h, hidden, inter, False, f"{prefix}_gate_proj")
        up = b.linear(h, hidden, inter, False, f"{prefix}_up_proj")
        silu = b.op("Mul", [gate, b.op("Sigmoid", [gate])])
        down = b.linear(b.op("Mul", [silu, up]), inter, hidden, False, f"{prefix}_down_proj")
        x = b.op("Add", [x, down])
    h = b.rms_norm(x, hidden)
    b.nodes.append(helper.make_node("Identity", [h], ["output"], name="output"))
    return b.model(
        f"qwen3_{layers}",
        [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, seq, hidden])],
    )


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input (static shapes, float or int64 ids)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [d.dim_value or 1 for d in tensor_type.shape.dim]
        if tensor_type.elem_type == TensorProto.INT64:
            feeds[value.name] = rng.integers(0, VOCAB, size=shape, dtype=np.int64)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run_in_onnxruntime(model: onnx.ModelProto) -> list[np.ndarray]:
    """Run ``model`` once in onnxruntime on seeded inputs; raise when an output is not finite.

    Args:
        model: The model to run.

    Returns:
        The outputs.

    Raises:
        RuntimeError: An output holds NaN or infinity.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, random_feeds(model))
    for output in outputs:
        if not np.all(np.isfinite(output)):
            raise RuntimeError(f"{model.graph.name}: non-finite output")
    return outputs


def main() -> int:
    """Build every model, run the full checker (inside the builders) and onnxruntime."""
    blocks = blocks_for_nodes(10_000)
    cases = {
        f"stacked_transformer({blocks})": lambda: stacked_transformer(blocks),
        "qwen3_block()": qwen3_block,
        "qwen3_block(layers=2)": lambda: qwen3_block(layers=2),
    }
    for label, build in cases.items():
        model = build()
        outputs = run_in_onnxruntime(model)
        shapes = ", ".join(str(list(o.shape)) for o in outputs)
        print(
            f"{label}: {len(model.graph.node)} nodes, {len(model.graph.initializer)} "
            f"initializers, IR {model.ir_version}, checker ok, onnxruntime ok -> {shapes}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
