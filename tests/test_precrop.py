"""precrop: the geometric program, its integer rounding, selection and PreConfig growth.

- the solver meets the KKT conditions and the closed form of a toy chain (as a bare
  program and end to end through a MatMul chain model);
- the cost posynomial read off CostModel equals CostModel at any integer counts;
- on the digits models the budgets hold after a real recount, the objective beats the
  uniform keep ratio and the default planner's (``l1,prune``) counts, and the units that
  go are the lowest scored by the criterion that ran before;
- PreConfig grows some groups and shrinks others: weight shapes, constant members
  (BatchNorm statistics, zero biases) copied, random members drawn from their own
  entries, a Reshape's shape entry follows, the model checks and runs in onnxruntime;
- bad options or a missing budget exit 2 with one line.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa_opt.api import optimize
from spa_opt.ir import count_cost, load_model
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.ort import session_from_model
from spa_opt.passes import build_pipeline
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes.criteria import current_scores
from spa_opt.passes.group import groups_of
from spa_opt.passes.posynomial import (
    Constraint,
    Polynomial,
    cost_polynomials,
    kkt_residual,
    solve,
)
from spa_opt.passes.precrop import layer_weights
from spa_opt.passes.pruning.costmodel import CostModel
from spa_opt.passes.pruning.plan import plan_selection
from tests.conftest import GOLDEN, make_model, run_cli_in

DIGITS = GOLDEN / "digits"


def chain_optimum(f1: float, f2: float, f3: float, budget: float) -> tuple[float, float]:
    """Closed form of max x1 + x2 (twice each) s.t. f1 k1 + f2 k1 k2 + f3 k2 <= budget.

    Stationarity gives f1 k1 = f3 k2 = u and the budget 2u + f2 u² / (f1 f3) = B.
    """
    u = f1 * f3 / f2 * (-1 + math.sqrt(1 + budget * f2 / (f1 * f3)))
    return u / f1, u / f3


def chain_constraint(f: tuple[float, float, float], budget: float) -> Constraint:
    k1, k2 = Polynomial.variable(0), Polynomial.variable(1)
    return Constraint((f[0] * k1 + f[1] * k1 * k2 + f[2] * k2).posynomial(2), budget)


def test_solver_meets_the_closed_form_and_kkt_on_a_chain() -> None:
    f = (40.0, 300.0, 20.0)
    constraint = chain_constraint(f, 0.3 * sum(f))
    weights = np.array([2.0, 2.0])
    lower, upper = np.log([0.01, 0.01]), np.zeros(2)
    solution = solve(weights, [constraint], lower, upper)
    assert solution.success and solution.feasible
    expected = chain_optimum(*f, 0.3 * sum(f))
    np.testing.assert_allclose(np.exp(solution.x), expected, rtol=1e-5)
    assert kkt_residual(weights, [constraint], lower, upper, solution.x) < 1e-5
    # the KKT residual sees a point that is not optimal
    assert kkt_residual(weights, [constraint], lower, upper, solution.uniform) > 1e-2
    assert solution.objective > solution.uniform_objective
    assert constraint.cost.value(solution.x) == pytest.approx(0.3 * sum(f), rel=1e-8)


def test_solver_with_active_bounds_and_growth() -> None:
    """A bound that binds gets a multiplier of the right sign; growth raises the optimum."""
    f = (40.0, 300.0, 20.0)
    constraint = chain_constraint(f, 0.3 * sum(f))
    weights = np.array([2.0, 2.0])
    k1, k2 = chain_optimum(*f, 0.3 * sum(f))
    lower = np.log([k1 * 1.5, 0.01])  # k1 may not fall as far as it wants
    solution = solve(weights, [constraint], lower, np.zeros(2))
    assert solution.x[0] == pytest.approx(lower[0], abs=1e-7)
    assert np.exp(solution.x[1]) < k2
    assert kkt_residual(weights, [constraint], lower, np.zeros(2), solution.x) < 1e-5
    wide = solve(weights, [chain_constraint(f, 0.9 * sum(f))], np.log([0.01, 0.01]),
                 np.log([2.0, 2.0]))
    assert wide.x.max() > 0  # the cheap group grows past its size
    assert kkt_residual(weights, [chain_constraint(f, 0.9 * sum(f))], np.log([0.01, 0.01]),
                        np.log([2.0, 2.0]), wide.x) < 1e-5


def matmul_chain(dims: tuple[int, ...]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        inits.append(numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32),
                                             f"w{i}"))
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [out], name=f"mm{i}"))
        previous = out
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dims[0]])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dims[-1]])],
                      inits)


def test_end_to_end_chain_matches_the_closed_form() -> None:
    dims = (20, 64, 64, 10)
    _, report = optimize(matmul_chain(dims), "couple,group,precrop,prune", target_flops=0.4)
    data = report.to_dict()
    rows = {r["primary"]: r for r in data["precrop"]["groups"]}
    f1, f2, f3 = 2 * dims[0] * dims[1], 2 * dims[1] * dims[2], 2 * dims[2] * dims[3]
    k1, k2 = chain_optimum(f1, f2, f3, 0.4 * (f1 + f2 + f3))
    assert rows["w0:1"]["keep_continuous"] == pytest.approx(k1, rel=1e-4)
    assert rows["w1:1"]["keep_continuous"] == pytest.approx(k2, rel=1e-4)
    assert data["flops"]["after"] <= 0.4 * data["flops"]["before"]
    assert data["precrop"]["solver"]["kkt_residual"] < 1e-5


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_cost_posynomial_equals_the_cost_model(name: str) -> None:
    model = load_model(DIGITS / f"{name}.onnx")
    groups = [g for g in groups_of(model, PipelineContext().attach(model)) if g.prunable]
    units = np.array([g.units for g in groups])
    rng = np.random.default_rng(1)
    with temporary_shapes(model):
        costs = CostModel(model, groups)
        polynomials = cost_polynomials(costs.evaluate, units.tolist())
        for _ in range(3):
            kept = rng.integers(1, 2 * units + 1)  # growth too
            exact = costs.cost(units - kept)
            for metric in ("params", "flops"):
                posynomial = polynomials[metric].posynomial(len(groups))
                assert posynomial.value(np.log(kept / units)) == pytest.approx(
                    getattr(exact, metric), rel=1e-12)


def objective_of(model: ir.Model, context: PipelineContext, selection: dict) -> float:
    groups = [g for g in groups_of(model, context) if g.prunable]
    weights, _ = layer_weights(groups)
    kept = np.array([(g.units - len(selection.get(g.id, ()))) / g.units for g in groups])
    return float(weights @ np.log(kept))


@pytest.mark.parametrize(("name", "metric"), [("resnet", "flops"), ("mobilenetv2", "flops"),
                                              ("vit", "flops"), ("resnet", "params")])
def test_budget_met_and_objective_beats_uniform(name: str, metric: str) -> None:
    targets = {f"target_{metric}": 0.5}
    model, report = optimize(DIGITS / f"{name}.onnx", "couple,group,precrop,prune", **targets)
    data = report.to_dict()
    assert data[metric]["after"] <= 0.5 * data[metric]["before"]
    assert count_cost(model).flops == data["flops"]["after"]
    precrop = data["precrop"]
    assert precrop["budgets"]["reached"] and data["prune"]["target"]["reached"]
    assert precrop["budgets"][metric]["achieved"] > 0.49  # the slack is spent
    objective = precrop["objective"]
    assert objective["continuous"] > objective["uniform"] + 1.0
    assert objective["rounded"] <= objective["continuous"] + 1e-9
    assert precrop["solver"]["kkt_residual"] < 1e-3
    # against the default planner at the same budget (the same share of every group)
    original = load_model(DIGITS / f"{name}.onnx")
    context = PipelineContext().attach(original)
    setattr(context.targets, f"target_{metric}", 0.5)
    groups = groups_of(original, context)
    with temporary_shapes(original):
        plan = plan_selection(original, groups, context.targets,
                              current_scores(original, context))
    assert objective["rounded"] > objective_of(original, context, plan.selection)


def test_units_that_go_are_the_lowest_scored_by_the_criterion_before() -> None:
    model = load_model(DIGITS / "resnet.onnx")
    context = PipelineContext().attach(model)
    context.targets.target_flops = 0.5
    for pass_ in build_pipeline("couple,group,random,precrop"):
        pass_(model)
    scores, selection = context.analyses.scores, context.analyses.selection
    assert context.analyses.criterion.startswith("random")
    assert selection and context.analyses.growth == {}
    for group_id, units in selection.items():
        ranked = np.argsort(scores[group_id], kind="stable")
        assert set(units.tolist()) == set(ranked[:len(units)].tolist())
    assert context.analyses.plan.target["reached"]


def test_round_to_and_ratio_only_budget() -> None:
    _, report = optimize(DIGITS / "resnet.onnx", "couple,group,precrop,prune",
                         target_flops=0.5, round_to=8)
    data = report.to_dict()
    assert all(r["kept"] % 8 == 0 or r["kept"] == r["units"] for r in data["precrop"]["groups"])
    assert data["flops"]["after"] <= 0.5 * data["flops"]["before"]
    _, report = optimize(DIGITS / "resnet.onnx", "couple,group,precrop,prune", ratio=0.5)
    data = report.to_dict()
    assert data["precrop"]["budgets"]["channels"]["reached"]
    assert data["channels"]["removed"] >= data["channels"]["total"] // 2


def bn_chain() -> onnx.ModelProto:
    """conv(16x16) -> BN -> relu -> conv stride 2 -> BN -> relu -> conv -> BN -> conv.

    Freshly initialised: BatchNorm scale 1, shift 0, mean 0, variance 1, zero biases.
    The early group is costly (full resolution), the later ones cheap, so with the same
    FLOPs PreConfig shrinks the first and widens the others.
    """
    rng = np.random.default_rng(0)
    widths, nodes, inits, previous = [3, 8, 8, 8, 4], [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        inits += [numpy_helper.from_array(rng.standard_normal((b, a, 3, 3)).astype(np.float32),
                                          f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        out = "y" if i == len(widths) - 2 else f"c{i}"
        nodes.append(helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [out], name=f"conv{i}",
                                      pads=[1, 1, 1, 1], strides=[2, 2] if i == 1 else [1, 1]))
        if out == "y":
            break
        for suffix, value in (("scale", 1.0), ("shift", 0.0), ("mean", 0.0), ("var", 1.0)):
            inits.append(numpy_helper.from_array(np.full(b, value, np.float32),
                                                 f"bn{i}_{suffix}"))
        statistics = [f"bn{i}_{s}" for s in ("scale", "shift", "mean", "var")]
        nodes += [helper.make_node("BatchNormalization", [out, *statistics], [f"n{i}"],
                                   name=f"bn{i}"),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}")]
        previous = f"r{i}"
    return make_model(nodes,
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                      inits)


def test_preconfig_grows_and_initialises_like_the_layer() -> None:
    proto = bn_chain()
    before = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    model, report = optimize(proto, "couple,group,precrop<preconfig=true;max-growth=2.0>,prune",
                             target_flops=1.0, verify=2, seed=3)
    data = report.to_dict()
    keeps = {r["primary"]: r["kept"] / r["units"] for r in data["precrop"]["groups"]}
    assert keeps["w0:0"] < 1 and max(keeps.values()) > 1
    assert data["flops"]["after"] <= data["flops"]["before"]
    grown = {r["group"]: r for r in data["prune"]["grown"]}
    assert grown and data["channels"]["added"] == sum(r["channels_added"] for r in grown.values())
    weights = {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}
    rows = {r["primary"]: r for r in data["precrop"]["groups"]}
    checked = 0
    for i in (1, 2):  # conv i's output group grows when its keep ratio is above one
        row = rows[f"w{i}:0"]
        if row["kept"] <= row["units"]:
            continue
        old, new = before[f"w{i}"], weights[f"w{i}"]
        assert new.shape[0] == row["kept"]
        added = new[old.shape[0]:]
        assert np.isin(added, old).all() and np.unique(added).size > 1  # empirical
        for suffix, value in (("scale", 1.0), ("shift", 0.0), ("mean", 0.0), ("var", 1.0)):
            assert weights[f"bn{i}_{suffix}"].shape == (row["kept"],)
            assert (weights[f"bn{i}_{suffix}"] == value).all()  # constant copied
        assert (weights[f"b{i}"] == 0).all()
        assert weights[f"w{i + 1}"].shape[1] == row["kept"]  # the consumer's input too
        group = grown[row["group"]]
        assert group["init"][f"bn{i}_var:0"] == "constant"
        assert group["init"][f"w{i}:0"] == "empirical"
        checked += 1
    assert checked
    # deterministic under a seed
    again, _ = optimize(proto, "couple,group,precrop<preconfig=true;max-growth=2.0>,prune",
                        target_flops=1.0, seed=3)
    for name, value in again.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), weights[name])
    assert data["verify"]["max_abs_err"] is not None  # ran in onnxruntime


def test_preconfig_on_the_digits_resnet_checks_and_runs(tmp_path) -> None:
    model, report = optimize(DIGITS / "resnet.onnx",
                             "couple,group,precrop<preconfig=true>,prune", target_flops=0.5)
    data = report.to_dict()
    kept = [r["kept"] / r["units"] for r in data["precrop"]["groups"]]
    assert max(kept) > 1 > min(kept)
    assert data["flops"]["after"] <= 0.5 * data["flops"]["before"]
    assert data["precrop"]["objective"]["rounded"] > data["precrop"]["objective"]["uniform"]
    from spa_opt import save_model

    save_model(model, tmp_path / "out.onnx")
    saved = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(saved, full_check=True)
    session = session_from_model(model)
    image = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    assert session.run(None, {"image": image})[0].shape == (3, 10)
    by_group = {r["group"]: r for r in data["precrop"]["groups"]}
    for row in data["prune"]["grown"]:
        assert by_group[row["group"]]["kept"] == row["units"] + row["units_added"]
    # the last stage grows through the Reshape before the classifier (a shape entry)
    last = next(r for r in data["prune"]["grown"] if r["group"] == "g11")
    classifier = model.graph.initializers["fc.weight"].const_value
    assert classifier.shape[1] == last["units"] + last["units_added"]


@pytest.mark.parametrize(("argv", "message"), [
    ([], "precrop needs a budget"),
    (["--target-flops", "0.5", "-p", "couple,group,precrop<min-keep=1.5>,prune"], "min-keep"),
    (["--target-flops", "0.5", "-p", "couple,group,precrop<max-growth=0.5>,prune"],
     "max-growth"),
    (["--target-flops", "0.5", "-p", "couple,group,precrop<preconfg=true>,prune"],
     "did you mean 'preconfig'"),
    (["--target-flops", "1.5"], "--target-flops"),
])
def test_bad_option_or_target_exits_2_with_one_line(capsys, tmp_path, argv, message) -> None:
    model = tmp_path / "in.onnx"
    onnx.save(matmul_chain((8, 16, 4)), model)
    if "-p" not in argv:
        argv = [*argv, "-p", "couple,group,precrop,prune"]
    code, _, err = run_cli_in(capsys, tmp_path, [*argv, "in.onnx", "out.onnx"])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()
