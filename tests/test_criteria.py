"""Tests of the importance criteria: l1, l2, random, bn-scale, lamp, fpgm."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

import spa_opt
from spa_opt.errors import InputError
from spa_opt.passes import PipelineContext, Targets, all_passes, get_pass
from spa_opt.passes.criteria import CriterionPass, score_groups
from spa_opt.passes.criteria.base import normalize
from tests.conftest import GOLDEN, run_cli_in
from tests.rule_graphs import build, f32, node, vi

CRITERIA = ["l1", "l2", "random", "bn-scale", "lamp", "fpgm"]
MODELS = ["resnet_tiny.onnx", "torch/vit.dynamo.onnx", "torch/llama.dynamo.onnx"]
BN_WHY = "no BatchNormalization scale (exporters fold BatchNorm into convolutions)"

# Conv(W1) -> Relu -> Conv(W2); the 3 hidden channels form the one prunable group.
W1 = [[1.0, -2.0], [0.0, 3.0], [4.0, 0.0]]  # unit rows: [1,-2], [0,3], [4,0]
W2 = [[1.0, 1.0, 0.0], [0.0, -1.0, 2.0]]  # unit columns: [1,0], [1,-1], [0,2]


def conv_relu_conv(w1=W1, w2=W2, batchnorm_gamma=None) -> ir.Model:
    """``x[1,2,4,4] -> Conv(W1) -> (BatchNorm) -> Relu -> Conv(W2) -> y[1,2,4,4]``."""
    w1 = np.asarray(w1, dtype=np.float32)
    nodes = [node("Conv", ["x", "W1"], "h")]
    inits = [f32("W1", w1[:, :, None, None]),
             f32("W2", np.asarray(w2, dtype=np.float32)[:, :, None, None])]
    relu_in = "h"
    if batchnorm_gamma is not None:
        nodes.append(node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], "hb"))
        inits += [f32("gamma", batchnorm_gamma), f32("beta", [0.1] * 3), f32("mean", [0.0] * 3),
                  f32("var", [1.0] * 3)]
        relu_in = "hb"
    nodes += [node("Relu", [relu_in], "a"), node("Conv", ["a", "W2"], "y")]
    return build(nodes, [vi("x", 1, 2, 4, 4)], [vi("y", 1, 2, 4, 4)], inits)


def scores_of(model: ir.Model, name: str, seed: int = 0, **options) -> dict[str, np.ndarray]:
    """Run criterion ``name`` on ``model`` through the pass interface; return the scores."""
    context = PipelineContext(targets=Targets(seed=seed)).attach(model)
    result = get_pass(name)(**options)(model)
    assert not result.modified
    return context.analyses.scores


def the_scores(model: ir.Model, name: str, **options) -> np.ndarray:
    scores = scores_of(model, name, **options)
    assert len(scores) == 1, scores
    return next(iter(scores.values()))


@pytest.fixture(scope="module")
def golden() -> dict[str, ir.Model]:
    return {name: spa_opt.load_model(GOLDEN / name) for name in MODELS}


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("model_name", MODELS)
def test_every_prunable_group_of_golden_models_gets_a_score_per_unit(golden, model_name,
                                                                     criterion) -> None:
    model = golden[model_name]
    context = PipelineContext().attach(model)
    get_pass(criterion)()(model)
    prunable = [g for g in context.analyses.groups if g.prunable]
    scores, report = context.analyses.scores, context.report["criterion"]
    assert prunable and report["name"] == criterion
    if criterion == "bn-scale" and model_name != "resnet_tiny.onnx":  # no BatchNorm there
        assert scores == {} and report["scored"] == 0
        assert report["unscored"] == [{"group": g.id, "why": BN_WHY} for g in prunable]
        return
    assert sorted(scores) == sorted(g.id for g in prunable) and report["unscored"] == []
    for group in prunable:
        values = scores[group.id]
        assert values.shape == (group.units,) and values.dtype == np.float64
        assert np.isfinite(values).all() and (values >= 0).all()
        assert values.mean() == pytest.approx(1.0)  # norm=mean by default


S26, S13, S2, S5 = math.sqrt(26), math.sqrt(13), math.sqrt(2), math.sqrt(5)
EXACT = {
    # per member: W1 rows / W2 columns; agg=mean of the two members unless noted
    "l1": [(3 + 1) / 2, (3 + 2) / 2, (4 + 2) / 2],  # |1|+|-2|, |0|+|3|, |4|+|0|; 1, 2, 2
    "l2": [(S5 + 1) / 2, (3 + S2) / 2, (4 + 2) / 2],
    # m(W1) = 5, 9, 16 -> 5/30, 9/25, 16/16; m(W2) = 1, 2, 4 -> 1/7, 2/6, 4/4
    "lamp": [(5 / 30 + 1 / 7) / 2, (9 / 25 + 2 / 6) / 2, 1.0],
    # W1 only (W2 consumes): distances |ab| = sqrt(26), |ac| = sqrt(13), |bc| = 5
    "fpgm": [S26 + S13, S26 + 5, S13 + 5],
}


@pytest.mark.parametrize("criterion", sorted(EXACT))
def test_exact_values_on_a_conv_relu_conv_graph(criterion) -> None:
    values = the_scores(conv_relu_conv(), criterion, norm="none")
    np.testing.assert_allclose(values, EXACT[criterion], rtol=1e-12)


@pytest.mark.parametrize(("agg", "expected"), [
    ("sum", [4, 5, 6]), ("mean", [2, 2.5, 3]), ("max", [3, 3, 4]), ("prod", [3, 6, 8]),
    ("first", [3, 3, 4]),  # the primary member is W1, the producing weight
])
def test_agg_combines_members_as_documented(agg, expected) -> None:
    np.testing.assert_allclose(the_scores(conv_relu_conv(), "l1", agg=agg, norm="none"), expected)


@pytest.mark.parametrize(("norm", "expected"), [
    ("none", [4, 5, 6]), ("mean", [0.8, 1.0, 1.2]), ("max", [4 / 6, 5 / 6, 1.0]),
    ("sum", [4 / 15, 5 / 15, 6 / 15]), ("minmax", [0.0, 0.5, 1.0]),
])
def test_norm_rescales_as_documented(norm, expected) -> None:
    np.testing.assert_allclose(the_scores(conv_relu_conv(), "l1", agg="sum", norm=norm), expected)


def test_zero_denominators_leave_scores_alone() -> None:
    zeros = np.zeros(3)
    for norm in ("mean", "max", "sum", "minmax"):
        np.testing.assert_array_equal(normalize(zeros, norm), zeros)
    np.testing.assert_array_equal(normalize(np.full(3, 2.0), "minmax"), zeros)
    dead = conv_relu_conv(w1=np.zeros((3, 2)), w2=np.zeros((2, 3)))
    for criterion in ("l1", "l2", "lamp", "fpgm"):
        np.testing.assert_array_equal(the_scores(dead, criterion), zeros)


def test_bn_scale_reads_batchnorm_gamma_only() -> None:
    model = conv_relu_conv(batchnorm_gamma=[0.5, -2.0, 1.0])
    np.testing.assert_allclose(the_scores(model, "bn-scale", norm="none"), [0.5, 2.0, 1.0])
    np.testing.assert_allclose(the_scores(model, "bn-scale"), [3 / 7, 12 / 7, 6 / 7])
    plain = conv_relu_conv()
    assert scores_of(plain, "bn-scale") == {}
    report = PipelineContext.of(plain).report["criterion"]
    assert report["scored"] == 0 and [u["why"] for u in report["unscored"]] == [BN_WHY]


def test_random_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    model = spa_opt.load_model(GOLDEN / "resnet_tiny.onnx")
    first = scores_of(model, "random", seed=3, norm="none")
    again = scores_of(model, "random", seed=3, norm="none")
    other = scores_of(model, "random", seed=4, norm="none")
    assert first.keys() == again.keys() == other.keys()
    for key, values in first.items():
        np.testing.assert_array_equal(values, again[key])
        assert not np.array_equal(values, other[key])
        assert ((values >= 0) & (values < 1)).all()
    draws = [tuple(v[:4]) for v in first.values()]
    assert len(set(draws)) == len(draws)  # each group draws its own
    for agg in ("mean", "max", "first"):  # one draw per group, whatever the member count
        again = scores_of(model, "random", seed=3, agg=agg, norm="none")
        for key, values in first.items():
            np.testing.assert_allclose(again[key], values, rtol=1e-15)


def test_the_criterion_does_not_modify_the_model() -> None:
    model = spa_opt.load_model(GOLDEN / "resnet_tiny.onnx")
    before = ir.to_proto(model).SerializeToString()
    def weights() -> dict[str, bytes]:
        return {n: v.const_value.numpy().tobytes() for n, v in model.graph.initializers.items()}

    original = weights()
    for criterion in CRITERIA:
        scores_of(model, criterion)
    assert weights() == original
    assert ir.to_proto(model).SerializeToString() == before


def test_the_last_criterion_wins_and_groups_are_computed_on_demand() -> None:
    model, report = spa_opt.optimize(GOLDEN / "resnet_tiny.onnx", "fpgm,l1<agg=max;norm=none>")
    context = PipelineContext.of(model)
    assert context.analyses.criterion == "l1<agg=max;norm=none>"
    assert context.analyses.couplings is not None and context.analyses.groups is not None
    assert report.to_dict()["criterion"]["pipeline"] == "l1<agg=max;norm=none>"
    assert report.to_dict()["groups"] is None  # on-demand groups are not reported


def test_pipeline_text_through_the_api() -> None:
    model, report = spa_opt.optimize(GOLDEN / "resnet_tiny.onnx", "couple,group,l1")
    data = report.to_dict()
    assert data["pipeline"] == "couple<heads=whole>,group,l1<agg=mean;norm=mean>"
    assert data["criterion"] == {"name": "l1", "pipeline": "l1<agg=mean;norm=mean>",
                                 "scored": 6, "unscored": []}
    stats = data["passes"][-1]["stats"]
    assert stats == {"groups-scored": 6, "groups-unscored": 0}
    assert len(PipelineContext.of(model).analyses.scores) == 6


def test_pipeline_text_through_the_cli(tmp_path: Path, capsys) -> None:
    argv = ["-p", "couple,group,l1<agg=max;norm=none>", "--report", "r.json",
            str(GOLDEN / "resnet_tiny.onnx"), "out.onnx"]
    code, _, err = run_cli_in(capsys, tmp_path, argv)
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["criterion"]["pipeline"] == "l1<agg=max;norm=none>"
    assert data["criterion"]["scored"] == data["coupling"]["prunable"] == 6


def test_list_passes_lists_the_criteria(tmp_path: Path, capsys) -> None:
    code, out, _ = run_cli_in(capsys, tmp_path, ["--list-passes"])
    assert code == 0
    lines = out.splitlines()
    for name in CRITERIA:
        cls = all_passes()[name]
        assert issubclass(cls, CriterionPass) and cls.preserves_analyses
        assert f"{name}: {cls.summary()}" in lines
    assert any(line.strip().startswith("agg: sum|mean|max|prod|first = mean  -- ")
               for line in lines)
    assert any(line.strip().startswith("norm: none|mean|max|sum|minmax = mean  -- ")
               for line in lines)


def test_bad_options_and_names_are_input_errors() -> None:
    model = conv_relu_conv()
    with pytest.raises(InputError, match="agg"):
        spa_opt.optimize(model, "l1<agg=median>")
    with pytest.raises(InputError, match="not an importance criterion"):
        score_groups(model, PipelineContext(), "dce")
    with pytest.raises(InputError, match="did you mean 'lamp'"):
        score_groups(model, PipelineContext(), "lamb")


def test_score_groups_defaults_to_l1() -> None:
    model, context = conv_relu_conv(), PipelineContext()
    scores = score_groups(model, context, norm="none")
    np.testing.assert_allclose(next(iter(scores.values())), EXACT["l1"])
    assert context.analyses.criterion == "l1<agg=mean;norm=none>"
    assert context.report["criterion"]["scored"] == 1


def test_weights_made_by_constant_nodes_are_read() -> None:
    w1 = numpy_helper.from_array(np.asarray(W1, dtype=np.float32)[:, :, None, None])
    nodes = [helper.make_node("Constant", [], ["W1"], name="c", value=w1),
             node("Conv", ["x", "W1"], "h"), node("Relu", ["h"], "a"),
             node("Conv", ["a", "W2"], "y")]
    model = build(nodes, [vi("x", 1, 2, 4, 4)], [vi("y", 1, 2, 4, 4)],
                  [f32("W2", np.asarray(W2, dtype=np.float32)[:, :, None, None])])
    np.testing.assert_allclose(the_scores(model, "l1", norm="none"), EXACT["l1"])
    np.testing.assert_allclose(the_scores(model, "fpgm", norm="none"), EXACT["fpgm"])


def test_criteria_do_not_import_onnxruntime() -> None:
    code = ("import sys, spa_opt.passes.criteria; "
            "print('onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    if out == "True":  # spa_opt itself imports it (api, ort, verify): check our sources
        folder = Path(spa_opt.__file__).parent / "passes" / "criteria"
        sources = [p.read_text() for p in folder.glob("*.py")]
        assert sources and not any("onnxruntime" in s for s in sources)
