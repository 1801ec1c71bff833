"""Cross-group ranking of the criteria (``norm=share``): groups of different kinds compare.

The graph has two groups: a 4-channel "stream" that three layers read (as a residual
stream is read by every layer) and an 8-channel hidden layer that feeds one output (an
MLP). Per-group ``norm=mean`` gives both groups a mean score of 1, so the global scope
removes the stream's weakest channel first, though it damages three outputs; member
shares summed (``norm=share;agg=sum``) rank the hidden channel first, which costs less.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from spa_opt.api import optimize
from spa_opt.passes import PipelineContext, Targets, get_pass
from spa_opt.passes.criteria.base import member_share
from tests.rule_graphs import build, f32, node, vi

STREAM = np.array([0.9, 1.0, 1.0, 1.1])
"""Per-channel magnitudes of the stream: one slightly weak channel."""
HIDDEN = np.array([0.95, 0.97, 0.99, 1.0, 1.0, 1.01, 1.03, 1.05])
"""Per-channel magnitudes of the hidden layer: all close to each other."""


def stream_and_mlp() -> ir.Model:
    """``x -> W0 -> s`` read by ``C1, C2, C3``; ``x -> U -> Relu -> D``: four outputs."""
    rng = np.random.default_rng(0)

    def rows(scale: np.ndarray, width: int) -> np.ndarray:
        signs = rng.choice([-1.0, 1.0], size=(scale.size, width))
        return signs * scale[:, None]

    inits = [f32("W0", rows(STREAM, 2).T), f32("U", rows(HIDDEN, 2).T),
             f32("D", rows(HIDDEN, 2))]
    inits += [f32(f"C{i}", rows(STREAM, 2)) for i in (1, 2, 3)]
    nodes = [node("MatMul", ["x", "W0"], "s"), node("MatMul", ["x", "U"], "u"),
             node("Relu", ["u"], "a"), node("MatMul", ["a", "D"], "z")]
    nodes += [node("MatMul", ["s", f"C{i}"], f"y{i}") for i in (1, 2, 3)]
    outputs = [vi(name, 1, 2) for name in ("y1", "y2", "y3", "z")]
    return build(nodes, [vi("x", 1, 2)], outputs, inits)


def group_scores(model: ir.Model, **options: str) -> dict[int, np.ndarray]:
    """l1's scores keyed by group width (4: the stream, 8: the hidden layer)."""
    context = PipelineContext(targets=Targets()).attach(model)
    get_pass("l1")(**options)(model)
    return {scores.size: scores for scores in context.analyses.scores.values()}


def output_error(pipeline: str) -> tuple[float, dict[str, int]]:
    """Relative squared output error of one channel removed globally; widths left."""
    original = stream_and_mlp()
    pruned, _ = optimize(stream_and_mlp(), pipeline, ratio=1 / 12, scope="global")
    x = np.random.default_rng(1).standard_normal((1, 2)).astype(np.float32)

    def run(model: ir.Model) -> list[np.ndarray]:
        proto = ir.to_proto(model).SerializeToString()
        return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(
            None, {"x": x})

    before, after = run(original), run(pruned)
    error = sum(float(((a - b) ** 2).sum()) for a, b in zip(after, before, strict=True))
    energy = sum(float((b ** 2).sum()) for b in before)
    widths = {name: pruned.graph.initializers[name].const_value.shape[1] for name in ("W0", "U")}
    return error / energy, widths


def test_member_share_divides_by_the_member_total() -> None:
    assert np.allclose(member_share(np.array([1.0, 3.0])), [0.25, 0.75])
    assert np.array_equal(member_share(np.zeros(3)), np.zeros(3))


def test_mean_norm_puts_the_weak_stream_channel_below_every_hidden_channel() -> None:
    scores = group_scores(stream_and_mlp())
    assert scores[4].min() < scores[8].min()  # the old ranking: the stream goes first


def test_share_sum_ranks_every_hidden_channel_below_every_stream_channel() -> None:
    scores = group_scores(stream_and_mlp(), norm="share", agg="sum")
    # stream: 4 members (W0 out, C1..C3 in) of 4 channels; hidden: 2 members of 8
    assert np.isclose(scores[4].sum(), 4.0) and np.isclose(scores[8].sum(), 2.0)
    assert scores[8].max() < scores[4].min()


@pytest.mark.parametrize(("pipeline", "stream_width"), [
    ("couple,group,l1,prune", 3),
    ("couple,group,l1<norm=share;agg=sum>,prune", 4),
])
def test_global_removal_follows_the_ranking(pipeline: str, stream_width: int) -> None:
    _, widths = output_error(pipeline)
    assert widths == {"W0": stream_width, "U": 11 - stream_width}


def test_the_share_ranking_removes_the_cheaper_channel() -> None:
    old, _ = output_error("couple,group,l1,prune")
    new, _ = output_error("couple,group,l1<norm=share;agg=sum>,prune")
    assert new < 0.5 * old
