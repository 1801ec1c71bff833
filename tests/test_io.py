"""Tests of spa_opt.ir.io: loading from every source, external data safety, atomic saves."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from spa_opt.errors import InputError
from spa_opt.ir import io as spa_io
from spa_opt.ir.io import load_model, save_model
from spa_opt.ir.tensors import set_constant

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


# --------------------------------------------------------------------------- save


def test_save_leaves_the_input_untouched(tmp_path: Path) -> None:
    source = tmp_path / "in"
    path = save_with_external_data(source)
    before = snapshot(source)
    model = load_model(path)
    set_constant(model.graph.initializers["B"], np.zeros(COLS, np.float32))
    out = tmp_path / "out"
    out.mkdir()
    save_model(model, out / "model.onnx", external_data=True, protected=[path])
    save_model(model, out / "inline.onnx", external_data=False, protected=[path])
    assert snapshot(source) == before
    np.testing.assert_allclose(run_ort(out / "model.onnx"), X_DATA @ W_DATA, rtol=1e-5)
    np.testing.assert_allclose(run_ort(out / "inline.onnx"), X_DATA @ W_DATA, rtol=1e-5)
    # The in-memory model still reads from the untouched input.
    np.testing.assert_array_equal(initializer_array(model, "W"), W_DATA)


def test_save_inline_input_untouched(tmp_path: Path) -> None:
    path = tmp_path / "in.onnx"
    onnx.save_model(make_proto(), path)
    before = snapshot(tmp_path)
    model = load_model(path)
    set_constant(model.graph.initializers["W"], W_DATA * 2)
    save_model(model, tmp_path / "out.onnx", protected=[path])
    after = snapshot(tmp_path)
    assert after["in.onnx"] == before["in.onnx"]
    assert sorted(after) == ["in.onnx", "out.onnx"]
    np.testing.assert_allclose(run_ort(tmp_path / "out.onnx"), X_DATA @ (W_DATA * 2) + B_DATA,
                               rtol=1e-5)


@pytest.mark.parametrize("external_data", [None, True, False])
def test_save_to_the_input_path_is_refused(tmp_path: Path, external_data: bool | None) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(make_proto(), path)
    model = load_model(path)
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="overwrite") as caught:
        save_model(model, path, external_data=external_data, protected=[path])
    assert str(path) in str(caught.value)
    assert snapshot(tmp_path) == before


def test_save_to_the_input_path_through_another_spelling_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(make_proto(), path)
    model = load_model(path)
    (tmp_path / "sub").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(InputError):
        save_model(model, tmp_path / "sub" / ".." / "model.onnx", protected=[str(path)])
    assert snapshot(tmp_path) == before


def test_save_over_a_mapped_data_file_is_refused(tmp_path: Path) -> None:
    # The input maps 'other.onnx.data'; saving to 'other.onnx' would write exactly that.
    path = save_with_external_data(tmp_path, location="other.onnx.data")
    model = load_model(path)
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="overwrite") as caught:
        save_model(model, tmp_path / "other.onnx", external_data=True)
    assert "other.onnx.data" in str(caught.value)
    assert snapshot(tmp_path) == before
    # The same file spelled through a symlinked folder is recognised too.
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="overwrite"):
        save_model(model, tmp_path / "alias" / "other.onnx", external_data=True)
    assert snapshot(tmp_path) == before
    # Writing the model file itself over the data file is refused too.
    with pytest.raises(InputError, match="overwrite"):
        save_model(model, tmp_path / "other.onnx.data", external_data=False)
    assert snapshot(tmp_path) == before


def _failing_save(written: list[Path]):
    def fake_save(model, path, *args, external_data=None, **kwargs):
        path = Path(path)
        written.append(path)
        with open(path, "wb") as file:
            file.write(b"\x08\x08partial model bytes")
        if external_data is not None:
            (path.parent / external_data).write_bytes(b"partial data")
        raise OSError(28, "No space left on device")

    return fake_save


@pytest.mark.parametrize("external_data", [True, False])
def test_failed_save_leaves_no_output_and_no_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external_data: bool
) -> None:
    model = load_model(make_proto())
    out = tmp_path / "out"
    out.mkdir()
    written: list[Path] = []
    monkeypatch.setattr(ir, "save", _failing_save(written))
    with pytest.raises(InputError) as caught:
        save_model(model, out / "model.onnx", external_data=external_data)
    assert "model.onnx" in str(caught.value)
    assert written, "the fake save was not called"
    assert written[0].parent != out, "ir.save must write into a staging folder"
    assert list(out.iterdir()) == []
    assert leftovers(out, "model.onnx") == []


def test_failed_save_with_non_os_error_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(make_proto())

    def broken(model, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise ValueError("serialization failed")

    monkeypatch.setattr(ir, "save", broken)
    with pytest.raises(ValueError, match="serialization failed"):
        save_model(model, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("external_data", [True, False])
def test_existing_output_is_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external_data: bool
) -> None:
    destination = tmp_path / "out.onnx"
    old = {"out.onnx": b"old model", "out.onnx.data": b"old data"}
    for name, content in old.items():
        (tmp_path / name).write_bytes(content)
    model = load_model(make_proto())

    real_save = ir.save
    seen: list[Path] = []

    def watching_save(model, path, *args, **kwargs):
        # While the new model is being written, the old output is still whole.
        assert destination.read_bytes() == b"old model"
        seen.append(Path(path))
        real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(ir, "save", watching_save)
    save_model(model, destination, external_data=external_data)
    assert seen and seen[0] != destination
    assert destination.read_bytes() != b"old model"
    np.testing.assert_allclose(run_ort(destination), expected_y(), rtol=1e-5)
    assert leftovers(tmp_path, "out.onnx") == []

    # A failing save afterwards leaves the previous output as it was.
    before = snapshot(tmp_path)
    monkeypatch.setattr(ir, "save", _failing_save([]))
    with pytest.raises(InputError):
        save_model(model, destination, external_data=external_data)
    assert snapshot(tmp_path) == before
    assert leftovers(tmp_path, "out.onnx") == []


@pytest.mark.parametrize("existing", [True, False])
def test_failure_between_the_two_renames_leaves_the_previous_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """With external data the output is two files; a failure renaming the second one
    must not leave the new data beside the old model (or a stray data file).

    BUG (spa_opt/ir/io.py, save_model): the data file is renamed into place first and
    not restored when renaming the model fails, so an existing 'out.onnx' is left with
    a 'out.onnx.data' it does not describe (wrong offsets, silently wrong weights), and
    a first save leaves an orphan 'out.onnx.data'.
    """
    destination = tmp_path / "out.onnx"
    if existing:
        save_model(load_model(make_proto()), destination, external_data=True)
    before = snapshot(tmp_path)
    model = load_model(make_proto())
    set_constant(model.graph.initializers["W"], np.zeros((ROWS * 2, COLS), np.float32))

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == destination:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(spa_io.os, "replace", replace)
    with pytest.raises(InputError):
        save_model(model, destination, external_data=True)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    if existing:
        np.testing.assert_allclose(run_ort(destination), expected_y(), rtol=1e-5)


def test_external_data_true_writes_data_beside_and_runs(tmp_path: Path) -> None:
    model = load_model(make_proto())
    destination = tmp_path / "model.onnx"
    save_model(model, destination, external_data=True)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [
        "model.onnx",
        "model.onnx.data",
    ]
    proto = onnx.load(destination, load_external_data=False)
    weight = next(t for t in proto.graph.initializer if t.name == "W")
    assert weight.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in weight.external_data}["location"] == "model.onnx.data"
    assert (tmp_path / "model.onnx.data").stat().st_size >= W_DATA.nbytes
    np.testing.assert_allclose(run_ort(destination), expected_y(), rtol=1e-5)
    reloaded = load_model(destination)
    assert isinstance(reloaded.graph.initializers["W"].const_value, ir.ExternalTensor)
    np.testing.assert_array_equal(initializer_array(reloaded, "W"), W_DATA)
    # The saved model is unchanged by the save: its tensors are still in memory.
    assert not isinstance(model.graph.initializers["W"].const_value, ir.ExternalTensor)


def test_external_data_false_writes_one_file(tmp_path: Path) -> None:
    model = load_model(make_proto())
    save_model(model, tmp_path / "model.onnx", external_data=False)
    assert [entry.name for entry in tmp_path.iterdir()] == ["model.onnx"]
    np.testing.assert_allclose(run_ort((tmp_path / "model.onnx").read_bytes()), expected_y(),
                               rtol=1e-5)


def test_external_data_false_over_the_limit_is_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spa_io, "_AUTO_EXTERNAL_BYTES", 100)
    model = load_model(make_proto())
    with pytest.raises(InputError, match="external data"):
        save_model(model, tmp_path / "model.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == []


def test_auto_mode_picks_external_data_past_the_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(make_proto())
    small = tmp_path / "small"
    small.mkdir()
    save_model(model, small / "model.onnx")
    assert [entry.name for entry in small.iterdir()] == ["model.onnx"]

    total = W_DATA.nbytes + B_DATA.nbytes
    monkeypatch.setattr(spa_io, "_AUTO_EXTERNAL_BYTES", total - 1)
    big = tmp_path / "big"
    big.mkdir()
    save_model(model, big / "model.onnx")
    assert sorted(entry.name for entry in big.iterdir()) == ["model.onnx", "model.onnx.data"]
    np.testing.assert_allclose(run_ort(big / "model.onnx"), expected_y(), rtol=1e-5)

    monkeypatch.setattr(spa_io, "_AUTO_EXTERNAL_BYTES", total)
    edge = tmp_path / "edge"
    edge.mkdir()
    save_model(model, edge / "model.onnx")
    assert [entry.name for entry in edge.iterdir()] == ["model.onnx"]


def test_missing_destination_folder_is_input_error(tmp_path: Path) -> None:
    model = load_model(make_proto())
    destination = tmp_path / "no" / "such" / "model.onnx"
    with pytest.raises(InputError, match="folder") as caught:
        save_model(model, destination)
    assert str(destination) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_destination_folder_that_is_a_file_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(InputError):
        save_model(load_model(make_proto()), tmp_path / "file" / "model.onnx")


@pytest.mark.parametrize("external_data", [None, True, False])
def test_save_of_an_external_data_model_elsewhere_is_self_contained(
    tmp_path: Path, external_data: bool | None
) -> None:
    """A model loaded with external data and saved elsewhere must carry its weights.

    ``ir.save(model, path, external_data=None)`` keeps every ExternalTensor as a
    reference to its *old relative location*, which from the output folder is a file
    that does not exist (or, worse, someone else's). Whatever layout save_model picks,
    every reference of the output must resolve to the output's own data file.
    """
    path = save_with_external_data(tmp_path / "in")
    model = load_model(path)
    out = tmp_path / "out"
    out.mkdir()
    save_model(model, out / "model.onnx", external_data=external_data, protected=[path])
    names = sorted(entry.name for entry in out.iterdir())
    assert names in (["model.onnx"], ["model.onnx", "model.onnx.data"])
    proto = onnx.load(out / "model.onnx", load_external_data=False)
    locations = {
        t.name: {e.key: e.value for e in t.external_data}["location"]
        for t in proto.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }
    if external_data is False:
        assert locations == {}, f"tensors {sorted(locations)} still refer to external data"
    assert set(locations.values()) <= {"model.onnx.data"}
    np.testing.assert_allclose(run_ort(out / "model.onnx"), expected_y(), rtol=1e-5)
    np.testing.assert_array_equal(initializer_array(load_model(out / "model.onnx"), "W"), W_DATA)
    # The in-memory model still maps the input, unchanged by the save.
    assert isinstance(model.graph.initializers["W"].const_value, ir.ExternalTensor)


@pytest.mark.parametrize("external_data", [None, True, False])
def test_save_of_external_constant_attribute_elsewhere_is_self_contained(
    tmp_path: Path, external_data: bool | None
) -> None:
    """A Constant node whose value is external data must not dangle after a save elsewhere.

    BUG (spa_opt/ir/io.py, save_model): ``ir.save`` only moves *initializers* into the new
    data file and the inline path only swaps initializers; ``iter_tensors`` sees
    attribute tensors (they count in ``tensor_bytes`` and ``external_data_files``) but
    nothing rewrites them, so an external Constant keeps pointing at the input's data.
    """
    source = tmp_path / "in"
    source.mkdir()
    (source / "w.bin").write_bytes(W_DATA.tobytes())
    constant = helper.make_node(
        "Constant", [], ["W"], name="w", value=external_ref("W", W_DATA, "w.bin", 0, W_DATA.nbytes)
    )
    proto = make_proto([numpy_helper.from_array(B_DATA, "B")])
    proto.graph.node.insert(0, constant)
    (source / "model.onnx").write_bytes(proto.SerializeToString())
    model = load_model(source / "model.onnx")
    out = tmp_path / "out"
    out.mkdir()
    save_model(model, out / "model.onnx", external_data=external_data)
    np.testing.assert_array_equal(
        load_model(out / "model.onnx").graph.node(0).attributes["value"].value.numpy(), W_DATA
    )
