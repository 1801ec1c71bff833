"""Replayable pruning plans: ``--save-plan`` / ``--plan`` (spa_opt.passes.pruning.replay).

- round trip: a plan saved from a run, replayed on the same model, gives the same
  model (every initializer equal) on golden models of every source;
- replay onto other exports of the same network gives the same widths: fp16, bf16 and
  QDQ conversions, and the other torch exporter (names differ: matched by values);
- a plan that does not fit is exit 2 with one line, nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from spa_opt.api import optimize
from spa_opt.cli import main
from spa_opt.errors import InputError
from spa_opt.passes._infra.context import PipelineContext

GOLDEN = Path(__file__).resolve().parent.parent / "golden_models"
QUICK = ["digits/resnet.onnx", "digits/mobilenetv2.onnx", "digits/vit.onnx", "resnet_tiny.onnx",
         "hf/bert_cls.dynamo.onnx", "hf/resnet_cls.torchscript.onnx"]
SWEEP = sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.onnx")
               if str(p.relative_to(GOLDEN)) not in QUICK)
DIMS = {"batch": 1, "batch_size": 1, "sequence_length": 8, "past_sequence_length": 4,
        "past_sequence_length + sequence_length": 12}


def _prune(path: Path, **options) -> tuple[ir.Model, dict]:
    model, report = optimize(str(path), "couple,group,l1,prune", input_dims=DIMS,
                             record_plan=True, **options)
    return model, report.to_dict()


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy() for name, value in model.graph.initializers.items()
            if value.const_value is not None}


def _widths(report: dict) -> list[tuple[int, int]]:
    return sorted((g["units"], g["removed"]) for g in report["prune"]["groups"])


def _round_trip(relative: str) -> None:
    path = GOLDEN / relative
    try:
        pruned, report = _prune(path, ratio=0.3)
    except InputError as error:
        pytest.skip(f"not prunable here: {error}")
    document = PipelineContext.of(pruned).plan_document
    if not report["prune"]["groups"]:
        pytest.skip("nothing removed")
    replayed, again = optimize(str(path), "couple,group,prune", input_dims=DIMS,
                               plan=json.loads(json.dumps(document)))
    again = again.to_dict()
    assert _widths(again) == _widths(report)
    assert all(row["matched_by"] == "name" for row in again["prune"]["replay"]["groups"])
    assert again["prune"]["replay"]["same_structure"]
    first, second = _weights(pruned), _weights(replayed)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.mark.parametrize("relative", QUICK)
def test_plan_round_trip(relative):
    _round_trip(relative)


@pytest.mark.slow
@pytest.mark.parametrize("relative", SWEEP)
def test_plan_round_trip_every_golden_model(relative):
    _round_trip(relative)


@pytest.mark.parametrize("source, variant, matched", [
    ("deploy/bert_cls.optimum.onnx", "deploy/bert_cls.fp16.onnx", "name"),
    ("deploy/bert_cls.optimum.onnx", "deploy/bert_cls.bf16.onnx", "name"),
    ("deploy/bert_cls.optimum.onnx", "deploy/bert_cls.qdq.onnx", "values"),
    ("hf/resnet_cls.torchscript.onnx", "deploy/resnet_cls.qdq.onnx", None),
    ("hf/mobilenetv2_cls.torchscript.onnx", "deploy/mobilenetv2_cls.qdq.onnx", None),
    ("hf/resnet_cls.torchscript.onnx", "hf/resnet_cls.dynamo.onnx", "values"),
])
def test_plan_replays_onto_other_exports_with_the_same_widths(source, variant, matched):
    pruned, report = _prune(GOLDEN / source, ratio=0.3)
    document = PipelineContext.of(pruned).plan_document
    _, again = optimize(str(GOLDEN / variant), "couple,group,prune", input_dims=DIMS,
                        plan=document)
    again = again.to_dict()
    assert _widths(again) == _widths(report)
    ways = {row["matched_by"].split(" ")[0] for row in again["prune"]["replay"]["groups"]}
    assert matched is None or matched in ways, ways


@pytest.fixture(scope="module")
def decoder_plan() -> tuple[dict, dict]:
    """The KV-cache decoder's plan and report, made once for its variants."""
    pruned, report = _prune(GOLDEN / "deploy/llama_kv.optimum.onnx", ratio=0.3, io="rewrite")
    return PipelineContext.of(pruned).plan_document, report


@pytest.mark.parametrize("variant", ["deploy/llama_kv.fp16.onnx", "deploy/llama_kv.ortopt.onnx"])
def test_decoder_plan_replays_onto_its_kv_cache_variants(variant, decoder_plan):
    """A decoder's plan (heads and KV heads too, with ``--io rewrite``) replays onto the
    same KV-cache decoder converted to fp16 or fused by onnxruntime's optimizer, and the
    replayed model runs with the rewritten cache shapes."""
    document, report = decoder_plan
    assert {g["units"] for g in document["groups"]} >= {2, 64}  # KV heads, hidden
    _, again = optimize(str(GOLDEN / variant), "couple,group,prune", input_dims=DIMS,
                        plan=document, io="rewrite", verify=1)
    again = again.to_dict()
    assert _widths(again) == _widths(report)
    assert {row["matched_by"] for row in again["prune"]["replay"]["groups"]} == {"name"}
    assert again["io"]["changed"] and again["verify"]["inputs"] == 1


def test_cli_save_and_replay(tmp_path, capsys):
    plan, first, second = tmp_path / "plan.json", tmp_path / "a.onnx", tmp_path / "b.onnx"
    model = str(GOLDEN / "digits/resnet.onnx")
    assert main(["-p", "couple,group,l1,prune", "--target-flops", "0.5", "--save-plan",
                 str(plan), model, str(first)]) == 0
    data = json.loads(plan.read_text())
    assert data["format"] == "spa-opt-plan" and data["groups"]
    assert all(g["norms"] and g["primary"]["name"] for g in data["groups"])
    assert main(["-p", "couple,group,prune", "--plan", str(plan), model, str(second)]) == 0
    import onnx

    assert (onnx.load(str(first)).graph.SerializeToString()
            == onnx.load(str(second)).graph.SerializeToString())
    capsys.readouterr()


@pytest.mark.parametrize("flags, message", [
    (["--plan", "{plan}", "--target-flops", "0.5"], "takes no --target-flops"),
    (["--plan", "{missing}"], "cannot read"),
    (["--plan", "{plan}", "-p", "couple,group,obspa,prune"], "obspa chooses"),
    (["--save-plan", "{tmp}/p.json", "-p", "couple,group"], "needs the prune pass"),
    (["--plan", "{other}"], "matches no group"),
])
def test_cli_bad_plans_are_one_line_exit_2(tmp_path, capsys, flags, message):
    plan = tmp_path / "plan.json"
    assert main(["-p", "couple,group,l1,prune", "--ratio", "0.3", "--save-plan", str(plan),
                 str(GOLDEN / "digits/resnet.onnx"), str(tmp_path / "a.onnx")]) == 0
    other = tmp_path / "other.json"
    assert main(["-p", "couple,group,l1,prune", "--ratio", "0.3", "--save-plan", str(other),
                 str(GOLDEN / "digits/vit.onnx"), str(tmp_path / "v.onnx")]) == 0
    capsys.readouterr()
    args = [f.format(plan=plan, missing=tmp_path / "none.json", tmp=tmp_path, other=other)
            for f in flags]
    if "-p" not in args:
        args = ["-p", "couple,group,prune", *args]
    out = tmp_path / "out.onnx"
    code = main([*args, str(GOLDEN / "digits/resnet.onnx"), str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists(), err
    assert message in err and len(err.splitlines()) == 1, err
