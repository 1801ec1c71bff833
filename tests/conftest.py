from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden_models"
LIGHT = Path(onnx.__path__[0]) / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))

HEAVY = frozenset({
    "light/vgg19", "light/zfnet512", "light/bvlc_alexnet", "light/densenet121",
    "light/inception_v2", "light/resnet50", "hf/swin.torchscript", "hf/swin_cls.torchscript",
    "hf/mobilevit.torchscript", "hf/mobilevit_cls.torchscript", "hf/mobilevit.dynamo",
    "hf/mobilevit_cls.dynamo", "hf/mobilenetv2.torchscript", "hf/mobilenetv2_cls.torchscript",
    "llm/llama_bytes", "torch/llama.torchscript"})
"""Golden models whose sweeps take 7-120 s each on 2 cores (zoo graphs of 25-140M
parameters, Swin and MobileViT exports, the torchscript MobileNetV2s, the trained LM): the
golden sweeps run them in CI's slow step only (``heavy_slow``), which keeps the default
run within its 10 minutes while every other golden model still runs by default. Measured
with ``pytest --durations=0`` (2026-12-07)."""


def heavy_slow(params: list) -> list:
    """``params`` (golden-model keys, or pytest params whose first value is one) with the
    :data:`HEAVY` models marked slow; marks already there are kept."""
    result = []
    for param in params:
        values = (param,) if isinstance(param, str) else tuple(param.values)
        key = values[0]
        if key not in HEAVY:
            result.append(param)
        elif isinstance(param, str):
            result.append(pytest.param(param, marks=pytest.mark.slow))
        else:
            result.append(pytest.param(*values, marks=[*param.marks, pytest.mark.slow],
                                       id=param.id))
    return result


def make_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    """A checked ModelProto at IR 10 (onnxruntime refuses onnx 1.23's default IR 14)."""
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def mlp_proto() -> onnx.ModelProto:
    """x -> MatMul -> Relu -> MatMul, plus a dead Sigmoid branch."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("Sigmoid", ["h"], ["dead"], name="unused"),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [w1, w2],
    )


@pytest.fixture
def mlp(mlp_proto) -> ir.Model:
    return ir.from_proto(mlp_proto)


def write_sparse_big_model(folder: Path, n: int = 16384, m: int = 12288) -> tuple[Path, int]:
    """A 3-MatMul model whose 2.4 GB of weights live in a sparse (all-zero) data file.

    Creating it writes no data blocks, so tests of the > 2 GB paths cost seconds.
    Returns the model path and the weight bytes.
    """
    size = n * m * 4
    initializers = []
    for i, name in enumerate(["w0", "w1", "w2"]):
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT,
                             dims=[n, m] if i % 2 == 0 else [m, n])
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "big.data"), ("offset", str(i * size)),
                           ("length", str(size))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        initializers.append(tensor)
    nodes = [helper.make_node("MatMul", [x, w], [y], name=f"mm{i}")
             for i, (x, w, y) in enumerate([("x", "w0", "h0"), ("h0", "w1", "h1"),
                                            ("h1", "w2", "y")])]
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m])], initializers)
    path = folder / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=10), path)
    with open(folder / "big.data", "wb") as stream:
        stream.truncate(3 * size)
    return path, 3 * size


@pytest.fixture(scope="session")
def big_model(tmp_path_factory) -> tuple[Path, int]:
    """The sparse > 2 GB model, made once per test session."""
    return write_sparse_big_model(tmp_path_factory.mktemp("big"))


def run_cli_in(capsys, folder: Path, argv: list[str]) -> tuple[int, str, str]:
    """Run ``spa_opt.cli.main(argv)`` with ``folder`` as working directory."""
    from spa_opt.cli import main

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code = main(argv)
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
