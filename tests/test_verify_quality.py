"""``--verify`` says what a user reads: the source of its inputs, top-1, KL, perplexity.

- identical runs: top-1 agreement 1, KL 0, perplexity ratio 1 (for decoder logits);
- a changed classifier: agreement and KL computed by hand;
- decoder logits with token ids: the perplexity ratio from next-token log-likelihoods;
- with calibration inputs, obspa on the digits ResNet verifies on the last N, which the
  passes never see (held back), and keeps top-1; with no more inputs than N, on all of
  them (in-sample); without, on random inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from spa_opt.api import optimize
from spa_opt.verify import compare
from tests.conftest import GOLDEN

DIGITS = GOLDEN / "digits"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_identical_runs_agree_fully() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    ids = rng.integers(0, 7, (2, 5))
    result = compare([{"logits": logits}], [{"logits": logits.copy()}], feeds=[{"ids": ids}])
    assert result.agreement == 1.0 and result.kl == pytest.approx(0.0, abs=1e-12)
    assert result.perplexity_ratio == pytest.approx(1.0)


def test_classifier_agreement_and_kl_by_hand() -> None:
    rng = np.random.default_rng(1)
    before = rng.normal(size=(4, 3))
    after = before.copy()
    after[0] = after[0, ::-1] * 3  # its argmax moves
    result = compare([{"y": before}], [{"y": after}])
    p, q = _log_softmax(before), _log_softmax(after)
    kl = float((np.exp(p) * (p - q)).sum(-1).mean())
    agree = float((before.argmax(-1) == after.argmax(-1)).mean())
    assert result.kl == pytest.approx(kl) and result.agreement == pytest.approx(agree)
    assert result.perplexity_ratio is None  # no token ids: not a decoder
    assert result.to_dict()["top1_agreement"] == pytest.approx(agree)


def test_decoder_perplexity_ratio_by_hand() -> None:
    rng = np.random.default_rng(2)
    before = rng.normal(size=(1, 6, 5))
    after = before + rng.normal(size=before.shape)
    ids = rng.integers(0, 5, (1, 6))
    result = compare([{"logits": before}], [{"logits": after}], feeds=[{"input_ids": ids}])

    def nll(x: np.ndarray) -> float:
        return -float(np.take_along_axis(_log_softmax(x)[:, :-1], ids[:, 1:, None], -1).sum())

    assert result.perplexity_ratio == pytest.approx(np.exp((nll(after) - nll(before)) / 6))


def test_obspa_verifies_on_calibration_inputs() -> None:
    _, report = optimize(DIGITS / "resnet.onnx",
                         "couple,group,obspa<samples=32;propagate=original>,prune",
                         target_flops=0.5, calibration=DIGITS / "calib.npz", verify=8)
    assert report.verify.source == "calibration (held back)"
    assert report.verify.inputs == 8
    assert report.verify.agreement >= 0.9 and report.verify.kl < 0.1
    assert "top-1 agreement" in report.verify.summary()
    # obspa drew its 32 from the first 120 of the 128: the last 8 it never saw.
    assert "first 120 of 128; last 8 held back" in report.to_dict()["obspa"]["hessian"][
        "source"]
    _, report = optimize(DIGITS / "resnet.onnx", "couple,group,l1,prune", target_flops=0.5,
                         verify=2)
    assert report.verify.source == "random"


def test_held_back_inputs_are_the_last_and_never_shared() -> None:
    from spa_opt.calibration import Calibration, hold_back

    ids = np.arange(10)[:, None] * np.ones((1, 3))
    calibration = Calibration({"x": ids.astype(np.float32)}, "npz:x", np.arange(10), {})
    kept, held = hold_back(calibration, 4)
    assert kept.samples == 6 and held.samples == 4
    np.testing.assert_array_equal(held.feeds["x"][:, 0], [6, 7, 8, 9])
    np.testing.assert_array_equal(kept.labels, np.arange(6))
    assert not np.shares_memory(kept.feeds["x"], held.feeds["x"])
    assert hold_back(calibration, 10) == (calibration, None)


@pytest.mark.slow  # 29 s: CI's slow step
def test_verify_with_few_inputs_is_in_sample(tmp_path) -> None:
    few = tmp_path / "few.npz"
    data = np.load(DIGITS / "calib.npz")
    np.savez(few, **{k: v[:4] for k, v in data.items()})
    _, report = optimize(DIGITS / "resnet.onnx", "couple,group,obspa,prune",
                         target_flops=0.5, calibration=few, verify=4)
    assert report.verify.source == "calibration (in-sample)"


def test_hidden_states_are_not_taken_for_logits() -> None:
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(1, 4, 8))
    ids = np.array([[3, 90, 2, 5]])  # beyond the last axis: an encoder's hidden states
    result = compare([{"h": hidden}], [{"h": hidden}], feeds=[{"input_ids": ids}])
    assert result.agreement is None and result.perplexity_ratio is None
