"""Quantized and fp16 models made by onnxruntime's own tools, pruned end to end.

A small float CNN (Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm) and MLP are built
with onnx.helper; the fixtures quantize them with ``onnxruntime.quantization``
(``quantize_static`` QDQ per channel and per tensor, QOperator; ``quantize_dynamic``) and
convert them with ``float16.convert_float_to_float16(keep_io_types=True)``. Each is run
through ``spa-opt -p fold-constants,couple,group,l1,prune --ratio 0.3`` and checked:
channels go, the output runs in onnxruntime with the same IO, weights keep their dtype.

For QDQ the reference is the model's *float twin*: the same graph with every weight
replaced by its dequantized values and the activation Q/DQ pairs removed. l1 on the
dequantized codes equals l1 on the twin (so both prune the same channels), and the
pruned QDQ output stays within the quantization error of the pruned twin's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from spa_opt.cli import main

_RNG = np.random.default_rng(7)
_IMAGE = (1, 3, 8, 8)
PIPELINE = "fold-constants,couple,group,l1,prune"


def _tensor(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
    return numpy_helper.from_array((_RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _cnn() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["h1"], name="conv1", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "W2", "B2"], ["h2"], name="conv2", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Conv", ["a2", "W3", "B3"], ["h3"], name="conv3", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["h3"], ["a3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["a3"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "Wc", "Bc"], ["y"], name="fc", transB=1),
    ]
    inits = [_tensor("W1", 16, 3, 3, 3), _tensor("B1", 16, scale=0.1),
             _tensor("W2", 16, 16, 3, 3, scale=0.2), _tensor("B2", 16, scale=0.1),
             _tensor("W3", 16, 16, 1, 1, scale=0.3), _tensor("B3", 16, scale=0.1),
             _tensor("Wc", 5, 16), _tensor("Bc", 5, scale=0.1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", 1, _IMAGE)],
                              [helper.make_tensor_value_info("y", 1, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _mlp() -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("MatMul", ["a1", "W2"], ["m2"]),
             helper.make_node("Relu", ["m2"], ["a2"]),
             helper.make_node("MatMul", ["a2", "W3"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", 1, [4, 16])],
                              [helper.make_tensor_value_info("y", 1, [4, 3])],
                              [_tensor("W1", 16, 32), _tensor("b1", 32, scale=0.1),
                               _tensor("W2", 32, 32), _tensor("W3", 32, 3)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


class _Reader:
    """Calibration inputs for quantize_static: 8 seeded random images."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self._batches = iter([{"x": rng.standard_normal(_IMAGE).astype(np.float32)}
                              for _ in range(8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Every variant, written once per module."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.transformers.float16 import convert_float_to_float16

    folder = tmp_path_factory.mktemp("quant")
    paths = {"float": folder / "cnn.onnx", "mlp": folder / "mlp.onnx"}
    cnn = _cnn()
    onnx.save(cnn, paths["float"])
    onnx.save(_mlp(), paths["mlp"])
    CalibrationDataReader.register(_Reader)
    for name, fmt, per_channel in (("qdq", QuantFormat.QDQ, True),
                                   ("qdq_tensor", QuantFormat.QDQ, False),
                                   ("qop", QuantFormat.QOperator, True)):
        paths[name] = folder / f"cnn.{name}.onnx"
        quantize_static(str(paths["float"]), str(paths[name]), _Reader(), quant_format=fmt,
                        per_channel=per_channel, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8)
    paths["dynq"] = folder / "mlp.dynq.onnx"
    quantize_dynamic(str(paths["mlp"]), str(paths["dynq"]), weight_type=QuantType.QInt8)
    paths["fp16"] = folder / "cnn.fp16.onnx"
    half = onnx.ModelProto()
    half.CopyFrom(cnn)
    onnx.save(convert_float_to_float16(half, keep_io_types=True), paths["fp16"])
    return paths


def _prune(source: Path, capsys) -> tuple[Path, dict]:
    out = source.with_name(source.stem + ".pruned.onnx")
    report = source.with_name(source.stem + ".report.json")
    code = main(["-p", PIPELINE, "--ratio", "0.3", "--no-progress", "--report", str(report),
                 str(source), str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return out, json.loads(report.read_text())


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _io(path: Path) -> list:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [(v.name, v.type, v.shape) for v in (*session.get_inputs(), *session.get_outputs())]


def _removed(report: dict) -> dict[str, list[int]]:
    """Units removed per group, by the group's primary member."""
    return {g["primary"]: g["units_removed"] for g in report["prune"]["groups"]
            if g["units_removed"]}


def _float_twin(path: Path, out: Path) -> Path:
    """The QDQ model with dequantized float weights and without activation Q/DQ."""
    import onnx_ir as ir

    from spa_opt.ir.quant import dequantize, quantization_of

    model = ir.load(str(path))
    graph = model.graph
    declared = [(v.type, v.shape) for v in graph.outputs]
    for node in list(graph):
        if node.op_type != "DequantizeLinear":
            continue
        source = node.inputs[0]
        if source.const_value is not None:  # a weight: its codes become floats, same name
            real = dequantize(source.const_value.numpy(), quantization_of(source))
            value = ir.Value(name=source.name, const_value=ir.tensor(real.astype(np.float32)),
                             type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(real.shape))
            node.outputs[0].replace_all_uses_with(value)
            graph.remove(node, safe=False)
            graph.initializers.pop(source.name)
            graph.register_initializer(value)
        else:  # an activation pair: read the float input
            quantizer = source.producer()
            node.outputs[0].replace_all_uses_with(quantizer.inputs[0], replace_graph_outputs=True)
            graph.remove(node, safe=False)
            if not quantizer.outputs[0].uses():
                graph.remove(quantizer, safe=False)
    for value, (type_, shape) in zip(graph.outputs, declared, strict=True):
        value.type, value.shape = type_, shape  # the quantizer declares no inner types
    ir.save(model, str(out))
    return out


@pytest.mark.parametrize("variant", ["qdq", "qdq_tensor"])
def test_qdq_prunes_like_its_float_twin(models, variant, capsys):
    source = models[variant]
    twin = _float_twin(source, source.with_name(f"twin_{variant}.onnx"))
    pruned, report = _prune(source, capsys)
    pruned_twin, twin_report = _prune(twin, capsys)
    # same scores (l1 of (codes - zp) * scale == l1 of the twin's floats), same units
    assert _removed(report) and _removed(report) == _removed(twin_report)
    assert _io(pruned) == _io(source)
    feeds = {"x": np.random.default_rng(3).standard_normal(_IMAGE).astype(np.float32)}
    full, full_twin = _run(source, feeds), _run(twin, feeds)
    got, want = _run(pruned, feeds), _run(pruned_twin, feeds)
    # Activations are quantized to 8 bits per tensor in the QDQ model only, so the pruned
    # outputs differ by that quantization error and no more: bound it by twice the
    # unpruned pair's difference, plus 2% of the output range for rounding that lands
    # on different codes once the per-tensor scales see other ranges.
    before = np.abs(full - full_twin).max()
    assert np.abs(got - want).max() <= 2 * before + 0.02 * np.abs(want).max()
    codes = {i.name: i for i in onnx.load(pruned).graph.initializer}
    assert codes["W2_quantized"].data_type == onnx.TensorProto.INT8


def test_l1_scores_are_the_dequantized_weights_scores(models):
    import onnx_ir as ir

    from spa_opt.passes import PipelineContext, Targets, get_pass
    from spa_opt.passes.criteria import score_groups

    def scores(path: Path) -> dict[str, np.ndarray]:
        model = ir.load(str(path))
        context = PipelineContext(targets=Targets()).attach(model)
        get_pass("fold-constants")()(model)
        found = score_groups(model, context, "l1", norm="none")
        from spa_opt.passes.group import groups_of

        return {g.primary.name: found[g.id] for g in groups_of(model, context) if g.id in found}

    source = models["qdq"]
    quantized = scores(source)
    floats = scores(_float_twin(source, source.with_name("twin_scores.onnx")))
    assert quantized.keys() == floats.keys() and len(quantized) >= 2
    for name, values in quantized.items():
        np.testing.assert_allclose(values, floats[name], rtol=1e-5)


@pytest.mark.parametrize("variant", ["qop", "dynq"])
def test_operator_form_models_prune_and_run(models, variant, capsys):
    source = models[variant]
    pruned, report = _prune(source, capsys)
    assert _removed(report)
    assert _io(pruned) == _io(source)
    shape = _IMAGE if variant == "qop" else (4, 16)
    feeds = {"x": np.random.default_rng(4).standard_normal(shape).astype(np.float32)}
    assert np.isfinite(_run(pruned, feeds)).all()


def test_fp16_weights_stay_fp16_and_outputs_match_the_pruned_float_model(models, capsys):
    pruned, report = _prune(models["fp16"], capsys)
    pruned_float, float_report = _prune(models["float"], capsys)
    assert _removed(report) and _removed(report) == _removed(float_report)
    assert _io(pruned) == _io(models["fp16"])
    weights = [i for i in onnx.load(pruned).graph.initializer if len(i.dims) >= 1]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights
                           if i.name.startswith(("W", "B")))
    feeds = {"x": np.random.default_rng(5).standard_normal(_IMAGE).astype(np.float32)}
    want = _run(pruned_float, feeds)
    # fp16 has an 11-bit mantissa: 1e-2 of the output range covers three layers of it
    np.testing.assert_allclose(_run(pruned, feeds), want, atol=1e-2 * np.abs(want).max())


def test_obspa_refuses_a_qdq_model_and_keeps_fp16_weights_fp16(models, capsys):
    out = models["qdq"].with_name("obspa.onnx")
    code = main(["-p", "fold-constants,couple,group,obspa<hessian=noise;samples=16>,prune",
                 "--ratio", "0.3", "--no-progress", str(models["qdq"]), str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "quantized weight" in err and len(err.strip().splitlines()) == 1
    half = models["fp16"].with_name("obspa16.onnx")
    code = main(["-p", "fold-constants,couple,group,obspa<hessian=noise;samples=16>,prune",
                 "--ratio", "0.3", "--no-progress", str(models["fp16"]), str(half)])
    assert code == 0, capsys.readouterr().err
    weights = {i.name: i for i in onnx.load(half).graph.initializer}
    assert weights["W2"].data_type == onnx.TensorProto.FLOAT16 and weights["W2"].dims[1] < 16
    feeds = {"x": np.random.default_rng(6).standard_normal(_IMAGE).astype(np.float32)}
    assert np.isfinite(_run(half, feeds)).all()
