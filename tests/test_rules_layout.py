"""Operator rules of the coupling analysis (layout, reshape, shape computations, pins,
attention blocks) and solver properties, one small graph per rule.

Every test builds a graph where a weighted operator produces channels, sends them
through the operator under test and into another weighted operator, then asserts the
exact group: its members, units, blocks, index-map positions, pins and patches.
Graph builders and lookups live in ``tests/rule_graphs.py``.
"""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from tests.rule_graphs import (
    analyse,
    assert_free,
    attention_groups,
    blocks,
    build,
    col,
    conv_chain,
    f32,
    find,
    groups_of,
    head_split,
    i64,
    member,
    names,
    node,
    pos,
    qwen3_attention,
    reasons,
    shuffled,
    structure,
    summaries,
    summaries_by_members,
    torchscript_heads,
    tracked,
    vi,
    w,
)


# --------------------------------------------------------------------------- layout
def test_concat_along_channels_offsets_the_second_branch():
    groups = groups_of(
        [node("Conv", ["x", "Wa"], "a"), node("Conv", ["x", "Wb"], "b"),
         node("Concat", ["a", "b"], "c", axis=1), node("Conv", ["c", "W2"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)],
        [w("Wa", 4, 3, 1, 1), w("Wb", 6, 3, 1, 1), w("W2", 2, 10, 1, 1)],
    )
    first, second = find(groups, "Wa", 0), find(groups, "Wb", 0)
    assert first is not second
    assert names(first) == {"Wa:0", "a:1", "c:1", "W2:1"}
    assert pos(first, "c", 1) == col(4) and pos(first, "W2", 1) == col(4)
    assert names(second) == {"Wb:0", "b:1", "c:1", "W2:1"}
    assert pos(second, "c", 1) == col(6, 4) and pos(second, "W2", 1) == col(6, 4)
    assert pos(second, "Wb", 0) == col(6)
    assert_free(first, 4)
    assert_free(second, 6)


def test_concat_along_a_spatial_axis_is_the_identity_on_channels():
    groups = groups_of(
        [node("Conv", ["x", "Wa"], "a"), node("Conv", ["x", "Wb"], "b"),
         node("Concat", ["a", "b"], "c", axis=2), node("Conv", ["c", "W2"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 8, 4)],
        [w("Wa", 5, 3, 1, 1), w("Wb", 5, 3, 1, 1), w("W2", 2, 5, 1, 1)],
    )
    g = find(groups, "Wa", 0)
    assert names(g) == {"Wa:0", "a:1", "Wb:0", "b:1", "c:1", "W2:1"}
    assert pos(g, "c", 1) == col(5)
    assert_free(g, 5)


def test_split_gives_each_output_a_range_and_patches_the_sizes():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("Split", ["h", "sp"], ["s0", "s1"], axis=1),
         node("Conv", ["s0", "Wa"], "ya"), node("Conv", ["s1", "Wb"], "yb")],
        [vi("x", 1, 3, 4, 4)], [vi("ya", 1, 2, 4, 4), vi("yb", 1, 2, 4, 4)],
        [w("W1", 10, 3, 1, 1), i64("sp", [4, 6]), w("Wa", 2, 4, 1, 1), w("Wb", 2, 6, 1, 1)],
    )
    first, second = find(groups, "W1", 0, at=0), find(groups, "W1", 0, at=9)
    assert names(first) == {"W1:0", "h:1", "s0:1", "Wa:1"}
    assert names(second) == {"W1:0", "h:1", "s1:1", "Wb:1"}
    assert pos(first, "W1", 0) == col(4) and pos(first, "s0", 1) == col(4)
    assert pos(second, "W1", 0) == col(6, 4) and pos(second, "Wb", 1) == col(6)
    for g in (first, second):
        assert [p.kind for p in g.patches] == ["split-sizes"]
        assert g.prunable


def test_split_into_equal_parts_by_num_outputs():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"),
         node("Split", ["h"], ["s0", "s1", "s2"], axis=1, num_outputs=3),
         node("Conv", ["s0", "Wa"], "ya"), node("Conv", ["s2", "Wc"], "yc"),
         node("Add", ["s1", "s1"], "yb")],
        [vi("x", 1, 3, 4, 4)],
        [vi("ya", 1, 2, 4, 4), vi("yb", 1, 4, 4, 4), vi("yc", 1, 2, 4, 4)],
        [w("W1", 10, 3, 1, 1), w("Wa", 2, 4, 1, 1), w("Wc", 2, 2, 1, 1)], opset=18,
    )
    assert pos(find(groups, "Wa", 1), "W1", 0) == col(4)
    assert pos(find(groups, "Wc", 1), "W1", 0) == col(2, 8)
    middle = find(groups, "s1", 1)
    assert pos(middle, "W1", 0) == col(4, 4) and middle.pinned.all()
    assert "reaches graph output `yb`" in reasons(middle)


def test_slice_with_a_step_takes_strided_positions():
    groups = conv_chain(
        [node("Slice", ["h", "st", "en", "ax", "stp"], "s")], "s",
        [i64("st", [1]), i64("en", [8]), i64("ax", [1]), i64("stp", [2])], consumed=4,
    )
    kept = find(groups, "s", 1)
    assert names(kept) == {"W1:0", "h:1", "s:1", "W2:1"}
    assert pos(kept, "W1", 0) == col(4, 1, 2) and pos(kept, "s", 1) == col(4)
    assert [(p.kind, p.detail) for p in kept.patches] == [("slice-bounds", "bounds on axis 1")]
    dead = find(groups, "W1", 0, at=0)  # channels the slice drops are dead: their own group
    assert names(dead) == {"W1:0", "h:1"} and pos(dead, "W1", 0) == col(4, 0, 2)


def test_gather_with_constant_indices_maps_positions_to_indices():
    groups = conv_chain([node("Gather", ["h", "idx"], "s", axis=1)], "s",
                        [i64("idx", [5, 1, 6])], consumed=3)
    g = find(groups, "s", 1)
    pairs = {s: c for [s], [c] in zip(pos(g, "s", 1), pos(g, "W1", 0), strict=True)}
    assert pairs == {0: 5, 1: 1, 2: 6}
    assert [p.kind for p in g.patches] == ["gather-indices"]
    assert g.prunable


def test_gather_with_a_scalar_index_pins_only_that_channel():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("Gather", ["h", "idx"], "s", axis=1),
         node("Relu", ["h"], "r"), node("Conv", ["r", "W2"], "y"), node("Add", ["y", "s"], "z")],
        [vi("x", 1, 3, 4, 4)], [vi("z", 1, 2, 4, 4)],
        [w("W1", 8, 3, 1, 1), i64("idx", 2), w("W2", 2, 8, 1, 1)],
    )
    g = find(groups, "W1", 0)
    assert g.summary()["pinned_units"] == 1 and g.prunable
    pinned = [row for row, p in zip(pos(g, "W1", 0), g.pinned, strict=True) if p]
    assert pinned == [[2]]
    assert "Gather picks this channel by a constant index" in reasons(g)


def test_transpose_squeeze_unsqueeze_move_the_channel_axis():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("Transpose", ["h"], "t", perm=[0, 2, 3, 1]),
         node("Unsqueeze", ["t", "ax"], "u"), node("Squeeze", ["u", "ax"], "sq"),
         node("MatMul", ["sq", "W2"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 4, 4, 2)],
        [w("W1", 8, 3, 1, 1), i64("ax", [0]), w("W2", 8, 2)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "t:3", "u:4", "sq:3", "W2:0"}
    assert_free(g, 8)


def test_squeezing_a_channel_axis_pins():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("Squeeze", ["h", "ax"], "s"),
         node("MatMul", ["s", "W2"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 4, 2)], [w("W1", 1, 3, 1, 1), i64("ax", [1]),
                                                     w("W2", 4, 2)],
    )
    g = find(groups, "W1", 0)
    assert g.pinned.all() and "Squeeze removes this single-channel axis at node `n_s`" in reasons(g)


@pytest.mark.parametrize("op", ["Flatten", "Reshape"])
def test_flatten_into_gemm_gives_contiguous_blocks(op):
    flatten = (node("Flatten", ["h"], "f") if op == "Flatten"
               else node("Reshape", ["h", "shp"], "f"))
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), flatten, node("Gemm", ["f", "W2"], "y", transB=1)],
        [vi("x", 1, 3, 2, 3)], [vi("y", 1, 5)],
        [w("W1", 4, 3, 1, 1), i64("shp", [1, 24]), w("W2", 5, 24)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "f:1", "W2:1"}
    assert pos(g, "W1", 0) == col(4)
    assert pos(g, "W2", 1) == blocks(4, 6) == pos(g, "f", 1)
    assert member(g, "W2", 1).index_map.block == 6
    patches = [(p.kind, p.detail) for p in g.patches]
    assert patches == ([] if op == "Flatten" else [("shape-entry", "entry 1 of `shp`")])


def test_nhwc_flatten_gives_strided_positions():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("Transpose", ["h"], "t", perm=[0, 2, 3, 1]),
         node("Reshape", ["t", "shp"], "f"), node("MatMul", ["f", "W2"], "y")],
        [vi("x", 1, 3, 2, 3)], [vi("y", 1, 5)],
        [w("W1", 4, 3, 1, 1), i64("shp", [1, -1]), w("W2", 24, 5)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "t:3", "f:1", "W2:0"}
    assert pos(g, "W2", 0) == [[c + 4 * k for k in range(6)] for c in range(4)]
    assert not g.patches  # the -1 entry follows by itself
    assert_free(g, 4)


def test_reshape_into_heads_removes_whole_heads():
    g = find(head_split("whole"), "Wq", 1)
    assert names(g) == {"Wq:1", "q:2", "q4:2", "qt:1", "qb:2", "q3:2", "Wo:0"}
    assert_free(g, 2, 3)
    assert pos(g, "Wq", 1) == [[0, 1, 2], [3, 4, 5]] == pos(g, "Wo", 0)
    assert pos(g, "q4", 2) == col(2)
    assert sorted(p.detail for p in g.patches) == ["entry 2 of `s3`", "entry 2 of `s4`"]


def test_fused_qkv_unbound_along_the_three_axis_keeps_heads_as_units():
    """timm-style ``qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)``."""
    attention = [
        node("MatMul", ["x", "Wqkv"], "qkv"), node("Reshape", ["qkv", "s5"], "qkv5"),
        node("Transpose", ["qkv5"], "qkvt", perm=[2, 0, 3, 1, 4]),
        node("Gather", ["qkvt", "i0"], "q", axis=0), node("Gather", ["qkvt", "i1"], "k", axis=0),
        node("Gather", ["qkvt", "i2"], "v", axis=0),
        node("Transpose", ["k"], "kt", perm=[0, 1, 3, 2]), node("MatMul", ["q", "kt"], "s"),
        node("Softmax", ["s"], "p", axis=-1), node("MatMul", ["p", "v"], "o"),
        node("Transpose", ["o"], "ot", perm=[0, 2, 1, 3]), node("Reshape", ["ot", "s3"], "o3"),
        node("MatMul", ["o3", "Wo"], "y"),
    ]
    inits = [w("Wqkv", 8, 18), i64("s5", [1, 5, 3, 2, 3]), i64("i0", 0), i64("i1", 1),
             i64("i2", 2), i64("s3", [1, 5, 6]), w("Wo", 6, 8)]
    g = find(groups_of(attention, [vi("x", 1, 5, 8)], [vi("y", 1, 5, 8)], inits), "Wqkv", 1)
    assert_free(g, 2, 9)  # 2 heads; each unit is its q, k and v rows (3 x head dim 3)
    assert pos(g, "Wqkv", 1) == [[0, 1, 2, 6, 7, 8, 12, 13, 14], [3, 4, 5, 9, 10, 11, 15, 16, 17]]
    assert pos(g, "Wo", 0) == [[0, 1, 2], [3, 4, 5]]


def test_reshape_into_heads_with_heads_dim_prunes_the_head_dimension():
    g = find(head_split("dim"), "Wq", 1)
    assert names(g) == {"Wq:1", "q:2", "q4:3", "qt:3", "qb:3", "q3:2", "Wo:0"}
    assert_free(g, 3, 2)
    assert pos(g, "Wq", 1) == [[0, 3], [1, 4], [2, 5]] == pos(g, "Wo", 0)
    assert sorted(p.detail for p in g.patches) == ["entry 2 of `s3`", "entry 3 of `s4`"]


def test_channel_shuffle_unit_is_a_slot_in_every_group():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("Reshape", ["h", "s5"], "r"),
         node("Transpose", ["r"], "t", perm=[0, 2, 1, 3, 4]), node("Reshape", ["t", "s4"], "sh"),
         node("Conv", ["sh", "W2"], "y")],
        [vi("x", 1, 3, 2, 2)], [vi("y", 1, 2, 2, 2)],
        [w("W1", 6, 3, 1, 1), i64("s5", [1, 2, 3, 2, 2]), i64("s4", [1, 6, 2, 2]),
         w("W2", 2, 6, 1, 1)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "r:2", "t:1", "sh:1", "W2:1"}
    assert_free(g, 3, 2)
    assert pos(g, "W1", 0) == [[0, 3], [1, 4], [2, 5]]  # slot j of both groups
    assert pos(g, "W2", 1) == [[0, 1], [2, 3], [4, 5]]  # adjacent after the shuffle


@pytest.mark.parametrize(("mode", "expected"), [
    ("DCR", [[0, 2, 4, 6], [1, 3, 5, 7]]),  # input channel c -> output c % 2
    ("CRD", [[0, 1, 2, 3], [4, 5, 6, 7]]),  # input channel c -> output c // 4
])
def test_depth_to_space_maps(mode, expected):
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("DepthToSpace", ["h"], "d", blocksize=2, mode=mode),
         node("Conv", ["d", "W2"], "y")],
        [vi("x", 1, 3, 2, 2)], [vi("y", 1, 2, 4, 4)], [w("W1", 8, 3, 1, 1), w("W2", 2, 2, 1, 1)],
    )
    g = find(groups, "W2", 1)
    assert names(g) == {"W1:0", "h:1", "d:1", "W2:1"}
    assert pos(g, "W1", 0) == expected and pos(g, "d", 1) == col(2)
    assert g.prunable


def test_space_to_depth_map():
    groups = groups_of(
        [node("Conv", ["x", "W1"], "h"), node("SpaceToDepth", ["h"], "d", blocksize=2),
         node("Conv", ["d", "W2"], "y")],
        [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 2, 2)], [w("W1", 3, 3, 1, 1), w("W2", 2, 12, 1, 1)],
    )
    g = find(groups, "W1", 0)
    assert pos(g, "W2", 1) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]  # k -> k % 3
    assert_free(g, 3)


def test_tile_repeats_positions():
    groups = conv_chain([node("Tile", ["h", "rep"], "t")], "t", [i64("rep", [1, 2, 1, 1])],
                        channels=3, consumed=6)
    g = find(groups, "W1", 0)
    assert pos(g, "W2", 1) == [[0, 3], [1, 4], [2, 5]]
    assert_free(g, 3)


def test_expand_of_a_broadcast_axis_adds_no_channels():
    groups = conv_chain(
        [node("Unsqueeze", ["h", "ax"], "u"), node("Expand", ["u", "shape"], "e"),
         node("ReduceSum", ["e", "ax"], "r", keepdims=0)], "r",
        [i64("ax", [0]), i64("shape", [3, 1, 8, 4, 4])], opset=18,
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "u:2", "e:2", "r:1", "W2:1"}
    assert [(p.kind, p.detail) for p in g.patches] == [("shape-entry", "entry 2 of `shape`")]
    assert_free(g, 8)


PASS_THROUGH = {
    "pad-spatial": ([node("Pad", ["h", "pads"], "p")], "p",
                    [i64("pads", [0, 0, 1, 1, 0, 0, 1, 1])], {"y_shape": (1, 2, 6, 6)}),
    "pooling": ([node("MaxPool", ["h"], "m", kernel_shape=[2, 2]),
                 node("AveragePool", ["m"], "a", kernel_shape=[2, 2], strides=[1, 1]),
                 node("GlobalAveragePool", ["a"], "p")], "p", [], {"y_shape": (1, 2, 1, 1)}),
    "reduce-spatial": ([node("ReduceMean", ["h", "axes"], "r", keepdims=0),
                        node("Unsqueeze", ["r", "axes"], "p")], "p", [i64("axes", [2, 3])],
                       {"y_shape": (1, 2, 1, 1), "opset": 18}),
    "softmax-spatial": ([node("Softmax", ["h"], "p", axis=3)], "p", [], {}),
    "softmax-opset-11-last": ([node("Softmax", ["h"], "p", axis=-1)], "p", [], {"opset": 11}),
    "resize-scales": ([node("Resize", ["h", "", "scales"], "p", mode="nearest")], "p",
                      [f32("scales", [1, 1, 2, 2])], {"y_shape": (1, 2, 8, 8)}),
}


@pytest.mark.parametrize("case", sorted(PASS_THROUGH))
def test_channels_pass_through(case):
    middle, out, inits, kwargs = PASS_THROUGH[case]
    g = find(conv_chain(middle, out, inits, **kwargs), "W1", 0)
    expected = {"W1:0", "h:1", "W2:1"} | {f"{n.output[0]}:1" for n in middle}
    assert names(g) == expected
    assert_free(g, 8)
    assert not g.patches


PINNED = {
    "pad-channels": ([node("Pad", ["h", "pads"], "p")], "p",
                     [i64("pads", [0, 1, 0, 0, 0, 1, 0, 0])], {"consumed": 10},
                     "Pad pads the channel axis at node `n_p`"),
    "argmax-channels": ([node("ArgMax", ["h"], "am", axis=1),
                         node("Cast", ["am"], "p", to=TensorProto.FLOAT)], "p", [],
                        {"consumed": 1}, "ArgMax over the channel axis at node `n_am`"),
    "softmax-channels": ([node("Softmax", ["h"], "p", axis=1)], "p", [], {},
                         "Softmax normalizes over the channel axis at node `n_p`"),
    "softmax-opset-11": ([node("Softmax", ["h"], "p")], "p", [], {"opset": 11},
                         "Softmax normalizes over the channel axis at node `n_p`"),
    "topk-channels": ([node("TopK", ["h", "k"], ["p", "ti"], axis=1)], "p", [i64("k", [3])],
                      {"consumed": 3}, "unknown operator `TopK` (no coupling rule) at node `n_p`"),
    "custom-domain": ([node("Foo", ["h"], "p", domain="custom")], "p", [],
                      {"check": False, "value_info": [vi("p", 1, 8, 4, 4)]},
                      "unknown operator `custom::Foo` (no coupling rule) at node `n_p`"),
    "graph-output": ([node("Relu", ["h"], "p")], "p", [], {"outputs": [vi("h", 1, 8, 4, 4)]},
                     "reaches graph output `h`"),
    "graph-input": ([node("Add", ["h", "x2"], "p")], "p", [],
                    {"inputs": [vi("x2", 1, 8, 4, 4)]}, "comes from graph input `x2`"),
    "initializer-input": ([node("Relu", ["h"], "p")], "p", [],
                          {"inputs": [vi("W1", 8, 3, 1, 1)]},
                          "initializer `W1` is also a graph input, so it can be replaced at "
                          "run time"),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_channels_pinned(case):
    middle, out, inits, kwargs, reason = PINNED[case]
    groups = conv_chain(middle, out, inits, **kwargs)
    g = find(groups, "W1", 0)
    assert g.pinned.all() and not g.prunable
    assert g.why_not() == [reason]
    if case in ("graph-output", "graph-input"):
        kinds = {m.name: m.kind for m in g.members}
        assert kinds.get("h") == "output" or kinds.get("x2") == "input"
    if case in ("topk-channels", "custom-domain", "pad-channels"):  # the far side too
        after = find(groups, "W2", 1)
        assert names(after) == {"p:1", "W2:1"} and after.why_not() == [reason]


def test_resize_with_sizes_patches_the_channel_entry():
    groups = conv_chain([node("Resize", ["h", "", "", "sz"], "r", mode="nearest")], "r",
                        [i64("sz", [1, 8, 8, 8])], y_shape=(1, 2, 8, 8))
    g = find(groups, "W1", 0)
    assert [(p.kind, p.detail) for p in g.patches] == [("shape-entry", "entry 1 of `sz`")]


@pytest.mark.parametrize(("axes", "sizes", "expected"), [
    ([2, 3], [8, 8], []),
    ([1, 2, 3], [8, 8, 8], [("shape-entry", "entry 0 of `sz`")]),
])
def test_resize_sizes_with_axes_attribute(axes, sizes, expected):
    groups = conv_chain([node("Resize", ["h", "", "", "sz"], "r", mode="nearest", axes=axes)],
                        "r", [i64("sz", sizes)], y_shape=(1, 2, 8, 8), opset=18)
    g = find(groups, "W1", 0)
    assert [(p.kind, p.detail) for p in g.patches] == expected


# ----------------------------------------------------------------- shape computations
def test_torchscript_shape_target_couples_and_patches_the_constant_entry():
    groups = torchscript_heads([], [i64("H", [2])])
    g = find(groups, "W1", 1)
    assert names(g) == {"W1:1", "q:1", "q3:1", "r:1", "q2:1", "W2:0"}
    assert_free(g, 2, 3)
    assert pos(g, "W2", 0) == [[0, 1, 2], [3, 4, 5]]
    assert [(p.node, p.kind, p.detail) for p in g.patches] == [
        ("n_q3", "shape-entry", "entry 0 of `H`")]


def test_shape_entry_computed_by_an_untraceable_op_pins():
    groups = torchscript_heads(
        [node("Range", ["zero", "two", "one"], "rg"),
         node("ReduceMax", ["rg"], "H", keepdims=1)],
        [i64("two", 2), i64("one", 1)], check=False,
        value_info=[vi("q3", 2, 2, 3), vi("r", 2, 2, 3), vi("q2", 2, 6)],
    )
    g = find(groups, "W1", 1)
    assert g.pinned.all() and not g.prunable
    assert g.why_not() == ["its size is computed at run time by `n_H` from values that could "
                           "not be traced at node `n_q3`"]
    assert g.reasons[0].code == "untraced-shape"


# ----------------------------------------------------------------------------- pins
def test_value_used_inside_an_if_subgraph_pins():
    then_branch = helper.make_graph([node("Identity", ["h"], "t_out")], "then", [],
                                    [vi("t_out", 1, 8, 4, 4)])
    else_branch = helper.make_graph([node("Neg", ["h"], "e_out")], "else", [],
                                    [vi("e_out", 1, 8, 4, 4)])
    groups = conv_chain(
        [node("Relu", ["h"], "r"),
         node("If", ["cond"], "branch", then_branch=then_branch, else_branch=else_branch)],
        "r", inputs=[vi("cond", dtype=TensorProto.BOOL)], outputs=[vi("branch", 1, 8, 4, 4)],
    )
    g = find(groups, "W1", 0)
    assert names(g) == {"W1:0", "h:1", "r:1", "W2:1"}
    assert g.pinned.all() and [r.code for r in g.reasons] == ["subgraph"]
    assert "`h` is read inside a subgraph at node `n_branch`" in reasons(g)


# ------------------------------------------------------------------- attention blocks
@pytest.mark.parametrize("qk_norm", [False, True])
def test_gqa_attention_groups_by_key_value_group(qk_norm):
    _, coupling, groups = attention_groups(qk_norm=qk_norm)
    g = find(groups, "Wq", 1)
    assert g is find(groups, "Wk", 1) is find(groups, "Wv", 1) is find(groups, "Wo", 0)
    assert_free(g, 2, 4)  # 2 kv groups; n_rep * head_dim = 2 * 2 positions of q per unit
    assert pos(g, "Wq", 1) == blocks(2, 4) == pos(g, "Wo", 0)
    assert pos(g, "Wk", 1) == blocks(2, 2) == pos(g, "Wv", 1)
    assert pos(g, "k_T", 1) == blocks(2, 2)  # repeated kv heads: q heads 0,1 -> kv group 0
    assert {m.name for m in g.members if "out" in m.roles} == {"Wq", "Wk", "Wv"}
    kinds = sorted(p.detail for p in g.patches)
    assert "entry 2 of `rep_shape`" not in kinds and "entry 1 of `rep_shape`" in kinds
    if qk_norm:
        assert {"qnorm_nrm:2", "knorm_nrm:2", "q_n:2", "k_n:2"} <= names(g)
        assert not tracked(groups, "gq") and not tracked(groups, "gk")
    hidden = find(groups, "Wo", 1)  # the residual stream meets the graph input and output
    assert {"x:2", "Wq:0", "Wk:0", "Wv:0", "Wo:1", "y:2"} <= names(hidden)
    assert hidden.pinned.all()
    assert coupling.stats["evaluations"] < 4 * coupling.stats["nodes"]


def test_qwen3_attention_with_heads_dim_couples_q_norm_and_k_norm_weights():
    _, _, groups = attention_groups("dim")
    qk = find(groups, "Wq", 1)
    assert qk is find(groups, "Wk", 1) is find(groups, "gq", 0) is find(groups, "gk", 0)
    assert_free(qk, 2, 4)  # one head-dim position across the 4 q heads
    assert pos(qk, "Wq", 1) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert pos(qk, "Wk", 1) == [[0, 2], [1, 3]] and pos(qk, "gq", 0) == col(2)
    assert member(qk, "gq", 0).roles == ("scale",)
    vo = find(groups, "Wv", 1)
    assert vo is find(groups, "Wo", 0) and vo is not qk
    assert pos(vo, "Wv", 1) == [[0, 2], [1, 3]] and pos(vo, "Wo", 0) == [[0, 2, 4, 6], [1, 3, 5, 7]]


# ------------------------------------------------------------------ solver properties
@pytest.mark.parametrize("heads_mode", ["whole", "dim"])
def test_coupling_does_not_depend_on_node_order(heads_mode):
    nodes = qwen3_attention()[0]
    _, _, reference = attention_groups(heads_mode)
    for seed in (1, 2, 3):
        assert [n.name for n in shuffled(nodes, seed)] != [n.name for n in nodes]
        _, _, groups = attention_groups(heads_mode, order_seed=seed)
        assert structure(groups) == structure(reference)


def test_group_summaries_do_not_depend_on_node_order():
    _, _, reference = attention_groups()
    _, _, groups = attention_groups(order_seed=1)  # k's projection comes before q's
    assert summaries_by_members(groups) == summaries_by_members(reference)


def test_node_order_does_not_change_the_summaries_of_a_chain():
    nodes = [node("Conv", ["x", "Wa"], "a"), node("Conv", ["x", "Wb"], "b"),
             node("Add", ["a", "b"], "s"), node("Conv", ["x", "Wc"], "c"),
             node("Concat", ["s", "c"], "cat", axis=1), node("Conv", ["cat", "W2"], "y")]
    args = ([vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)],
            [w("Wa", 4, 3, 1, 1), w("Wb", 4, 3, 1, 1), w("Wc", 2, 3, 1, 1), w("W2", 2, 6, 1, 1)])
    reference = groups_of(nodes, *args)
    swapped = groups_of([nodes[1], nodes[0], *nodes[2:]], *args)
    assert structure(swapped) == structure(reference)
    cat = find(reference, "Wc", 0)
    assert pos(cat, "W2", 1) == col(2, 4)


def test_coupling_twice_gives_the_same_groups():
    model, _, first = attention_groups()
    _, second = analyse(model)
    assert summaries(second) == summaries(first)
    assert [g.id for g in second] == [g.id for g in first]


def test_the_input_model_is_not_modified():
    nodes, inputs, outputs, inits = qwen3_attention()
    model = build(nodes, inputs, outputs, inits, opset=18)
    before = ir.serde.serialize_model(model).SerializeToString()
    analyse(model)
    analyse(model, "dim")
    assert ir.serde.serialize_model(model).SerializeToString() == before
    assert all(v.shape is None for n in model.graph for v in n.outputs if v.name != "y")


def _same_padding_chain(channel_pad: int = 0) -> list:
    """TensorFlow-style "same" padding as HF's TorchScript exports write it.

    The spatial amounts are computed from the input's size at run time; the batch and
    channel amounts are a ConstantOfShape fill (or, with ``channel_pad``, a constant).
    Torch's pad order (last axis first) becomes ONNX's by Reshape [-1, 2], a reversed
    Slice, Transpose and Reshape [-1].
    """
    fill = helper.make_tensor("fill", TensorProto.INT64, [1], [0])
    return [
        node("Shape", ["h"], "sh"), node("Gather", ["sh", "two"], "d"),
        node("Sub", ["d", "d"], "zero_d"), node("Add", ["zero_d", "one"], "p"),
        node("Unsqueeze", ["p", "ax0"], "p1"),
        node("Concat", ["p1", "p1", "p1", "p1"], "spatial", axis=0),
        node("ConstantOfShape", ["four"], "nc", value=fill),
        node("Add", ["nc", "channel_pad"], "nc_pad"),
        node("Concat", ["spatial", "nc_pad"], "torch_pads", axis=0),
        node("Reshape", ["torch_pads", "pairs"], "pairs2"),
        node("Slice", ["pairs2", "minus1", "far", "ax0", "minus1"], "flipped"),
        node("Transpose", ["flipped"], "onnx2", perm=[1, 0]),
        node("Reshape", ["onnx2", "flat"], "pads"),
        node("Pad", ["h", "pads"], "hp"),
    ], [i64("two", 2), i64("one", 1), i64("ax0", [0]), i64("four", [4]),
        i64("channel_pad", [0, 0, channel_pad, 0]), i64("pairs", [-1, 2]),
        i64("minus1", [-1]), i64("far", [-(2**62)]), i64("flat", [-1])]


@pytest.mark.parametrize("channel_pad, prunable", [(0, True), (1, False)])
def test_pad_amounts_computed_at_run_time_are_traced(channel_pad: int, prunable: bool):
    """Zero literal pads on the channel axis pass channels; spatial ones are sized."""
    pad_nodes, pad_inits = _same_padding_chain(channel_pad)
    nodes = [node("Conv", ["x", "W1"], "h"), *pad_nodes, node("Conv", ["hp", "W2"], "y")]
    width = 8 + channel_pad
    groups = groups_of(nodes, [vi("x", 1, 3, 6, 6)], [vi("y", 1, 2, 6, 6)],
                       [w("W1", 8, 3, 1, 1), w("W2", 2, width, 3, 3), *pad_inits],
                       check=False)
    g = find(groups, "W1", 0)
    assert g.prunable is prunable, g.why_not()
    if prunable:
        assert_free(g, 8)
        assert names(g) >= {"W1:0", "h:1", "hp:1", "W2:1"}
