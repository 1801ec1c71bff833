"""The synthesize pass: calibration inputs from the model alone.

- BatchNorm matching brings the batch statistics of every BN input closer to the running
  statistics (resnet_bn, the digits export that kept its BatchNorm nodes);
- inversion makes the model predict the target classes (the BN-folded digits ResNet);
- the context's calibration has the model's input names, dtype and shape, and labels;
  a seed reproduces it;
- ``--save-calib`` writes what obspa used, loadable by ``load_calibration``;
- errors are one line with exit code 2: integer inputs, bad options, a run its first
  steps say would take longer than ``max-seconds``, the missing extra
  (simulated in a subprocess by an import hook that refuses torch; ``sys.modules["torch"]
  = None`` would break scipy, which looks torch up there), where the data-free obspa
  default falls back to noise without importing torch;
- the data-free obspa default gives synthesis a time limit and falls back to noise past
  it, saying why; ``hessian=synth`` asked for explicitly has none.

Few samples and steps throughout: these check the mechanics, bench/synthesize.py the
quality.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa_opt.calibration import load_calibration
from spa_opt.ir import load_model
from spa_opt.ort import session_from_model
from spa_opt.passes import PipelineContext, Targets, get_pass
from tests.conftest import GOLDEN, ROOT, make_model, run_cli_in

torch = pytest.importorskip("torch")

DIGITS = GOLDEN / "digits"
FAST_OBSPA = "samples=8;positions=32"


def synthesized(name: str, seed: int = 0, **options):
    model = load_model(DIGITS / f"{name}.onnx")
    context = PipelineContext(targets=Targets(seed=seed)).attach(model)
    get_pass("synthesize")(jobs=1, **options)(model)
    return model, context


def bn_gap(model: ir.Model, image: np.ndarray) -> float:
    """Sum over BatchNorm nodes of the distance of batch statistics from running ones."""
    from spa_opt.autodiff.graph import TorchGraph

    graph = TorchGraph(model).eval()
    nodes = [n for n in model.graph if n.op_type == "BatchNormalization"]
    with torch.no_grad():
        found = graph.run({"image": image}, capture=[n.inputs[0].name for n in nodes])
    total = 0.0
    for node in nodes:
        x = found[node.inputs[0].name]
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        total += float(torch.linalg.vector_norm(mean - graph.initializer(node.inputs[3].name)))
        total += float(torch.linalg.vector_norm(var - graph.initializer(node.inputs[4].name)))
    return total


def test_bn_matching_brings_batch_statistics_to_the_running_ones() -> None:
    before, _ = synthesized("resnet_bn", samples=12, steps=0)
    model, context = synthesized("resnet_bn", samples=12, steps=20, lr=0.1)
    start, end = (bn_gap(model, c.calibration.feeds["image"])
                  for c in (PipelineContext.of(before), context))
    assert end < 0.6 * start, (start, end)
    facts = context.report["synthesize"]
    assert facts["method"] == "bn" and facts["steps"] == 20 and facts["loss"]["bn"] > 0
    assert context.calibration.source == "synthesized:bn (12 samples, 20 steps)"


def test_inversion_makes_the_model_predict_the_targets() -> None:
    _, context = synthesized("resnet", samples=12, steps=25, lr=0.1, tv=1.0)
    calibration = context.calibration
    assert context.report["synthesize"]["method"] == "inversion"
    np.testing.assert_array_equal(calibration.labels, np.arange(12) % 10)
    session = session_from_model(load_model(DIGITS / "resnet.onnx"))
    predicted = session.run(None, calibration.feeds)[0].argmax(axis=1)
    assert (predicted == calibration.labels).mean() >= 0.8
    assert context.report["synthesize"]["target_hit"] >= 0.8


def test_calibration_has_the_inputs_shape_and_dtype_and_a_seed_reproduces_it() -> None:
    _, context = synthesized("mobilenetv2", samples=6, steps=3, batch=4, resolution=2,
                             low=-1.0, high=2.0)
    calibration = context.calibration
    assert list(calibration.feeds) == ["image"]
    image = calibration.feeds["image"]
    assert image.shape == (6, 1, 32, 32) and image.dtype == np.float32
    assert image.min() >= -1.0 and image.max() <= 2.0
    assert calibration.labels.dtype == np.int64 and calibration.labels.shape == (6,)
    again = synthesized("mobilenetv2", samples=6, steps=3, batch=4, resolution=2,
                        low=-1.0, high=2.0)[1].calibration.feeds["image"]
    np.testing.assert_array_equal(image, again)
    other = synthesized("mobilenetv2", seed=1, samples=6, steps=3)[1].calibration
    assert not np.array_equal(image, other.feeds["image"])


@pytest.mark.slow  # 28 s: CI's slow step
def test_save_calib_writes_what_obspa_used(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", f"synthesize<samples=8;steps=2>,couple,group,obspa<{FAST_OBSPA}>,prune",
        "--target-flops", "0.5", "--save-calib", "syn.npz", "--report", "r.json",
        str(DIGITS / "resnet.onnx"), "out.onnx"])
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["obspa"]["hessian"]["mode"] == "data"
    assert report["obspa"]["hessian"]["source"].startswith("synthesized:inversion (8 samples")
    assert report["synthesize"]["samples"] == 8 and report["synthesize"]["seconds"] > 0
    saved = load_calibration(tmp_path / "syn.npz", ir.load(DIGITS / "resnet.onnx"))
    assert saved.feeds["image"].shape == (8, 1, 32, 32)
    np.testing.assert_array_equal(saved.labels, np.arange(8) % 10)


def token_model(path: Path) -> None:
    """ids (N, 4) int64 -> Gather from a (10, 8) table -> Flatten -> MatMul -> (N, 3)."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "table")
    weight = numpy_helper.from_array(rng.standard_normal((32, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Flatten", ["e"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w"], ["y"], name="head")]
    proto = make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64,
                                                             ["n", 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                       [table, weight])
    onnx.save(proto, path)


@pytest.mark.parametrize(("pipeline", "message"), [
    ("synthesize", "integer ids"),
    ("synthesize<samples=0>", "samples"),
    ("synthesize<method=bn>", "no BatchNormalization"),
    ("synthesize<max-seconds=-1>", "max-seconds >= 0"),
    # the first steps' pace says 100 steps take longer than a microsecond
    ("synthesize<max-seconds=0.000001>", "over max-seconds=1e-06"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path: Path, pipeline, message) -> None:
    source = tmp_path / "tokens.onnx" if message == "integer ids" else DIGITS / "resnet.onnx"
    if message == "integer ids":
        token_model(source)
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", pipeline, str(source), "out.onnx"])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.onnx").exists()


BLOCK_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):  # as if the extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoTorch())
from spa_opt.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(code)
"""


def test_without_the_extra_synthesize_exits_2_and_obspa_falls_back_to_noise(tmp_path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=120, check=False)

    result = cli("-p", "synthesize", str(DIGITS / "resnet.onnx"), str(tmp_path / "a.onnx"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "synthesize" in lines[0] and "spa-opt[autodiff]" in lines[0]
    assert not (tmp_path / "a.onnx").exists()
    result = cli("-p", f"couple,group,obspa<{FAST_OBSPA}>,prune", "--target-flops", "0.5",
                 "--report", str(tmp_path / "r.json"), str(DIGITS / "resnet.onnx"),
                 str(tmp_path / "b.onnx"))
    assert result.returncode == 0, result.stderr
    hessian = json.loads((tmp_path / "r.json").read_text())["obspa"]["hessian"]
    assert hessian["mode"] == "noise"


def test_the_data_free_default_falls_back_to_noise_when_synthesis_would_be_too_slow(
        capsys, tmp_path: Path, monkeypatch) -> None:
    import spa_opt.passes.obspa_graph.sources as sources

    monkeypatch.setattr(sources, "DEFAULT_SYNTH_SECONDS", 1e-6)
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", f"couple,group,obspa<{FAST_OBSPA}>,prune", "--target-flops", "0.5",
        "--report", "r.json", str(DIGITS / "resnet.onnx"), "out.onnx"])
    assert code == 0, err
    hessian = json.loads((tmp_path / "r.json").read_text())["obspa"]["hessian"]
    assert hessian["mode"] == "noise"
    assert "noise used" in hessian["fallback"] and "max-seconds" in hessian["fallback"]
    # asked for by name, synthesis runs whatever the default's limit
    code, _, err = run_cli_in(capsys, tmp_path, [
        "-p", f"couple,group,obspa<hessian=synth;{FAST_OBSPA}>,prune", "--target-flops",
        "0.5", "--report", "s.json", str(DIGITS / "resnet.onnx"), "out2.onnx"])
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())["obspa"]["hessian"]["mode"] == "synth"
