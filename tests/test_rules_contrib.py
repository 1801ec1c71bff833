"""Rules of onnxruntime's com.microsoft contrib ops and ONNX opset-23 attention, one graph each.

As in ``tests/test_rules_ops.py``: a weighted operator produces channels, the operator
under test carries them, another weighted operator consumes them; the tests assert the
exact groups (members, units, positions, pins, patches). Where a patch or a packed
layout matters, the graph is also pruned and run in onnxruntime.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa_opt.api import optimize
from spa_opt.ir.cost import count_cost
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.passes.couple import couple_model
from spa_opt.passes.coupling.groups import Group, build_groups
from tests.rule_graphs import (
    assert_free,
    blocks,
    col,
    find,
    member,
    names,
    node,
    pos,
    reasons,
    vi,
    w,
)

MS = "com.microsoft"


def model_of(nodes, inputs, outputs, inits=(), value_info=(), opset: int = 17) -> ir.Model:
    """A model importing com.microsoft, unchecked (onnx knows no contrib schemas)."""
    graph = helper.make_graph(nodes, "contrib", inputs, outputs, list(inits),
                              value_info=list(value_info))
    proto = helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    return ir.from_proto(proto)


def groups_in(model: ir.Model, io: str = "keep") -> list[Group]:
    return build_groups(couple_model(model, io=io), model.graph)


def run(model: ir.Model | onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def attr(model: ir.Model, op: str, name: str):
    found = [n for n in model.graph if n.op_type == op]
    assert len(found) == 1
    return found[0].attributes[name].value


def ms(op: str, inputs, outputs, **attrs) -> onnx.NodeProto:
    return node(op, inputs, outputs, domain=MS, **attrs)


X = np.random.default_rng(1).standard_normal((1, 3, 8)).astype(np.float32)


# ------------------------------------------------------------------- com.microsoft Attention
def ms_attention(sizes: list[int] | None):
    width = sum(sizes) if sizes else 24
    extra = {"qkv_hidden_sizes": sizes} if sizes else {}
    v = sizes[2] if sizes else 8
    return model_of(
        [ms("Attention", ["x", "W", "B"], "a", num_heads=2, **extra),
         node("MatMul", ["a", "Wo"], "y")],
        [vi("x", 1, 3, 8)], [vi("y", 1, 3, 4)], [w("W", 8, width), w("B", width), w("Wo", v, 4)],
        [vi("a", 1, 3, v)])


@pytest.mark.parametrize("sizes", [None, [8, 8, 4]])
def test_ms_attention_head_takes_its_q_k_v_columns(sizes):
    groups = groups_in(ms_attention(sizes))
    g = find(groups, "W", 1)
    q, k, v = sizes or [8, 8, 8]
    assert names(g) == {"W:1", "B:0", "a:2", "Wo:0"}
    assert_free(g, 2, (q + k + v) // 2)
    head = [[*range(h * q // 2, (h + 1) * q // 2),
             *range(q + h * k // 2, q + (h + 1) * k // 2),
             *range(q + k + h * v // 2, q + k + (h + 1) * v // 2)] for h in range(2)]
    assert pos(g, "W", 1) == head == pos(g, "B", 0)
    assert pos(g, "a", 2) == blocks(2, v // 2) == pos(g, "Wo", 0)
    assert member(g, "W", 1).roles == ("out",) and member(g, "Wo", 0).roles == ("in",)
    expected = [("head-counts", "num_heads=2")]
    if sizes:
        expected.append(("qkv-hidden-sizes", "qkv_hidden_sizes=[8, 8, 4]"))
    assert sorted((p.kind, p.detail) for p in g.patches) == sorted(expected)
    assert "comes from graph input `x`" in reasons(find(groups, "W", 0))


@pytest.mark.parametrize("sizes", [None, [8, 8, 4]])
def test_ms_attention_pruned_head_is_lossless_when_its_output_rows_are_zero(sizes):
    model = ms_attention(sizes)
    weights = model.graph.initializers
    q, k, v = sizes or [8, 8, 8]
    packed = weights["W"].const_value.numpy().copy()
    for start, size in ((0, q), (q, k), (q + k, v)):  # head 1: tiny q, k, v columns
        packed[:, start + size // 2:start + size] *= 1e-3
    out_rows = weights["Wo"].const_value.numpy().copy()
    out_rows[v // 2:] = 0  # ... whose output the projection ignores
    weights["W"].const_value = ir.tensor(packed, name="W")
    weights["Wo"].const_value = ir.tensor(out_rows, name="Wo")
    reference = run(model, {"x": X})[0]
    pruned, _ = optimize(model, "couple,group,l1,prune", ratio=0.5)
    assert attr(pruned, "Attention", "num_heads") == 1
    if sizes:
        assert list(attr(pruned, "Attention", "qkv_hidden_sizes")) == [4, 4, 2]
    assert pruned.graph.initializers["W"].const_value.shape == (8, (q + k + v) // 2)
    np.testing.assert_allclose(run(pruned, {"x": X})[0], reference, atol=1e-5)


def test_ms_attention_cost_counts_projection_and_both_products():
    cost = count_cost(ms_attention(None))
    rows, seq = 3, 3
    projection, products, out = rows * 8 * 24, rows * seq * (8 + 8), rows * 8 * 4
    assert cost.macs == projection + products + out


# ---------------------------------------------------------------------- MultiHeadAttention
def test_mha_separate_q_k_v_and_their_packed_bias_follow_the_heads():
    nodes = [node("MatMul", ["x", f"W{n}"], n) for n in "qkv"]
    nodes += [ms("MultiHeadAttention", ["q", "k", "v", "B"], "o", num_heads=2),
              node("MatMul", ["o", "Wo"], "y")]
    model = model_of(nodes, [vi("x", 1, 3, 8)], [vi("y", 1, 3, 4)],
                     [w("Wq", 8, 8), w("Wk", 8, 8), w("Wv", 8, 8), w("B", 24), w("Wo", 8, 4)],
                     [vi(n, 1, 3, 8) for n in "qkvo"])
    g = find(groups_in(model), "Wq", 1)
    assert names(g) == {"Wq:1", "Wk:1", "Wv:1", "q:2", "k:2", "v:2", "B:0", "o:2", "Wo:0"}
    assert_free(g, 2, 4)
    assert pos(g, "Wq", 1) == blocks(2, 4) == pos(g, "Wv", 1) == pos(g, "o", 2)
    assert pos(g, "B", 0) == [[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19],
                              [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]]
    assert [(p.kind, p.detail) for p in g.patches] == [("head-counts", "num_heads=2")]


# -------------------------------------------------------------------- GroupQueryAttention
def gqa(packed: bool) -> ir.Model:
    """4 query heads of 2 in 2 groups; caches named as optimum names them."""
    if packed:
        nodes = [node("MatMul", ["x", "Wqkv"], "qkv")]
        qkv, inits = ["qkv", "", ""], [w("Wqkv", 8, 16)]
        infos = [vi("qkv", 1, 3, 16)]
    else:
        nodes = [node("MatMul", ["x", f"W{n}"], n) for n in "qkv"]
        qkv, inits = ["q", "k", "v"], [w("Wq", 8, 8), w("Wk", 8, 4), w("Wv", 8, 4)]
        infos = [vi("q", 1, 3, 8), vi("k", 1, 3, 4), vi("v", 1, 3, 4)]
    nodes += [ms("GroupQueryAttention", [*qkv, "past_key_values.0.key",
                                         "past_key_values.0.value", "seqlens_k", "total"],
                 ["o", "present.0.key", "present.0.value"], num_heads=4, kv_num_heads=2),
              node("MatMul", ["o", "Wo"], "y")]
    cache = [vi(f"past_key_values.0.{n}", 1, 2, 5, 2) for n in ("key", "value")]
    ints = [vi("seqlens_k", 1, dtype=TensorProto.INT32), vi("total", dtype=TensorProto.INT32)]
    presents = [vi(f"present.0.{n}", 1, 2, 8, 2) for n in ("key", "value")]
    return model_of(nodes, [vi("x", 1, 3, 8), *cache, *ints], [vi("y", 1, 3, 4), *presents],
                    [*inits, w("Wo", 8, 4)], [*infos, vi("o", 1, 3, 8)])


def test_gqa_unit_is_a_kv_head_with_its_query_group_and_caches():
    model = gqa(packed=False)
    kept = find(groups_in(model), "Wq", 1)
    assert not kept.prunable and "past_key_values.0.key" in reasons(kept)
    g = find(groups_in(model, io="rewrite"), "Wq", 1)
    assert names(g) == {"Wq:1", "Wk:1", "Wv:1", "q:2", "k:2", "v:2", "o:2", "Wo:0",
                        "past_key_values.0.key:1", "past_key_values.0.value:1",
                        "present.0.key:1", "present.0.value:1"}
    assert_free(g, 2, 4)
    assert pos(g, "Wq", 1) == blocks(2, 4) == pos(g, "o", 2)  # two query heads of 2
    assert pos(g, "Wk", 1) == blocks(2, 2) == pos(g, "v", 2)
    assert pos(g, "past_key_values.0.key", 1) == col(2) == pos(g, "present.0.value", 1)
    assert [(p.kind, p.detail) for p in g.patches] == [
        ("head-counts", "num_heads=4, kv_num_heads=2")]


def test_gqa_packed_qkv_holds_three_sections():
    g = find(groups_in(gqa(packed=True), io="rewrite"), "Wqkv", 1)
    assert_free(g, 2, 8)
    assert pos(g, "Wqkv", 1) == [[0, 1, 2, 3, 8, 9, 12, 13], [4, 5, 6, 7, 10, 11, 14, 15]]


# ------------------------------------------------------------ ONNX Attention (opset 23)
def test_onnx_attention_3d_groups_query_heads_by_kv_head():
    nodes = [node("MatMul", ["x", f"W{n}"], n) for n in "qkv"]
    nodes += [node("Attention", ["q", "k", "v"], "o", q_num_heads=4, kv_num_heads=2),
              node("MatMul", ["o", "Wo"], "y")]
    model = model_of(nodes, [vi("x", 1, 3, 8)], [vi("y", 1, 3, 4)],
                     [w("Wq", 8, 8), w("Wk", 8, 4), w("Wv", 8, 4), w("Wo", 8, 4)],
                     [vi("q", 1, 3, 8), vi("k", 1, 3, 4), vi("v", 1, 3, 4), vi("o", 1, 3, 8)],
                     opset=23)
    g = find(groups_in(model), "Wq", 1)
    assert_free(g, 2, 4)
    assert pos(g, "Wq", 1) == blocks(2, 4) and pos(g, "Wk", 1) == blocks(2, 2)
    assert [(p.kind, p.detail) for p in g.patches] == [
        ("head-counts", "q_num_heads=4, kv_num_heads=2")]
    reference = run(model, {"x": X})[0]
    pruned, _ = optimize(model, "couple,group,l1,prune", ratio=0.5)
    assert attr(pruned, "Attention", "q_num_heads") == 2
    assert attr(pruned, "Attention", "kv_num_heads") == 1
    assert run(pruned, {"x": X})[0].shape == reference.shape


# ------------------------------------------------------------------------ RotaryEmbedding
def test_ms_rotary_embedding_keeps_heads_whole_and_patches_num_heads():
    model = model_of(
        [node("MatMul", ["x", "Wq"], "q"),
         ms("RotaryEmbedding", ["q", "pos", "cos", "sin"], "r", num_heads=2),
         node("MatMul", ["r", "Wo"], "y")],
        [vi("x", 1, 3, 8), vi("pos", 1, 3, dtype=TensorProto.INT64)], [vi("y", 1, 3, 4)],
        [w("Wq", 8, 8), w("cos", 16, 2), w("sin", 16, 2), w("Wo", 8, 4)],
        [vi("q", 1, 3, 8), vi("r", 1, 3, 8)])
    g = find(groups_in(model), "Wq", 1)
    assert names(g) == {"Wq:1", "q:2", "r:2", "Wo:0"}
    assert_free(g, 2, 4)
    assert [(p.kind, p.detail) for p in g.patches] == [("head-counts", "num_heads=2")]


# -------------------------------------------------------------------------- fused kernels
def test_skip_layer_norm_and_bias_gelu_parameters_join_their_groups():
    model = model_of(
        [node("MatMul", ["x", "W1"], "h"),
         ms("SkipLayerNormalization", ["h", "x", "gamma", "beta", "bias"], ["n", "", "", "s"]),
         node("MatMul", ["n", "W2"], "m"), ms("BiasGelu", ["m", "b2"], "g"),
         node("MatMul", ["g", "W3"], "y")],
        [vi("x", 1, 3, 8)], [vi("y", 1, 3, 8)],
        [w("W1", 8, 8), w("gamma", 8), w("beta", 8), w("bias", 8), w("W2", 8, 16),
         w("b2", 16), w("W3", 16, 8)],
        [vi("h", 1, 3, 8), vi("n", 1, 3, 8), vi("s", 1, 3, 8), vi("m", 1, 3, 16),
         vi("g", 1, 3, 16)])
    groups = groups_in(model)
    hidden = find(groups, "gamma", 0)
    # the skip input is x itself, so W1's input channels are the same hidden channels
    # (the unused sum output `s` carries nothing)
    assert names(hidden) == {"x:2", "W1:0", "W1:1", "h:2", "gamma:0", "beta:0", "bias:0",
                             "n:2", "W2:0"}
    assert member(hidden, "gamma", 0).roles == ("scale",)
    assert member(hidden, "beta", 0).roles == ("shift",)
    mlp = find(groups, "W2", 1)
    assert names(mlp) == {"W2:1", "m:2", "b2:0", "g:2", "W3:0"}
    assert_free(mlp, 16)


def test_bias_split_gelu_channel_takes_both_halves():
    model = model_of(
        [node("MatMul", ["x", "W1"], "h"), ms("BiasSplitGelu", ["h", "b"], "g"),
         node("MatMul", ["g", "W2"], "y")],
        [vi("x", 1, 3, 8)], [vi("y", 1, 3, 2)], [w("W1", 8, 8), w("b", 8), w("W2", 4, 2)],
        [vi("h", 1, 3, 8), vi("g", 1, 3, 4)])
    g = find(groups_in(model), "W1", 1)
    assert_free(g, 4, 2)
    assert pos(g, "W1", 1) == [[0, 4], [1, 5], [2, 6], [3, 7]] == pos(g, "b", 0)
    assert pos(g, "g", 2) == col(4) == pos(g, "W2", 0)
    pruned, _ = optimize(model, "couple,group,l1,prune", ratio=0.5)  # no CPU kernel to run
    assert pruned.graph.initializers["W1"].const_value.shape == (8, 4)
    assert pruned.graph.initializers["b"].const_value.shape == (4,)
    assert pruned.graph.initializers["W2"].const_value.shape == (2, 2)


@pytest.mark.parametrize(("trans_b", "trans_batch_a"), [(0, 0), (1, 0), (0, 1)])
def test_fused_matmul_weight_axis_follows_the_transposes(trans_b, trans_batch_a):
    """transBatchA reads x [M, batch, K] as [batch, M, K] (both operands rank 3 then)."""
    x = np.random.default_rng(2).standard_normal((3, 2, 5) if trans_batch_a else (2, 3, 5))
    if trans_batch_a:
        weight, out_axis, in_axis = w("W1", 2, 5, 6), 2, 1
    else:
        weight, out_axis, in_axis = (w("W1", 6, 5), 0, 1) if trans_b else (w("W1", 5, 6), 1, 0)
    model = model_of(
        [ms("FusedMatMul", ["x", "W1"], "h", alpha=0.5, transB=trans_b,
            transBatchA=trans_batch_a),
         node("Relu", ["h"], "r"), node("MatMul", ["r", "W2"], "y")],
        [vi("x", *x.shape)], [vi("y", 2, 3, 3)], [weight, w("W2", 6, 3)],
        [vi("h", 2, 3, 6), vi("r", 2, 3, 6)])
    groups = groups_in(model)
    g = find(groups, "W1", out_axis)
    assert names(g) == {f"W1:{out_axis}", "h:2", "r:2", "W2:0"}
    assert_free(g, 6)
    assert names(find(groups, "W1", in_axis)) == {f"W1:{in_axis}", "x:2"}  # K: last axis
    feeds = {"x": x.astype(np.float32)}
    reference = run(model, feeds)[0]
    pruned, _ = optimize(model, "couple,group,l1,prune", ratio=0.5)
    assert pruned.graph.initializers["W1"].const_value.shape[out_axis] == 3
    assert run(pruned, feeds)[0].shape == reference.shape == (2, 3, 3)


def test_fused_conv_with_sum_input_prunes_like_conv():
    model = model_of(
        [node("Conv", ["x", "W0"], "z"),
         ms("FusedConv", ["x", "W1", "B1", "z"], "h", activation="Relu"),
         node("Conv", ["h", "W2"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)],
        [w("W0", 8, 3, 1, 1), w("W1", 8, 3, 1, 1), w("B1", 8), w("W2", 2, 8, 1, 1)],
        [vi("z", 1, 8, 4, 4), vi("h", 1, 8, 4, 4)])
    g = find(groups_in(model), "W1", 0)
    assert names(g) == {"W0:0", "z:1", "W1:0", "B1:0", "h:1", "W2:1"}
    assert_free(g, 8)


# ---------------------------------------------------------------------------- MatMulNBits
def nbits(rows: int = 8, k: int = 32, block: int = 16) -> ir.Model:
    """4-bit MatMulNBits with flattened scales and packed zero points, then a MatMul."""
    rng = np.random.default_rng(3)
    blocks_ = k // block
    inits = [
        numpy_helper.from_array(rng.integers(0, 256, (rows, blocks_, block // 2), np.uint8), "B"),
        numpy_helper.from_array(rng.uniform(0.01, 0.1, rows * blocks_).astype(np.float32), "S"),
        numpy_helper.from_array(rng.integers(0, 256, rows * ((blocks_ + 1) // 2), np.uint8),
                                "Z"),
        w("W2", rows, 3),
    ]
    return model_of(
        [ms("MatMulNBits", ["x", "B", "S", "Z"], "h", K=k, N=rows, bits=4, block_size=block),
         node("Relu", ["h"], "r"), node("MatMul", ["r", "W2"], "y")],
        [vi("x", 2, k)], [vi("y", 2, 3)], inits, [vi("h", 2, rows), vi("r", 2, rows)])


def test_matmulnbits_prunes_rows_with_their_flattened_scales_and_pins_k():
    model = nbits()
    groups = groups_in(model)
    g = find(groups, "B", 0)
    assert names(g) == {"B:0", "S:0", "Z:0", "h:1", "r:1", "W2:0"}
    assert_free(g, 8)
    assert pos(g, "S", 0) == blocks(8, 2) and pos(g, "B", 0) == col(8)
    assert pos(g, "Z", 0) == col(8)  # two 4-bit zero points per byte: one byte per row
    assert [(p.kind, p.detail) for p in g.patches] == [("matmulnbits-n", "N=8")]
    assert "MatMulNBits packs its input channels" in reasons(find(groups, "W2", 1)) or \
        not any(m.name == "x" for gr in groups for m in gr.members)


def test_matmulnbits_pruned_rows_compute_what_they_did():
    model = nbits()
    feeds = {"x": np.random.default_rng(4).standard_normal((2, 32)).astype(np.float32)}

    def rows_of(m: ir.Model) -> tuple[np.ndarray, np.ndarray]:
        proto = ir.serde.serialize_model(m)
        keep = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
        graph = helper.make_graph(keep, "one", [vi("x", 2, 32)], [helper.make_tensor_value_info(
            "h", TensorProto.FLOAT, None)], list(proto.graph.initializer))
        one = helper.make_model(graph, ir_version=10, opset_imports=[
            helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
        return run(one, feeds)[0], numpy_helper.to_array(
            next(i for i in proto.graph.initializer if i.name == "B"))

    before, packed = rows_of(model)
    pruned, _ = optimize(model, "couple,group,l1,prune", ratio=0.5)
    assert attr(pruned, "MatMulNBits", "N") == 4
    after, kept_packed = rows_of(pruned)
    kept = [next(i for i in range(8) if np.array_equal(packed[i], row)) for row in kept_packed]
    np.testing.assert_allclose(after, before[:, kept], rtol=1e-6)
    assert run(pruned, feeds)[0].shape == (2, 3)
    cost = count_cost(pruned)
    assert cost.macs == 2 * 4 * 32 + 2 * 4 * 3  # |Y| * K, then the MatMul


# ------------------------------------------------------------------------------- coverage
def test_every_contrib_op_of_the_brief_has_a_rule():
    from spa_opt.passes.rules import supported_ops

    wanted = {f"{MS}::{op}" for op in [
        "Attention", "MultiHeadAttention", "GroupQueryAttention", "RotaryEmbedding",
        "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
        "SimplifiedLayerNormalization", "EmbedLayerNormalization", "LayerNormalization",
        "FastGelu", "BiasGelu", "Gelu", "QuickGelu", "BiasAdd", "BiasSplitGelu", "FusedMatMul",
        "FusedConv", "MatMulNBits"]}
    wanted |= {"Attention", "RotaryEmbedding", "SimplifiedLayerNormalization"}
    assert wanted <= set(supported_ops())


def test_hidden_channels_of_an_unknown_shape_stay_safe():
    """No shapes for the Attention output: the solver pins, never guesses."""
    model = model_of(
        [ms("Attention", ["x", "W", "B"], "a", num_heads=3), node("MatMul", ["a", "Wo"], "y")],
        [vi("x", 1, 3, 8)], [vi("y", 1, 3, 4)], [w("W", 8, 24), w("B", 24), w("Wo", 8, 4)],
        [vi("a", 1, 3, 8)])
    g = find(groups_in(model), "Wo", 0)
    assert names(g) == {"a:2", "Wo:0"}
    assert not g.prunable and "do not split into equal heads" in reasons(g)


# ----------------------------------------------------- onnxruntime-optimized BERT, end to end
GOLDEN = Path(__file__).resolve().parents[1] / "golden_models"
CLI = ["-p", "fold-constants,couple,group,l1,prune", "--ratio", "0.3"]


def bert_config(path: Path) -> tuple[int, int]:
    """(num_heads, hidden) from the export's shapes: the word embedding's width and the
    head size, the last entry of the ``[b, s, heads, head]`` Reshape targets."""
    proto = onnx.load(path)
    arrays = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    arrays |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
               for n in proto.graph.node if n.op_type == "Constant" and n.attribute[0].t.dims}
    hidden = next(a.shape[1] for name, a in arrays.items() if "word_embeddings" in name)
    head = next(int(arrays[n.input[1]][-1]) for n in proto.graph.node
                if n.op_type == "Reshape" and n.input[1] in arrays
                and arrays[n.input[1]].size == 4 and "attention" in n.name)
    return hidden // head, hidden


def prune_cli(source: Path, target: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "spa_opt.cli", str(source), str(target), *CLI],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def io_of(session: ort.InferenceSession) -> list[tuple]:
    return [(v.name, v.type, tuple(v.shape)) for v in (*session.get_inputs(),
                                                       *session.get_outputs())]


def bert_feeds(session: ort.InferenceSession) -> dict:
    rng = np.random.default_rng(5)
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in value.shape]
        if "mask" in value.name:
            feeds[value.name] = np.ones(shape, np.int64)
        elif "type" in value.name:
            feeds[value.name] = np.zeros(shape, np.int64)
        else:
            feeds[value.name] = rng.integers(0, 64, shape).astype(np.int64)
    return feeds


def test_ort_optimizer_output_prunes_its_fused_mlps(tmp_path):
    """The transformer optimizer on the torchscript BERT: SkipLayerNormalization and Gelu.

    (It fuses no Attention on this export: the torchscript graph's scaled-dot-product
    pattern with IsNaN/Where is not one its fusions match; the golden ``ortopt`` model
    below, made from the optimum export, has Attention and EmbedLayerNormalization.)
    """
    from onnxruntime.transformers.optimizer import optimize_model

    source = GOLDEN / "hf" / "bert_cls.torchscript.onnx"
    heads, hidden = bert_config(source)
    assert (heads, hidden) == (4, 64)
    fused = tmp_path / "bert.ortopt.onnx"
    optimize_model(str(source), model_type="bert", num_heads=heads,
                   hidden_size=hidden).save_model_to_file(str(fused))
    ops = {(n.domain, n.op_type) for n in onnx.load(fused).graph.node}
    assert {(MS, "SkipLayerNormalization"), (MS, "Gelu")} <= ops
    model = ir.load(fused)
    from spa_opt.passes.fold_constants import FoldConstantsPass

    FoldConstantsPass()(model)
    mlps = [g for g in groups_in(model) if g.prunable and g.units == 128]
    assert len(mlps) == 2
    pruned = tmp_path / "pruned.onnx"
    prune_cli(fused, pruned)
    before, after = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                     for p in (fused, pruned))
    assert io_of(before) == io_of(after)
    def mlp_weights(path: Path) -> int:
        return sum(128 in i.dims for i in onnx.load(path).graph.initializer)

    assert mlp_weights(fused) >= 4 and mlp_weights(pruned) == 0  # both MLPs lost units
    after.run(None, bert_feeds(after))


@pytest.fixture(scope="module")
def ortopt_bert() -> Path:
    path = GOLDEN / "deploy" / "bert_cls.ortopt.onnx"
    if not path.exists():
        pytest.skip("golden_models/deploy/bert_cls.ortopt.onnx is not there")
    return path


def test_ortopt_bert_prunes_heads_and_mlps_and_runs(ortopt_bert, tmp_path):
    model = ir.load(ortopt_bert)
    from spa_opt.passes.fold_constants import FoldConstantsPass

    FoldConstantsPass()(model)
    groups = [g for g in groups_in(model) if g.prunable]
    heads = [g for g in groups if g.primary.name.endswith("qkv_weight")]
    assert [(g.units, g.block) for g in heads] == [(4, 48), (4, 48)]
    assert sum(1 for g in groups if g.units == 128) == 2  # one MLP group per layer
    pruned = tmp_path / "pruned.onnx"
    prune_cli(ortopt_bert, pruned)
    proto = onnx.load(pruned)
    counts = [next(a.i for a in n.attribute if a.name == "num_heads")
              for n in proto.graph.node if n.op_type == "Attention"]
    widths = {i.name: tuple(i.dims) for i in proto.graph.initializer if "qkv_weight" in i.name}
    assert len(counts) == 2 and all(c < 4 for c in counts)
    assert sorted(w[1] for w in widths.values()) == sorted(48 * c for c in counts)
    before, after = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                     for p in (ortopt_bert, pruned))
    assert io_of(before) == io_of(after)
    after.run(None, bert_feeds(after))


def test_ortopt_bert_dead_units_show_exactly_where_the_index_maps_say(ortopt_bert):
    from spa_opt.passes.fold_constants import FoldConstantsPass
    from tests.dead_units import check_dead_units, expose, randomize_weights
    from tests.dead_units import run as run_all

    model = ir.load(ortopt_bert)
    FoldConstantsPass()(model)
    randomize_weights(model)
    coupling = couple_model(model)
    groups = [g for g in build_groups(coupling, model.graph) if g.prunable]
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feeds = [bert_feeds(session), {k: v[:, :3] for k, v in bert_feeds(session).items()}]
    names_ = sorted({m.name for g in groups for m in g.members if m.kind in ("value", "output")})
    reference = run_all(expose(ir.serde.serialize_model(model), names_), feeds)
    problems = []
    with temporary_shapes(model):  # the helpers read shapes onnx cannot infer here
        for group in groups:
            units = np.array([1]) if group.units < 8 else np.array([0, 5])
            problems += [f"{group.primary.name}: {p}" for p in
                         check_dead_units(model, coupling, group, units, feeds, reference)]
    assert not problems, "\n".join(problems[:10])
