"""prune at its edges: zero and full ratios, pins, --ignore, rounding, targets, scope, dead.

Each test states one promise of ``prune`` (and ``dead``) as a user would check it on
the saved model: its bytes, its weight shapes, its outputs in onnxruntime, its cost.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import spa_opt
from spa_opt.errors import VerificationError
from spa_opt.ir.cost import count_cost
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.passes import PipelineContext
from spa_opt.passes.pruning.costmodel import CostModel
from tests.conftest import GOLDEN, make_model, run_cli_in
from tests.rule_graphs import f32, i64, node, vi, w

RESNET = GOLDEN / "resnet_tiny.onnx"
TORCH = GOLDEN / "torch"
PRUNE = "couple,group,l1,prune"
X = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)


def run(model, feed: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Outputs in onnxruntime of a path, a proto or an ir.Model (random feed by default)."""
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    if feed is None:
        rng = np.random.default_rng(0)
        feed = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
                .astype(np.float32) for i in session.get_inputs()}
    return session.run(None, feed)


def saved(model: ir.Model, folder: Path, name: str = "out.onnx") -> onnx.ModelProto:
    spa_opt.save_model(model, folder / name)
    proto = onnx.load(folder / name)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def conv_relu_conv(rows: list[int] = ()):
    """``x -> Conv(W1, B1) -> Relu -> Conv(W2) -> y`` with ``rows`` of W1 and B1 zero."""
    w1, b1 = numpy_helper.to_array(w("W1", 8, 3, 1, 1)).copy(), np.linspace(0.1, 0.8, 8)
    w1[list(rows)], b1[list(rows)] = 0, 0
    nodes = [node("Conv", ["x", "W1", "B1"], "h"), node("Relu", ["h"], "r"),
             node("Conv", ["r", "W2"], "y")]
    return make_model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)],
                      [f32("W1", w1), f32("B1", b1), w("W2", 2, 8, 1, 1)])


def dead_prune(proto: onnx.ModelProto, removed: int, feed=None) -> dict:
    """``couple,group,dead,prune`` removes ``removed`` channels and changes no output."""
    feed = feed or {"x": X}
    model, report = spa_opt.optimize(proto, "couple,group,dead,prune", verify=2)
    data = report.to_dict()
    assert data["channels"]["removed"] == removed, data["dead"]
    assert data["verify"]["max_abs_err"] <= 1e-5
    for want, got in zip(run(proto, feed), run(model, feed), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    return data


# --------------------------------------------------------------------------- ratios


@pytest.mark.parametrize("path", [RESNET, TORCH / "vit.dynamo.onnx"], ids=["resnet", "vit"])
def test_ratio_zero_changes_nothing(path: Path, tmp_path: Path) -> None:
    model, report = spa_opt.optimize(path, PRUNE, ratio=0.0)
    before, after = onnx.load(path), saved(model, tmp_path)
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in after.graph.initializer} == {
        t.name: numpy_helper.to_array(t).tobytes() for t in before.graph.initializer}
    assert [n.SerializeToString() for n in after.graph.node] == [
        n.SerializeToString() for n in before.graph.node]
    data = report.to_dict()
    assert data["prune"]["groups"] == [] and data["channels"]["removed"] == 0
    assert data["params"]["after"] == data["params"]["before"]


@pytest.mark.parametrize("path", [RESNET, TORCH / "vit.dynamo.onnx"], ids=["resnet", "vit"])
def test_ratio_one_leaves_one_unit_per_group(path: Path, tmp_path: Path) -> None:
    model, report = spa_opt.optimize(path, PRUNE, ratio=1.0)
    data = report.to_dict()
    pinned = {g["id"]: g["pinned_units"] for g in data["groups"]}
    prunable = {g["id"] for g in data["groups"] if g["prunable"]}
    assert {g["group"] for g in data["prune"]["groups"]} == prunable - {
        s["group"] for s in data["prune"]["skipped"]}
    for group in data["prune"]["groups"]:
        left = group["units"] - group["removed"]
        assert left == max(1, pinned[group["group"]]), group
    after = weights(saved(model, tmp_path))
    if path == RESNET:  # every conv keeps one output channel; the classifier reads one
        assert after["stem.weight"].shape == (1, 3, 3, 3)
        assert after["s1.b0.c2.weight"].shape == (1, 1, 3, 3)
        assert after["fc.weight"].shape == (10, 1)
    assert np.isfinite(run(tmp_path / "out.onnx")[0]).all()


def test_all_groups_pinned_says_so_and_changes_nothing(tmp_path: Path) -> None:
    proto = make_model([node("Conv", ["x", "W"], "y")], [vi("x", 1, 3, 4, 4)],
                       [vi("y", 1, 8, 4, 4)], [w("W", 8, 3, 1, 1)])
    model, report = spa_opt.optimize(proto, PRUNE, ratio=0.5)
    data = report.to_dict()["prune"]
    assert "every group is pinned" in data["message"]
    assert data["groups"] == []
    after = saved(model, tmp_path)
    assert [(n.op_type, n.input, n.output) for n in after.graph.node] == [
        (n.op_type, n.input, n.output) for n in proto.graph.node]
    assert weights(after)["W"].tobytes() == weights(proto)["W"].tobytes()


def test_without_target_or_dead_nothing_is_removed(tmp_path: Path) -> None:
    model, report = spa_opt.optimize(RESNET, "couple,group,prune")
    data = report.to_dict()
    assert data["prune"]["groups"] == [] and data["channels"]["removed"] == 0
    assert data["prune"]["message"].startswith("nothing removed")
    assert weights(saved(model, tmp_path)).keys() == weights(onnx.load(RESNET)).keys()
    assert data["params"]["after"] == data["params"]["before"]


# --------------------------------------------------------------------------- --ignore


def test_ignore_matching_nothing_is_an_input_error(tmp_path: Path, capsys) -> None:
    shutil.copy(RESNET, tmp_path / "in.onnx")
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", PRUNE, "--ratio", "0.5", "--ignore",
                                                 "s9.*", "in.onnx", "out.onnx"])
    assert code == 2
    assert len(err.splitlines()) == 1 and "--ignore 's9.*'" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_ignore_keeps_every_group_touching_the_node_whole(tmp_path: Path) -> None:
    model, report = spa_opt.optimize(RESNET, PRUNE, ratio=0.5, ignore=["s1.b0.c1.*"])
    data = report.to_dict()
    touching = {g["id"] for g in data["groups"] if g["prunable"] and any(
        m["name"] in ("s1.b0.c1.weight", "s1.b0.c1.bn.scale") for m in g["members"])}
    assert len(touching) == 2  # the conv's input channels and its output channels
    skipped = {s["group"]: s["why"] for s in data["prune"]["skipped"]}
    assert skipped.keys() == touching
    assert all("--ignore 's1.b0.c1.*'" in why for why in skipped.values())
    pruned = {g["group"] for g in data["prune"]["groups"]}
    assert pruned and not pruned & touching
    assert pruned | touching == {g["id"] for g in data["groups"] if g["prunable"]}
    assert weights(saved(model, tmp_path))["s1.b0.c1.weight"].shape == (16, 8, 3, 3)


# --------------------------------------------------------------------------- rounding, targets


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv2"])
def test_round_to_keeps_multiples_of_eight(name: str, tmp_path: Path) -> None:
    model, report = spa_opt.optimize(TORCH / f"{name}.dynamo.onnx", PRUNE, target_flops=0.5,
                                     round_to=8)
    data = report.to_dict()
    assert data["prune"]["groups"]
    for group in data["prune"]["groups"]:
        assert (group["units"] - group["removed"]) * group["block"] % 8 == 0, group
    assert data["prune"]["target"]["flops"]["achieved"] <= 0.5
    saved(model, tmp_path)
    assert np.isfinite(run(tmp_path / "out.onnx")[0]).all()


def cost_of(removed: dict[str, int]) -> CostModel:
    """A cost model of resnet_tiny over the groups in ``removed`` (same order)."""
    model, _ = spa_opt.optimize(RESNET, "couple,group")
    groups = {g.id: g for g in PipelineContext.of(model).analyses.groups}
    with temporary_shapes(model):
        return CostModel(model, [groups[gid] for gid in removed])


@pytest.mark.parametrize("metric", ["flops", "params"])
def test_target_is_met_within_one_unit_and_the_report_is_exact(metric: str,
                                                                tmp_path: Path) -> None:
    model, report = spa_opt.optimize(RESNET, PRUNE, **{f"target_{metric}": 0.5})
    data = report.to_dict()
    target = data["prune"]["target"]
    assert target["reached"] and target[metric]["reached"]
    assert target[metric]["achieved"] <= 0.5
    # The expected cost is the real cost of the saved model.
    saved(model, tmp_path)
    real = count_cost(ir.load(tmp_path / "out.onnx"))
    assert getattr(real, metric) == target[metric]["expected"] == data[metric]["after"]
    # Within one unit: giving one unit back (to some group) would miss the target.
    removed = {g["group"]: g["removed"] for g in data["prune"]["groups"]}
    costs = cost_of(removed)
    counts = np.array(list(removed.values()))
    goal = 0.5 * target[metric]["before"]
    assert getattr(costs.cost(counts), metric) == target[metric]["expected"]
    assert any(getattr(costs.cost(counts - np.eye(len(counts), dtype=int)[i]), metric) > goal
               for i in range(len(counts)))


def test_unreachable_target_says_why_and_still_succeeds(tmp_path: Path) -> None:
    model, report = spa_opt.optimize(RESNET, PRUNE, target_flops=0.01)
    target = report.to_dict()["prune"]["target"]
    assert target["reached"] is False and target["flops"]["reached"] is False
    assert target["flops"]["achieved"] > 0.01 and target["why_not"]
    saved(model, tmp_path)
    assert run(tmp_path / "out.onnx")[0].shape == (1, 10)


def test_ratio_caps_what_each_group_loses_under_a_flops_target() -> None:
    _, report = spa_opt.optimize(RESNET, PRUNE, ratio=0.25, target_flops=0.2)
    data = report.to_dict()["prune"]
    assert data["groups"]
    for group in data["groups"]:
        assert group["removed"] <= group["units"] - int(group["units"] * 0.75), group
    assert data["target"]["reached"] is False and "--ratio" in data["target"]["why_not"]


# --------------------------------------------------------------------------- scope, pins


def test_global_scope_prunes_weak_layers_first_local_prunes_each_alike() -> None:
    proto = onnx.load(RESNET)
    for tensor in proto.graph.initializer:
        if tensor.name == "s2.b0.c1.weight":
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 100,
                                                    tensor.name))
    by_scope = {}
    for scope in ("local", "global"):
        _, report = spa_opt.optimize(proto, "couple,group,l1<norm=none>,prune", ratio=0.5,
                                     scope=scope)
        data = report.to_dict()
        by_scope[scope] = {g["group"]: (g["units"], g["removed"]) for g in data["prune"]["groups"]}
        assert data["channels"]["removed"] == data["channels"]["total"] // 2
    strong = {g["id"] for g in data["groups"]
              if any(m["name"] == "s2.b0.c1.weight" for m in g["members"])}
    assert len(strong) == 2
    assert all(removed == units // 2 for units, removed in by_scope["local"].values())
    assert not strong & by_scope["global"].keys()  # the scaled layer's groups stay whole
    assert all(removed > units // 2 for units, removed in by_scope["global"].values())


def test_pinned_units_are_never_removed(tmp_path: Path) -> None:
    """``Gather(h, 2)`` pins channel 2 only; even ratio 1 keeps it, and what it reads."""
    nodes = [node("Conv", ["x", "W1"], "h"), node("Gather", ["h", "idx"], "s", axis=1),
             node("Relu", ["h"], "r"), node("Conv", ["r", "W2"], "c"), node("Add", ["c", "s"], "y")]
    proto = make_model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4), vi("s", 1, 4, 4)],
                       [w("W1", 8, 3, 1, 1), i64("idx", 2), w("W2", 2, 8, 1, 1)])
    model, report = spa_opt.optimize(proto, PRUNE, ratio=1.0)
    [group] = report.to_dict()["prune"]["groups"]
    assert group["units_removed"] == [0, 1, 3, 4, 5, 6, 7]
    after = weights(saved(model, tmp_path))
    assert after["W1"].shape == (1, 3, 1, 1) and after["W2"].shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(after["W1"][0], weights(proto)["W1"][2])
    assert [int(after[n.input[1]]) for n in onnx.load(tmp_path / "out.onnx").graph.node
            if n.op_type == "Gather"] == [0]
    np.testing.assert_allclose(run(tmp_path / "out.onnx", {"x": X})[1],
                               run(proto, {"x": X})[1], atol=1e-6)


# --------------------------------------------------------------------------- dead


def test_dead_removes_exactly_the_zero_channels() -> None:
    data = dead_prune(conv_relu_conv(rows=[2, 5]), removed=2)
    [group] = data["prune"]["groups"]
    assert group["units_removed"] == [2, 5]
    assert data["dead"]["groups"] == [{"group": group["group"], "units": [2, 5], "channels": 2}]


@pytest.mark.parametrize("ratio", [0.125, 0.25])
def test_dead_units_go_first_under_a_ratio(ratio: float) -> None:
    """The dead channels are the first to go, even past what the ratio asks (0.125)."""
    proto = conv_relu_conv(rows=[2, 5])
    model, report = spa_opt.optimize(proto, "couple,group,dead,l1,prune", ratio=ratio)
    assert report.to_dict()["prune"]["groups"][0]["units_removed"] == [2, 5]
    np.testing.assert_allclose(run(model, {"x": X})[0], run(proto, {"x": X})[0], atol=1e-5)


def test_dead_with_no_zero_channels_removes_nothing() -> None:
    data = dead_prune(conv_relu_conv(), removed=0)
    assert data["dead"]["groups"] == [] and data["prune"]["message"].startswith("nothing")
    _, report = spa_opt.optimize(RESNET, "couple,group,dead,prune")
    assert report.to_dict()["channels"]["removed"] == 0


def test_a_zero_gate_makes_nonzero_producer_rows_dead() -> None:
    """Squeeze-excitation style: ``Mul(h, gate)`` with a constant gate zero at 2 channels."""
    gate = np.linspace(0.5, 1.5, 8).astype(np.float32).reshape(1, 8, 1, 1)
    gate[0, [1, 6]] = 0
    nodes = [node("Conv", ["x", "W1"], "h"), node("Mul", ["h", "gate"], "g"),
             node("Conv", ["g", "W2"], "y")]
    proto = make_model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)],
                       [w("W1", 8, 3, 1, 1), f32("gate", gate), w("W2", 2, 8, 1, 1)])
    assert np.abs(weights(proto)["W1"][[1, 6]]).min() > 0
    data = dead_prune(proto, removed=2)
    assert data["prune"]["groups"][0]["units_removed"] == [1, 6]


def test_a_zero_scale_and_shift_batchnorm_channel_is_dead() -> None:
    scale, shift = np.linspace(0.5, 1.5, 8), np.linspace(-0.2, 0.2, 8)
    scale[3] = shift[3] = 0
    nodes = [node("Conv", ["x", "W1"], "h"),
             node("BatchNormalization", ["h", "s", "b", "m", "v"], "n"),
             node("Relu", ["n"], "r"), node("Conv", ["r", "W2"], "y")]
    proto = make_model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)],
                       [w("W1", 8, 3, 1, 1), f32("s", scale), f32("b", shift),
                        f32("m", np.full(8, 0.3)), f32("v", np.full(8, 2.0)),
                        w("W2", 2, 8, 1, 1)])
    data = dead_prune(proto, removed=1)
    assert data["prune"]["groups"][0]["units_removed"] == [3]



def test_a_channel_every_reader_multiplies_by_zero_is_dead() -> None:
    """The backward fact: W2's input columns 1 and 6 are zero, W1's rows are not."""
    w2 = numpy_helper.to_array(w("W2", 2, 8, 1, 1)).copy()
    w2[:, [1, 6]] = 0
    nodes = [node("Conv", ["x", "W1", "B1"], "h"), node("Relu", ["h"], "r"),
             node("Conv", ["r", "W2"], "y")]
    proto = make_model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)],
                       [w("W1", 8, 3, 1, 1), f32("B1", np.linspace(0.1, 0.8, 8)),
                        numpy_helper.from_array(w2, "W2")])
    assert np.abs(weights(proto)["W1"][[1, 6]]).min() > 0
    data = dead_prune(proto, removed=2)
    assert data["prune"]["groups"][0]["units_removed"] == [1, 6]


def test_zero_columns_in_one_reader_only_do_not_make_a_channel_dead() -> None:
    """A second reader with live columns keeps the channel."""
    w2 = numpy_helper.to_array(w("W2", 2, 8, 1, 1)).copy()
    w2[:, [1, 6]] = 0
    nodes = [node("Conv", ["x", "W1"], "h"), node("Relu", ["h"], "r"),
             node("Conv", ["r", "W2"], "y"), node("Conv", ["r", "W3"], "z")]
    proto = make_model(nodes, [vi("x", 1, 3, 4, 4)],
                       [vi("y", 1, 2, 4, 4), vi("z", 1, 2, 4, 4)],
                       [w("W1", 8, 3, 1, 1), numpy_helper.from_array(w2, "W2"),
                        w("W3", 2, 8, 1, 1)])
    dead_prune(proto, removed=0)


@pytest.mark.parametrize("mode, value, removed", [
    ("constant", None, 2), ("constant", 0.0, 2), ("constant", 0.5, 0), ("reflect", None, 2),
    ("edge", None, 2)])
def test_a_zero_channel_crosses_pad_unless_padded_with_a_nonzero_value(mode, value, removed):
    inputs = ["r", "pads"] + (["value"] if value is not None else [])
    nodes = [node("Conv", ["x", "W1", "B1"], "h"), node("Relu", ["h"], "r"),
             node("Pad", inputs, "p", mode=mode), node("Conv", ["p", "W2"], "y")]
    w1, b1 = numpy_helper.to_array(w("W1", 8, 3, 1, 1)).copy(), np.linspace(0.1, 0.8, 8)
    w1[[2, 5]], b1[[2, 5]] = 0, 0
    inits = [f32("W1", w1), f32("B1", b1), w("W2", 2, 8, 1, 1),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")]
    if value is not None:
        inits.append(f32("value", np.array(value)))
    proto = make_model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 6, 6)], inits)
    dead_prune(proto, removed=removed)

@pytest.mark.parametrize("zero_affine", [False, True])
def test_a_zero_channel_before_a_layer_norm_over_channels_stays(zero_affine: bool) -> None:
    """Removing it would change the mean and variance over the others.

    With a zero LayerNorm scale and shift too, the channel is zero everywhere it is read:
    it is reported as blocked rather than dead.
    """
    nodes = [node("MatMul", ["x", "W1"], "h"),
             node("LayerNormalization", ["h", "g", "b"], "n", axis=-1),
             node("MatMul", ["n", "W2"], "y")]
    w1 = numpy_helper.to_array(w("W1", 4, 8)).copy()
    w1[:, 2] = 0
    gamma, beta = np.linspace(0.5, 1.5, 8), np.linspace(-0.5, 0.5, 8)
    if zero_affine:
        gamma[2] = beta[2] = 0
    proto = make_model(nodes, [vi("x", 1, 5, 4)], [vi("y", 1, 5, 3)],
                       [numpy_helper.from_array(w1, "W1"), f32("g", gamma), f32("b", beta),
                        w("W2", 8, 3)])
    feed = {"x": np.random.default_rng(5).standard_normal((1, 5, 4)).astype(np.float32)}
    data = dead_prune(proto, removed=0, feed=feed)
    assert data["dead"]["groups"] == []
    assert len(data["dead"]["blocked"]) == zero_affine
    if zero_affine:
        assert "normalization" in data["dead"]["blocked"][0]["why"]


# --------------------------------------------------------------------------- files


def _refuse(model) -> None:
    raise VerificationError("the model is invalid: refused by the test")


@pytest.mark.parametrize(("extra", "code"), [
    ((), 0), (("--ignore", "nothing.matches"), 2), (("--target-flops", "1.5"), 2),
    (("--target-params", "0.5", "check-fails"), 1),
])
def test_input_is_never_modified_and_a_failure_writes_nothing(extra, code, tmp_path: Path,
                                                              capsys, monkeypatch) -> None:
    if "check-fails" in extra:  # prune's own check of its result fails: nothing is written
        monkeypatch.setattr("spa_opt.passes.prune.check_model", _refuse)
        extra = extra[:-1]
    shutil.copy(RESNET, tmp_path / "in.onnx")
    before = sha(tmp_path / "in.onnx")
    result, _, err = run_cli_in(capsys, tmp_path, ["-p", PRUNE, "--ratio", "0.5", *extra,
                                                   "--report", "r.json", "in.onnx", "out.onnx"])
    assert result == code, err
    assert sha(tmp_path / "in.onnx") == before
    files = sorted(p.name for p in tmp_path.iterdir())
    if code:
        assert files == ["in.onnx"] and len(err.splitlines()) == 1
    else:
        assert files == ["in.onnx", "out.onnx", "r.json"]
        assert json.loads((tmp_path / "r.json").read_text())["channels"]["removed"] == 56
