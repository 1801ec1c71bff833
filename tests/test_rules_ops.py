"""Operator rules of the coupling analysis (weighted ops, norms, elementwise), one graph each.

Every test builds a graph where a weighted operator produces channels, sends them
through the operator under test and into another weighted operator, then asserts the
exact group: its members, units, blocks, index-map positions, pins and patches.
Graph builders and lookups live in ``tests/rule_graphs.py``.
"""

from __future__ import annotations

import pytest
from onnx import TensorProto

from tests.rule_graphs import (
    analyse,
    assert_free,
    blocks,
    build,
    col,
    conv_chain,
    f32,
    find,
    groups_of,
    i64,
    member,
    names,
    node,
    norm_constants,
    pos,
    reasons,
    rms_norm,
    tracked,
    vi,
    w,
)


# ---------------------------------------------------------------------- convolutions
def test_conv_output_channels_reach_the_next_conv_input():
    groups = groups_of(
        [node("Conv", ["x", "W1", "B1"], "h"), node("Relu", ["h"], "a"),
         node("Conv", ["a", "W2"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)],
        [w("W1", 8, 3, 1, 1), w("B1", 8), w("W2", 2, 8, 1, 1)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "B1:0", "h:1", "a:1", "W2:1"}
    assert_free(g, 8)
    assert g.primary.name == "W1" and g.primary.roles == ("out",)
    assert member(g, "B1", 0).roles == ("out",) and member(g, "W2", 1).roles == ("in",)
    assert member(g, "W2", 1).kind == "weight" and member(g, "h", 1).kind == "value"
    assert pos(g, "W2", 1) == col(8)
    # the input channels are consumed by W1's axis 1 and pinned by the graph input
    x = find(groups, "W1", 1)
    assert names(x) == {"x:1", "W1:1"} and x.pinned.all()
    assert "comes from graph input `x`" in reasons(x)
    out = find(groups, "W2", 0)
    assert not out.prunable and "reaches graph output `y`" in out.why_not()


def test_grouped_conv_unit_is_one_slot_in_every_group():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("Conv", ["h", "W2"], "h2", group=2),
         node("Conv", ["h2", "W3"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 4, 4, 4)],
        [w("W1", 8, 3, 1, 1), w("W2", 8, 4, 1, 1), w("W3", 4, 8, 1, 1)],
    )
    slots = [[0, 4], [1, 5], [2, 6], [3, 7]]
    into = find(groups, "W1", 0)
    assert_free(into, 4, 2)
    assert pos(into, "W1", 0) == slots and pos(into, "h", 1) == slots
    assert pos(into, "W2", 1) == col(4)  # W2[:, i] reads slot i of both input groups
    assert member(into, "W2", 1).roles == ("in",)
    out = find(groups, "W2", 0)
    assert_free(out, 4, 2)
    assert names(out) == {"W2:0", "h2:1", "W3:1"}
    assert pos(out, "W2", 0) == slots and pos(out, "W3", 1) == slots
    assert not out.patches  # the group count stays


@pytest.mark.parametrize(("multiplier", "block"), [(1, 1), (2, 2)])
def test_depthwise_conv_unit_is_one_input_channel(multiplier, block):
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("Conv", ["h", "Wd", "Bd"], "d", group=8),
         node("Conv", ["d", "W3"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 4, 4, 4)],
        [w("W1", 8, 3, 1, 1), w("Wd", 8 * multiplier, 1, 1, 1), w("Bd", 8 * multiplier),
         w("W3", 4, 8 * multiplier, 1, 1)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "Wd:0", "Bd:0", "d:1", "W3:1"}
    assert_free(g, 8, block)  # the block of the depthwise weight, its largest producer
    assert pos(g, "h", 1) == col(8)
    assert pos(g, "Wd", 0) == blocks(8, block) == pos(g, "W3", 1) == pos(g, "Bd", 0)
    assert [(p.kind, p.detail) for p in g.patches] == [("group", "group=8")]


def test_conv_transpose_weight_axis_1_produces():
    groups = groups_of(
        [node("ConvTranspose", ["x", "W1", "B1"], "h"), node("ConvTranspose", ["h", "W2"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 4, 4, 4)],
        [w("W1", 3, 8, 1, 1), w("B1", 8), w("W2", 8, 4, 1, 1)],
    )
    g = find(groups, "W1", 1)
    assert names(g) == {"W1:1", "B1:0", "h:1", "W2:0"}
    assert g.primary.name == "W1" and g.primary.axis == 1
    assert member(g, "W2", 0).roles == ("in",)
    assert_free(g, 8)
    assert names(find(groups, "W1", 0)) == {"x:1", "W1:0"}


# ---------------------------------------------------------------------- contractions
@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_transposes_pick_the_weight_axes(trans_a, trans_b):
    nodes = [node("Transpose", ["x"], "xt", perm=[1, 0])] if trans_a else []
    nodes += [node("Gemm", ["xt" if trans_a else "x", "W1", "C1"], "h", transA=trans_a,
                   transB=trans_b), node("Gemm", ["h", "W2"], "y")]
    weight = w("W1", 6, 5) if trans_b else w("W1", 5, 6)
    groups = groups_of(nodes, [vi("x", 2, 5)], [vi("y", 2, 3)], [weight, w("C1", 6), w("W2", 6, 3)])
    out_axis, in_axis = (0, 1) if trans_b else (1, 0)
    g = find(groups, "W1", out_axis)
    assert names(g) == {f"W1:{out_axis}", "C1:0", "h:1", "W2:0"}
    assert member(g, "C1", 0).roles == ("out",) and g.primary.name == "W1"
    assert_free(g, 6)
    inputs = find(groups, "W1", in_axis)
    assert member(inputs, "W1", in_axis).roles == ("in",)
    assert member(inputs, "x", 1) and inputs.pinned.all()


def test_gemm_bias_of_shape_1_by_n_is_a_member():
    groups = groups_of([node("Gemm", ["x", "W1", "C1"], "h"), node("Gemm", ["h", "W2"], "y")],
                       [vi("x", 2, 5)], [vi("y", 2, 3)], [w("W1", 5, 6), w("C1", 1, 6),
                                                          w("W2", 6, 3)])
    g = find(groups, "W1", 1)
    assert member(g, "C1", 1).roles == ("out",)
    assert 0 not in tracked(groups, "C1")


def test_matmul_with_the_weight_on_the_left():
    groups = groups_of(
        [node("MatMul", ["Wl", "x"], "h"), node("Relu", ["h"], "a"),
         node("MatMul", ["Wr", "a"], "y")],
        [vi("x", 5, 2)], [vi("y", 3, 2)], [w("Wl", 6, 5), w("Wr", 3, 6)],
    )
    g = find(groups, "Wl", 0)
    assert names(g) == {"Wl:0", "h:0", "a:0", "Wr:1"}
    assert member(g, "Wl", 0).roles == ("out",) and member(g, "Wr", 1).roles == ("in",)
    assert_free(g, 6)
    assert names(find(groups, "Wl", 1)) == {"Wl:1", "x:0"}


def test_batched_matmul_q_at_k_transposed_couples_the_head_dims():
    groups = groups_of(
        [node("MatMul", ["x", "Wq"], "q"), node("MatMul", ["x", "Wk"], "k"),
         node("Transpose", ["k"], "kt", perm=[0, 2, 1]), node("MatMul", ["q", "kt"], "y")],
        [vi("x", 1, 4, 8)], [vi("y", 1, 4, 4)], [w("Wq", 8, 6), w("Wk", 8, 6)],
    )
    g = find(groups, "Wq", 1)
    assert names(g) == {"Wq:1", "q:2", "Wk:1", "k:2", "kt:1"}
    assert pos(g, "Wk", 1) == pos(g, "Wq", 1) == col(6)
    assert_free(g, 6)
    assert not tracked(groups, "y")  # the scores carry no channels


def test_einsum_plain_contraction_is_a_matmul():
    groups = groups_of(
        [node("Einsum", ["x", "W1"], "h", equation="bi,ij->bj"),
         node("Einsum", ["h", "W2"], "y", equation="bj,jk->bk")],
        [vi("x", 2, 5)], [vi("y", 2, 3)], [w("W1", 5, 6), w("W2", 6, 3)], opset=17,
    )
    g = find(groups, "W1", 1)
    assert names(g) == {"W1:1", "h:1", "W2:0"}
    assert member(g, "W1", 1).roles == ("out",) and member(g, "W2", 0).roles == ("in",)
    assert_free(g, 6)


def test_einsum_diagonal_pins():
    groups = groups_of(
        [node("MatMul", ["x", "W1"], "h"), node("Reshape", ["h", "s"], "h2"),
         node("Einsum", ["h2"], "y", equation="ii->i")],
        [vi("x", 2, 5)], [vi("y", 6)], [w("W1", 5, 36), i64("s", [6, 6])],
    )
    g = find(groups, "W1", 1)
    assert not g.prunable and g.pinned.all()
    assert "Einsum that is not a plain contraction at node `n_y`" in g.why_not()


def test_gather_from_a_constant_table_produces_channels():
    groups = groups_of(
        [node("Gather", ["E", "ids"], "emb"), node("MatMul", ["emb", "W2"], "y")],
        [vi("ids", 1, 3, dtype=TensorProto.INT64)], [vi("y", 1, 3, 4)],
        [w("E", 10, 6), w("W2", 6, 4)],
    )
    g = find(groups, "E", 1)
    assert names(g) == {"E:1", "emb:2", "W2:0"}
    assert member(g, "E", 1).roles == ("out",)
    assert_free(g, 6)
    assert 0 not in tracked(groups, "E")  # the vocabulary is not a channel axis


# --------------------------------------------------------------------- normalizations
def test_batch_norm_parameters_are_members_with_roles():
    groups = conv_chain(
        [node("BatchNormalization", ["h", "s", "b", "m", "v"], "bn")], "bn",
        [w("s", 8), w("b", 8), w("m", 8), f32("v", [1.0] * 8)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "s:0", "b:0", "m:0", "v:0", "bn:1", "W2:1"}
    roles = {m.name: m.roles for m in g.members if m.kind == "weight"}
    assert roles == {"W1": ("out",), "s": ("scale",), "b": ("shift",), "m": ("param",),
                     "v": ("param",), "W2": ("in",)}
    assert_free(g, 8)
    assert pos(g, "v", 0) == col(8)


def test_instance_norm_scale_and_bias_follow_channels():
    groups = conv_chain([node("InstanceNormalization", ["h", "s", "b"], "n")], "n",
                        [w("s", 8), w("b", 8)])
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "s:0", "b:0", "n:1", "W2:1"}
    assert member(g, "s", 0).roles == ("scale",) and member(g, "b", 0).roles == ("shift",)
    assert_free(g, 8)


def test_layer_norm_over_the_channel_axis_is_prunable_and_marked():
    model = build(
        [node("MatMul", ["x", "W1"], "h"), node("LayerNormalization", ["h", "s", "b"], "ln"),
         node("MatMul", ["ln", "W2"], "y")],
        [vi("x", 1, 4, 6)], [vi("y", 1, 4, 3)], [w("W1", 6, 8), w("W2", 8, 3), w("s", 8),
                                                  w("b", 8)],
    )
    coupling, groups = analyse(model)
    g = find(groups, "W1", 1)
    assert names(g) == {"W1:1", "h:2", "s:0", "b:0", "ln:2", "W2:0"}
    assert member(g, "s", 0).roles == ("scale",) and member(g, "b", 0).roles == ("shift",)
    assert_free(g, 8)
    assert [(n, v.name, a) for n, v, a in coupling.normalizers] == [("n_ln", "h", 2)]


def test_group_norm_unit_is_a_group_of_channels():
    # onnx infers no shape for GroupNormalization: give it, as an exporter's value_info does
    groups = conv_chain(
        [node("GroupNormalization", ["h", "s", "b"], "gn", num_groups=4)], "gn",
        [w("s", 8), w("b", 8)], opset=21, value_info=[vi("gn", 1, 8, 4, 4)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "s:0", "b:0", "gn:1", "W2:1"}
    assert_free(g, 4, 2)
    assert pos(g, "W1", 0) == blocks(4, 2) == pos(g, "s", 0) == pos(g, "W2", 1)
    assert [(p.kind, p.detail) for p in g.patches] == [("num-groups", "num_groups=4")]


def test_group_norm_opset_18_scale_per_group():
    groups = conv_chain(
        [node("GroupNormalization", ["h", "s", "b"], "gn", num_groups=4)], "gn",
        [w("s", 4), w("b", 4)], opset=18, check=False, value_info=[vi("gn", 1, 8, 4, 4)],
    )
    g = find(groups, "W1", 0)
    assert_free(g, 4, 2)
    assert pos(g, "s", 0) == col(4) and pos(g, "b", 0) == col(4)


def test_group_norm_without_value_info_stays_prunable():
    groups = conv_chain(
        [node("GroupNormalization", ["h", "s", "b"], "gn", num_groups=4)], "gn",
        [w("s", 8), w("b", 8)], opset=21,
    )
    assert find(groups, "W1", 0).prunable


def test_exported_rms_norm_stays_prunable():
    model = build(
        [node("MatMul", ["x", "W1"], "h"), *rms_norm("rms", "h", "g", "nrm"),
         node("MatMul", ["nrm", "W2"], "y")],
        [vi("x", 1, 4, 6)], [vi("y", 1, 4, 3)],
        [w("W1", 6, 8), w("W2", 8, 3), w("g", 8), *norm_constants()], opset=18,
    )
    coupling, groups = analyse(model)
    g = find(groups, "W1", 1)
    assert names(g) == {"W1:1", "h:2", "rms_sq:2", "rms_nrm:2", "g:0", "nrm:2", "W2:0"}
    assert member(g, "g", 0).roles == ("scale",)
    assert_free(g, 8)
    assert [(n, v.name, a) for n, v, a in coupling.normalizers] == [("n_rms_ms", "rms_sq", 2)]
    assert not tracked(groups, "rms_ms")  # the mean has no channels left


# ------------------------------------------------------------------------ elementwise
def test_unary_ops_pass_channels_through():
    groups = conv_chain(
        [node("Relu", ["h"], "a1"), node("Sigmoid", ["a1"], "a2"), node("Gelu", ["a2"], "a3"),
         node("Cast", ["a3"], "a4", to=TensorProto.FLOAT), node("Identity", ["a4"], "a5"),
         node("Dropout", ["a5"], ["a6", "mask"]), node("Tanh", ["a6"], "a7")], "a7", opset=20,
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "W2:1"} | {f"a{k}:1" for k in range(1, 8)}
    assert_free(g, 8)
    assert not tracked(groups, "mask")  # an unused Dropout mask needs no care


ISSUE_UNARY = [  # the issue's list, each one tested
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu",
    "Softplus", "Mish", "Elu", "Selu", "Exp", "Log", "Sqrt", "Neg", "Abs", "Identity",
]
ISSUE_BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"]


@pytest.mark.parametrize("op", ISSUE_UNARY)
def test_every_named_unary_op_passes_channels_through(op):
    opset = 20 if op == "Gelu" else 18
    g = find(conv_chain([node(op, ["h"], "a")], "a", opset=opset), "W1", 0)
    assert names(g) == {"W1:0", "h:1", "a:1", "W2:1"}
    assert_free(g, 8)


@pytest.mark.parametrize("op", ISSUE_BINARY)
def test_every_named_binary_op_broadcasts_a_per_channel_constant(op):
    g = find(conv_chain([node(op, ["h", "c"], "a")], "a", [w("c", 8, 1, 1)]), "W1", 0)
    assert names(g) == {"W1:0", "h:1", "c:0", "a:1", "W2:1"}
    assert pos(g, "c", 0) == col(8)
    assert_free(g, 8)


def test_residual_add_joins_two_producers_into_one_group():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h1"), node("Conv", ["x", "W2"], "h2"),
         node("Add", ["h1", "h2"], "s"), node("Conv", ["s", "W3"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)],
        [w("W1", 8, 3, 1, 1), w("W2", 8, 3, 1, 1), w("W3", 2, 8, 1, 1)],
    )
    g = find(groups, "W1", 0)
    assert g is find(groups, "W2", 0)
    assert names(g) == {"W1:0", "h1:1", "W2:0", "h2:1", "s:1", "W3:1"}
    assert pos(g, "W2", 0) == pos(g, "W1", 0) == col(8)
    assert_free(g, 8)


def test_mul_by_a_per_channel_constant_is_a_scale_and_spatial_operands_do_not_couple():
    groups = conv_chain(
        [node("Mul", ["h", "k"], "m"), node("Add", ["m", "sp"], "a"),
         node("Sub", ["a", "bias"], "s")], "s",
        [w("k", 8, 1, 1), w("sp", 1, 1, 4, 4), w("bias", 1, 8, 1, 1)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "k:0", "m:1", "a:1", "bias:1", "s:1", "W2:1"}
    assert member(g, "k", 0).roles == ("scale",) and member(g, "bias", 1).roles == ("shift",)
    assert not tracked(groups, "sp")
    assert_free(g, 8)


def test_prelu_where_and_clip():
    groups = conv_chain(
        [node("PRelu", ["h", "slope"], "p"), node("Greater", ["p", "zero"], "cond"),
         node("Where", ["cond", "p", "alt"], "wh"), node("Clip", ["wh", "lo", "hi"], "cl")],
        "cl", [w("slope", 8, 1, 1), f32("zero", 0.0), w("alt", 8, 1, 1), f32("lo", 0.0),
               f32("hi", 6.0)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "slope:0", "p:1", "cond:1", "alt:0", "wh:1", "cl:1",
                        "W2:1"}
    assert member(g, "slope", 0).roles == ("param",) and member(g, "alt", 0).roles == ("param",)
    assert not tracked(groups, "lo") and not tracked(groups, "zero")
    assert_free(g, 8)
