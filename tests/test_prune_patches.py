"""prune rewrites every constant or attribute that spells out a channel count.

Two checks per patch kind, on small hand-built graphs:

- *lossless*: the channels to go are made dead first (producer rows zeroed), then
  ``couple,group,dead,prune`` removes exactly them and the outputs must not change
  (1e-5): a patch that is shape-valid but points at the wrong channels fails this;
- *ratio*: ``l1`` + ``--ratio 0.5``; the result runs and holds the new counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import psutil
import pytest
from onnx import helper, numpy_helper

import spa_opt
from tests.conftest import make_model
from tests.rule_graphs import f32, i64, node, qwen3_attention, vi, w

INT64_MAX = np.iinfo(np.int64).max
FEED = {"x": np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)}
HEADS_FEED = {"x": np.random.default_rng(2).standard_normal((1, 5, 8)).astype(np.float32)}
CONV_IO = ([vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)])


def run(model: onnx.ModelProto | ir.Model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    return ort.InferenceSession(proto.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feed)


def zeroed(inits: list[onnx.TensorProto], kill: dict[str, tuple[int, list[int]]]
           ) -> list[onnx.TensorProto]:
    """``inits`` with the slices ``kill[name] = (axis, positions)`` set to zero."""
    result = []
    for tensor in inits:
        if tensor.name in kill:
            data = numpy_helper.to_array(tensor).copy()
            np.moveaxis(data, kill[tensor.name][0], 0)[kill[tensor.name][1]] = 0  # a view
            tensor = numpy_helper.from_array(data, tensor.name)
        result.append(tensor)
    return result


def lossless(nodes, inputs, outputs, inits, kill, feed, opset: int = 17, removed: int = 0):
    """Kill ``kill``, prune the dead channels, compare outputs; the pruned model and report."""
    proto = make_model(nodes, inputs, outputs, zeroed(list(inits), kill), opset=opset)
    expected = run(proto, feed)
    model, report = spa_opt.optimize(proto, "couple,group,dead,prune")
    data = report.to_dict()
    assert data["channels"]["removed"] == removed, data["prune"]
    for want, got in zip(expected, run(model, feed), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    return model, data


def ratio_half(nodes, inputs, outputs, inits, feed, opset: int = 17):
    """Prune half by l1; the pruned model runs with the original output shapes."""
    proto = make_model(nodes, inputs, outputs, list(inits), opset=opset)
    expected = run(proto, feed)
    model, report = spa_opt.optimize(proto, "couple,group,l1,prune", ratio=0.5)
    got = run(model, feed)
    assert [g.shape for g in got] == [e.shape for e in expected]
    return model, report.to_dict()


def by_name(model: ir.Model, node_name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == node_name)


def const(model: ir.Model, node_name: str, index: int) -> list[int]:
    """The constant input ``index`` of node ``node_name``, as a list."""
    return by_name(model, node_name).inputs[index].const_value.numpy().tolist()


def attr(model: ir.Model, node_name: str, name: str):
    value = by_name(model, node_name).attributes[name].value
    return list(value) if isinstance(value, (list, tuple)) else value


def chain(middle, out: str, inits=(), consumed: int = 8):
    """``x -> Conv(W1, 8 channels) -> h -> middle -> out -> Conv(W2) -> y``."""
    return ([node("Conv", ["x", "W1"], "h"), *middle, node("Conv", [out, "W2"], "y")], *CONV_IO,
            [w("W1", 8, 3, 1, 1), w("W2", 2, consumed, 1, 1), *inits])


# --------------------------------------------------------------------------- Reshape


def heads_graph(shared: bool = False):
    """``MatMul -> Reshape [1,5,4,3] -> Relu -> Reshape [1,5,12] -> MatMul`` (x2: shared)."""
    nodes, inits, outs = [], [i64("s4", [1, 5, 4, 3]), i64("s3", [1, 5, 12])], []
    for b in ("a", "b") if shared else ("a",):
        nodes += [node("MatMul", ["x", f"Wq{b}"], f"q{b}"),
                  node("Reshape", [f"q{b}", "s4"], f"h{b}"), node("Relu", [f"h{b}"], f"r{b}"),
                  node("Reshape", [f"r{b}", "s3"], f"m{b}"),
                  node("MatMul", [f"m{b}", f"Wo{b}"], f"y{b}")]
        inits += [w(f"Wq{b}", 8, 12), w(f"Wo{b}", 12, 4)]
        outs.append(vi(f"y{b}", 1, 5, 4))
    return nodes, [vi("x", 1, 5, 8)], outs, inits


def test_reshape_constant_heads_entry_shrinks():
    model, _ = lossless(*heads_graph(), {"Wqa": (1, [3, 4, 5])}, HEADS_FEED, removed=3)
    assert const(model, "n_ha", 1) == [1, 5, 3, 3] and const(model, "n_ma", 1) == [1, 5, 9]
    model, data = ratio_half(*heads_graph(), HEADS_FEED)
    assert const(model, "n_ha", 1) == [1, 5, 2, 3] and const(model, "n_ma", 1) == [1, 5, 6]
    assert [(g["units"], g["block"], g["removed"]) for g in data["prune"]["groups"]] == [(4, 3, 2)]


def test_shared_shape_constant_gets_private_copies():
    kill = {"Wqa": (1, [0, 1, 2]), "Wqb": (1, [3, 4, 5, 9, 10, 11])}  # a: head 0, b: 1 and 3
    model, _ = lossless(*heads_graph(shared=True), kill, HEADS_FEED, removed=9)
    assert const(model, "n_ha", 1) == [1, 5, 3, 3] and const(model, "n_ma", 1) == [1, 5, 9]
    assert const(model, "n_hb", 1) == [1, 5, 2, 3] and const(model, "n_mb", 1) == [1, 5, 6]


def torchscript_graph():
    """``q [2,12]`` reshaped to ``[b, 4, 3]`` by ``Concat(Unsqueeze(Gather(Shape(q))), H, D)``."""
    nodes = [
        node("MatMul", ["x", "W1"], "q"), node("Shape", ["q"], "sh"),
        node("Gather", ["sh", "zero"], "b"), node("Unsqueeze", ["b", "ax0"], "b1"),
        node("Concat", ["b1", "H", "D"], "target", axis=0),
        node("Reshape", ["q", "target"], "q3"), node("Relu", ["q3"], "r"),
        node("Concat", ["b1", "minus1"], "merge", axis=0), node("Reshape", ["r", "merge"], "q2"),
        node("MatMul", ["q2", "W2"], "y"),
    ]
    inits = [w("W1", 8, 12), w("W2", 12, 4), i64("zero", 0), i64("ax0", [0]), i64("H", [4]),
             i64("D", [3]), i64("minus1", [-1])]
    return nodes, [vi("x", 2, 8)], [vi("y", 2, 4)], inits


def test_traced_reshape_target_gets_an_add_of_the_delta():
    feed = {"x": np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)}
    model, _ = lossless(*torchscript_graph(), {"W1": (1, [6, 7, 8])}, feed, removed=3)
    adder = by_name(model, "n_q3").inputs[1].producer()
    assert adder is not None and adder.op_type == "Add" and adder.inputs[0].name == "target"
    assert adder.inputs[1].const_value.numpy().tolist() == [0, -1, 0]
    assert model.graph.initializers["H"].const_value.numpy().tolist() == [4]  # untouched
    model, _ = ratio_half(*torchscript_graph(), feed)
    q3 = ir.serde.serialize_model(model)
    q3.graph.output.append(helper.make_tensor_value_info("q3", onnx.TensorProto.FLOAT, None))
    assert run(q3, feed)[1].shape == (2, 2, 3)


def test_gqa_attention_heads_follow_through_reshape_and_expand():
    """A dead kv head takes its query heads along; every reshape and expand entry follows."""
    feed = {"x": np.random.default_rng(6).standard_normal((1, 3, 8)).astype(np.float32)}
    model, _ = lossless(*qwen3_attention(), {"Wv": (1, [2, 3])}, feed, opset=18, removed=4)
    assert const(model, "n_q_4", 1) == [1, 3, 2, 2] and const(model, "n_v_4", 1) == [1, 3, 1, 2]
    assert const(model, "n_k_e", 1) == [1, 1, 2, 3, 2] and const(model, "n_k_r", 1) == [1, 2, 3, 2]
    assert const(model, "n_ctx_m", 1) == [1, 3, 4]


# ------------------------------------------------------------------------- Split, Slice, Gather


def split_graph(split_node, inits=()):
    """``Conv(8) -> Split -> Conv(2) per part -> Sum``."""
    parts = len(split_node.output)
    nodes = [node("Conv", ["x", "W1"], "h"), split_node,
             *[node("Conv", [split_node.output[i], f"W{i + 2}"], f"c{i}") for i in range(parts)],
             node("Sum", [f"c{i}" for i in range(parts)], "y")]
    sizes = {2: [3, 5], 3: [3, 3, 2]}[parts]
    weights = [w("W1", 8, 3, 1, 1), *[w(f"W{i + 2}", 2, s, 1, 1) for i, s in enumerate(sizes)]]
    return nodes, *CONV_IO, [*weights, *inits]


@pytest.mark.parametrize("opset", [13, 18])
def test_split_with_a_constant_split_input(opset):
    graph = split_graph(node("Split", ["h", "sp"], ["a", "b"], axis=1), [i64("sp", [3, 5])])
    model, _ = lossless(*graph, {"W1": (0, [1, 5, 6])}, FEED, opset=opset, removed=3)
    assert const(model, "n_a", 1) == [2, 3]


def test_split_attribute_at_opset_11():
    graph = split_graph(node("Split", ["h"], ["a", "b"], axis=1, split=[3, 5]))
    model, _ = lossless(*graph, {"W1": (0, [0, 3, 4, 7])}, FEED, opset=11, removed=4)
    assert attr(model, "n_a", "split") == [2, 2]
    model, _ = ratio_half(*graph, FEED, opset=11)
    assert attr(model, "n_a", "split") == [1, 2]  # lose 3 - floor(1.5) and 5 - floor(2.5)


def test_split_num_outputs_becomes_explicit_unequal_sizes():
    graph = split_graph(node("Split", ["h"], ["a", "b", "c"], axis=1, num_outputs=3))
    model, _ = lossless(*graph, {"W1": (0, [7])}, FEED, opset=18, removed=1)
    assert "num_outputs" not in by_name(model, "n_a").attributes
    assert const(model, "n_a", 1) == [3, 3, 1]
    model, _ = lossless(*graph, {"W1": (0, [0, 2, 4])}, FEED, opset=18, removed=3)
    assert const(model, "n_a", 1) == [1, 2, 2]


@pytest.mark.parametrize(("start", "end", "consumed", "kill", "bounds"), [
    (-6, INT64_MAX, 6, [0, 3, 6], [1, INT64_MAX]),  # channels 2..7: 0 outside, 3 and 6 inside
    (1, -1, 6, [0, 2, 5], [0, 4]),                   # channels 1..6: 0 outside
    (2, 6, 4, [1, 5, 6], [1, 4]),                    # channels 2..5
])
def test_slice_bounds_move_with_the_removed_channels(start, end, consumed, kill, bounds):
    graph = chain([node("Slice", ["h", "st", "en", "ax"], "s")], "s",
                  [i64("st", [start]), i64("en", [end]), i64("ax", [1])], consumed)
    model, _ = lossless(*graph, {"W1": (0, kill)}, FEED, removed=len(kill))
    assert [const(model, "n_s", 1)[0], const(model, "n_s", 2)[0]] == bounds


def test_gather_indices_are_renumbered_with_negatives_and_duplicates():
    graph = chain([node("Gather", ["h", "idx"], "s", axis=1)], "s",  # -7 is 1; 5 twice
                  [i64("idx", [5, -7, 6, 5, 2])], consumed=5)
    model, _ = lossless(*graph, {"W1": (0, [0, 1, 3])}, FEED, removed=3)
    assert const(model, "n_s", 1) == [2, 3, 2, 0]  # kept 2, 4, 5, 6, 7 -> 0..4
    model, _ = lossless(*graph, {"W1": (0, [2, 6])}, FEED, removed=2)
    assert const(model, "n_s", 1) == [4, 1, 4]  # kept 0, 1, 3, 4, 5, 7


def strided(start: int, end: int, step: int, consumed: int):
    """``chain`` through ``Slice(h, start, end, axis 1, step)``."""
    return chain([node("Slice", ["h", "st", "en", "ax", "stp"], "s")], "s",
                 [i64("st", [start]), i64("en", [end]), i64("ax", [1]), i64("stp", [step])],
                 consumed)


@pytest.mark.parametrize(("bounds", "consumed", "kill", "after"), [
    ((1, 8, 2), 4, [0], (0, 2, 8)),                    # 1, 3, 5, 7 -> 0, 2, 4, 6
    ((1, 8, 2), 4, [1], (2, 2, 8)),                    # a picked one: 3, 5, 7 -> 2, 4, 6
    ((1, 8, 2), 4, [0, 1, 2], (0, 2, 6)),              # 3, 5, 7 -> 0, 2, 4
    ((-1, -9, -3), 3, [0], (6, -3, -(2**63))),         # 7, 4, 1 -> 6, 3, 0
    ((-1, -9, -3), 3, [0, 6], None),                   # 7, 4, 1 -> 5, 3, 0: uneven
    ((1, 8, 2), 4, [0, 2], None),                      # 1, 3, 5, 7 -> 0, 1, 3, 5
])
def test_a_strided_slice_keeps_the_channels_it_picks(bounds, consumed, kill, after):
    """A strided Slice used to skip its groups; it now follows the removal exactly.

    Found by the random architectures of issue 16 (a dead unit that prune skipped).
    Unevenly spaced survivors need a Gather in front; the Slice then takes the axis.
    """
    model, _ = lossless(*strided(*bounds, consumed), {"W1": (0, kill)}, FEED,
                        removed=len(kill))
    gathers = [n for n in model.graph if n.op_type == "Gather"]
    if after is None:
        assert len(gathers) == 1 and const(model, "n_s", 4) == [1]
        return
    assert not gathers
    assert (const(model, "n_s", 1)[0], const(model, "n_s", 4)[0],
            const(model, "n_s", 2)[0]) == after


def test_a_strided_slice_prunes_by_ratio():
    _, data = ratio_half(*strided(1, 8, 2, 4), FEED)
    assert data["prune"]["skipped"] == [] and data["channels"]["removed"] > 0


# ---------------------------------------------------------------------- grouped Conv, GroupNorm


def test_depthwise_conv_group_follows_the_channels():
    graph = chain([node("Conv", ["h", "Wd"], "d", group=8, pads=[1] * 4),
                   node("Relu", ["d"], "r")], "r", [w("Wd", 8, 1, 3, 3)])
    model, _ = lossless(*graph, {"W1": (0, [1, 4, 6]), "Wd": (0, [1, 4, 6])}, FEED, removed=3)
    assert attr(model, "n_d", "group") == 5
    model, _ = ratio_half(*graph, FEED)
    assert attr(model, "n_d", "group") == 4
    assert model.graph.initializers["Wd"].const_value.shape == (4, 1, 3, 3)


def test_grouped_conv_with_two_channels_per_group_loses_a_slot_of_every_group():
    graph = chain([node("Conv", ["h", "Wg"], "g", group=4), node("Relu", ["g"], "r")], "r",
                  [w("Wg", 8, 2, 1, 1)])
    model, _ = lossless(*graph, {"W1": (0, [1, 3, 5, 7])}, FEED, removed=4)
    assert attr(model, "n_g", "group") == 4
    assert model.graph.initializers["Wg"].const_value.shape == (8, 1, 1, 1)
    model, _ = ratio_half(*graph, FEED)
    assert attr(model, "n_g", "group") == 4
    assert model.graph.initializers["Wg"].const_value.shape == (4, 1, 1, 1)


def test_group_normalization_num_groups_follows():
    """Whole groups go, the others normalize as before (opset 21: 18 fails the checker)."""
    rng = np.random.default_rng(4)
    nodes, _, _, inits = graph = chain(
        [node("GroupNormalization", ["h", "gs", "gb"], "n", num_groups=4),
         node("Relu", ["n"], "r")], "r",
        [f32("gs", rng.uniform(0.5, 1.5, 8)), f32("gb", rng.uniform(-1, 1, 8))])
    model, data = ratio_half(*graph, FEED, opset=21)
    assert attr(model, "n_n", "num_groups") == 2
    assert model.graph.initializers["gs"].const_value.shape == (4,)
    [group] = data["prune"]["groups"]
    assert (group["units"], group["block"], group["removed"]) == (4, 2, 2)
    # The original with the removed channels' consumer columns zeroed computes the same.
    gone = [2 * u + k for u in group["units_removed"] for k in (0, 1)]
    reference = make_model(nodes, *CONV_IO, zeroed(inits, {"W2": (1, gone)}), opset=21)
    np.testing.assert_allclose(run(model, FEED)[0], run(reference, FEED)[0], atol=1e-5)


# --------------------------------------------------------------------------- Expand, filled


@pytest.mark.parametrize(("middle", "slot", "entries"), [
    ([node("GlobalAveragePool", ["h"], "g"), node("Expand", ["g", "shape"], "e"),
      node("Mul", ["h", "e"], "m")], 1, [1, 8, 4, 4]),
    ([node("Resize", ["h", "", "", "shape"], "e", mode="nearest"),
      node("MaxPool", ["e"], "m", kernel_shape=[2, 2], strides=[2, 2])], 3, [1, 8, 8, 8]),
], ids=["expand", "resize-sizes"])
def test_expand_and_resize_channel_entry_is_patched(middle, slot, entries):
    graph = chain(middle, "m", [i64("shape", entries)])
    model, _ = lossless(*graph, {"W1": (0, [0, 5, 7])}, FEED, removed=3)
    assert const(model, "n_e", slot) == [1, 5, *entries[2:]]
    model, _ = ratio_half(*graph, FEED)
    assert const(model, "n_e", slot) == [1, 4, *entries[2:]]


def filled(name: str, fill: float) -> onnx.NodeProto:
    value = helper.make_tensor("value", onnx.TensorProto.FLOAT, [1], [fill])
    return node("ConstantOfShape", [f"{name}_shape"], name, value=value)


def test_constant_of_shape_weights_get_their_shape_entry_patched():
    """Model-zoo graphs fill weights with ConstantOfShape; the shape is patched, not sliced."""
    shapes = [i64("W1_shape", [8, 3, 1, 1]), i64("W2_shape", [2, 8, 1, 1])]
    nodes = [filled("W1", 0.5), filled("W2", 0.25), node("Conv", ["x", "W1", "B1"], "h"),
             node("Relu", ["h"], "r"), node("Conv", ["r", "W2"], "y")]
    model, _ = ratio_half(nodes, *CONV_IO, [*shapes, f32("B1", np.linspace(-1, 1, 8))], FEED)
    assert const(model, "n_W1", 0) == [4, 3, 1, 1] and const(model, "n_W2", 0) == [2, 4, 1, 1]
    assert model.graph.initializers["B1"].const_value.shape == (4,)
    # Lossless: a random producer with dead rows, a filled consumer.
    graph = chain([node("Relu", ["h"], "r")], "r")
    graph[0].insert(0, filled("W2", 0.25))
    model, _ = lossless(*graph[:3], [graph[3][0], shapes[1]], {"W1": (0, [1, 4, 6])}, FEED,
                        removed=3)
    assert const(model, "n_W2", 0) == [2, 5, 1, 1]


# ------------------------------------------------------------------------ external data, memory


def test_pruned_model_with_external_data_keeps_external_data(tmp_path: Path):
    """A model that came with external data keeps that layout, as after ``dce``."""
    nodes = [node("MatMul", ["x", "W1"], "h"), node("Relu", ["h"], "r"),
             node("MatMul", ["r", "W2"], "y")]
    proto = make_model(nodes, [vi("x", 1, 16)], [vi("y", 1, 4)], [w("W1", 16, 32), w("W2", 32, 4)])
    onnx.save(proto, tmp_path / "in.onnx", save_as_external_data=True, size_threshold=0,
              location="in.onnx.data")
    model, _ = spa_opt.optimize(tmp_path / "in.onnx", "couple,group,l1,prune", ratio=0.5)
    spa_opt.save_model(model, tmp_path / "pruned.onnx")
    assert (tmp_path / "pruned.onnx.data").exists()


CLI = "import sys; from spa_opt.cli import main; sys.exit(main(sys.argv[1:]))"


def prune_in_child(source: Path, folder: Path, *extra: str) -> tuple[int, str, int]:
    """Prune half in a child: exit code, stderr, and peak anonymous RSS (psutil ``rss -
    shared``; memory-mapped weight pages are file-backed, the kernel drops them at will)."""
    argv = ["-p", "couple,group,l1,prune", "--ratio", "0.5", *extra, str(source), "out.onnx"]
    child = subprocess.Popen([sys.executable, "-c", CLI, *argv], cwd=folder, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            info = process.memory_info()
        except psutil.Error:
            break
        peak = max(peak, info.rss - info.shared)
        time.sleep(0.005)
    return child.returncode, child.communicate(timeout=120)[1], peak


@pytest.fixture(scope="module")
def big_runs(big_model, tmp_path_factory):
    """The sparse 2.4 GB model pruned by the CLI, with the default layout and forced external."""
    source, size = big_model
    base = tmp_path_factory.mktemp("big_pruned")
    if shutil.disk_usage(base).free < 3 * size:
        pytest.skip("needs about 7 GB of free disk space")
    stamps = [p.stat().st_mtime_ns for p in (source, source.parent / "big.data")]
    runs = {}
    for name, extra in (("default", ("--report", "r.json")), ("external", ("--external-data",))):
        (base / name).mkdir()
        runs[name] = (*prune_in_child(source, base / name, *extra), base / name)
    assert [p.stat().st_mtime_ns for p in (source, source.parent / "big.data")] == stamps
    yield runs, size
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_big_model_prunes_through_the_cli(big_runs):
    runs, _ = big_runs
    weights = 4 * (16384 * 6144 + 6144 * 8192 + 8192 * 12288)
    for code, err, _, folder in runs.values():
        assert code == 0, err
        written = sum(p.stat().st_size for p in folder.glob("out.onnx*"))
        assert weights < written < weights + (1 << 20)
    assert (runs["external"][3] / "out.onnx.data").stat().st_size == weights
    report = json.loads((runs["default"][3] / "r.json").read_text())
    shapes = {layer["weight"]: layer["after"] for layer in report["prune"]["layers"]}
    assert shapes == {"w0": [16384, 6144], "w1": [6144, 8192], "w2": [8192, 12288]}


@pytest.mark.slow
def test_big_model_prunes_in_bounded_memory_with_external_data(big_runs):
    runs, size = big_runs
    peak = runs["external"][2]
    assert peak < 1.2 * 2**30 < size, f"peak anonymous RSS {peak / 2**30:.2f} GiB"


@pytest.mark.slow
def test_big_model_prunes_in_bounded_memory(big_runs):
    runs, size = big_runs
    peak = runs["default"][2]
    assert peak < 1.2 * 2**30 < size, f"peak anonymous RSS {peak / 2**30:.2f} GiB"
