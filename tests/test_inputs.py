"""A model's inputs: specs, symbolic dims, layouts, token-id bounds; one source for all.

Noise calibration and ``--verify``'s random inputs must agree on sizes and id bounds, so
the tests check both against the same model, and ``--input-dim`` end to end.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import make_model, run_cli_in
from onnx import TensorProto, helper, numpy_helper

from spa_opt.api import optimize
from spa_opt.errors import InputError
from spa_opt.inputs import (
    LAYOUT_AXES,
    given_size,
    image_layout,
    model_inputs,
    per_channel_values,
    resolve_shape,
    token_id_bound,
)
from spa_opt.noise import noise_calibration
from spa_opt.verify import random_inputs

F, I64, I32, U8, B = (TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32,
                      TensorProto.UINT8, TensorProto.BOOL)


def token_model(rows: int = 11, ids_type: int = I32) -> ir.Model:
    """ids [b, seq] -> Cast -> Reshape [-1] -> Gather(table[rows, 4]); mask [b, seq] -> out."""
    table = numpy_helper.from_array(np.ones((rows, 4), np.float32), "table")
    flat = numpy_helper.from_array(np.array([-1], np.int64), "flat")
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=I64),
             helper.make_node("Reshape", ["ids64", "flat"], ["ids_flat"]),
             helper.make_node("Gather", ["table", "ids_flat"], ["emb"]),
             helper.make_node("Identity", ["mask"], ["mask_out"])]
    return ir.from_proto(make_model(
        nodes,
        [helper.make_tensor_value_info("ids", ids_type, ["b", "seq"]),
         helper.make_tensor_value_info("mask", I64, ["b", "seq"])],
        [helper.make_tensor_value_info("emb", F, [None, 4]),
         helper.make_tensor_value_info("mask_out", I64, ["b", "seq"])],
        [table, flat]))


def image_model(shape: list) -> ir.Model:
    """x of ``shape`` -> Identity -> y, with a weight initializer that is not an input."""
    w = numpy_helper.from_array(np.ones((1,), np.float32), "w")
    return ir.from_proto(make_model(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", F, shape)],
        [helper.make_tensor_value_info("y", F, shape)], [w]))


def value(model: ir.Model, name: str) -> ir.Value:
    return next(v for v in model.graph.inputs if v.name == name)


def session(model: ir.Model) -> ort.InferenceSession:
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(),
                                providers=["CPUExecutionProvider"])


# ---- token-id bounds ---------------------------------------------------------------------


def test_id_bound_followed_through_cast_and_reshape_to_the_gather():
    model = token_model(rows=11)
    assert token_id_bound(value(model, "ids")) == 11
    assert token_id_bound(value(model, "mask")) == 2  # no Gather: a mask or flag


def test_id_bound_smallest_table_and_dtype_range():
    model = token_model(rows=1000, ids_type=U8)
    assert token_id_bound(value(model, "ids")) == 256  # uint8 holds no id past 255
    small = numpy_helper.from_array(np.ones((5, 2), np.float32), "small")
    proto = ir.to_proto(token_model(rows=11))
    proto.graph.initializer.append(small)
    proto.graph.node.append(helper.make_node("Gather", ["small", "ids"], ["emb_small"]))
    proto.graph.output.append(helper.make_tensor_value_info("emb_small", F, None))
    assert token_id_bound(value(ir.from_proto(proto), "ids")) == 5


def test_verify_and_noise_draw_ids_from_the_same_bound():
    model = token_model(rows=11)
    dims = {"seq": 64}
    noise = noise_calibration(model, 4, dims=dims).feeds
    feeds = random_inputs(model, 4, dims=dims)
    verified = np.stack([f["ids"] for f in feeds])
    for ids in (noise["ids"], verified):
        assert ids.dtype == np.int32 and ids.min() == 0 and ids.max() == 10
    for masks in (noise["mask"], np.stack([f["mask"] for f in feeds])):
        assert set(np.unique(masks)) == {0, 1}
    run = session(model)
    for feed in feeds:
        run.run(None, feed)  # every id indexes the table


# ---- layouts -----------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "layout"), [
    ((2, 3, 8, 8), "NCHW"), ((2, 1, 5, 7), "NCHW"), ((2, 8, 8, 3), "NHWC"),
    ((2, 8, 8, 1), "NHWC"), ((2, 8, 8, 8), None), ((2, 3, 8), None), ((3,), None)])
def test_image_layout(shape, layout):
    assert image_layout(shape) == layout


def test_layout_axes_are_channel_height_width():
    shape = {"NCHW": (2, 3, 5, 7), "NHWC": (2, 5, 7, 3)}
    for layout, (c, h, w) in LAYOUT_AXES.items():
        assert (shape[layout][c], shape[layout][h], shape[layout][w]) == (3, 5, 7)


def test_per_channel_values():
    np.testing.assert_array_equal(per_channel_values([0.5], 3, "mean", "x", True), [0.5] * 3)
    assert per_channel_values([1, 2, 3], 3, "std", "x", True).dtype == np.float32
    with pytest.raises(InputError, match="it has 3 channels, give 1 or 3"):
        per_channel_values([1, 2], 3, "mean", "x", True)
    with pytest.raises(InputError, match="finite and positive"):
        per_channel_values([0.0], 3, "std", "x", True)


# ---- specs and symbolic dims -------------------------------------------------------------


def test_model_inputs_skip_initializers_and_say_the_kind():
    specs = model_inputs(token_model())
    assert [(s.name, s.kind, s.dtype, s.declared) for s in specs] == [
        ("ids", "int", np.dtype(np.int32), ("b", "seq")),
        ("mask", "int", np.dtype(np.int64), ("b", "seq"))]
    assert [s.name for s in model_inputs(image_model(["n", 3, 4, 4]))] == ["x"]


def test_symbolic_dims_by_name_and_by_input_axis():
    spec = model_inputs(image_model(["n", 3, "h", None]))[0]
    with pytest.raises(InputError, match=r"dim 2 is symbolic: give its size with dims=\{'h'"):
        resolve_shape(spec, {}, batch=2)
    with pytest.raises(InputError, match=r"dims=\{'x:3': N\}"):
        resolve_shape(spec, {"h": 8}, batch=2)
    assert resolve_shape(spec, {"h": 8, "x:3": 6}, batch=2) == (2, 3, 8, 6)
    assert given_size(spec, 2, {"h": 8, "x:2": 5}) == 5  # "input:axis" wins over the name
    assert resolve_shape(spec, {}, default=1) == (1, 3, 1, 1)  # --verify's default
    assert resolve_shape(spec, {"n": 4, "x:3": 6}, default=1) == (4, 3, 1, 6)
    with pytest.raises(InputError, match="positive integer"):
        resolve_shape(spec, {"h": 0}, default=1)


def test_verify_inputs_take_the_noise_sizes():
    model = token_model()
    for dims in ({"seq": 5}, {"ids:1": 5, "mask:1": 5}):
        noise = noise_calibration(model, 3, dims=dims).feeds
        feed = random_inputs(model, 1, dims=dims)[0]
        assert noise["ids"].shape == (3, 5) and feed["ids"].shape == (1, 5)
        assert feed["mask"].shape == (1, 5)
    assert random_inputs(model, 1)[0]["ids"].shape == (1, 1)  # symbolic dims default to 1


def reshape_model() -> onnx.ModelProto:
    """x [n, seq] reshaped to [-1, 7]: runs only when n * seq is a multiple of 7."""
    shape = numpy_helper.from_array(np.array([-1, 7], np.int64), "shape")
    return make_model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                      [helper.make_tensor_value_info("x", F, ["n", "seq"])],
                      [helper.make_tensor_value_info("y", F, [None, 7])], [shape])


def test_input_dims_reach_verify_through_the_api_and_the_cli(tmp_path, capsys):
    with pytest.raises(Exception, match="cannot be reshaped"):  # onnxruntime's own error
        optimize(reshape_model(), "dce", verify=1)  # seq = 1 by default
    _, report = optimize(reshape_model(), "dce", verify=2, input_dims={"seq": 7})
    assert report.to_dict()["verify"]["inputs"] == 2
    onnx.save(reshape_model(), tmp_path / "in.onnx")
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", "dce", "--verify", "1", "--input-dim", "x:1=14", "--report", "r.json",
        "in.onnx", "out.onnx"])
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["verify"]["max_abs_err"] == 0.0
