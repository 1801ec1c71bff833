"""The couple and group passes as users run them: pipeline, report, --print-groups."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from spa_opt.api import optimize
from spa_opt.passes import CouplePass, GroupPass, PipelineContext
from tests.conftest import GOLDEN, run_cli_in

RESNET = GOLDEN / "resnet_tiny.onnx"


def test_couple_then_group_fills_context_and_report() -> None:
    model, report = optimize(str(RESNET), "couple,group")
    context = PipelineContext.of(model)
    assert context.analyses.couplings is not None
    groups = context.analyses.groups
    data = report.to_dict()
    assert [g["id"] for g in data["groups"]] == [g.id for g in groups]
    assert data["coupling"]["groups"] == len(groups)
    assert data["coupling"]["prunable"] == sum(g.prunable for g in groups)
    first = data["groups"][1]
    assert first["prunable"] and first["members"][0]["roles"] == ["out"]
    assert {"name", "axis", "kind", "roles", "extent", "block", "map"} <= set(first["members"][0])


def test_group_alone_computes_couplings_on_demand() -> None:
    model, report = optimize(str(RESNET), "group")
    groups = PipelineContext.of(model).analyses.groups
    assert report.to_dict()["coupling"]["groups"] == len(groups)


def test_analyses_leave_the_model_unchanged(tmp_path: Path) -> None:
    before = ir.serde.serialize_model(ir.load(RESNET)).SerializeToString()
    model, _ = optimize(str(RESNET), "couple,group")
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_heads_option_is_in_the_pipeline_text() -> None:
    assert CouplePass(heads="dim").pipeline_text() == "couple<heads=dim>"
    assert GroupPass().pipeline_text() == "group"


def test_print_groups_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(RESNET, tmp_path / "in.onnx")
    code, out, err = run_cli_in(
        capsys, tmp_path,
        ["-p", "couple,group", "--print-groups", "--report", "r.json", "in.onnx", "out.onnx"],
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["group", "units", "x"]
    assert any("comes from graph input `input`" in line for line in lines)
    assert any("reaches graph output `logits`" in line for line in lines)
    assert "prunable" in lines[-1] and "produced channels" in lines[-1]
    report = json.loads((tmp_path / "r.json").read_text())
    rows = [line for line in lines if line.split()[0] in {g["id"] for g in report["groups"]}]
    assert len(report["groups"]) == len(rows)  # one table row per group
    assert "pinned channels by reason" in out
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)


def test_print_groups_without_group_pass_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    shutil.copy(RESNET, tmp_path / "in.onnx")
    code, _, err = run_cli_in(capsys, tmp_path,
                              ["-p", "couple", "--print-groups", "in.onnx", "out.onnx"])
    assert code == 2
    assert err.strip().startswith("spa-opt: error: --print-groups needs the group pass")
    assert not (tmp_path / "out.onnx").exists()


def test_list_passes_shows_the_analyses(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, _ = run_cli_in(capsys, tmp_path, ["--list-passes"])
    assert code == 0
    assert "couple:" in out and "heads: whole|dim = whole" in out
    assert "group:" in out
