"""The onnxruntime step on a model over 2 GB: in memory, no temporary copy of the weights."""

from __future__ import annotations

import os

import numpy as np
import pytest

import spa_opt

pytestmark = pytest.mark.slow


def test_session_over_two_gigabytes_writes_no_copy(big_model, tmp_path, monkeypatch):
    path, weight_bytes = big_model
    assert weight_bytes > 2**31
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(path.parent)), set(os.listdir(tmp_path))
    model, report = spa_opt.optimize(path, "dce")
    session = spa_opt.session_from_model(model)
    y = session.run(None, {"x": np.ones((1, 16384), np.float32)})[0]
    assert y.shape == (1, 12288)
    assert not y.any()
    assert (set(os.listdir(path.parent)), set(os.listdir(tmp_path))) == before
    assert report.cost_before.params == weight_bytes // 4
