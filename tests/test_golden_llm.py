"""The committed trained byte-level Llama (golden_models/llm): it loads, its dense held-out
perplexity in onnxruntime is the README's, and l1 pruning gives a valid, usable model."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from spa_opt.api import optimize
from tests.conftest import GOLDEN

LLM = GOLDEN / "llm"
MODEL = LLM / "llama_bytes.onnx"


def perplexity(model: ir.Model | bytes, ids: np.ndarray) -> float:
    """exp(mean next-byte NLL) over every window position, in onnxruntime (one thread)."""
    source = ir.to_proto(model).SerializeToString() if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input_ids": ids[i:i + 64]})[0]
                             for i in range(0, len(ids), 64)]).astype(np.float64)
    logits = logits[:, :-1] - logits[:, :-1].max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(np.exp(-np.take_along_axis(logp, ids[:, 1:, None], axis=-1).mean()))


@pytest.fixture(scope="module")
def heldout() -> np.ndarray:
    return np.load(LLM / "heldout.npz")["input_ids"]


def readme_perplexity() -> float:
    found = re.search(r"\| onnxruntime \| ([0-9.]+) \|", (LLM / "README.md").read_text())
    assert found, "the README records the dense onnxruntime perplexity"
    return float(found.group(1))


def test_the_model_and_data_have_the_documented_shapes(heldout: np.ndarray) -> None:
    proto = onnx.load(MODEL)
    onnx.checker.check_model(proto, full_check=True)
    calib = np.load(LLM / "calib.npz")["input_ids"]
    assert heldout.shape == (256, 128) and calib.shape == (128, 128)
    assert heldout.dtype == calib.dtype == np.int64 and heldout.max() < 256
    assert [i.name for i in proto.graph.input] == ["input_ids"]
    assert [o.name for o in proto.graph.output] == ["logits"]


def test_dense_heldout_perplexity_is_the_readmes(heldout: np.ndarray) -> None:
    measured = perplexity(MODEL.read_bytes(), heldout)
    assert measured == pytest.approx(readme_perplexity(), rel=1e-3)
    assert measured < 8  # trained: a byte-level model that learnt nothing scores ~ 256


def test_l1_at_060_params_is_valid_with_the_same_io_and_finite_perplexity(
        heldout: np.ndarray) -> None:
    pruned, report = optimize(MODEL, "couple,group,l1,prune", target_params=0.6)
    data = report.to_dict()
    assert data["params"]["after"] <= 0.6 * data["params"]["before"]
    proto = ir.to_proto(pruned)
    onnx.checker.check_model(proto, full_check=True)
    original = onnx.load(MODEL)
    assert [(i.name, str(i.type)) for i in proto.graph.input] == \
           [(i.name, str(i.type)) for i in original.graph.input]
    assert [(o.name, str(o.type)) for o in proto.graph.output] == \
           [(o.name, str(o.type)) for o in original.graph.output]
    value = perplexity(pruned, heldout[:32])
    assert np.isfinite(value) and value > 1


def test_obspa_keeps_one_hessian_per_input_and_orders_q_k_v_as_one(monkeypatch) -> None:
    """q, k and v read one normed input (gate and up another): one Hessian each, stored
    once, and one stacked consumer in the residual stream's ordering (which scores as the
    layers apart would: tests/test_obs_linalg.py)."""
    import spa_opt.passes.obspa as obspa_pass

    seen: list[list[str]] = []
    solve = obspa_pass.solve_order

    def spy(task: Any) -> Any:
        seen.append([c.name for c in task.consumers])
        return solve(task)

    monkeypatch.setattr(obspa_pass, "solve_order", spy)
    pipeline = "couple,group,obspa<propagate=original;samples=8>,prune"
    _, report = optimize(MODEL, pipeline, target_params=0.8, calibration=LLM / "calib.npz")
    stats = next(p for p in report.to_dict()["passes"] if p["name"] == "obspa")["stats"]
    blocks = 4
    # per block q/k/v, o_proj, gate/up, down; and lm_head
    assert stats["hessians"] == 4 * blocks + 1 < stats["layers"] == 7 * blocks + 1
    residual = max(seen, key=len)
    assert len(residual) == 2 * blocks + 1  # q+k+v and gate+up per block, lm_head
    assert sum(name.count("+") for name in residual) == 3 * blocks
