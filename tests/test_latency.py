"""The latency model, ``--target-latency`` and ``--round-to auto``.

Most tests run on a synthetic runtime: :class:`FakeTimer` charges every Conv/Gemm a
known cost (FLOPs, times a slowdown when its output channels are not a multiple of
8), so the right answer is computable by hand: the model must predict it, choose the
step that avoids the slowdown, and select the shortest prefix a brute-force search
over the true cost finds. Two tests time a small model in onnxruntime for real.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from rule_graphs import build, node, vi, w

from spa_opt._version import __version__ as spa_opt_version
from spa_opt.cli import main
from spa_opt.errors import InputError, OptionError
from spa_opt.ir.cost import value_dims
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.latency import LatencyCache, LatencySpec, OrtTimer
from spa_opt.latency.layers import TIMED_OPS, Layer, layer_model, layer_of
from spa_opt.latency.model import grid_widths
from spa_opt.passes._infra.context import PipelineContext, Targets
from spa_opt.passes.group import groups_of
from spa_opt.passes.pruning.costmodel import CostModel
from spa_opt.passes.pruning.plan import eligible, plan_selection
from spa_opt.passes.pruning.trial import pruned_copy

GOLDEN = Path(__file__).resolve().parent.parent / "golden_models"


class FakeTimer:
    """A runtime whose cost is known: ``flops * 1e-9`` seconds per layer, times
    ``slowdown`` when a Conv's or Gemm's output width is not a multiple of ``align``;
    a model takes the sum over its layers plus ``fixed`` seconds."""

    def __init__(self, identity: str = "fake 1", slowdown: float = 1.5, align: int = 8,
                 fixed: float = 0.0) -> None:
        self.identity = identity
        self.slowdown, self.align, self.fixed = slowdown, align, fixed
        self.layers_timed = 0

    def cost(self, layer: Layer) -> float:
        weight = layer.inputs[1]
        width = weight.dims[0] if layer.op_type == "Conv" else weight.dims[-1]
        factor = 1.0 if width % self.align == 0 else self.slowdown
        return layer.flops() * 1e-9 * factor

    def time_layer(self, layer: Layer) -> float:
        self.layers_timed += 1
        return self.cost(layer)

    def blocked(self, layer: Layer) -> bool:
        return False

    def time_model(self, model: ir.Model, feed) -> float:
        opset = model.opset_imports.get("", 17)
        total = self.fixed
        with temporary_shapes(model):
            for item in model.graph:
                if item.op_type in TIMED_OPS:
                    layer = layer_of(item, [value_dims(v) for v in item.inputs], opset)
                    total += self.cost(layer)
        return total


def _cnn(width: int = 24) -> ir.Model:
    """x -> Conv(width) -> Relu -> Conv(width) -> Relu -> GAP -> Flatten -> Gemm(10)."""
    nodes = [node("Conv", ["x", "W1", "B1"], "a", pads=[1, 1, 1, 1]),
             node("Relu", ["a"], "ar"),
             node("Conv", ["ar", "W2", "B2"], "b", pads=[1, 1, 1, 1]),
             node("Relu", ["b"], "br"),
             node("GlobalAveragePool", ["br"], "g"),
             node("Flatten", ["g"], "f"),
             node("Gemm", ["f", "W3", "B3"], "y", transB=1)]
    rng = np.random.default_rng(0)
    inits = [w("W1", width, 3, 3, 3), w("W2", width, width, 3, 3), w("W3", 10, width),
             *(onnx.numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), name)
               for name, n in (("B1", width), ("B2", width), ("B3", 10)))]
    return build(nodes, [vi("x", 1, 3, 16, 16)], [vi("y", 1, 10)], inits)


def _spec(tmp_path: Path, timer=None, name: str = "cache") -> LatencySpec:
    return LatencySpec(cache_dir=str(tmp_path / name), timer=timer)


def _plan(model: ir.Model, targets: Targets, spec: LatencySpec, measure: bool = True):
    groups = groups_of(model, PipelineContext.of(model))
    from spa_opt.passes.criteria.base import current_scores

    scores = current_scores(model, PipelineContext.of(model))
    with temporary_shapes(model, symbolic=True):
        return plan_selection(model, groups, targets, scores, latency=spec,
                              measure_latency=measure)


def test_grid_widths_are_aligned_and_end_at_the_extent():
    assert grid_widths(256) == [64, 128, 192, 256]
    assert grid_widths(100) == [32, 48, 80, 96, 100]
    assert grid_widths(24) == [8, 16, 24]
    assert grid_widths(3) == [1, 2, 3]


def test_layer_model_keeps_depthwise_convolutions_depthwise():
    model = build(
        [node("Conv", ["x", "W"], "y", group=16, pads=[1, 1, 1, 1])], [vi("x", 1, 16, 8, 8)],
        [vi("y", 1, 16, 8, 8)], [w("W", 16, 1, 3, 3)])
    conv = next(iter(model.graph))
    layer = layer_of(conv, [[1, 10, 8, 8], [10, 1, 3, 3]], 17)
    assert dict(layer.attributes)["group"] == 10
    built, feed = layer_model(layer)
    import onnxruntime as ort

    session = ort.InferenceSession(ir.to_proto(built).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    assert session.run(None, feed)[0].shape == (1, 10, 8, 8)


def test_prediction_matches_the_synthetic_runtime_at_any_widths(tmp_path):
    """Costs bilinear in the widths are interpolated exactly; misalignment is learnt."""
    timer = FakeTimer()
    model = _cnn(48)
    groups = groups_of(model, PipelineContext.of(model))
    candidates, _ = eligible(model, groups, Targets(ratio=0.5), None)
    from spa_opt.latency import build_latency_model

    with temporary_shapes(model, symbolic=True):
        cost = CostModel(model, [c.group for c in candidates])
        latency = build_latency_model(model, cost, len(candidates), _spec(tmp_path, timer))
    assert latency.before == pytest.approx(timer.time_model(model, {}))
    for removed in ([0, 0], [16, 0], [0, 13], [21, 7], [30, 17]):
        truth = _true_latency(model, groups, candidates, np.array(removed), timer)
        assert latency.predict(np.array(removed)) == pytest.approx(truth, rel=1e-6), removed


def _true_latency(model, groups, candidates, removed, timer) -> float:
    """The fake runtime's latency of the model pruned by ``removed`` units per candidate."""
    selection = {c.group.id: c.order[:k] for c, k in zip(candidates, removed, strict=True)
                 if k}
    pruned = ir.from_proto(ir.to_proto(model))
    context = PipelineContext.of(pruned)
    context.analyses.update(groups=groups_of(pruned, context))
    context.analyses.update(selection={g: np.sort(u) for g, u in selection.items()})
    from spa_opt.passes.prune import PrunePass

    PrunePass()(pruned)
    return timer.time_model(pruned, {})


def test_round_to_auto_finds_the_runtimes_fast_step(tmp_path):
    aligned8 = _plan(_cnn(48), Targets(target_flops=0.5, round_to="auto"),
                     _spec(tmp_path, FakeTimer(slowdown=2.0, align=8)), measure=False)
    assert aligned8.target["latency_model"]["round_steps"] == [8, 8]
    for row in aligned8.target["latency_model"]["groups"]:
        assert row["kept"] % 8 == 0
    no_penalty = _plan(_cnn(48), Targets(target_flops=0.5, round_to="auto"),
                       _spec(tmp_path, FakeTimer(identity="flat", slowdown=1.0)), measure=False)
    assert no_penalty.target["latency_model"]["round_steps"] == [1, 1]


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8])
def test_latency_target_selects_the_shortest_prefix_meeting_it(tmp_path, keep):
    """The planner's answer equals a brute-force search of the true latency over prefixes."""
    timer = FakeTimer(fixed=0.0)
    model = _cnn(24)
    plan = _plan(model, Targets(target_latency=keep), _spec(tmp_path, timer), measure=False)
    groups = groups_of(model, PipelineContext.of(model))
    from spa_opt.passes.criteria.base import current_scores

    scores = current_scores(model, PipelineContext.of(model))
    with temporary_shapes(model, symbolic=True):
        candidates, _ = eligible(model, groups, Targets(target_latency=keep), scores)
    keys = np.concatenate([c.keys for c in candidates])
    owner = np.concatenate([np.full(c.order.size, i) for i, c in enumerate(candidates)])
    position = np.concatenate([np.arange(c.order.size) for c in candidates])
    merged = owner[np.lexsort((position, owner, keys))]
    before = _true_latency(model, groups, candidates, np.zeros(2, int), timer)
    best = None
    for prefix in range(merged.size + 1):
        counts = np.bincount(merged[:prefix], minlength=len(candidates))
        if _true_latency(model, groups, candidates, counts, timer) <= keep * before:
            best = {c.group.id: int(k) for c, k in zip(candidates, counts, strict=True) if k}
            break
    assert {g: len(u) for g, u in plan.selection.items()} == best
    assert plan.target["latency"]["reached"]


class HiddenCostTimer(FakeTimer):
    """A runtime whose whole model costs more than its layers alone: each layer whose
    input width is not a multiple of 4 adds ``break_cost`` seconds, which only the
    whole-model timing shows (as onnxruntime's layout reorders do)."""

    break_cost = 4e-4

    def time_model(self, model: ir.Model, feed) -> float:
        total = super().time_model(model, feed)
        with temporary_shapes(model):
            for item in model.graph:
                if item.op_type == "Conv" and value_dims(item.inputs[0])[1] % 4:
                    total += self.break_cost
        return total


@pytest.mark.parametrize("keep", [0.4, 0.6])
def test_latency_target_is_met_on_the_measured_latency(tmp_path, keep):
    """The prediction misses a cost; timing pruned copies corrects the budget."""
    timer = HiddenCostTimer(slowdown=1.0)
    model = _cnn(24)
    before = timer.time_model(model, {})
    predicted_only = _plan(model, Targets(target_latency=keep), _spec(tmp_path, timer), False)
    plan = _plan(model, Targets(target_latency=keep), _spec(tmp_path, timer))
    entry = plan.target["latency"]
    assert entry["keep"] == keep and len(entry["attempts"]) > 1
    first = entry["attempts"][0]["measured"]
    assert first > keep * 1.05  # the prediction alone misses the target
    missed = timer.time_model(pruned_copy(model, predicted_only.selection, "keep"), {})
    assert missed == pytest.approx(first * before)
    chosen = timer.time_model(pruned_copy(model, plan.selection, "keep"), {})
    assert chosen <= keep * before * 1.05 and entry["reached"], entry


def test_round_to_auto_keeps_the_scheme_that_measures_fastest(tmp_path):
    """Single layers show no slowdown, the whole model pays for widths not a multiple of
    4: the latency model's steps (1) lose to a uniform step measured on pruned copies."""
    timer = HiddenCostTimer(slowdown=1.0)
    plan = _plan(_cnn(48), Targets(target_flops=0.5, round_to="auto"), _spec(tmp_path, timer))
    detail = plan.target["latency_model"]
    schemes = {row["scheme"]: row["measured_kept"] for row in detail["schemes"]}
    assert set(schemes) == {"latency model", "all 8", "all 16"}
    assert schemes["latency model"] > min(schemes.values())
    assert detail["scheme"] == min(schemes, key=schemes.get)
    assert all(row["kept"] % 8 == 0 for row in detail["groups"])


def test_the_cache_answers_a_second_run_and_is_keyed_by_runtime_and_machine(tmp_path):
    targets = Targets(target_flops=0.5, round_to="auto")
    first = FakeTimer(identity="onnxruntime 1.32.0 | CPU | threads 2 | cpu A x2")
    _plan(_cnn(48), targets, _spec(tmp_path, first))
    assert first.layers_timed > 0
    again = FakeTimer(identity=first.identity)
    plan = _plan(_cnn(48), targets, _spec(tmp_path, again))
    assert again.layers_timed == 0 and plan.target["latency_model"]["layers_measured"] == 0
    for identity in ("onnxruntime 1.33.0 | CPU | threads 2 | cpu A x2",
                     "onnxruntime 1.32.0 | CPU | threads 2 | cpu B x2"):
        other = FakeTimer(identity=identity)
        _plan(_cnn(48), targets, _spec(tmp_path, other))
        assert other.layers_timed == first.layers_timed, identity


def test_cache_file_with_another_identity_is_ignored(tmp_path):
    cache = LatencyCache(tmp_path, "runtime A")
    cache.put("layer", 1.0)
    cache.save()
    data = json.loads(cache.path.read_text())
    data["identity"] = "runtime B"
    cache.path.write_text(json.dumps(data))
    assert len(LatencyCache(tmp_path, "runtime A")) == 0
    cache.path.write_text("{not json")
    assert len(LatencyCache(tmp_path, "runtime A")) == 0


def test_ort_timer_identity_names_runtime_provider_threads_and_machine():
    identity = OrtTimer(LatencySpec(threads=1)).identity
    import onnxruntime as ort

    assert ort.__version__ in identity and "CPUExecutionProvider" in identity
    assert "threads 1" in identity


def test_select_refuses_an_unreachable_latency_target(tmp_path):
    model = _cnn(24)
    with pytest.raises(InputError, match=r"--target-latency 0\.001: unreachable"):
        _plan(model, Targets(target_latency=0.001), _spec(tmp_path, FakeTimer(fixed=1e-3)))


def test_fixed_round_to_refuses_auto_for_planners_without_latency():
    with pytest.raises(OptionError, match="auto"):
        Targets(round_to="auto").fixed_round_to()
    with pytest.raises(OptionError, match="round_to"):
        Targets(round_to=0)


# --- onnxruntime, for real ------------------------------------------------------------
def _run_cli(tmp_path: Path, *flags: str) -> tuple[int, Path]:
    out = tmp_path / "out.onnx"
    code = main(["-p", "couple,group,l1,prune", *flags, "--latency-cache",
                 str(tmp_path / "cache"), "--report", str(tmp_path / "r.json"),
                 str(GOLDEN / "resnet_tiny.onnx"), str(out)])
    return code, out


def test_cli_latency_target_times_the_pruned_model(tmp_path, capsys):
    code, out = _run_cli(tmp_path, "--target-latency", "0.7", "--round-to", "auto",
                         "--threads", "1")
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    detail = report["prune"]["target"]["latency_model"]
    assert detail["measured_after"] > 0 and math.isfinite(detail["prediction_error"])
    assert report["prune"]["target"]["latency"]["keep"] == 0.7
    assert "ms measured" in capsys.readouterr().err
    import onnxruntime as ort

    assert ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("flags, message", [
    (("--target-latency", "0"), "above 0"),
    (("--target-latency", "0.0001", "--threads", "1"), "unreachable"),
    (("--target-flops", "0.5", "--threads", "2"), "--threads sets how latency is measured"),
    (("--target-latency", "0.5", "--ep", "NoSuchExecutionProvider"), "--ep"),
])
def test_cli_bad_latency_requests_are_one_line_exit_2(tmp_path, capsys, flags, message):
    code, out = _run_cli(tmp_path, *flags)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert message in err and len(err.splitlines()) == 1, err


def test_output_model_carries_the_run_summary_for_netron(tmp_path):
    out = tmp_path / "out.onnx"
    assert main(["-p", "couple,group,l1,prune", "--target-flops", "0.6",
                 str(GOLDEN / "resnet_tiny.onnx"), str(out)]) == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["spa_opt.pipeline"].startswith("couple")
    assert json.loads(props["spa_opt.targets"]) == {"target_flops": 0.6}
    assert "kept)" in props["spa_opt.flops"] and " -> " in props["spa_opt.params"]
    assert props["spa_opt.version"] == spa_opt_version


def test_cli_round_to_auto_without_a_target_measures_nothing(tmp_path):
    """``--round-to auto`` alone removes only dead units and measures nothing."""
    code, _ = _run_cli(tmp_path, "--round-to", "auto")
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["prune"]["target"] is None
