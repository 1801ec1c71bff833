"""The user's environment and options, as the CLI contract meets them (issue 16).

A folder the output cannot go to is bad input (exit 2, one line naming the path),
the report is as readable as the model it describes, a calibration file made for
another model is refused, and a ``--round-to`` step wider than every group says so.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import onnx
from conftest import run_cli_in
from test_input_validation import conv_chain

PIPELINE = ["-p", "fold-constants,couple,group,l1,prune", "--ratio", "0.3"]


def write_input(folder: Path) -> None:
    onnx.save(conv_chain(), str(folder / "in.onnx"))


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("spa-opt: error: "), lines
    return lines[0]


def test_an_output_folder_that_is_not_writable_is_one_line_exit_2(tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    """Checked before any pass (os.access; root passes it, so it is simulated here)."""
    write_input(tmp_path)
    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if Path(path).name == "locked" else real_access(path, mode)))
    code, _, err = run_cli_in(capsys, tmp_path, [*PIPELINE, "in.onnx", "locked/out.onnx"])
    assert code == 2
    assert "locked" in one_error_line(err) and "not writable" in err
    assert list((tmp_path / "locked").iterdir()) == []


def test_a_failure_to_stage_the_output_is_one_line_exit_2(tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    """A folder that turns read-only (or full) while the passes run: no internal error."""
    write_input(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    code, _, err = run_cli_in(capsys, tmp_path, [*PIPELINE, "in.onnx", "out.onnx"])
    assert code == 2
    assert "Permission denied" in one_error_line(err) and "out.onnx" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_the_report_has_the_mode_of_the_model(tmp_path: Path, capsys) -> None:
    write_input(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, [*PIPELINE, "--report", "r.json",
                                                 "in.onnx", "out.onnx"])
    assert code == 0, err
    model_mode = stat.S_IMODE((tmp_path / "out.onnx").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == model_mode


def test_calibration_keys_naming_no_input_are_refused(tmp_path: Path, capsys) -> None:
    write_input(tmp_path)
    np.savez(tmp_path / "c.npz", image=np.zeros((2, 3, 8, 8), np.float32))
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", "fold-constants,couple,group,obspa,prune", "--ratio", "0.3", "--calib", "c.npz",
        "in.onnx", "out.onnx"])
    assert code == 2
    line = one_error_line(err)
    assert "['image']" in line and "['x']" in line
    assert not (tmp_path / "out.onnx").exists()


def test_a_round_to_step_wider_than_every_group_says_so(tmp_path: Path, capsys) -> None:
    write_input(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, [*PIPELINE, "--round-to", "1000",
                                                 "in.onnx", "out.onnx"])
    assert code == 0, err
    assert "--round-to step (1000 channels)" in err and "widest has 8 channels" in err
    assert "targets are met without removing a unit" not in err


def test_a_pass_that_breaks_the_model_never_exits_0(tmp_path: Path, capsys) -> None:
    """Exit 0 means a valid output whatever the pipeline: the last changing pass is named."""
    from misbehaving_passes import registered

    write_input(tmp_path)
    with registered():
        code, _, err = run_cli_in(capsys, tmp_path, ["-p", "test-break-conv-out",
                                                     "in.onnx", "out.onnx"])
    assert code == 1
    assert "pass 'test-break-conv-out' left an invalid model" in err
    assert not (tmp_path / "out.onnx").exists()
