"""Tests of spa_opt.ir.io saving: input untouched, refusals, atomic replacement, layouts."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from io_models import (
    B_DATA,
    COLS,
    ROWS,
    W_DATA,
    X_DATA,
    expected_y,
    external_ref,
    initializer_array,
    leftovers,
    make_proto,
    run_ort,
    save_with_external_data,
    snapshot,
)
from onnx import TensorProto, helper, numpy_helper

from spa_opt.errors import InputError
from spa_opt.ir import io as spa_io
from spa_opt.ir.io import load_model, save_model
from spa_opt.ir.tensors import set_constant

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
