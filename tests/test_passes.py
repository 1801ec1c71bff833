"""The library passes (fold-constants, shape-infer, dce, topo-sort, check) and the context."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import GOLDEN, LIGHT, LIGHT_MODELS, make_model
from onnx import TensorProto, helper, numpy_helper

import spa_opt
from spa_opt.errors import VerificationError
from spa_opt.ir import set_constant
from spa_opt.passes import (
    CheckPass,
    DeadCodeEliminationPass,
    FoldConstantsPass,
    PassManager,
    PipelineContext,
    ShapeInferPass,
    TopoSortPass,
)
from spa_opt.verify import compare, random_inputs, run_all


def outputs_of(model: ir.Model, feeds):
    return run_all(spa_opt.session_from_model(model), feeds)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_fold_constants_lifts_model_zoo_weights(name):
    """Every weight of the onnx package's model-zoo graphs becomes an initializer."""
    model = spa_opt.load_model(LIGHT / f"light_{name}.onnx")
    PassManager([FoldConstantsPass(), DeadCodeEliminationPass(), CheckPass()])(model)
    ops = {node.op_type for node in model.graph.all_nodes()}
    assert "ConstantOfShape" not in ops
    for node in model.graph.all_nodes():
        if node.op_type in ("Conv", "Gemm"):
            weight = node.inputs[1]
            assert weight.const_value is not None, f"{node.name}: weight is not constant"
            assert not weight.is_graph_input()
    assert model.ir_version >= 4


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "resnet50"])
def test_fold_constants_and_dce_are_lossless_on_model_zoo_graphs(name):
    path = LIGHT / f"light_{name}.onnx"
    model = spa_opt.load_model(path)
    feeds = random_inputs(model, 1)
    reference = run_all(spa_opt.session_from_model(spa_opt.load_model(path)), feeds)
    PassManager([FoldConstantsPass(), DeadCodeEliminationPass()])(model)
    assert compare(reference, outputs_of(model, feeds)).max_abs_err <= 1e-5


def test_fold_constants_folds_shape_subgraphs():
    """A TorchScript-style Shape->Gather->Concat->Reshape on a static input folds away."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    model = ir.from_proto(make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 12])], inits))
    feeds = random_inputs(model, 1)
    reference = outputs_of(model, feeds)
    result = FoldConstantsPass()(model)
    DeadCodeEliminationPass()(model)
    assert result.modified
    assert [n.op_type for n in model.graph] == ["Reshape"]
    assert compare(reference, outputs_of(model, feeds)).max_abs_err == 0.0


def test_constant_nodes_become_initializers():
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(
            np.ones((4, 3), np.float32), "w")),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    model = ir.from_proto(make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]))
    FoldConstantsPass()(model)
    assert [n.op_type for n in model.graph] == ["MatMul"]
    assert model.graph.node(0).inputs[1].const_value is not None


def test_dce_removes_dead_nodes_and_counts_them(mlp):
    dce = DeadCodeEliminationPass()
    feeds = random_inputs(mlp, 2)
    reference = outputs_of(mlp, feeds)
    assert dce(mlp).modified
    assert dce.stats == {"nodes-removed": 1, "initializers-removed": 0}
    assert "unused" not in {n.name for n in mlp.graph}
    assert compare(reference, outputs_of(mlp, feeds)).max_abs_err == 0.0
    assert not dce(mlp).modified


def test_shape_infer_fills_intermediate_shapes(mlp):
    shape_infer = ShapeInferPass()
    shape_infer(mlp)
    hidden = mlp.graph.node("fc1").outputs[0]
    assert hidden.shape is not None and hidden.shape[1] == 32
    assert shape_infer.stats["values-unshaped"] == 0


def test_topo_sort_restores_order(mlp):
    nodes = list(mlp.graph)
    mlp.graph.remove(nodes[0])
    mlp.graph.append(nodes[0])
    TopoSortPass()(mlp)
    assert next(iter(mlp.graph)).name == "fc1"
    CheckPass()(mlp)


def test_check_rejects_a_wrongly_pruned_weight(mlp):
    set_constant(mlp.graph.initializers["w2"], np.zeros((31, 4), np.float32))
    with pytest.raises(VerificationError, match="invalid"):
        CheckPass()(mlp)


def test_transforms_invalidate_analyses_and_analyses_survive_shape_infer(mlp):
    context = PipelineContext.of(mlp)
    context.analyses.groups = ["something"]
    ShapeInferPass()(mlp)
    assert context.analyses.filled() == {"groups": ["something"]}
    DeadCodeEliminationPass()(mlp)
    assert context.analyses.filled() == {}
    assert PipelineContext.of(mlp) is context


def test_spa_passes_compose_with_onnx_ir_passes(mlp):
    sequence = ir.passes.Sequential(
        ir.passes.common.RemoveUnusedNodesPass(), FoldConstantsPass(), CheckPass())
    result = sequence(mlp)
    assert result.model is mlp


def test_golden_model_runs_through_library_passes():
    model, report = spa_opt.optimize(GOLDEN / "resnet_tiny.onnx",
                                     "fold-constants,shape-infer,dce,topo-sort,check", verify=2)
    assert report.verify.max_abs_err <= 1e-5
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_check_rejects_a_batchnorm_left_with_old_channel_count():
    rng = np.random.default_rng(0)
    params = [numpy_helper.from_array(rng.random(4).astype(np.float32), n)
              for n in ("s", "b", "m", "v")]
    model = ir.from_proto(make_model(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])], params))
    CheckPass()(model)
    set_constant(model.graph.initializers["m"], np.zeros(3, np.float32))
    with pytest.raises(VerificationError, match="bn"):
        CheckPass()(model)


def test_verify_result_json_has_no_infinities():
    import json

    from spa_opt.verify import VerifyResult

    result = VerifyResult(1, float("inf"), float("inf"), {"y": float("inf"), "z": 0.5})
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(text)["per_output"] == {"y": None, "z": 0.5}


def _two_linears_sharing_a_zero_bias() -> onnx.ModelProto:
    """Two MatMul + Add layers whose (all-zero) biases are one initializer, as dynamo writes."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((6, 6)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.zeros(6, np.float32), "zero_bias")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("Add", ["h", "zero_bias"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"]),
             helper.make_node("Add", ["y", "zero_bias"], ["out"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                      [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 6])], inits)


def test_fold_constants_unties_a_shared_per_channel_operand():
    """Otherwise the hidden channels and the output channels would form one group."""
    proto = _two_linears_sharing_a_zero_bias()
    model, report = spa_opt.optimize(proto, "couple,group", verify=1)
    assert report.to_dict()["coupling"]["prunable"] == 0  # one group, reaching the output
    model, report = spa_opt.optimize(proto, "fold-constants,couple,group", verify=1)
    data = report.to_dict()
    assert data["verify"]["max_abs_err"] == 0.0
    assert data["passes"][0]["stats"]["shared-constants-untied"] == 1
    assert data["coupling"]["groups"] == 3 and data["coupling"]["prunable"] == 1  # in, h, out
    adds = [n for n in model.graph if n.op_type == "Add"]
    assert adds[0].inputs[1] is not adds[1].inputs[1]


def test_fold_constants_keeps_tied_contraction_weights_shared():
    proto = _two_linears_sharing_a_zero_bias()
    proto.graph.node[3].input[1] = "W1T"  # both MatMuls read one weight: a real tie
    proto.graph.initializer.append(
        numpy_helper.from_array(np.ones((6, 6), np.float32), "W1T"))
    proto.graph.node[0].input[1] = "W1T"
    proto.graph.node[0].input[0] = "x6"
    proto.graph.input[0].CopyFrom(helper.make_tensor_value_info("x6", TensorProto.FLOAT, [2, 6]))
    model, _ = spa_opt.optimize(proto, "fold-constants")
    matmuls = [n for n in model.graph if n.op_type == "MatMul"]
    assert matmuls[0].inputs[1] is matmuls[1].inputs[1]


def test_fold_constants_lifts_a_constant_of_shape_once_its_shape_folds():
    """``Shape -> Gather -> Unsqueeze -> ConstantOfShape -> Pad``: pads fold to constants."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["d"]),
             helper.make_node("Sub", ["d", "d"], ["n"]),
             helper.make_node("Add", ["n", "eight"], ["len"]),
             helper.make_node("Unsqueeze", ["len", "axes"], ["len1"]),
             helper.make_node("ConstantOfShape", ["len1"], ["pads"],
                              value=numpy_helper.from_array(np.zeros(1, np.int64))),
             helper.make_node("Pad", ["x", "pads"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(8, np.int64), "eight"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                       inits)
    model, _ = spa_opt.optimize(proto, "fold-constants", verify=1)
    assert [n.op_type for n in model.graph] == ["Pad"]
    assert model.graph.node(0).inputs[1].const_value is not None
