"""The dead-channel oracle of issue 14 on a sample: zeroed units are found, outputs kept.

The full run over every golden model is ``python bench/dead_oracle.py`` (minutes);
this samples one confirmed group on each Hugging Face classifier of the dynamo
exporter, the Flax CNN and two torch golden models, in about 10 s on 2 cores. (The
TorchScript classifiers of GPT-2, Llama and Qwen2 lose their output's type in
fold-constants, so every prune of them fails the checker; the bench shows it.) The
oracle itself (kill, confirm in onnxruntime, ``couple,group,dead,prune``) lives in
the bench script, so both run the same check.
"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import dead_oracle

MODELS = dead_oracle.golden_models()
SAMPLE = sorted(k for k in MODELS if k.startswith("hf/") and k.endswith("_cls.dynamo"))
SAMPLE += ["hf/flax_cnn.jax2onnx", "torch/resnet_bottleneck.dynamo", "torch/qwen3.dynamo"]


def test_the_sample_covers_every_hf_classifier() -> None:
    assert len(SAMPLE) == 15 and all(key in MODELS for key in SAMPLE)


@pytest.mark.parametrize("key", SAMPLE)
def test_dead_finds_the_zeroed_units_of_a_confirmed_group(key: str) -> None:
    result = dead_oracle.check_model(key, MODELS[key], first_confirmed=True)
    assert result.error is None, result.error
    confirmed = [case for case in result.cases if case.confirmed]
    assert confirmed, f"{key}: no group confirmed: {[(c.group, c.why) for c in result.cases]}"
    case = confirmed[0]
    where = f"{key} {case.group} ({case.primary}) units {case.units}"
    assert case.error is None, f"{where}: {case.error}"
    assert case.found, f"{where}: dead missed the zeroed units"
    assert case.err is not None and case.err <= dead_oracle.TOLERANCE, f"{where}: err {case.err}"
    assert case.params_drop >= case.zeroed > 0, f"{where}: params -{case.params_drop}"
    assert not dead_oracle.failures([result])
