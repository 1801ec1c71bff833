"""The input is judged on load, before any pass (issue 16): bad input is exit 2, one line.

Each test is a failure class the mutation fuzzer found (``tests/fuzz``), rebuilt as a
small graph: a name written twice, nodes out of order, a graph output without a
shape, a Conv whose weight disagrees with its input, a model onnxruntime refuses at
run time, and library noise on a successful run. ``capfd`` reads file descriptor 2,
so onnxruntime's own C++ log lines would be seen too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from conftest import make_model, run_cli_in
from onnx import TensorProto, helper, numpy_helper

PRUNE = ["-p", "fold-constants,couple,group,l1,prune", "--ratio", "0.3", "--verify", "1"]


def conv_chain(channels: int = 8) -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> y, with one prunable group of ``channels``."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32),
                                 "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, channels, 1, 1)).astype(np.float32),
                                 "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                      [w1, w2])


def run(tmp_path: Path, capfd, model: onnx.ModelProto, *extra: str) -> tuple[int, list[str]]:
    onnx.save(model, str(tmp_path / "in.onnx"))
    code, _, err = run_cli_in(capfd, tmp_path, [*PRUNE, *extra, "in.onnx", "out.onnx"])
    return code, [line for line in err.splitlines() if line.strip()]


def assert_rejected(tmp_path: Path, code: int, lines: list[str], *words: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("spa-opt: error: "), lines
    assert all(word in lines[0] for word in words), lines
    assert not (tmp_path / "out.onnx").exists()


def test_a_value_written_twice_is_bad_input_naming_both_nodes(tmp_path: Path, capfd) -> None:
    model = conv_chain()
    model.graph.node[1].output[0] = "h"  # Relu writes what conv1 writes
    model.graph.node[2].input[0] = "h"
    code, lines = run(tmp_path, capfd, model)
    assert_rejected(tmp_path, code, lines, "'relu'", "'conv1'", "'h'")


def test_nodes_out_of_order_are_sorted_on_load_and_counted(tmp_path: Path, capfd) -> None:
    model = conv_chain()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    code, lines = run(tmp_path, capfd, model, "--stats")
    assert code == 0, lines
    assert "  load: nodes-reordered = 2" in lines
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)


def test_a_graph_output_without_a_shape_gets_the_inferred_one(tmp_path: Path, capfd) -> None:
    model = conv_chain()
    model.graph.output[0].type.tensor_type.ClearField("shape")
    code, lines = run(tmp_path, capfd, model, "--stats")
    assert code == 0, lines
    assert "  load: output-shapes-inferred = 1" in lines
    out = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(out, full_check=True)
    assert [d.dim_value for d in out.graph.output[0].type.tensor_type.shape.dim] == [1, 4, 8, 8]


def test_a_conv_whose_weight_disagrees_with_its_input_is_bad_input(tmp_path: Path,
                                                                   capfd) -> None:
    model = conv_chain()
    w2 = numpy_helper.to_array(model.graph.initializer[1])[:, :6]
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w2), "w2"))
    code, lines = run(tmp_path, capfd, model)
    assert_rejected(tmp_path, code, lines, "input model", "conv2")


def test_a_model_onnxruntime_cannot_run_is_one_line_naming_the_node(tmp_path: Path,
                                                                    capfd) -> None:
    """Slice ``ends`` of rank 2 passes the checker and fails in onnxruntime's kernel."""
    ends = numpy_helper.from_array(np.array([[4]], dtype=np.int64), "ends")
    starts = numpy_helper.from_array(np.array([0], dtype=np.int64), "starts")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    model = conv_chain()
    graph = model.graph
    graph.initializer.extend([starts, ends, axes])
    graph.node.insert(2, helper.make_node("Slice", ["a", "starts", "ends_1d", "axes"], ["s"],
                                          name="cut"))
    graph.node.insert(2, helper.make_node("Identity", ["ends"], ["ends_1d"], name="ends_id"))
    graph.node[-1].input[0] = "s"
    w2 = numpy_helper.to_array(graph.initializer[1])[:, :4]
    graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w2), "w2"))
    code, lines = run(tmp_path, capfd, model)
    assert_rejected(tmp_path, code, lines, "does not run in onnxruntime", "node 'cut' (Slice)")
    assert "onnxruntime_src" not in lines[0]


def test_library_warnings_stay_off_stderr_unless_debug(tmp_path: Path, capfd,
                                                       monkeypatch) -> None:
    """onnx_ir logs a traceback when its shape inference fails; a user sees none of it."""
    from onnx_ir.passes.common import shape_inference

    original = shape_inference.ShapeInferencePass.call

    def noisy(self, model: ir.Model):
        try:
            raise ValueError("inference could not merge shapes")
        except ValueError as error:
            logging.getLogger(shape_inference.__name__).warning(
                "Shape inference failed: %s. Model is left unchanged", exc_info=error)
        return original(self, model)

    monkeypatch.setattr(shape_inference.ShapeInferencePass, "call", noisy)
    monkeypatch.setattr(logging.root, "handlers", [])  # as outside pytest: last resort prints
    code, lines = run(tmp_path, capfd, conv_chain())
    assert code == 0
    assert all(line.startswith(("prune: ", "verify: ")) for line in lines), lines
    code, lines = run(tmp_path, capfd, conv_chain(), "--debug")
    assert code == 0 and any("Shape inference failed" in line for line in lines)


def test_a_slice_from_zero_without_steps_between_convs_prunes(tmp_path: Path, capfd) -> None:
    """Issue 16, by hand: Conv -> Slice(starts=[0], no steps) -> Conv was an IndexError."""
    model = conv_chain()
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.array([v], dtype=np.int64), name)
                              for name, v in (("starts", 0), ("ends", 6), ("axes", 1))])
    graph.node.insert(2, helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["s"],
                                          name="cut"))
    graph.node[-1].input[0] = "s"
    w2 = numpy_helper.to_array(graph.initializer[1])[:, :6]
    graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w2), "w2"))
    code, lines = run(tmp_path, capfd, model)
    assert code == 0, lines
    assert all(line.startswith(("prune: ", "verify: ")) for line in lines), lines
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)


def test_a_declared_shape_the_graph_contradicts_once_folded_is_bad_input(tmp_path: Path,
                                                                         capfd) -> None:
    """Found by the fuzzer (segformer, a Transpose inserted): the checker passed the input,
    fold-constants resolved the Shape -> Reshape chain, and its result failed the check."""
    table = numpy_helper.from_array(np.arange(6, dtype=np.float32), "table")
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Reshape", ["table", "s"], ["r"], name="reshape"),
             helper.make_node("Add", ["r", "x"], ["y"], name="add")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [table])
    model.graph.node[2].input[1] = "r"  # y = r + r: shape [2, 3] ...
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 3  # ... declared [3, 3]
    code, lines = run(tmp_path, capfd, model)
    assert_rejected(tmp_path, code, lines, "input model is invalid", "differ")
