"""MatMulNBits' input axis ``K``: removed in whole quantization blocks, exactly.

A 4-bit MLP ``MatMulNBits(up) -> Relu -> MatMulNBits(down)``: the hidden channels are
``up``'s rows and ``down``'s ``K``. Units are ``down``'s blocks (``block_size``
channels; a trailing partial block is a unit of another size, so a group of its own);
pruning them keeps every other block's
codes, scales and zero points, so the result equals the unpruned model with the
removed blocks' scales set to zero. Also: the dequantized view the criteria score
equals what onnxruntime multiplies by, packed zero points are repacked, the cost
counts the new ``K``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from spa_opt.api import optimize
from spa_opt.ir import nbits
from spa_opt.ir.cost import count_cost
from spa_opt.ir.quant import float_weight
from tests.rule_graphs import analyse, blocks, col, find, member, names, node, pos, reasons, vi

MS = "com.microsoft"
K_IN, HIDDEN, BLOCK, OUT = 16, 40, 16, 3  # HIDDEN = 2 full blocks of 16 and one of 8


def _packed(rng: np.random.Generator, rows: int, k: int, block: int) -> np.ndarray:
    blocks = -(-k // block)
    return rng.integers(0, 256, (rows, blocks, block // 2), dtype=np.uint8)


def mlp(zero_points: str = "packed", g_idx: bool = False) -> ir.Model:
    """``x [2, K_IN] -> up (N=HIDDEN) -> Relu -> down (K=HIDDEN) -> y [2, OUT]``.

    ``zero_points``: ``packed`` (uint8, two per byte), ``float`` (unpacked) or ``none``.
    """
    rng = np.random.default_rng(7)
    inits, down_inputs = [], ["r", "Bd", "Sd"]
    inits += [numpy_helper.from_array(_packed(rng, HIDDEN, K_IN, BLOCK), "Bu"),
              numpy_helper.from_array(rng.uniform(0.01, 0.1, (HIDDEN, 1)).astype(np.float32),
                                      "Su"),
              numpy_helper.from_array(_packed(rng, OUT, HIDDEN, BLOCK), "Bd"),
              numpy_helper.from_array(rng.uniform(0.01, 0.1, (OUT, 3)).astype(np.float32), "Sd")]
    if zero_points == "packed":
        inits.append(numpy_helper.from_array(rng.integers(0, 256, (OUT, 2), dtype=np.uint8), "Zd"))
        down_inputs.append("Zd")
    elif zero_points == "float":
        inits.append(numpy_helper.from_array(rng.uniform(6, 10, (OUT, 3)).astype(np.float32),
                                             "Zd"))
        down_inputs.append("Zd")
    if g_idx:
        inits.append(numpy_helper.from_array(np.arange(HIDDEN, dtype=np.int32) // BLOCK, "G"))
        down_inputs += [""] * (4 - len(down_inputs)) + ["G"]
    nodes = [
        node("MatMulNBits", ["x", "Bu", "Su"], "h", domain=MS, K=K_IN, N=HIDDEN, bits=4,
             block_size=BLOCK),
        node("Relu", ["h"], "r"),
        node("MatMulNBits", down_inputs, "y", domain=MS, K=HIDDEN, N=OUT, bits=4,
             block_size=BLOCK),
    ]
    graph = helper.make_graph(nodes, "nbits", [vi("x", 2, K_IN)], [vi("y", 2, OUT)], inits,
                              value_info=[vi("h", 2, HIDDEN), vi("r", 2, HIDDEN)])
    return ir.from_proto(helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]))


def run(model: ir.Model, feeds: dict) -> np.ndarray:
    proto = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def groups(model: ir.Model):
    return analyse(model)[1]


FEEDS = {"x": np.random.default_rng(8).standard_normal((2, K_IN)).astype(np.float32)}


@pytest.mark.parametrize("zero_points", ["packed", "float", "none"])
def test_dequantized_weights_are_what_onnxruntime_multiplies_by(zero_points):
    model = mlp(zero_points)
    real = float_weight(model.graph.initializers["Bd"])  # [N, blocks, block_size]
    assert real.shape == (OUT, 3, BLOCK)
    assert not real[:, -1, HIDDEN % BLOCK:].any()  # the partial block's padding
    weight = real.reshape(OUT, -1)[:, :HIDDEN]
    # Only the down projection, fed the identity: its output rows are the weight's columns.
    down = next(n for n in model.graph if n.outputs[0].name == "y")
    proto = ir.serde.serialize_model(model)
    one = helper.make_graph([p for p in proto.graph.node if p.output[0] == "y"], "one",
                            [vi("r", HIDDEN, HIDDEN)], [vi("y", HIDDEN, OUT)],
                            list(proto.graph.initializer))
    session = ort.InferenceSession(helper.make_model(one, ir_version=10, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]).SerializeToString(),
        providers=["CPUExecutionProvider"])
    got = session.run(None, {"r": np.eye(HIDDEN, dtype=np.float32)})[0]
    np.testing.assert_allclose(got, weight.T, rtol=1e-5, atol=1e-6)
    assert nbits.nbits_of(down) is not None


def test_k_goes_in_whole_blocks_with_scales_and_float_zero_points():
    found = groups(mlp("float"))
    g = find(found, "Bu", 0, at=0)
    assert names(g) == {"Bu:0", "Su:0", "h:1", "r:1", "Bd:1", "Sd:1", "Zd:1"}
    assert (g.units, g.block) == (2, BLOCK) and g.prunable and not g.pinned.any()
    assert pos(g, "Bd", 1) == col(2) and pos(g, "r", 1) == blocks(2, BLOCK)
    # The trailing partial block is a unit of another size: a group of its own.
    tail = find(found, "Bu", 0, at=HIDDEN - 1)
    assert (tail.units, tail.block) == (1, HIDDEN % BLOCK) and pos(tail, "Bd", 1) == [[2]]
    assert member(g, "Bd", 1).roles == ("in",) and member(g, "Sd", 1).roles == ("param",)
    assert member(g, "r", 1).index_map.extent == HIDDEN
    assert [(p.kind, p.detail) for p in g.patches] == [("matmulnbits-n", f"N={HIDDEN}"),
                                                        ("matmulnbits-k", f"K={HIDDEN}")]


def test_g_idx_pins_k():
    g = find(groups(mlp("none", g_idx=True)), "Bu", 0)
    assert not g.prunable and "g_idx" in reasons(g)


@pytest.mark.parametrize("zero_points", ["packed", "float", "none"])
def test_pruned_blocks_equal_zeroed_scales(zero_points):
    proto = ir.serde.serialize_model(mlp(zero_points))
    pruned, report = optimize(ir.from_proto(proto), "couple,group,l1,prune", ratio=0.5)
    down = next(n for n in pruned.graph if n.outputs[0].name == "y")
    removed = report.to_dict()["channels"]["removed"]
    assert removed == BLOCK  # one full block; the partial block is a group of one unit
    assert down.attributes.get_int("K") == HIDDEN - removed
    kept_scales = pruned.graph.initializers[down.inputs[2].name].const_value.numpy()
    reference = ir.from_proto(proto)
    scales = reference.graph.initializers["Sd"].const_value.numpy()
    kept = [j for j in range(3) if any(np.array_equal(scales[:, j], kept_scales[:, i])
                                        for i in range(kept_scales.shape[1]))]
    assert len(kept) == 2
    zeroed = scales.copy()
    zeroed[:, [j for j in range(3) if j not in kept]] = 0
    reference.graph.initializers["Sd"].const_value = ir.Tensor(zeroed, name="Sd")
    np.testing.assert_allclose(run(pruned, FEEDS), run(reference, FEEDS), rtol=1e-5, atol=1e-6)
    if zero_points == "packed":
        zp = pruned.graph.initializers[down.inputs[3].name].const_value.numpy()
        assert zp.shape == (OUT, 1)  # two blocks of 4-bit zero points fit in one byte
    cost = count_cost(pruned)
    assert cost.macs == 2 * (HIDDEN - removed) * K_IN + 2 * OUT * (HIDDEN - removed)


def test_repack_zero_points_keeps_the_kept_blocks_codes():
    codes = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], np.uint8)
    packed = nbits.pack(codes, 4)
    assert packed.shape == (2, 3) and np.array_equal(nbits.unpack(packed, 4, 5), codes)
    q = nbits.NBits(node=ir.Node(MS, "MatMulNBits", []), rows=2, k=80, bits=4, block_size=16)
    again = nbits.repack_zero_points(packed.reshape(-1), q, np.array([0, 3, 4]), 2)
    assert again.shape == (4,) and np.array_equal(
        nbits.unpack(again.reshape(2, 2), 4, 3), codes[:, [0, 3, 4]])


def test_float_weight_of_a_shared_packed_tensor_is_the_raw_codes():
    """Read by two nodes, the packed tensor has no single quantization: not guessed."""
    model = mlp("none")
    bd = model.graph.initializers["Bd"]
    extra = ir.Node(MS, "MatMulNBits", [model.graph.node(2).inputs[0], bd,
                                        model.graph.initializers["Sd"]],
                    attributes=[ir.AttrInt64("K", HIDDEN), ir.AttrInt64("N", OUT),
                                ir.AttrInt64("bits", 4), ir.AttrInt64("block_size", BLOCK)])
    model.graph.append(extra)
    assert float_weight(bd).dtype == np.uint8
