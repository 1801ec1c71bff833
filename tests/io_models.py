"""Small models with inline or external data, shared by the IO tests."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, external_data_helper, helper, numpy_helper

ROWS, COLS = 16, 8  # W is 512 bytes: above onnx_ir's 256-byte external-data threshold
RNG = np.random.default_rng(0)
W_DATA = RNG.standard_normal((ROWS, COLS)).astype(np.float32)
B_DATA = RNG.standard_normal((COLS,)).astype(np.float32)
X_DATA = RNG.standard_normal((2, ROWS)).astype(np.float32)


# --------------------------------------------------------------------------- helpers


def make_proto(initializers: list[TensorProto] | None = None) -> onnx.ModelProto:
    """Y = X @ W + B, with X [2, 16], W [16, 8], B [8]."""
    if initializers is None:
        initializers = [numpy_helper.from_array(W_DATA, "W"), numpy_helper.from_array(B_DATA, "B")]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["XW"], name="matmul"),
            helper.make_node("Add", ["XW", "B"], ["Y"], name="add"),
        ],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, ROWS])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, COLS])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def expected_y() -> np.ndarray:
    return X_DATA @ W_DATA + B_DATA


def run_ort(model: str | os.PathLike | bytes) -> np.ndarray:
    source = os.fspath(model) if not isinstance(model, bytes) else model
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"X": X_DATA})[0]


def external_ref(
    name: str,
    array: np.ndarray,
    location: str,
    offset: int | None = None,
    length: int | None = None,
) -> TensorProto:
    """A TensorProto of ``array``'s dtype and shape whose data lives at ``location``."""
    tensor = numpy_helper.from_array(array, name)
    external_data_helper.set_external_data(tensor, location, offset=offset, length=length)
    tensor.ClearField("raw_data")
    return tensor


def write_external_model(
    folder: Path,
    location: str,
    *,
    offset: int | None = 0,
    length: int | None = W_DATA.nbytes,
    data: bytes | None = None,
    data_path: Path | None = None,
) -> Path:
    """Write ``folder/model.onnx`` whose W refers to ``location``; optionally write the data."""
    folder.mkdir(parents=True, exist_ok=True)
    if data is not None:
        target = data_path if data_path is not None else folder / location
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    proto = make_proto(
        [
            external_ref("W", W_DATA, location, offset, length),
            numpy_helper.from_array(B_DATA, "B"),
        ]
    )
    path = folder / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def save_with_external_data(folder: Path, location: str = "model.onnx.data") -> Path:
    """Save the test model with every tensor in one external file, the way onnx does it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        make_proto(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Names, content digests and mtimes of everything in ``folder``, hidden entries included."""
    return {
        entry.name: (
            hashlib.sha256(entry.read_bytes()).hexdigest()[:16] if entry.is_file() else "<dir>",
            entry.stat().st_mtime_ns,
        )
        for entry in sorted(folder.iterdir())
    }


def leftovers(folder: Path, name: str) -> list[str]:
    return [entry.name for entry in folder.iterdir() if entry.name.startswith(f".{name}.")]


def initializer_array(model: ir.Model, name: str) -> np.ndarray:
    value = model.graph.initializers[name]
    assert value.const_value is not None
    return value.const_value.numpy()


