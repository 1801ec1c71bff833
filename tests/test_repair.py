"""Repairs on load: node order and stale value_info (spa_opt/ir/repair.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_model, run_cli_in
from onnx import TensorProto, helper, numpy_helper

import spa_opt
from spa_opt.errors import InputError
from spa_opt.ir.repair import repair_model


def _conv_relu_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "W2")]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["h"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["y"], name="c2")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                      inits)


def _unsorted() -> onnx.ModelProto:
    proto = _conv_relu_conv()
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend([nodes[2], nodes[0], nodes[1]])  # as onnxruntime still runs it
    return proto


def _stale_value_info() -> onnx.ModelProto:
    proto = _conv_relu_conv()
    proto.graph.value_info.append(  # the shape before a stride change: 8 x 8 is now wrong
        helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 8, 4, 4]))
    return proto


def test_an_unsorted_graph_that_onnxruntime_runs_is_sorted_and_pruned(tmp_path: Path,
                                                                      capsys) -> None:
    onnx.save(_unsorted(), tmp_path / "in.onnx")
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", "couple,group,l1,prune", "--ratio", "0.5", "--stats", "--verify", "2",
        "--report", "r.json", "in.onnx", "out.onnx"])
    assert code == 0, err
    assert "load: nodes-reordered = 1" in err
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)


def test_stale_value_info_is_dropped_and_the_check_passes(tmp_path: Path, capsys) -> None:
    proto = _stale_value_info()
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.save(proto, tmp_path / "in.onnx")
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", "couple,group,dead,l1,prune", "--ratio", "0.5", "--stats", "--verify", "2",
        "in.onnx", "out.onnx"])
    assert code == 0, err
    assert "load: value-info-dropped = " in err
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)


def test_a_valid_model_is_left_alone() -> None:
    model = spa_opt.load_model(_conv_relu_conv())
    before = ir.serde.serialize_model(model).SerializeToString()
    assert repair_model(model) == {}
    assert ir.serde.serialize_model(model).SerializeToString() == before
    _, report = spa_opt.optimize(_conv_relu_conv(), "dce")
    assert report.to_dict()["load"] == {"nodes-reordered": 0, "value-info-dropped": 0}


def test_a_cycle_is_bad_input() -> None:
    proto = _conv_relu_conv()
    proto.graph.node[0].input[0] = "r"  # c1 now reads relu's output: a cycle
    with pytest.raises(InputError, match="topological order"):
        spa_opt.optimize(proto.SerializeToString(), "dce")
