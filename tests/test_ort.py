"""The onnxruntime pre-optimization step and the graphsurgeon bridge."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import GOLDEN, make_model
from onnx import TensorProto, helper

import spa_opt
from spa_opt import ort as spa_ort
from spa_opt.integrations.graphsurgeon import optimize_graph
from spa_opt.verify import compare, random_inputs, run_all


def test_make_session_runs_the_pipeline_in_memory(mlp_proto):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = spa_opt.make_session(mlp_proto, "fold-constants,dce", sess_options=options,
                                   providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    reference = ort.InferenceSession(mlp_proto.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], reference, rtol=1e-6)


def test_big_initializers_are_handed_over_not_serialized(monkeypatch, mlp):
    monkeypatch.setattr(spa_ort, "HANDOVER_BYTES", 1)
    serialized = []
    original = ir.to_proto

    def spy(model):
        proto = original(model)
        serialized.append(proto)
        return proto

    monkeypatch.setattr(spa_ort.ir, "to_proto", spy)
    feeds = random_inputs(mlp, 1)
    expected = mlp.graph.initializers["w1"].const_value
    result = run_all(spa_ort.session_from_model(mlp), feeds)
    (proto,) = serialized
    assert all(init.data_location == onnx.TensorProto.EXTERNAL
               for init in proto.graph.initializer)
    assert mlp.graph.initializers["w1"].const_value is expected
    x = feeds[0]["x"]
    w1, w2 = (mlp.graph.initializers[n].const_value.numpy() for n in ("w1", "w2"))
    np.testing.assert_allclose(result[0]["y"], np.maximum(x @ w1, 0) @ w2, rtol=1e-5)


def test_session_from_model_over_memory_mapped_weights(tmp_path):
    model, _ = spa_opt.optimize(GOLDEN / "resnet_tiny.onnx", "dce")
    spa_opt.save_model(model, tmp_path / "ext.onnx", external_data=True)
    mapped = spa_opt.load_model(tmp_path / "ext.onnx")
    assert any(isinstance(v.const_value, ir.ExternalTensor)
               for v in mapped.graph.initializers.values())
    feeds = random_inputs(mapped, 2)
    reference = run_all(ort.InferenceSession(str(GOLDEN / "resnet_tiny.onnx")), feeds)
    assert compare(reference, run_all(spa_opt.session_from_model(mapped), feeds)).max_abs_err \
        <= 1e-6


def test_output_stays_portable_onnx():
    model, _ = spa_opt.optimize(GOLDEN / "resnet_tiny.onnx", "fold-constants,dce")
    assert {d for d in model.opset_imports} == {""}
    assert all(node.domain == "" for node in model.graph.all_nodes())


def test_graphsurgeon_round_trip():
    graph = gs.import_onnx(onnx.load(GOLDEN / "resnet_tiny.onnx"))
    nodes_before = len(graph.nodes)
    result, report = optimize_graph(graph, "fold-constants,dce", verify=2)
    assert isinstance(result, gs.Graph)
    assert len(graph.nodes) == nodes_before
    assert report.verify.max_abs_err <= 1e-5
    assert [t.name for t in result.outputs] == ["logits"]


def test_unrunnable_input_with_verify_is_an_input_error():
    bad = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    bad.graph.node[0].domain = "com.example"
    bad.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(spa_opt.InputError, match="does not run in onnxruntime"):
        spa_opt.optimize(bad, "dce", verify=1)
