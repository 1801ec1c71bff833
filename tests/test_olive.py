"""The Olive pass (``spa_opt.integrations.olive``; the ``olive`` extra, which CI installs).

A real Olive workflow: an ONNX golden model, spa-opt's ``SpaOptPruning`` then Olive's own
``OnnxPeepholeOptimizer``, run by ``olive.workflows.run`` with the package config that
registers the pass. The output model must be pruned (fewer parameters, the targets'
FLOPs), valid (full checker) and run in onnxruntime with the original's IO.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

if os.environ.get("SPA_OPT_CI"):  # .ci/run installs the extra: a missing Olive fails
    import olive  # noqa: F401
else:
    pytest.importorskip("olive")

import onnxruntime as ort

from spa_opt.integrations.olive import PASS_NAME, package_config, run_workflow

GOLDEN = Path(__file__).resolve().parent.parent / "golden_models"


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_package_config_registers_the_pass_beside_olives_own():
    passes = package_config()["passes"]
    assert passes[PASS_NAME]["module_path"] == "spa_opt.integrations.olive.SpaOptPruning"
    assert "OnnxPeepholeOptimizer" in passes


@pytest.mark.slow  # 33 s (Olive's start-up and two passes): CI's slow step runs it
def test_olive_workflow_prunes_then_runs_olives_peephole_optimizer(tmp_path):
    source = GOLDEN / "digits" / "resnet.onnx"
    workflow = {
        "input_model": {"type": "ONNXModel", "model_path": str(source)},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "passes": {
            "prune": {"type": PASS_NAME, "pipeline": "couple,group,obspa,prune",
                      "target_flops": 0.5,
                      "calibration": str(GOLDEN / "digits" / "calib.npz")},
            "peephole": {"type": "OnnxPeepholeOptimizer"},
        },
        "host": "local_system", "target": "local_system",
        "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out"),
        "log_severity_level": 3,
    }
    run_workflow(workflow)
    outputs = sorted((tmp_path / "out").rglob("*.onnx"))
    assert outputs, f"no model in {list((tmp_path / 'out').rglob('*'))}"
    pruned = onnx.load(str(outputs[0]))
    onnx.checker.check_model(pruned, full_check=True)
    original = onnx.load(str(source))
    assert _params(pruned) < 0.7 * _params(original)
    reports = list((tmp_path / "cache").rglob("spa_opt_report.json"))
    assert reports and json.loads(reports[0].read_text())["prune"]["target"]["reached"]
    test = np.load(GOLDEN / "digits" / "test.npz")
    session = ort.InferenceSession(pruned.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": test["image"]})[0]
    assert logits.shape == (len(test["label"]), 10)
    assert (logits.argmax(1) == test["label"]).mean() > 0.9
