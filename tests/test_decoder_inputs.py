"""Inputs of a decoder with a key/value cache, built from token ids alone.

The conventions are those of :mod:`spa_opt.decoder_inputs`; the graphs here only declare
inputs (each read by an Identity), which is all the builders look at.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from spa_opt.calibration import load_calibration
from spa_opt.decoder_inputs import buildable, complete_feeds, is_cache_name, past_axis
from spa_opt.errors import InputError
from spa_opt.inputs import model_inputs
from spa_opt.noise import noise_calibration
from spa_opt.verify import random_inputs

OPTIMUM = [
    ("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ("attention_mask", TensorProto.INT64, ["batch_size", "past_sequence_length + 1"]),
    ("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ("past_key_values.0.key", TensorProto.FLOAT, ["batch_size", 2, "past_sequence_length", 8]),
    ("past_key_values.0.value", TensorProto.FLOAT,
     ["batch_size", 2, "past_sequence_length", 8]),
]
ORT_GPT2 = [
    ("input_ids", TensorProto.INT32, ["batch", "seq_len"]),
    ("position_ids", TensorProto.INT32, ["batch", "seq_len"]),
    ("attention_mask", TensorProto.INT32, ["batch", "total_seq_len"]),
    ("past_0", TensorProto.FLOAT, [2, "batch", 4, "past_seq_len", 8]),
]
GENAI_GQA = [
    ("input_ids", TensorProto.INT64, ["batch", "seq"]),
    ("seqlens_k", TensorProto.INT32, ["batch"]),
    ("total_sequence_length", TensorProto.INT32, []),
    ("past_key_values.0.key", TensorProto.FLOAT16, ["batch", 2, "past_seq", 8]),
]


def _model(inputs: list[tuple[str, int, list]]) -> ir.Model:
    nodes, outputs = [], []
    for name, dtype, _ in inputs:
        out = f"{name}_out"
        nodes.append(helper.make_node("Identity", [name], [out]))
        outputs.append(helper.make_tensor_value_info(out, dtype, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, d)
                                           for n, t, d in inputs], outputs)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.from_proto(proto)


def test_optimum_inputs_are_built_from_the_ids():
    model = _model(OPTIMUM)
    inputs = model_inputs(model)
    ids = np.array([[5, 6, 7], [1, 2, 3]], dtype=np.int64)
    feeds = complete_feeds(inputs, {"input_ids": ids})
    assert feeds["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert feeds["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert feeds["past_key_values.0.key"].shape == (2, 2, 0, 8)
    assert feeds["past_key_values.0.key"].dtype == np.float32
    assert buildable(inputs) == {i.name for i in inputs} - {"input_ids"}


def test_a_past_length_fills_the_cache_and_shifts_positions_and_mask():
    inputs = model_inputs(_model(OPTIMUM))
    feeds = complete_feeds(inputs, {"input_ids": np.zeros((1, 2), np.int64)}, past_length=3)
    assert feeds["past_key_values.0.value"].shape == (1, 2, 3, 8)
    assert np.abs(feeds["past_key_values.0.value"]).sum() > 0
    assert feeds["attention_mask"].shape == (1, 5)
    assert feeds["position_ids"].tolist() == [[3, 4]]


def test_given_arrays_win_over_built_ones():
    inputs = model_inputs(_model(OPTIMUM))
    mask = np.array([[0, 1]], dtype=np.int64)
    feeds = complete_feeds(inputs, {"input_ids": np.zeros((1, 2), np.int64),
                                    "attention_mask": mask})
    assert feeds["attention_mask"] is mask


def test_onnxruntime_gpt2_cache_has_its_batch_on_axis_1():
    inputs = model_inputs(_model(ORT_GPT2))
    past = next(i for i in inputs if i.name == "past_0")
    assert past_axis(past) == 3
    feeds = complete_feeds(inputs, {"input_ids": np.zeros((3, 4), np.int32)})
    assert feeds["past_0"].shape == (2, 3, 4, 0, 8)
    assert feeds["attention_mask"].dtype == np.int32


def test_group_query_attention_lengths_and_fp16_cache():
    inputs = model_inputs(_model(GENAI_GQA))
    feeds = complete_feeds(inputs, {"input_ids": np.zeros((2, 5), np.int64)})
    assert feeds["seqlens_k"].tolist() == [4, 4]
    assert feeds["total_sequence_length"].shape == () and int(feeds["total_sequence_length"]) == 5
    assert feeds["past_key_values.0.key"].dtype == np.float16


def test_a_cache_dim_nobody_names_is_refused_in_one_line():
    inputs = model_inputs(_model([("input_ids", TensorProto.INT64, ["b", "s"]),
                                  ("past_x", TensorProto.FLOAT, ["b", "heads", "past", 8])]))
    with pytest.raises(InputError, match=r"past_x.*dim 1.*--input-dim heads=N"):
        complete_feeds(inputs, {"input_ids": np.zeros((1, 2), np.int64)})
    feeds = complete_feeds(inputs, {"input_ids": np.zeros((1, 2), np.int64)}, {"heads": 3})
    assert feeds["past_x"].shape == (1, 3, 0, 8)


def test_cache_names():
    assert is_cache_name("past_key_values.3.value") and is_cache_name("present.0.key")
    assert is_cache_name("present_2") and not is_cache_name("logits")
    assert not is_cache_name(None) and not is_cache_name("last_hidden_state")


def test_calibration_npz_of_token_ids_alone_feeds_a_decoder(tmp_path):
    model = _model(OPTIMUM)
    path = tmp_path / "calib.npz"
    np.savez(path, input_ids=np.arange(12, dtype=np.int64).reshape(4, 3))
    calibration = load_calibration(path, model)
    batches = list(calibration.batches(model, 2))
    assert len(batches) == 2
    assert set(batches[0]) == {i.name for i in model_inputs(model)}
    assert batches[1]["input_ids"].tolist() == [[6, 7, 8], [9, 10, 11]]
    assert batches[0]["past_key_values.0.key"].shape == (2, 2, 0, 8)


def test_calibration_still_refuses_a_missing_input_it_cannot_build(tmp_path):
    model = _model([*OPTIMUM, ("pixel_values", TensorProto.FLOAT, ["batch_size", 3])])
    path = tmp_path / "calib.npz"
    np.savez(path, input_ids=np.zeros((2, 3), np.int64))
    with pytest.raises(InputError, match="missing \\['pixel_values'\\]"):
        load_calibration(path, model)


def test_noise_and_verify_inputs_build_the_cache():
    model = _model(OPTIMUM)
    calibration = noise_calibration(model, 3, dims={"sequence_length": 4})
    assert set(calibration.feeds) == {"input_ids"}
    batch = next(calibration.batches(model, 3))
    assert batch["attention_mask"].shape == (3, 4)
    feeds = random_inputs(model, 2, dims={"sequence_length": 2})
    assert feeds[0]["past_key_values.0.key"].shape == (1, 2, 1, 8)  # past 1: the cache path
    assert feeds[0]["attention_mask"].shape == (1, 3)
    empty = random_inputs(model, 1, past_length=0)
    assert empty[0]["past_key_values.0.key"].shape == (1, 2, 0, 8)


def test_built_feeds_run_in_onnxruntime():
    import onnxruntime as ort

    model = _model(OPTIMUM)
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feeds = random_inputs(model, 1, dims={"sequence_length": 3})[0]
    outputs = session.run(None, feeds)
    assert outputs[3].shape == (1, 2, 1, 8)
