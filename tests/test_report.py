"""Tests of the run report (``--report``) and of the Python API ``spa_opt.optimize``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import run_cli_in
from misbehaving_passes import ExplodePass, registered

import spa_opt
import spa_opt.report
from spa_opt.cli import main
from spa_opt.errors import InputError
from spa_opt.passes import (
    DeadCodeEliminationPass,
    FoldConstantsPass,
    PipelineContext,
    SpaPass,
    Targets,
    format_pipeline,
    parse_pipeline,
)

ROOT = Path(__file__).resolve().parent.parent
RESNET_TINY = ROOT / "golden_models" / "resnet_tiny.onnx"
LIGHT = Path(onnx.__path__[0]) / "backend" / "test" / "data" / "light"
LIGHT_RESNET50 = LIGHT / "light_resnet50.onnx"

TORCHVISION_RESNET50_PARAMS = 25_557_032
TORCHVISION_RESNET50_MACS = 4.09e9

REPORT_KEYS = {
    "spa_opt_version", "pipeline", "targets", "passes", "params", "macs", "flops",
    "coupling", "groups", "channels", "verify", "load", "io",
}
TARGET_KEYS = {"ratio", "target_flops", "target_params", "scope", "round_to", "ignore", "seed",
               "target_latency"}


class SeeTargetsPass(SpaPass):
    """Record the targets the pass sees in its context."""

    name = "test-see-targets"
    seen: list[Targets] = []

    def run(self, model, context):
        SeeTargetsPass.seen.append(context.targets)
        return ir.passes.PassResult(model, False)


@pytest.fixture(scope="module", autouse=True)
def _test_passes():
    """Register this module's passes while its tests run, and only then."""
    with registered(ExplodePass, SeeTargetsPass):
        yield


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_report_schema(data: dict, pipeline: list[str]) -> None:
    assert set(data) == REPORT_KEYS
    assert data["spa_opt_version"] == spa_opt.__version__
    assert format_pipeline(parse_pipeline(data["pipeline"])) == data["pipeline"]
    assert set(data["targets"]) == TARGET_KEYS
    assert [p["name"] for p in data["passes"]] == pipeline
    for record in data["passes"]:
        assert set(record) == {"name", "seconds", "modified", "stats"}
        assert isinstance(record["seconds"], float) and record["seconds"] >= 0
        assert isinstance(record["modified"], bool)
        assert isinstance(record["stats"], dict)
        assert all(isinstance(v, (int, float)) for v in record["stats"].values())
    for key in ("params", "macs", "flops"):
        assert set(data[key]) == {"before", "after"}
        assert is_int(data[key]["before"]) and is_int(data[key]["after"])
        assert data[key]["before"] > 0 and data[key]["after"] > 0
    assert data["groups"] is None and data["coupling"] is None
    assert data["channels"] is None


def test_documented_keys_are_the_report_keys() -> None:
    doc = spa_opt.report.__doc__
    top_level = set(re.findall(r'^ {6}"(\w+)":', doc, re.M))
    assert top_level == REPORT_KEYS
    assert re.search(r'"verify":\s+\{"inputs": N, "max_abs_err": x, "rel_err": x,', doc)


@pytest.fixture(scope="module")
def resnet50_report(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("report")
    code = main(["-p", "fold-constants,dce", "--report", str(folder / "r.json"),
                 str(LIGHT_RESNET50), str(folder / "out.onnx")])
    assert code == 0
    return json.loads((folder / "r.json").read_text())


def test_report_of_light_resnet50(resnet50_report) -> None:
    check_report_schema(resnet50_report, ["fold-constants", "dce"])
    assert resnet50_report["verify"] is None
    assert resnet50_report["pipeline"] == format_pipeline(parse_pipeline("fold-constants,dce"))
    assert resnet50_report["targets"] == {
        "ratio": None, "target_flops": None, "target_params": None, "scope": "local",
        "round_to": 1, "ignore": [], "seed": 0, "target_latency": None,
    }
    fold = resnet50_report["passes"][0]
    assert fold["modified"] is True and fold["stats"]["constant-of-shape-lifted"] > 0


def test_light_resnet50_params_and_macs_match_torchvision(resnet50_report) -> None:
    params, macs = resnet50_report["params"], resnet50_report["macs"]
    for count in (params["before"], params["after"]):
        assert count == pytest.approx(TORCHVISION_RESNET50_PARAMS, rel=0.005)
    for count in (macs["before"], macs["after"]):
        assert count == pytest.approx(TORCHVISION_RESNET50_MACS, rel=0.02)
    assert macs["before"] == macs["after"]  # folding and DCE remove no computation
    flops = resnet50_report["flops"]
    assert flops["before"] >= 2 * macs["before"]


def test_report_with_targets_and_verify(tmp_path: Path, capsys) -> None:
    shutil.copy2(RESNET_TINY, tmp_path / "in.onnx")
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", "fold-constants<input-size-limit=100>,dce,check", "--ratio", "0.25",
        "--target-flops", "0.5", "--scope", "global", "--round-to", "8", "--ignore", "s0.*",
        "--ignore", "stem.conv", "--seed", "7", "--verify", "2", "--report", "r.json",
        "in.onnx", "out.onnx"])
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    check_report_schema(data, ["fold-constants", "dce", "check"])
    assert data["pipeline"].startswith("fold-constants<input-size-limit=100;")
    assert data["targets"] == {
        "ratio": 0.25, "target_flops": 0.5, "target_params": None, "scope": "global",
        "round_to": 8, "ignore": ["s0.*", "stem.conv"], "seed": 7, "target_latency": None,
    }
    verify = data["verify"]
    assert set(verify) == {"inputs", "max_abs_err", "rel_err", "per_output", "reshaped", "source",
                           "top1_agreement", "kl", "perplexity_ratio"}
    assert verify["reshaped"] == []
    assert verify["inputs"] == 2
    assert set(verify["per_output"]) == {"logits"}
    assert 0.0 <= verify["max_abs_err"] < 1e-4 and 0.0 <= verify["rel_err"] < 1e-4
    assert data["passes"][2]["modified"] is False  # check never modifies
    # The report is written only beside what was asked for.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx", "r.json"]


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["-p", "fold-constants,dce,test-explode"], 1),
        (["-p", "dce", "--ignore", "nothing-matches"], 2),
        (["-p", "dcee"], 2),
        (["-p", "dce", "--ratio", "2"], 2),
    ],
    ids=["pass-raises", "bad-ignore", "unknown-pass", "bad-ratio"],
)
def test_report_is_not_written_when_the_run_fails(tmp_path: Path, capsys, argv, code) -> None:
    shutil.copy2(RESNET_TINY, tmp_path / "in.onnx")
    argv = [*argv, "--report", "r.json", "in.onnx", "out.onnx"]
    result, _, err = run_cli_in(capsys, tmp_path, argv)
    assert result == code, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_report_is_not_written_when_the_output_folder_is_missing(tmp_path, capsys) -> None:
    shutil.copy2(RESNET_TINY, tmp_path / "in.onnx")
    code, _, _ = run_cli_in(capsys, tmp_path, ["-p", "dce", "--report", "r.json", "in.onnx",
                                            "missing/out.onnx"])
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


# --------------------------------------------------------------------------- the Python API


def _sources(kind: str):
    if kind == "str":
        return str(RESNET_TINY)
    if kind == "path":
        return RESNET_TINY
    if kind == "bytes":
        return RESNET_TINY.read_bytes()
    if kind == "proto":
        return onnx.load(str(RESNET_TINY))
    return ir.load(str(RESNET_TINY))


@pytest.mark.parametrize("kind", ["str", "path", "bytes", "proto", "ir"])
def test_optimize_accepts_every_source(kind: str) -> None:
    source = _sources(kind)
    before = source.SerializeToString() if kind == "proto" else None
    model, report = spa_opt.optimize(source, "fold-constants,dce", verify=1)
    assert isinstance(model, ir.Model)
    assert isinstance(report, spa_opt.Report)
    if kind == "ir":
        assert model is source  # transformed in place
    if kind == "proto":
        assert source.SerializeToString() == before  # a proto is not modified
    assert [r.name for r in report.passes] == ["fold-constants", "dce"]
    assert report.verify is not None and report.verify.max_abs_err < 1e-4
    data = report.to_dict()
    check_report_schema(data, ["fold-constants", "dce"])
    json.dumps(data)  # JSON-ready
    assert any(node.op_type == "Conv" for node in model.graph)


def test_optimize_leaves_the_input_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "in.onnx"
    shutil.copy2(RESNET_TINY, path)
    data, mtime = path.read_bytes(), path.stat().st_mtime_ns
    spa_opt.optimize(path, "fold-constants,dce")
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["in.onnx"]


def test_targets_flow_into_the_pipeline_context() -> None:
    SeeTargetsPass.seen.clear()
    model, report = spa_opt.optimize(
        str(RESNET_TINY), "test-see-targets,dce", ratio=0.3, target_flops=0.6,
        target_params=0.7, scope="global", round_to=4, ignore=["stem.*"], seed=5)
    expected = Targets(0.3, 0.6, 0.7, "global", 4, ("stem.*",), 5)
    assert PipelineContext.of(model).targets == expected
    assert SeeTargetsPass.seen == [expected]
    assert report.targets == {"ratio": 0.3, "target_flops": 0.6, "target_params": 0.7,
                              "scope": "global", "round_to": 4, "ignore": ["stem.*"], "seed": 5,
                              "target_latency": None}


def test_default_targets() -> None:
    model, _ = spa_opt.optimize(RESNET_TINY.read_bytes(), "dce")
    assert PipelineContext.of(model).targets == Targets()


@pytest.mark.parametrize(
    "targets",
    [{"ratio": 1.5}, {"target_flops": -0.1}, {"round_to": 0}, {"scope": "galactic"},
     {"ignore": ["no-such-node"]}],
    ids=["ratio", "target-flops", "round-to", "scope", "ignore"],
)
def test_bad_targets_are_input_errors(targets: dict) -> None:
    with pytest.raises(InputError):
        spa_opt.optimize(str(RESNET_TINY), "dce", **targets)


def test_pass_instances_work_as_a_pipeline() -> None:
    fold, dce = FoldConstantsPass(input_size_limit=64), DeadCodeEliminationPass()
    model, report = spa_opt.optimize(str(RESNET_TINY), [fold, dce])
    assert isinstance(model, ir.Model)
    assert [r.name for r in report.passes] == ["fold-constants", "dce"]
    assert report.pipeline == format_pipeline(
        parse_pipeline("fold-constants<input-size-limit=64>,dce"))
    assert "nodes-removed" in dce.stats  # the given instances are the ones that ran
    assert report.passes[1].stats == dce.stats


def test_pass_specs_work_as_a_pipeline() -> None:
    _, report = spa_opt.optimize(str(RESNET_TINY), parse_pipeline("dce,topo-sort"))
    assert [r.name for r in report.passes] == ["dce", "topo-sort"]


def test_empty_pipeline_is_an_input_error() -> None:
    with pytest.raises(InputError):
        spa_opt.optimize(str(RESNET_TINY), [])
    with pytest.raises(InputError):
        spa_opt.optimize(str(RESNET_TINY), " ")


def test_unregistered_pass_instance_works_as_a_pipeline() -> None:
    """A SpaPass the registry never saw still runs when given as an instance.

    ``optimize`` documents "pass instances" without requiring registration, and
    ``PassManager`` runs such passes; the canonical pipeline text must not need
    the registry to describe an instance it already holds.
    """

    class Local(SpaPass):
        """A pass used once, never registered."""

        name = "test-local-unregistered"

        def run(self, model, context):
            self.count("ran")
            return ir.passes.PassResult(model, False)

    _, report = spa_opt.optimize(str(RESNET_TINY), [Local(), DeadCodeEliminationPass()])
    assert [r.name for r in report.passes] == ["test-local-unregistered", "dce"]
    assert report.passes[0].stats == {"ran": 1}


def test_report_dict_from_api_matches_cli_report(tmp_path: Path, capsys) -> None:
    shutil.copy2(RESNET_TINY, tmp_path / "in.onnx")
    code, _, _ = run_cli_in(capsys, tmp_path, ["-p", "fold-constants,dce", "--report", "r.json",
                                            "in.onnx", "out.onnx"])
    assert code == 0
    from_cli = json.loads((tmp_path / "r.json").read_text())
    _, report = spa_opt.optimize(tmp_path / "in.onnx", "fold-constants,dce")
    from_api = report.to_dict()
    for key in ("pipeline", "targets", "params", "macs", "flops", "groups", "channels",
                "verify"):
        assert from_cli[key] == from_api[key], key
    strip = [{k: v for k, v in p.items() if k != "seconds"} for p in from_cli["passes"]]
    assert strip == [{k: v for k, v in p.items() if k != "seconds"} for p in from_api["passes"]]
    assert np.isfinite(from_cli["passes"][0]["seconds"])


def test_print_groups_names_the_first_node_of_each_reason_and_totals_pinned_channels() -> None:
    from spa_opt.report import format_groups, pinned_by_reason

    pins = [{"code": "rule", "reason": "Pad amounts are computed at run time",
             "first_node": "pad0", "nodes": 3}]
    groups = [
        {"id": "g0", "units": 8, "block": 1, "channels": 8, "prunable": False,
         "pinned_units": 8, "primary": "w0:0", "members": [{}], "reasons": [], "pins": pins,
         "why_not": ["Pad amounts are computed at run time at node `pad0`"]},
        {"id": "g1", "units": 4, "block": 16, "channels": 64, "prunable": False,
         "pinned_units": 4, "primary": "w1:0", "members": [{}], "reasons": [],
         "pins": [{"code": "rule", "reason": "the channel count of `a` is not static",
                   "first_node": "conv1", "nodes": 1}], "why_not": ["x"]},
        {"id": "g2", "units": 6, "block": 1, "channels": 6, "prunable": False,
         "pinned_units": 6, "primary": "w2:0", "members": [{}], "reasons": [],
         "pins": [{"code": "rule", "reason": "the channel count of `b` is not static",
                   "first_node": "conv2", "nodes": 1}], "why_not": ["x"]},
    ]
    assert pinned_by_reason(groups) == [
        ("the channel count of `…` is not static", 70, 2),
        ("Pad amounts are computed at run time", 8, 1)]
    text = format_groups(groups)
    assert "Pad amounts are computed at run time at node `pad0` (and 2 more)" in text
    assert "  70  in 2 groups: the channel count of `…` is not static" in text
