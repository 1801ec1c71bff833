"""Quantization rules (QDQ, operator-form, half-precision storage), one graph each.

Like ``tests/test_rules_ops.py``: a weighted operator produces channels, they cross the
operators under test and reach another weighted operator; the exact group is asserted
(members, roles, units, blocks, positions). Plus the weight view the criteria read
(:func:`spa_opt.ir.quant.float_weight`) and fold-constants' untying of shared views.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from spa_opt.api import optimize
from spa_opt.ir.quant import float_weight, quantization_of, quantize
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.passes.fold_constants import FoldConstantsPass
from tests.rule_graphs import (
    analyse,
    assert_free,
    blocks,
    build,
    col,
    f32,
    find,
    groups_of,
    member,
    names,
    node,
    pos,
    vi,
    w,
)

_RNG = np.random.default_rng(1)


def codes(name: str, *shape: int, dtype=np.int8):
    return numpy_helper.from_array(_RNG.integers(-100, 100, size=shape).astype(dtype), name)


def scales(name: str, *shape: int):
    return numpy_helper.from_array(_RNG.uniform(0.01, 0.1, size=shape).astype(np.float32), name)


def zeros(name: str, *shape: int, dtype=np.int8):
    return numpy_helper.from_array(np.zeros(shape, dtype=dtype), name)


def dq(codes_name: str, out: str, scale: str, zero: str | None = None, **attrs):
    inputs = [codes_name, scale] + ([zero] if zero else [])
    return node("DequantizeLinear", inputs, out, **attrs)


# ---------------------------------------------------------------------- QDQ
def qdq_cnn(per_channel: bool):
    """x -> Conv(DQ(W1q), DQ(B1q)) -> Relu -> Q/DQ -> Conv(DQ(W2q)) -> y."""
    s1, z1 = ("s1", "z1")
    inits = [codes("W1q", 8, 3, 1, 1), codes("B1q", 8, dtype=np.int32),
             codes("W2q", 2, 8, 1, 1), f32("sa", 0.05), zeros("za", dtype=np.uint8),
             scales("s2", 2), zeros("z2", 2)]
    if per_channel:
        inits += [scales(s1, 8), zeros(z1, 8), scales("sb", 8), zeros("zb", 8, dtype=np.int32)]
    else:
        inits += [f32(s1, 0.05), zeros(z1), f32("sb", 0.01), zeros("zb", dtype=np.int32)]
    nodes = [
        dq("W1q", "W1", s1, z1, axis=0), dq("B1q", "B1", "sb", "zb", axis=0),
        node("Conv", ["x", "W1", "B1"], "h"), node("Relu", ["h"], "a"),
        node("QuantizeLinear", ["a", "sa", "za"], "aq"), dq("aq", "ad", "sa", "za"),
        dq("W2q", "W2", "s2", "z2", axis=0), node("Conv", ["ad", "W2"], "y"),
    ]
    return groups_of(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)], inits, opset=13)


def test_qdq_conv_weight_codes_are_the_group_weight_with_per_channel_params():
    g = find(qdq_cnn(per_channel=True), "W1q", 0)
    assert names(g) == {"W1q:0", "W1:0", "s1:0", "z1:0", "B1q:0", "B1:0", "sb:0", "zb:0",
                        "h:1", "a:1", "aq:1", "ad:1", "W2:1", "W2q:1"}
    assert_free(g, 8)
    assert g.primary.name == "W1q"  # the stored codes, not the DequantizeLinear output
    assert member(g, "W1q", 0).roles == ("out",) and member(g, "W1q", 0).kind == "weight"
    assert member(g, "B1q", 0).roles == ("out",)
    assert member(g, "W2q", 1).roles == ("in",) and member(g, "W2", 1).kind == "value"
    for param in ("s1", "z1", "sb", "zb"):
        assert member(g, param, 0).roles == ("param",)
        assert pos(g, param, 0) == col(8)
    # W2's per-channel scale runs along its output axis, not the pruned input axis
    assert "s2:0" not in names(g)


def test_qdq_per_tensor_params_stay_out_of_the_group():
    g = find(qdq_cnn(per_channel=False), "W1q", 0)
    assert names(g) == {"W1q:0", "W1:0", "B1q:0", "B1:0", "h:1", "a:1", "aq:1", "ad:1",
                        "W2:1", "W2q:1"}
    assert_free(g, 8)


def test_qdq_matmul_weight_is_seeded_through_dequantize():
    groups = groups_of(
        [dq("W1q", "W1", "s1", "z1", axis=1), node("MatMul", ["x", "W1"], "h"),
         node("Relu", ["h"], "a"), node("MatMul", ["a", "W2"], "y")],
        [vi("x", 2, 5)], [vi("y", 2, 3)],
        [codes("W1q", 5, 8), scales("s1", 8), zeros("z1", 8), w("W2", 8, 3)], opset=13)
    g = find(groups, "W1q", 1)
    assert names(g) == {"W1q:1", "W1:1", "s1:0", "z1:0", "h:1", "a:1", "W2:0"}
    assert_free(g, 8)
    assert member(g, "W1q", 1).roles == ("out",) and member(g, "W2", 0).roles == ("in",)


def test_blocked_dequantize_removes_a_block_of_channels_with_its_scale_entry():
    # W1 [5, 8] produces 8 channels; W2q [8, 3] is blocked along its input axis in 4s.
    groups = groups_of(
        [node("MatMul", ["x", "W1"], "h"), node("Relu", ["h"], "a"),
         dq("W2q", "W2", "s2", "z2", axis=0, block_size=4), node("MatMul", ["a", "W2"], "y")],
        [vi("x", 2, 5)], [vi("y", 2, 3)],
        [w("W1", 5, 8), codes("W2q", 8, 3), scales("s2", 2, 3), zeros("z2", 2, 3)], opset=21)
    g = find(groups, "W1", 1)
    assert names(g) == {"W1:1", "h:1", "a:1", "W2:0", "W2q:0", "s2:0", "z2:0"}
    assert_free(g, 2, 4)
    assert pos(g, "W1", 1) == blocks(2, 4) == pos(g, "W2q", 0)
    assert pos(g, "s2", 0) == col(2) and member(g, "s2", 0).roles == ("param",)
    # the scale's other axis follows W2q's output channels (pinned by the graph output)
    assert "s2:1" in names(find(groups, "W2q", 1))


# ---------------------------------------------------------------------- operator form
def test_qlinear_conv_chain_slices_weight_scales_and_bias_with_rows():
    inits = [f32("xs", 0.1), zeros("xz", dtype=np.uint8), codes("w1", 8, 3, 1, 1),
             scales("w1s", 8), zeros("w1z", 8), f32("hs", 0.1), zeros("hz", dtype=np.uint8),
             codes("b1", 8, dtype=np.int32), codes("w2", 2, 8, 1, 1), scales("w2s", 2),
             zeros("w2z", 2), f32("ys", 0.1), zeros("yz", dtype=np.uint8)]
    groups = groups_of(
        [node("QuantizeLinear", ["x", "xs", "xz"], "xq"),
         node("QLinearConv", ["xq", "xs", "xz", "w1", "w1s", "w1z", "hs", "hz", "b1"], "h"),
         node("QLinearConv", ["h", "hs", "hz", "w2", "w2s", "w2z", "ys", "yz"], "yq"),
         node("DequantizeLinear", ["yq", "ys", "yz"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)], inits, opset=13)
    g = find(groups, "w1", 0)
    assert names(g) == {"w1:0", "w1s:0", "w1z:0", "b1:0", "h:1", "w2:1"}
    assert_free(g, 8)
    assert member(g, "w1", 0).roles == ("out",) and member(g, "w2", 1).roles == ("in",)
    assert member(g, "w1s", 0).roles == ("param",) and member(g, "b1", 0).roles == ("out",)


def test_dynamic_quantize_and_matmul_integer():
    inits = [codes("W1", 5, 8), zeros("W1z", 8), codes("W2", 8, 3), zeros("W2z")]
    groups = groups_of(
        [node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
         node("MatMulInteger", ["xq", "W1", "xz", "W1z"], "h32"),
         node("Cast", ["h32"], "h", to=TensorProto.FLOAT), node("Relu", ["h"], "a"),
         node("DynamicQuantizeLinear", ["a"], ["aq", "as", "az"]),
         node("MatMulInteger", ["aq", "W2", "az", "W2z"], "y")],
        [vi("x", 2, 5)], [vi("y", 2, 3, dtype=TensorProto.INT32)], inits, opset=13)
    g = find(groups, "W1", 1)
    assert names(g) == {"W1:1", "W1z:0", "h32:1", "h:1", "a:1", "aq:1", "W2:0"}
    assert_free(g, 8)
    assert member(g, "W1", 1).roles == ("out",) and member(g, "W1z", 0).roles == ("param",)
    assert member(g, "W2", 0).roles == ("in",)


def test_conv_integer_and_qlinear_matmul():
    inits = [codes("w1", 8, 3, 1, 1, dtype=np.uint8), zeros("w1z", 8, dtype=np.uint8),
             zeros("xz", dtype=np.uint8), f32("s", 0.1), zeros("z", dtype=np.uint8),
             codes("w2", 8, 3, dtype=np.uint8), scales("w2s", 3), zeros("w2z", 3, dtype=np.uint8)]
    groups = groups_of(
        [node("ConvInteger", ["x", "w1", "xz", "w1z"], "h32"),
         node("Cast", ["h32"], "h", to=TensorProto.FLOAT),
         node("ReduceMean", ["h", "axes"], "p", keepdims=0),  # [1, 8]
         node("QuantizeLinear", ["p", "s", "z"], "pq"),
         node("QLinearMatMul", ["pq", "s", "z", "w2", "w2s", "w2z", "s", "z"], "y")],
        [vi("x", 1, 3, 4, 4, dtype=TensorProto.UINT8)], [vi("y", 1, 3, dtype=TensorProto.UINT8)],
        [*inits, numpy_helper.from_array(np.array([2, 3], np.int64), "axes")], opset=18)
    g = find(groups, "w1", 0)
    assert names(g) == {"w1:0", "w1z:0", "h32:1", "h:1", "p:1", "pq:1", "w2:0"}
    assert_free(g, 8)
    # QLinearMatMul's per-column scale follows w2's output axis, pinned by the output
    out = find(groups, "w2", 1)
    assert {"w2s:0", "w2z:0"} <= names(out) and not out.prunable



def qop_classifier() -> ir.Model:
    """quantize_static's QOperator tail: QLinearConv, QLinearGlobalAveragePool, Flatten,
    QGemm(transB=1), DequantizeLinear; no value_info (ONNX infers none behind the pool)."""
    inits = [f32("xs", 0.1), zeros("xz"), codes("w1", 8, 3, 1, 1), scales("w1s", 8),
             zeros("w1z", 8), f32("hs", 0.1), zeros("hz"), codes("b1", 8, dtype=np.int32),
             f32("ps", 0.05), zeros("pz"), codes("wg", 2, 8), scales("wgs", 2), zeros("wgz", 2),
             codes("bg", 2, dtype=np.int32), f32("ys", 0.2), zeros("yz")]
    ms = {"domain": "com.microsoft"}
    nodes = [node("QuantizeLinear", ["x", "xs", "xz"], "xq"),
             node("QLinearConv", ["xq", "xs", "xz", "w1", "w1s", "w1z", "hs", "hz", "b1"], "h"),
             node("QLinearGlobalAveragePool", ["h", "hs", "hz", "ps", "pz"], "p",
                  channels_last=0, **ms),
             node("Flatten", ["p"], "f", axis=1),
             node("QGemm", ["f", "ps", "pz", "wg", "wgs", "wgz", "bg", "ys", "yz"], "yq",
                  transB=1, **ms),
             node("DequantizeLinear", ["yq", "ys", "yz"], "y")]
    graph = helper.make_graph(nodes, "qop", [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2)], inits)
    return ir.from_proto(helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]))


def test_qoperator_pool_flatten_and_qgemm_carry_the_last_conv_channels():
    # The contrib shape rows shape the pool and QGemm, ONNX's inference the Flatten.
    with temporary_shapes(qop_classifier(), symbolic=True) as model:
        shapes = {n.outputs[0].name: n.outputs[0].shape for n in model.graph}
        assert shapes["p"] == ir.Shape([1, 8, 1, 1]) and shapes["f"] == ir.Shape([1, 8])
        assert shapes["yq"] == ir.Shape([1, 2])
    g = find(analyse(qop_classifier())[1], "w1", 0)
    assert names(g) == {"w1:0", "w1s:0", "w1z:0", "b1:0", "h:1", "p:1", "f:1", "wg:1"}
    assert_free(g, 8)
    assert member(g, "wg", 1).roles == ("in",)


def test_qgemm_transposed_weight_dequantizes_per_stored_row():
    model = qop_classifier()
    wg, wgs = (model.graph.initializers[k].const_value.numpy() for k in ("wg", "wgs"))
    got = float_weight(_model_value(model, "wg"))
    assert np.allclose(got, wg.astype(np.float64) * wgs[:, None].astype(np.float64))


def test_pruned_qoperator_classifier_equals_its_input_columns_at_zero_point():
    """Integer arithmetic with per-tensor activation scales: removing a channel is the
    same as giving the QGemm weight codes equal to their zero point there."""
    proto = ir.serde.serialize_model(qop_classifier())
    model = ir.from_proto(proto)
    w1 = model.graph.initializers["w1"].const_value.numpy()
    pruned, _ = optimize(ir.from_proto(proto), "couple,group,l1,prune", ratio=0.5)
    kept_rows = pruned.graph.initializers["w1"].const_value.numpy()
    kept = [next(i for i in range(8) if np.array_equal(w1[i], row)) for row in kept_rows]
    assert len(kept) == 4
    zeroed = model.graph.initializers["wg"].const_value.numpy().copy()
    zeroed[:, [i for i in range(8) if i not in kept]] = 0  # the zero points are 0
    model.graph.initializers["wg"].const_value = ir.Tensor(zeroed, name="wg")
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 3, 4, 4)).astype(np.float32)}
    np.testing.assert_array_equal(_ort(pruned, feeds), _ort(model, feeds))


def _ort(model: ir.Model, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    proto = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


# ---------------------------------------------------------------------- half precision
def test_cast_of_bf16_weight_makes_the_stored_tensor_the_member():
    bf16 = numpy_helper.from_array(
        _RNG.standard_normal((5, 8)).astype(ml_dtypes.bfloat16), "W1h")
    groups = groups_of(
        [node("Cast", ["W1h"], "W1", to=TensorProto.FLOAT), node("MatMul", ["x", "W1"], "h"),
         node("Relu", ["h"], "a"), node("MatMul", ["a", "W2"], "y")],
        [vi("x", 2, 5)], [vi("y", 2, 3)], [bf16, w("W2", 8, 3)])
    g = find(groups, "W1h", 1)
    assert names(g) == {"W1h:1", "W1:1", "h:1", "a:1", "W2:0"}
    assert member(g, "W1h", 1).roles == ("out",) and member(g, "W1h", 1).kind == "weight"
    assert_free(g, 8)


# ---------------------------------------------------------------------- the weight view
def _model_value(model: ir.Model, name: str) -> ir.Value:
    return model.graph.initializers[name]


def test_float_weight_dequantizes_per_channel_and_blocked():
    raw = np.array([[0, 10, -10, 127], [1, 2, 3, 4]], np.int8)
    scale, zero = np.array([0.5, 2.0], np.float32), np.array([1, -1], np.int8)
    model = build([dq("q", "W", "s", "z", axis=0), node("MatMul", ["x", "W"], "y")],
                  [vi("x", 3, 2)], [vi("y", 3, 4)],
                  [numpy_helper.from_array(raw, "q"), f32("s", scale),
                   numpy_helper.from_array(zero, "z")], opset=13)
    got = float_weight(_model_value(model, "q"))
    assert np.array_equal(got, (raw.astype(np.float64) - zero[:, None]) * scale[:, None])
    blocked = build([dq("q", "W", "s", axis=1, block_size=3), node("MatMul", ["x", "W"], "y")],
                    [vi("x", 3, 2)], [vi("y", 3, 4)],
                    [numpy_helper.from_array(raw, "q"), f32("s", [[1.0, 3.0], [2.0, 4.0]])],
                    opset=21)
    got = float_weight(_model_value(blocked, "q"))
    assert np.array_equal(got, raw * np.array([[1, 1, 1, 3], [2, 2, 2, 4]], np.float64))
    q = quantization_of(_model_value(model, "q"))
    back, clipped = quantize(got * 0 + (raw - zero[:, None]) * scale[:, None], q, np.int8)
    assert np.array_equal(back, raw) and clipped == 0


def test_float_weight_widens_bf16_and_leaves_unquantized_integers():
    data = np.array([[1.5, -2.0]], ml_dtypes.bfloat16)
    model = build([node("Cast", ["h"], "W", to=TensorProto.FLOAT), node("MatMul", ["x", "W"], "y"),
                   node("Gather", ["W", "i"], "g", axis=0)],
                  [vi("x", 3, 1)], [vi("y", 3, 2), vi("g", 1, 2)],
                  [numpy_helper.from_array(data, "h"),
                   numpy_helper.from_array(np.array([0], np.int64), "i")])
    widened = float_weight(_model_value(model, "h"))
    assert widened.dtype == np.float32 and widened.tolist() == [[1.5, -2.0]]
    assert float_weight(_model_value(model, "i")).dtype == np.int64  # indices, not weights


def test_fold_constants_unties_a_shared_dequantized_bias():
    # One zero bias (the exporter's dedup) read by two unrelated layers through one DQ.
    inits = [w("W1", 4, 6), w("W2", 4, 6), codes("bq", 6, dtype=np.int32), scales("bs", 6)]
    model = build(
        [dq("bq", "b", "bs", axis=0), node("MatMul", ["x", "W1"], "m1"),
         node("Add", ["m1", "b"], "h1"), node("MatMul", ["x", "W2"], "m2"),
         node("Add", ["m2", "b"], "h2"), node("Relu", ["h1"], "y1"), node("Relu", ["h2"], "y2"),
         node("MatMul", ["y1", "V1"], "o1"), node("MatMul", ["y2", "V2"], "o2")],
        [vi("x", 2, 4)], [vi("o1", 2, 3), vi("o2", 2, 3)], [*inits, w("V1", 6, 3), w("V2", 6, 3)],
        opset=13)
    before = analyse(model)[1]
    assert find(before, "W1", 1) is find(before, "W2", 1)  # tied through the shared DQ
    FoldConstantsPass()(model)
    after = analyse(model)[1]
    one, two = find(after, "W1", 1), find(after, "W2", 1)
    assert one is not two
    assert_free(one, 6)
    assert_free(two, 6)
    assert len([n for n in model.graph if n.op_type == "DequantizeLinear"]) == 2
