"""Tests of spa_opt.ir.io loading: every source, unusable files, external data safety."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from io_models import (
    B_DATA,
    W_DATA,
    initializer_array,
    make_proto,
    save_with_external_data,
    write_external_model,
)

from spa_opt.errors import InputError
from spa_opt.ir import io as spa_io
from spa_opt.ir.io import load_model

# --------------------------------------------------------------------------- load sources


def test_load_from_path(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(make_proto(), path)
    for source in (path, str(path)):
        model = load_model(source)
        assert isinstance(model, ir.Model)
        np.testing.assert_array_equal(initializer_array(model, "W"), W_DATA)
        np.testing.assert_array_equal(initializer_array(model, "B"), B_DATA)
        assert [node.op_type for node in model.graph] == ["MatMul", "Add"]


def test_load_from_bytes() -> None:
    model = load_model(make_proto().SerializeToString())
    assert isinstance(model, ir.Model)
    np.testing.assert_array_equal(initializer_array(model, "W"), W_DATA)


def test_load_from_model_proto() -> None:
    model = load_model(make_proto())
    assert isinstance(model, ir.Model)
    assert model.graph.inputs[0].name == "X"
    np.testing.assert_array_equal(initializer_array(model, "B"), B_DATA)


def test_load_ir_model_is_returned_as_is() -> None:
    model = ir.from_proto(make_proto())
    assert load_model(model) is model


def test_load_unsupported_type_is_input_error() -> None:
    with pytest.raises(InputError, match="int"):
        load_model(42)  # type: ignore[arg-type]


def test_load_bytes_with_external_data_needs_base_dir(tmp_path: Path) -> None:
    path = save_with_external_data(tmp_path)
    data = path.read_bytes()
    with pytest.raises(InputError, match="base folder"):
        load_model(data)
    model = load_model(data, base_dir=tmp_path)
    np.testing.assert_array_equal(initializer_array(model, "W"), W_DATA)
    proto_model = load_model(onnx.load(path, load_external_data=False), base_dir=tmp_path)
    np.testing.assert_array_equal(initializer_array(proto_model, "W"), W_DATA)


# --------------------------------------------------------------------------- unusable files


@pytest.mark.parametrize("kind", ["missing", "directory", "random", "empty", "text"])
def test_unusable_file_is_input_error_naming_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.onnx"
    if kind == "directory":
        path.mkdir()
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("This is not an ONNX model.\nJust some text, with: punctuation!\n")
    with pytest.raises(InputError) as caught:
        load_model(path)
    assert str(path) in str(caught.value)


# --------------------------------------------------------------------------- external data


def test_external_data_is_loaded_lazily(tmp_path: Path) -> None:
    path = save_with_external_data(tmp_path)
    model = load_model(path)
    tensor = model.graph.initializers["W"].const_value
    assert isinstance(tensor, ir.ExternalTensor)
    assert isinstance(model.graph.initializers["B"].const_value, ir.ExternalTensor)
    assert tensor.raw is None, "external data must not be mapped before first access"
    assert Path(tensor.path).resolve() == (tmp_path / "model.onnx.data").resolve()
    np.testing.assert_array_equal(tensor.numpy(), W_DATA)
    assert spa_io.external_data_files(model) == {(tmp_path / "model.onnx.data").resolve()}


def test_hand_built_external_reference_loads(tmp_path: Path) -> None:
    padding = b"\x7f" * 64
    path = write_external_model(
        tmp_path / "m", "sub/w.bin", offset=64, data=padding + W_DATA.tobytes()
    )
    model = load_model(path)
    np.testing.assert_array_equal(initializer_array(model, "W"), W_DATA)


def test_absolute_location_is_refused(tmp_path: Path) -> None:
    data_file = tmp_path / "w.bin"
    data_file.write_bytes(W_DATA.tobytes())
    path = write_external_model(tmp_path / "m", str(data_file))
    with pytest.raises(InputError, match="absolute") as caught:
        load_model(path)
    assert str(data_file) in str(caught.value)


@pytest.mark.parametrize("location", ["../w.bin", "sub/../../w.bin", "./../w.bin"])
def test_location_leaving_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "w.bin").write_bytes(W_DATA.tobytes())
    (tmp_path / "m" / "sub").mkdir(parents=True)
    path = write_external_model(tmp_path / "m", location)
    with pytest.raises(InputError, match="outside") as caught:
        load_model(path)
    assert location in str(caught.value)


def test_symlink_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "w.bin"
    outside.parent.mkdir()
    outside.write_bytes(W_DATA.tobytes())
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "link.bin").symlink_to(outside)
    path = write_external_model(folder, "link.bin")
    with pytest.raises(InputError, match="outside") as caught:
        load_model(path)
    assert "link.bin" in str(caught.value)


def test_symlinked_folder_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(W_DATA.tobytes())
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "weights").symlink_to(outside, target_is_directory=True)
    path = write_external_model(folder, "weights/w.bin")
    with pytest.raises(InputError, match="outside"):
        load_model(path)


def test_symlink_inside_the_folder_is_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "real").mkdir(parents=True)
    (folder / "real" / "w.bin").write_bytes(W_DATA.tobytes())
    (folder / "link.bin").symlink_to(folder / "real" / "w.bin")
    model = load_model(write_external_model(folder, "link.bin"))
    np.testing.assert_array_equal(initializer_array(model, "W"), W_DATA)


def test_missing_data_file_is_refused(tmp_path: Path) -> None:
    path = write_external_model(tmp_path / "m", "missing.bin")
    with pytest.raises(InputError, match="missing") as caught:
        load_model(path)
    assert "missing.bin" in str(caught.value)


def test_data_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m" / "w.bin").mkdir(parents=True)
    with pytest.raises(InputError, match=r"w\.bin"):
        load_model(write_external_model(tmp_path / "m", "w.bin"))


@pytest.mark.parametrize(
    ("offset", "file_bytes"),
    [(0, W_DATA.nbytes - 1), (64, W_DATA.nbytes), (W_DATA.nbytes, W_DATA.nbytes)],
)
def test_data_file_too_short_for_offset_and_length_is_refused(
    tmp_path: Path, offset: int, file_bytes: int
) -> None:
    path = write_external_model(
        tmp_path / "m", "w.bin", offset=offset, length=W_DATA.nbytes, data=b"\0" * file_bytes
    )
    with pytest.raises(InputError, match="truncated") as caught:
        load_model(path)
    assert "w.bin" in str(caught.value)


def test_data_file_exactly_long_enough_is_accepted(tmp_path: Path) -> None:
    data = b"\0" * 64 + W_DATA.tobytes()
    path = write_external_model(tmp_path / "m", "w.bin", offset=64, data=data)
    np.testing.assert_array_equal(initializer_array(load_model(path), "W"), W_DATA)


def test_data_file_too_short_without_offset_or_length_is_refused(tmp_path: Path) -> None:
    """Offset and length are optional in ONNX: the tensor then spans nbytes from 0.

    BUG (spa_opt/ir/io.py, check_external_data): the range check only runs when
    offset or length is given, so this truncated file loads and fails at first access.
    """
    path = write_external_model(
        tmp_path / "m", "w.bin", offset=None, length=None, data=b"\0" * (W_DATA.nbytes // 2)
    )
    with pytest.raises(InputError, match="truncated"):
        load_model(path)


def test_length_shorter_than_the_tensor_is_refused(tmp_path: Path) -> None:
    """onnx_ir reads shape x itemsize bytes from the offset, whatever ``length`` says.

    BUG (spa_opt/ir/io.py, check_external_data): ``end`` uses ``length`` only, so a
    length smaller than the tensor hides a file too short for the data actually read.
    """
    path = write_external_model(
        tmp_path / "m", "w.bin", offset=0, length=8, data=b"\0" * (W_DATA.nbytes // 2)
    )
    try:
        model = load_model(path)
    except InputError:
        return
    # Accepted at load time: then reading the weight must work.
    initializer_array(model, "W")


def test_file_name_starting_with_two_dots_is_not_outside(tmp_path: Path) -> None:
    """``..w.bin`` is a file inside the folder, not a parent reference.

    BUG (spa_opt/ir/io.py, check_external_data): ``normpath(location).startswith("..")``
    refuses it although onnx_ir and onnxruntime load it fine.
    """
    path = write_external_model(tmp_path / "m", "..w.bin", data=W_DATA.tobytes())
    np.testing.assert_array_equal(initializer_array(load_model(path), "W"), W_DATA)


def test_hard_linked_data_file_fails_at_load_not_later(tmp_path: Path) -> None:
    """onnx_ir refuses a data file with several hard links when it maps it.

    spa_opt promises to turn onnx_ir's containment checks into one InputError at load
    time. BUG (spa_opt/ir/io.py, check_external_data): it does not check st_nlink, so
    the model loads and the first weight access raises a ValueError deep in a pass.
    """
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(W_DATA.tobytes())
    folder = tmp_path / "m"
    folder.mkdir()
    os.link(elsewhere, folder / "w.bin")
    path = write_external_model(folder, "w.bin")
    try:
        model = load_model(path)
    except InputError:
        return
    initializer_array(model, "W")  # accepted at load time: reading must then work


