"""A Llama-architecture decoder built directly as ONNX, at any size, with external data.

The graph follows what torch's dynamo exporter writes for a Hugging Face Llama (see
``golden_models/hf/llama.dynamo.onnx``), so spa-opt's coupling sees the same patterns:

- ``Gather`` embedding; RMSNorm as ``Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul``;
- q/k/v ``MatMul``; ``Reshape`` to heads and ``Transpose``; rotary embedding with
  constant cos/sin tables and rotate-half (``Slice, Neg, Concat``);
- grouped-query attention: k and v ``Unsqueeze, Expand, Reshape`` from the kv heads to
  the query heads (repeat_kv); scaled ``MatMul``, a constant causal mask, ``Softmax``;
- o_proj, residual ``Add``; SwiGLU MLP (``MatMul, Sigmoid, Mul, MatMul, Mul, MatMul``);
  final norm and lm_head.

``input_ids (batch, seq) int64 -> logits (batch, seq, vocab)``, opset 18. Weights are
seeded ``N(0, 0.02²)`` float32 (norm weights one), written as one external data file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclasses.dataclass(frozen=True)
class Shape:
    """The decoder's sizes (TinyLlama-1.1B by default)."""

    hidden: int = 2048
    layers: int = 22
    heads: int = 32
    kv_heads: int = 4
    intermediate: int = 5632
    vocab: int = 32000
    seq: int = 128

    @property
    def head_dim(self) -> int:
        """Width of one head."""
        return self.hidden // self.heads

    def params(self) -> int:
        """Parameter count."""
        kv = self.kv_heads * self.head_dim
        block = self.hidden * (2 * self.hidden + 2 * kv) + 3 * self.hidden * self.intermediate
        return self.layers * (block + 2 * self.hidden) + 2 * self.vocab * self.hidden \
            + self.hidden


class _Builder:
    def __init__(self, shape: Shape, seed: int) -> None:
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, rows: int, cols: int) -> str:
        data = (self.rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
        return self.const(name, data)

    def op(self, op: str, inputs: list[str], **attrs: object) -> str:
        self.count += 1
        out = f"{op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"node_{op}_{self.count}",
                                           **attrs))
        return out

    def rms(self, x: str, weight: str) -> str:
        squared = self.op("Pow", [x, "two"])
        mean = self.op("ReduceMean", [squared, "last_axis"], keepdims=1)
        root = self.op("Sqrt", [self.op("Add", [mean, "eps"])])
        return self.op("Mul", [weight, self.op("Mul", [x, self.op("Reciprocal", [root])])])

    def rope(self, x: str) -> str:
        half = self.shape.head_dim // 2
        first = self.op("Slice", [x, "zero1", f"half{half}", "last_axis", "one1"])
        second = self.op("Slice", [x, f"half{half}", "big", "last_axis", "one1"])
        rotated = self.op("Concat", [self.op("Neg", [second]), first], axis=-1)
        return self.op("Add", [self.op("Mul", [x, "cos"]), self.op("Mul", [rotated, "sin"])])

    def heads(self, x: str, count: int) -> str:
        return self.op("Transpose", [self.op("Reshape", [x, f"heads{count}"])],
                       perm=[0, 2, 1, 3])

    def repeat_kv(self, x: str) -> str:
        expanded = self.op("Expand", [self.op("Unsqueeze", [x, "axis2"]), "kv_expand"])
        return self.op("Reshape", [expanded, "kv_merged"])

    def block(self, x: str, i: int) -> str:
        s = self.shape
        kv = s.kv_heads * s.head_dim
        normed = self.rms(x, self.const(f"layers.{i}.input_norm", np.ones(s.hidden, np.float32)))
        q = self.heads(self.op("MatMul", [normed, self.weight(f"layers.{i}.q", s.hidden,
                                                                s.hidden)]), s.heads)
        k = self.heads(self.op("MatMul", [normed, self.weight(f"layers.{i}.k", s.hidden, kv)]),
                       s.kv_heads)
        v = self.heads(self.op("MatMul", [normed, self.weight(f"layers.{i}.v", s.hidden, kv)]),
                       s.kv_heads)
        q, k = self.rope(q), self.repeat_kv(self.rope(k))
        v = self.repeat_kv(v)
        scores = self.op("MatMul", [self.op("Mul", [q, "scale"]),
                                    self.op("Transpose", [k], perm=[0, 1, 3, 2])])
        attention = self.op("Softmax", [self.op("Add", [scores, "mask"])], axis=-1)
        context = self.op("Transpose", [self.op("MatMul", [attention, v])], perm=[0, 2, 1, 3])
        merged = self.op("Reshape", [context, "merged"])
        x = self.op("Add", [x, self.op("MatMul", [merged, self.weight(f"layers.{i}.o",
                                                                      s.hidden, s.hidden)])])
        normed = self.rms(x, self.const(f"layers.{i}.post_norm", np.ones(s.hidden, np.float32)))
        gate = self.op("MatMul", [normed, self.weight(f"layers.{i}.gate", s.hidden,
                                                      s.intermediate)])
        up = self.op("MatMul", [normed, self.weight(f"layers.{i}.up", s.hidden, s.intermediate)])
        act = self.op("Mul", [self.op("Mul", [gate, self.op("Sigmoid", [gate])]), up])
        down = self.op("MatMul", [act, self.weight(f"layers.{i}.down", s.intermediate, s.hidden)])
        return self.op("Add", [x, down])

    def constants(self) -> None:
        s = self.shape
        hd = s.head_dim
        self.const("two", np.array(2.0, np.float32))
        self.const("eps", np.array(1e-5, np.float32))
        self.const("last_axis", np.array([-1], np.int64))
        self.const("axis2", np.array([2], np.int64))
        self.const("zero1", np.array([0], np.int64))
        self.const("one1", np.array([1], np.int64))
        self.const(f"half{hd // 2}", np.array([hd // 2], np.int64))
        self.const("big", np.array([2**62], np.int64))
        self.const(f"heads{s.heads}", np.array([0, s.seq, s.heads, hd], np.int64))
        if s.kv_heads != s.heads:
            self.const(f"heads{s.kv_heads}", np.array([0, s.seq, s.kv_heads, hd], np.int64))
        rep = s.heads // s.kv_heads
        self.const("kv_expand", np.array([1, 1, rep, 1, 1], np.int64))
        self.const("kv_merged", np.array([-1, s.heads, s.seq, hd], np.int64))
        self.const("merged", np.array([0, s.seq, s.hidden], np.int64))
        self.const("scale", np.array(1.0 / np.sqrt(hd), np.float32))
        inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd))
        angles = np.outer(np.arange(s.seq), inv)
        angles = np.concatenate([angles, angles], axis=-1)[None, None]
        self.const("cos", np.cos(angles).astype(np.float32))
        self.const("sin", np.sin(angles).astype(np.float32))
        causal = np.triu(np.full((s.seq, s.seq), -1e9, np.float32), 1)[None, None]
        self.const("mask", causal)


def build(shape: Shape, seed: int = 0) -> onnx.ModelProto:
    """The decoder as a proto with its weights inline (see the module docstring)."""
    b = _Builder(shape, seed)
    b.constants()
    x = b.op("Gather", [b.weight("embed_tokens", shape.vocab, shape.hidden), "input_ids"],
             axis=0)
    for i in range(shape.layers):
        x = b.block(x, i)
    x = b.rms(x, b.const("norm", np.ones(shape.hidden, np.float32)))
    b.op("MatMul", [x, b.weight("lm_head", shape.hidden, shape.vocab)])
    b.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        b.nodes, "llama",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", shape.seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["batch", shape.seq, shape.vocab])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def write(shape: Shape, path: Path, seed: int = 0) -> Path:
    """Build and save with every weight over 1 KB in ``<name>.data`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build(shape, seed)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return path
