"""Zero rules of quantization, views and onnxruntime's fused ops (spa_opt.passes.zeros).

Each graph has channels that are zero for every input by construction; ``dead`` must
find exactly those (and not the ones a mismatched zero point or an activation with
``f(0) != 0`` makes nonzero), and removing them must leave the outputs as they were.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa_opt
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.passes.zeros import propagate
from tests.rule_graphs import analyse, find, node, vi
from tests.test_rules_nbits import mlp as nbits_mlp

MS = "com.microsoft"
RNG = np.random.default_rng(0)


def arr(name: str, data: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(data), name)


def weight(shape: tuple[int, ...], zero_rows=(), axis: int = 0) -> np.ndarray:
    data = (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    index = [slice(None)] * len(shape)
    index[axis] = list(zero_rows)
    data[tuple(index)] = 0
    return data


def model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "zeros", inputs, outputs, inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)])


def removed(proto: onnx.ModelProto) -> list[list[int]]:
    """Units ``couple,group,dead,prune`` removes, per group (sorted); outputs unchanged."""
    _, report = spa_opt.optimize(proto, "couple,group,dead,prune", verify=2)
    data = report.to_dict()
    assert data["verify"]["max_abs_err"] <= 1e-5
    return sorted(g["units_removed"] for g in data["prune"]["groups"])


def conv_q_conv(q_zp, dq_zp, axis: int = 1) -> onnx.ModelProto:
    """Conv (rows 2, 5 zero) -> QuantizeLinear -> DequantizeLinear -> Conv."""
    nodes = [node("Conv", ["x", "W1", "B1"], "h"),
             node("QuantizeLinear", ["h", "s", "qz"], "hq", axis=axis),
             node("DequantizeLinear", ["hq", "s", "dz"], "hd", axis=axis),
             node("Conv", ["hd", "W2"], "y")]
    bias = np.linspace(0.1, 0.8, 8).astype(np.float32)
    bias[[2, 5]] = 0
    scale = np.full(np.shape(q_zp), 0.05, np.float32)
    inits = [arr("W1", weight((8, 3, 1, 1), [2, 5])), arr("B1", bias), arr("s", scale),
             arr("qz", np.asarray(q_zp, np.uint8)), arr("dz", np.asarray(dq_zp, np.uint8)),
             arr("W2", weight((2, 8, 1, 1)))]
    return model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)], inits)


@pytest.mark.parametrize(("q_zp", "dq_zp", "units"), [
    (3, 3, [[2, 5]]),  # Q(0) = 3, DQ(3) = 0: dead
    (3, 4, []),  # DQ reads the codes with another zero point: (3 - 4) * s != 0
    ([3] * 8, [3, 3, 3, 3, 3, 9, 3, 3], [[2]]),  # per channel: channel 5's points differ
])
def test_a_zero_channel_crosses_a_qdq_pair_at_its_zero_point(q_zp, dq_zp, units) -> None:
    assert removed(conv_q_conv(q_zp, dq_zp)) == units


def test_weights_and_biases_read_through_dequantize_and_cast_are_constants() -> None:
    """QDQ weights (int8 per channel, int32 bias) and half-precision weights via Cast."""
    w1 = weight((8, 3, 1, 1), [2, 5])
    scale = np.linspace(0.01, 0.02, 8).astype(np.float32)
    codes = np.clip(np.rint(w1 / scale[:, None, None, None]), -127, 127).astype(np.int8)
    bias = np.rint(np.linspace(10, 80, 8)).astype(np.int32)
    bias[[2, 5]] = 0
    nodes = [node("DequantizeLinear", ["Wq", "ws"], "W1", axis=0),
             node("DequantizeLinear", ["Bq", "bs"], "B1", axis=0),
             node("Conv", ["x", "W1", "B1"], "h"), node("Relu", ["h"], "r"),
             node("Cast", ["W2h"], "W2", to=TensorProto.FLOAT),
             node("Conv", ["r", "W2"], "y")]
    inits = [arr("Wq", codes), arr("ws", scale), arr("Bq", bias),
             arr("bs", (scale * 0.1).astype(np.float32)),
             arr("W2h", weight((2, 8, 1, 1)).astype(np.float16))]
    proto = model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)], inits)
    assert removed(proto) == [[2, 5]]


def test_dynamic_quantization_keeps_a_zero_channel_at_its_run_time_zero_point() -> None:
    """MatMul -> DynamicQuantizeLinear -> MatMulInteger with the run-time zero point."""
    # 7-bit weights (|w| <= 63), as onnxruntime's quantizer makes them with reduce_range:
    # its u8 x s8 MatMulInteger on AVX2 without VNNI adds pairs of products in int16
    # (pmaddubsw), which saturates past 255 * 64 * 2, and which pairs there are depends
    # on the width, so with full-range weights removing a zero channel changed other
    # outputs by 0.33 there (not on AVX-512 machines)
    w2 = RNG.integers(-63, 64, (8, 4)).astype(np.int8)
    nodes = [node("MatMul", ["x", "W1"], "h"),
             node("DynamicQuantizeLinear", ["h"], ["hq", "hs", "hz"]),
             node("MatMulInteger", ["hq", "W2", "hz", "wz"], "acc"),
             node("Cast", ["acc"], "accf", to=TensorProto.FLOAT),
             node("Mul", ["hs", "ws"], "s"), node("Mul", ["accf", "s"], "y")]
    inits = [arr("W1", weight((6, 8), [1, 4], axis=1)), arr("W2", w2),
             arr("wz", np.int8(0)), arr("ws", np.float32(0.01))]
    proto = model(nodes, [vi("x", 3, 6)], [vi("y", 3, 4)], inits)
    assert removed(proto) == [[1, 4]]


def qoperator(x_zp: int = 128, second_zp: int = 128) -> onnx.ModelProto:
    """Quantize -> QLinearConv (rows 1, 6 zero) -> QLinearAdd -> QLinearGlobalAveragePool
    -> Flatten -> QGemm -> DequantizeLinear; the Add's other branch is the same conv."""
    def codes(data: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(data / 0.01), -127, 127).astype(np.int8)

    w1 = codes(weight((8, 3, 1, 1), [1, 6]))
    w2 = codes(weight((8, 3, 1, 1), [1, 6]))
    wg = codes(weight((4, 8)))
    f, u8, i8 = np.float32, np.uint8, np.int8
    nodes = [
        node("QuantizeLinear", ["x", "xs", "xz"], "xq"),
        node("QLinearConv", ["xq", "xs", "xz", "W1", "ws", "wz", "ys", "yz"], "a"),
        node("QLinearConv", ["xq", "xs", "xz", "W2", "ws", "wz", "ys", "yz2"], "b"),
        node("QLinearAdd", ["a", "ys", "yz", "b", "ys", "yz2", "ys", "yz"], "c", domain=MS),
        node("QLinearGlobalAveragePool", ["c", "ys", "yz", "ys", "yz"], "p", domain=MS),
        node("Flatten", ["p"], "fl"),
        node("QGemm", ["fl", "ys", "yz", "Wg", "ws", "wz", "", "ys", "yz"], "g", domain=MS,
             transB=1),
        node("DequantizeLinear", ["g", "ys", "yz"], "y"),
    ]
    inits = [arr("xs", f(0.02)), arr("xz", u8(x_zp)), arr("W1", w1), arr("W2", w2),
             arr("ws", f(0.01)), arr("wz", i8(0)), arr("ys", f(0.05)), arr("yz", u8(128)),
             arr("yz2", u8(second_zp)), arr("Wg", wg)]
    return model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 4)], inits)


@pytest.mark.parametrize(("read_with", "units"), [("yz2", [[1, 6]]), ("yz", [])])
def test_qoperator_ops_read_each_input_with_its_own_zero_point(read_with, units) -> None:
    """Branch ``b`` is written with zero point 100: QLinearAdd reading it with 100 sees
    real zeros (dead), reading it with 128 sees ``(100 - 128) * s`` (not dead)."""
    proto = qoperator(second_zp=100)
    add = next(n for n in proto.graph.node if n.op_type == "QLinearAdd")
    add.input[5] = read_with
    assert removed(proto) == units


def mlp_gelu(op: str, bias: np.ndarray) -> onnx.ModelProto:
    nodes = [node("MatMul", ["x", "W1"], "h"), node(op, ["h", "b"], "g", domain=MS),
             node("MatMul", ["g", "W2"], "y")]
    inits = [arr("W1", weight((6, 8), [1, 4], axis=1)), arr("b", bias),
             arr("W2", weight((8, 4)))]
    return model(nodes, [vi("x", 3, 6)], [vi("y", 3, 4)], inits)


@pytest.mark.parametrize("op", ["BiasGelu", "FastGelu"])  # BiasAdd: no CPU kernel
def test_bias_then_zero_keeping_fused_ops_are_sums(op: str) -> None:
    bias = np.linspace(0.1, 0.8, 8).astype(np.float32)
    proto = mlp_gelu(op, bias)
    assert removed(proto) == []  # bias nonzero: gelu(b) != 0
    bias[[1, 4]] = 0
    proto.graph.initializer[1].CopyFrom(arr("b", bias))
    assert removed(proto) == [[1, 4]]


@pytest.mark.parametrize(("activation", "units"), [("Relu", [[2, 5]]), ("Sigmoid", [])])
def test_fused_conv_keeps_zero_only_under_an_activation_with_f0_zero(activation, units):
    nodes = [node("FusedConv", ["x", "W1"], "h", domain=MS, activation=activation),
             node("Conv", ["h", "W2"], "y")]
    inits = [arr("W1", weight((8, 3, 1, 1), [2, 5])), arr("W2", weight((2, 8, 1, 1)))]
    proto = model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)], inits)
    proto.graph.value_info.append(vi("h", 1, 8, 4, 4))  # no ONNX shape inference for it
    assert removed(proto) == units


def attention() -> onnx.ModelProto:
    """Attention (2 heads of 4) whose head 1 has zero value columns and value bias."""
    packed, bias = weight((8, 24)), np.linspace(0.1, 0.5, 24).astype(np.float32)
    packed[:, 20:], bias[20:] = 0, 0
    nodes = [node("Attention", ["x", "W", "B"], "a", domain=MS, num_heads=2),
             node("MatMul", ["a", "Wo"], "y")]
    inits = [arr("W", packed), arr("B", bias), arr("Wo", weight((8, 8)))]
    return model(nodes, [vi("x", 1, 3, 8)], [vi("y", 1, 3, 8)], inits)


def test_an_attention_head_with_zero_values_is_dead() -> None:
    assert removed(attention()) == [[1]]


def test_matmul_nbits_rows_at_their_zero_point_are_dead() -> None:
    """Block 0 of the hidden layer (rows 0-15): packed codes 0x88 = (8, 8), the default
    zero point, so the dequantized rows are zero."""
    mlp = nbits_mlp(zero_points="none")
    b_up = mlp.graph.initializers["Bu"]
    data = b_up.const_value.numpy().copy()
    data[:16] = 0x88
    b_up.const_value = ir.tensor(data, name="Bu")
    assert removed(ir.serde.serialize_model(mlp)) == [[0]]


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_skip_norms_zero_where_gamma_and_beta_are_and_sum_their_inputs(op: str) -> None:
    """Output 0: zero gamma (and beta) channels; output 3, input + skip + bias: zero
    where all three are. (Both feed a normalization, so ``dead`` would not remove them:
    the facts are checked directly.)"""
    gamma, beta = np.linspace(0.5, 1.5, 8).astype(np.float32), np.full(8, 0.1, np.float32)
    gamma[3] = beta[3] = 0
    bias = np.full(8, 0.2, np.float32)
    bias[[3, 6]] = 0
    params = ["g", "bt", "bs"] if op == "SkipLayerNormalization" else ["g", "bs"]
    nodes = [node("MatMul", ["x", "W1"], "h"), node("MatMul", ["x", "W2"], "k"),
             node(op, ["h", "k", *params], ["n", "", "", "sum"], domain=MS),
             node("MatMul", ["n", "W3"], "y"), node("MatMul", ["sum", "W4"], "z")]
    inits = [arr("W1", weight((6, 8), [6], axis=1)), arr("W2", weight((6, 8), [6], axis=1)),
             arr("g", gamma), arr("bt", beta), arr("bs", bias), arr("W3", weight((8, 4))),
             arr("W4", weight((8, 4)))]
    proto = model(nodes, [vi("x", 3, 6)], [vi("y", 3, 4), vi("z", 3, 4)], inits)
    ir_model = ir.serde.deserialize_model(proto)
    _, groups = analyse(ir_model)
    group = find(groups, "n", 1)
    with temporary_shapes(ir_model):
        facts = propagate(ir_model.graph, groups)
    by_name = {m.name: m for m in group.members}
    n_zero = np.flatnonzero(facts.get(by_name["n"], group))
    sum_zero = np.flatnonzero(facts.get(by_name["sum"], group))
    assert n_zero.tolist() == [3]
    assert sum_zero.tolist() == [6]
