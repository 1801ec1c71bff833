"""Tests of the ``sensitivity`` analysis: measured output error ranks units across groups."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from spa_opt.api import optimize
from spa_opt.errors import InputError
from spa_opt.passes import PipelineContext, Targets, get_pass
from spa_opt.passes.sensitivity import output_error, parse_fractions, past_measured, unit_keys
from tests.rule_graphs import build, f32, node, vi

RNG = np.random.default_rng(7)
HIDDEN = 8


def two_branches() -> ir.Model:
    """``y = Relu(x A1) A2 + Relu(x B1) B2``: two hidden groups of 8 units.

    Branch A's weights are large where they enter and tiny where they leave, so l1
    ranks its units above branch B's while they hardly reach the output; branch B is
    the reverse. Only a measurement tells which one the output needs. The same weights
    every call.
    """
    rng = np.random.default_rng(3)
    a1 = 3.0 * rng.standard_normal((4, HIDDEN))
    a2 = 0.01 * rng.standard_normal((HIDDEN, 4))
    b1 = 0.3 * rng.standard_normal((4, HIDDEN))
    b2 = 1.0 * rng.standard_normal((HIDDEN, 4))
    nodes = [node("MatMul", ["x", "A1"], "ha"), node("Relu", ["ha"], "ra"),
             node("MatMul", ["ra", "A2"], "ya"),
             node("MatMul", ["x", "B1"], "hb"), node("Relu", ["hb"], "rb"),
             node("MatMul", ["rb", "B2"], "yb"), node("Add", ["ya", "yb"], "y")]
    inits = [f32(n, v) for n, v in (("A1", a1), ("A2", a2), ("B1", b1), ("B2", b2))]
    return build(nodes, [vi("x", 16, 4)], [vi("y", 16, 4)], inits)


def removed_per_branch(report) -> dict[str, int]:
    by_id = {g["group"]: g["removed"] for g in report.to_dict()["prune"]["groups"]}
    names = {g["id"]: g["primary"] for g in report.to_dict()["groups"]}
    return {("A" if "A" in names[gid] else "B"): count for gid, count in by_id.items()}


def run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_unit_keys_are_the_marginal_error_per_cost_saved_and_keep_the_order() -> None:
    keys = unit_keys(8, counts=[2, 4], errors=[0.2, 1.0], saved=[10.0, 20.0])
    np.testing.assert_allclose(keys[:2], 0.02, rtol=1e-6)  # 0.2 / 10
    np.testing.assert_allclose(keys[2:4], 0.08, rtol=1e-6)  # 0.8 / 10
    assert np.isnan(keys[4:]).all()  # past what was measured: ranked by the caller
    assert np.all(np.diff(keys[:4]) > 0)  # strictly increasing: the criterion's order stands


def test_unmeasured_units_go_after_every_measured_unit_of_every_group() -> None:
    cheap = unit_keys(6, counts=[2], errors=[1e-9], saved=[10.0])  # barely hurts, 4 unmeasured
    dear = unit_keys(4, counts=[2, 4], errors=[5.0, 9.0], saved=[1.0, 2.0])
    ranked = past_measured({"cheap": cheap, "dear": dear})
    assert ranked["cheap"][2:].min() > ranked["dear"].max()
    assert np.all(np.diff(ranked["cheap"]) > 0)
    np.testing.assert_array_equal(ranked["dear"], dear)


def test_unit_keys_never_fall_along_the_order() -> None:
    keys = unit_keys(6, counts=[2, 4, 6], errors=[0.5, 0.4, 0.9], saved=[1.0, 2.0, 3.0])
    assert np.all(np.diff(keys) > 0)
    np.testing.assert_allclose(keys[2:4], 0.5, rtol=1e-6)  # a noisy dip is held at 0.5


def test_non_finite_errors_and_free_removals_give_finite_ordered_keys() -> None:
    keys = unit_keys(6, counts=[2, 4, 6], errors=[0.1, np.inf, np.inf], saved=[1.0, 2.0, 3.0])
    assert np.isfinite(keys).all() and np.all(np.diff(keys) > 0)
    assert keys[2] > 100 * keys[0]  # the removal that breaks the output goes late
    keys = unit_keys(4, counts=[2, 4], errors=[0.3, 0.6], saved=[0.0, 0.0])  # saves nothing
    assert np.isfinite(keys).all() and np.all(np.diff(keys) > 0)


def test_output_error_uses_kl_for_logits_and_relative_error_otherwise() -> None:
    logits = {"logits": np.array([[0.0, 0.0]])}
    shifted = {"logits": np.array([[np.log(3.0), 0.0]])}  # softmax (3/4, 1/4)
    expected = 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)
    assert output_error([logits], [shifted]) == pytest.approx(expected)
    vector = {"y": np.array([[3.0], [4.0]])}
    assert output_error([vector], [{"y": np.array([[3.0], [2.0]])}]) == pytest.approx(4 / 25)
    reshaped = {"y": np.zeros((1, 1))}  # a rewritten output is left out
    assert output_error([vector], [reshaped]) == 0.0
    boxes = {"boxes": np.ones((1, 5, 4))}  # rank 3, not named logits: a shift counts
    assert output_error([boxes], [{"boxes": np.ones((1, 5, 4)) + 10}]) == pytest.approx(100)
    cache = {"present.0.key": np.ones((1, 2, 3, 16))}  # a cache is no distribution
    assert output_error([cache], [{"present.0.key": np.zeros((1, 2, 3, 16))}]) == 1.0


def test_output_error_skips_what_the_original_makes_non_finite_and_flags_new_nans() -> None:
    reference = {"y": np.array([[1.0, np.nan]]), "z": np.array([[1.0], [1.0]])}
    assert output_error([reference], [{"y": np.array([[1.0, 2.0]]),
                                       "z": np.array([[1.0], [1.0]])}]) == 0.0
    assert output_error([reference], [{"y": reference["y"],
                                       "z": np.array([[np.nan], [1.0]])}]) == np.inf


def test_a_model_without_float_outputs_is_refused() -> None:
    model = two_branches()  # its output y becomes an ArgMax's input: only int64 leaves
    argmax = ir.node("ArgMax", [model.graph.outputs[0]], attributes={"axis": 1},
                     num_outputs=1)
    model.graph.append(argmax)
    argmax.outputs[0].name = "label"
    argmax.outputs[0].dtype = ir.DataType.INT64
    argmax.outputs[0].shape = ir.Shape([16, 1])
    model.graph.outputs[0] = argmax.outputs[0]
    with pytest.raises(InputError, match="no output to measure"):
        optimize(model, "couple,group,l1,sensitivity,prune", target_params=0.5,
                 scope="global")


def test_measured_error_prunes_the_branch_the_output_does_not_need() -> None:
    model = two_branches()
    x = RNG.standard_normal((16, 4)).astype(np.float32)
    dense = run(model, x)
    pipelines = {"l1": "couple,group,l1<norm=none;agg=sum>,prune",
                 "sensitivity": "couple,group,l1,sensitivity<samples=4>,prune"}
    results = {}
    for key, pipeline in pipelines.items():
        pruned, report = optimize(two_branches(), pipeline, ratio=None, target_params=0.75,
                                  scope="global")
        results[key] = (removed_per_branch(report), float(np.abs(run(pruned, x) - dense).max()),
                        report.to_dict())
    l1_removed, l1_error, _ = results["l1"]
    removed, error, data = results["sensitivity"]
    assert l1_removed.get("B", 0) > l1_removed.get("A", 0)  # magnitude is fooled
    assert removed.get("A", 0) > removed.get("B", 0)
    assert error < 0.2 * l1_error
    entry = data["sensitivity"]
    assert entry["inputs"] == "random" and entry["cost"] == "params"
    assert len(entry["groups"]) == 2 and not entry["unmeasured"]
    for group in entry["groups"]:
        assert group["removed"] == sorted(group["removed"]) and group["units"] == HIDDEN
        assert len(group["error"]) == len(group["saved"]) == len(group["removed"])
    assert data["prune"]["target"]["reached"]


def test_the_analysis_leaves_the_model_alone_and_keeps_each_groups_order() -> None:
    model = two_branches()
    before = ir.to_proto(model).SerializeToString()
    context = PipelineContext(targets=Targets(target_params=0.5, scope="global")).attach(model)
    get_pass("l1")()(model)
    order = {gid: np.argsort(s, kind="stable") for gid, s in context.analyses.scores.items()}
    result = get_pass("sensitivity")(samples=2)(model)
    assert not result.modified
    assert ir.to_proto(model).SerializeToString() == before
    assert context.analyses.criterion.startswith("l1<")
    assert ",sensitivity<" in context.analyses.criterion
    for gid, scores in context.analyses.scores.items():
        np.testing.assert_array_equal(np.argsort(scores, kind="stable")[:HIDDEN - 1],
                                      order[gid][:HIDDEN - 1])


def test_calibration_inputs_are_used_when_given() -> None:
    from spa_opt.calibration import Calibration

    model = two_branches()
    feeds = {"x": RNG.standard_normal((32, 4)).astype(np.float32)}
    context = PipelineContext(targets=Targets(target_params=0.5, scope="global"),
                              calibration=Calibration(feeds, "test")).attach(model)
    get_pass("sensitivity")(samples=2)(model)
    assert context.report["sensitivity"]["inputs"] == "calibration"


def test_the_local_scope_and_bad_fractions_are_refused() -> None:
    with pytest.raises(InputError, match="--scope global"):
        optimize(two_branches(), "couple,group,l1,sensitivity,prune", target_params=0.5)
    for text in ("0", "0.5,1", "half", ""):
        with pytest.raises(InputError, match="pass 'sensitivity': fractions"):
            parse_fractions(text)
    assert parse_fractions("0.5:0.25,0.5") == (0.25, 0.5)


def test_without_a_target_nothing_is_measured() -> None:
    model = two_branches()
    context = PipelineContext().attach(model)
    get_pass("sensitivity")()(model)
    assert context.report["sensitivity"]["groups"] == []


def test_rounds_replay_their_chunks_and_meet_the_target() -> None:
    pruned, report = optimize(two_branches(), "couple,group,l1,sensitivity<rounds=2;samples=4>,"
                              "prune", target_params=0.5, scope="global")
    data = report.to_dict()
    assert data["prune"]["target"]["reached"]
    entry = data["sensitivity"]
    assert entry["rounds"] == 2 and {g["round"] for g in entry["groups"]} == {1, 2}
    second = [g for g in entry["groups"] if g["round"] == 2]
    assert any(g["removed_before"] > 0 for g in second)  # measured on top of round 1
    removed = removed_per_branch(report)
    assert removed.get("A", 0) > removed.get("B", 0)
    fooled, _ = optimize(two_branches(), "couple,group,l1<norm=none;agg=sum>,prune",
                         target_params=0.5, scope="global")
    x = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    dense = run(two_branches(), x)
    assert np.abs(run(pruned, x) - dense).max() < 0.5 * np.abs(run(fooled, x) - dense).max()


def test_rounds_need_a_flops_or_params_budget() -> None:
    with pytest.raises(InputError, match="rounds > 1"):
        optimize(two_branches(), "couple,group,l1,sensitivity<rounds=2>,prune", ratio=0.5,
                 scope="global")
    with pytest.raises(InputError, match="rounds must be at least 1"):
        optimize(two_branches(), "couple,group,l1,sensitivity<rounds=0>,prune",
                 target_params=0.5, scope="global")


def test_rounds_count_dead_units_as_removed_first() -> None:
    """Zeroed units of branch B are dead: select removes them before any score, so the
    rounds must start from them or prune's prefix would differ from their choice."""
    model = two_branches()
    b2 = model.graph.initializers["B2"]
    data = b2.const_value.numpy().copy()
    data[:2] = 0.0  # B's first two hidden units reach nothing
    b2.const_value = ir.tensor(data, name="B2")
    context = PipelineContext(targets=Targets(target_params=0.5, scope="global")).attach(model)
    for name in ("dead", "l1"):
        get_pass(name)()(model)
    get_pass("sensitivity")(rounds=2, samples=4)(model)
    scores = context.analyses.scores
    dead = context.analyses.dead
    assert sum(int(m.sum()) for m in dead.values()) == 2
    for gid, mask in dead.items():
        if mask.any():  # dead units score below every other removable unit of the group
            assert scores[gid][mask].max() < np.sort(scores[gid][~mask])[0]
    _, report = optimize(model, "dead,couple,group,l1,sensitivity<rounds=2;samples=4>,prune",
                         target_params=0.5, scope="global")
    data = report.to_dict()
    assert data["prune"]["target"]["reached"]
    assert data["sensitivity"]["copies"] >= len(data["sensitivity"]["groups"])
