"""Tests of the autodiff backend's gradients and the gradient criteria.

taylor, snip, grasp, crop and synflow on the toy conv-relu-conv and the trained digits
ResNet: gradients and Hessian-gradient products against finite differences, the
scores against their formulas, SynFlow's iterative schedule, and the errors a user
sees (no calibration data, no autodiff extra).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from spa_opt.autodiff.gradients import gradient, hessian_gradient, supervised_loss  # noqa: E402
from spa_opt.autodiff.graph import TorchGraph  # noqa: E402
from spa_opt.calibration import Calibration  # noqa: E402
from spa_opt.passes import PipelineContext, Targets, get_pass  # noqa: E402
from tests.conftest import GOLDEN, run_cli_in  # noqa: E402
from tests.test_criteria import conv_relu_conv  # noqa: E402

DIGITS = GOLDEN / "digits"
GRADIENT_CRITERIA = ["taylor", "snip", "grasp", "crop", "synflow"]


def toy_data(seed: int = 0, count: int = 6) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 2, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 2, size=count)
    return [({"x": x[i:i + 3]}, labels[i:i + 3]) for i in range(0, count, 3)], x


def flat(tensors: dict) -> np.ndarray:
    return np.concatenate([t.detach().numpy().ravel() for t in tensors.values()])


def test_gradient_and_hessian_gradient_match_finite_differences():
    model = conv_relu_conv(w1=np.random.default_rng(1).standard_normal((3, 2)))
    graph = TorchGraph(model, dtype=torch.float64)
    data, _ = toy_data()
    g = gradient(graph, data)
    weights = dict(graph.named_initializers())
    direction = {n: torch.randn_like(w) for n, w in weights.items()}

    def loss_at(step: float) -> float:
        with torch.no_grad():
            for n, w in weights.items():
                w.add_(direction[n], alpha=step)
            total = sum(float(supervised_loss(graph, f, lab)) * 3 for f, lab in data) / 6
            for n, w in weights.items():
                w.sub_(direction[n], alpha=step)
        return total

    eps = 1e-5
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = float(sum((g[n] * direction[n]).sum() for n in weights))
    assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-9)

    hg = hessian_gradient(graph, data)
    with torch.no_grad():
        for n, w in weights.items():
            w.add_(g[n], alpha=eps)
    plus = gradient(graph, data)
    with torch.no_grad():
        for n, w in weights.items():
            w.sub_(g[n], alpha=2 * eps)
    minus = gradient(graph, data)
    numeric_hg = (flat(plus) - flat(minus)) / (2 * eps)
    np.testing.assert_allclose(flat(hg), numeric_hg, rtol=1e-4, atol=1e-8)


def run_criterion(model: ir.Model, name: str, calibration: Calibration | None, **options):
    context = PipelineContext(targets=Targets(target_flops=0.5)).attach(model)
    context.calibration = calibration
    result = get_pass(name)(**options)(model)
    assert not result.modified
    return context


@pytest.fixture(scope="module")
def resnet() -> ir.Model:
    return ir.load(DIGITS / "resnet.onnx")


@pytest.fixture(scope="module")
def labelled() -> Calibration:
    test = np.load(DIGITS / "test.npz")
    return Calibration({"image": test["image"][:32]}, "test", test["label"][:32])


def test_snip_scores_are_summed_connection_sensitivities():
    """On the toy model's one group: |w dL/dw| summed over W1's rows and W2's columns."""
    model = conv_relu_conv(w1=np.random.default_rng(2).standard_normal((3, 2)))
    data, x = toy_data()
    labels = np.concatenate([lab for _, lab in data])
    context = run_criterion(model, "snip", Calibration({"x": x}, "toy", labels),
                            batch=3, agg="sum", norm="none")
    graph = TorchGraph(model)
    g = gradient(graph, data)
    w = dict(graph.named_initializers())
    s1 = (w["W1"] * g["W1"]).abs().detach().numpy().reshape(3, -1).sum(1)
    s2 = (w["W2"] * g["W2"]).abs().detach().numpy().reshape(2, 3, -1).sum((0, 2))
    np.testing.assert_allclose(next(iter(context.analyses.scores.values())), s1 + s2,
                               rtol=1e-5)


@pytest.mark.parametrize("name", GRADIENT_CRITERIA)
def test_criteria_score_every_group_of_the_digits_resnet(resnet, labelled, name):
    options = {"synflow": {"iterations": 3}, "grasp": {"samples": 8, "batch": 8},
               "crop": {"samples": 8, "batch": 8}}.get(name, {"samples": 32, "batch": 16})
    context = run_criterion(resnet, name, labelled, **options)
    scores = context.analyses.scores
    prunable = [g for g in context.analyses.groups if g.prunable]
    assert set(scores) == {g.id for g in prunable}
    for group in prunable:
        s = scores[group.id]
        assert s.shape == (group.units,) and np.all(np.isfinite(s))
        if name != "grasp":
            assert np.all(s >= 0)
    assert context.report["criterion"]["name"] == name


def test_taylor_uses_labels_when_given_else_predictions(resnet, labelled):
    with_labels = run_criterion(resnet, "taylor", labelled, samples=32).analyses.scores
    unlabelled = Calibration(labelled.feeds, "no labels")
    predicted = run_criterion(resnet, "taylor", unlabelled, samples=32).analyses.scores
    wrong = Calibration(labelled.feeds, "shifted", (labelled.labels + 1) % 10)
    shifted = run_criterion(resnet, "taylor", wrong, samples=32).analyses.scores
    # The trained model predicts the test labels (100% accuracy): same loss, same scores.
    for gid in with_labels:
        np.testing.assert_allclose(with_labels[gid], predicted[gid], rtol=1e-4)
    assert any(not np.allclose(with_labels[g], shifted[g], rtol=1e-2) for g in with_labels)


def test_synflow_prunes_iteratively_without_collapsing_a_layer(resnet):
    one_shot = run_criterion(resnet, "synflow", None, iterations=1)
    iterative = run_criterion(resnet, "synflow", None, iterations=5)
    groups = {g.id: g for g in iterative.analyses.groups}
    changed = 0
    for gid, scores in iterative.analyses.scores.items():
        assert (scores > 0).sum() >= 1, gid  # no group lost every unit on the way
        changed += not np.allclose(scores / scores.max(), one_shot.analyses.scores[gid]
                                   / one_shot.analyses.scores[gid].max())
        assert groups[gid].units == scores.size
    assert changed  # the schedule re-scored after masking
    zeroed = sum(int((s == 0).sum()) for s in iterative.analyses.scores.values())
    assert zeroed > 0  # units masked along the schedule score zero, so prune takes them first


def test_cli_prunes_with_a_gradient_criterion_and_labelled_npz(capsys, tmp_path):
    test = np.load(DIGITS / "test.npz")
    np.savez(tmp_path / "calib.npz", image=test["image"][:32], label=test["label"][:32])
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", "couple,group,taylor<samples=32>,prune", "--target-flops", "0.5",
        "--calib", "calib.npz", "--report", "r.json", str(DIGITS / "resnet.onnx"), "out.onnx"])
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["flops"]["after"] <= 0.5 * report["flops"]["before"]
    assert report["criterion"]["name"] == "taylor"


def test_cli_needs_calibration_for_data_criteria(capsys, tmp_path):
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", "couple,group,snip,prune", "--target-flops", "0.5",
        str(DIGITS / "resnet.onnx"), "out.onnx"])
    assert code == 2 and "needs calibration inputs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_cli_without_the_extra_exits_2_naming_it(tmp_path: Path):
    code = ("import sys; sys.modules['torch'] = None; from spa_opt.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", code, "-p", "couple,group,synflow,prune", "--target-flops",
         "0.5", str(DIGITS / "resnet.onnx"), str(tmp_path / "out.onnx")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "spa-opt[autodiff]" in lines[0], result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_save_calib_keeps_synthesized_inputs(capsys, tmp_path):
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", "couple,group,synthesize<samples=4;steps=2>,snip<samples=4>,prune",
        "--target-flops", "0.5", "--save-calib", "syn.npz",
        str(DIGITS / "resnet_bn.onnx"), "out.onnx"])
    assert code == 0, err
    from spa_opt.calibration import load_calibration

    saved = load_calibration(tmp_path / "syn.npz", ir.load(DIGITS / "resnet_bn.onnx"))
    assert saved.feeds["image"].shape == (4, 1, 32, 32) and saved.labels.shape == (4,)
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", "couple,group,l1,prune", "--target-flops", "0.5", "--save-calib", "x.npz",
        str(DIGITS / "resnet.onnx"), "none.onnx"])
    assert code == 2 and "--save-calib" in err and not (tmp_path / "none.onnx").exists()
