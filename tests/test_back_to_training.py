"""Back to training: prune an ONNX model, train it as a torch module, write it back.

The documented path (docs/autodiff.md): ``spa-opt`` (here ``spa_opt.api.optimize``) prunes
a trained model; :class:`spa_opt.autodiff.graph.TorchGraph` runs the pruned ONNX graph in
torch with its weights as parameters; a few optimiser steps change them; ``write_back`` and
``save_model`` give an ONNX file of the pruned widths that onnxruntime runs exactly as the
torch module does.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import GOLDEN

from spa_opt.api import optimize
from spa_opt.ir.io import load_model, save_model

torch = pytest.importorskip("torch")

from spa_opt.autodiff.graph import TorchGraph  # noqa: E402

DIGITS = GOLDEN / "digits"
ATOL = 1e-4


def _ort(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0]


def _shapes(path) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}


def test_prune_train_write_back(tmp_path):
    torch.manual_seed(0)
    test = np.load(DIGITS / "test.npz")
    images = test["image"][:8]
    labels = torch.from_numpy(test["label"][:8])

    pruned_path = tmp_path / "pruned.onnx"
    pruned, report = optimize(DIGITS / "resnet.onnx", "couple,group,l1,prune", target_flops=0.5)
    save_model(pruned, pruned_path)
    flops = report.to_dict()["flops"]
    assert flops["after"] <= 0.52 * flops["before"]
    original, widths = _shapes(DIGITS / "resnet.onnx"), _shapes(pruned_path)
    assert any(widths[name] != original[name] for name in widths if name in original)

    model = load_model(pruned_path)
    graph = TorchGraph(model).eval()
    with torch.no_grad():
        (logits,) = graph(images)
    np.testing.assert_allclose(logits.numpy(), _ort(pruned_path, images), atol=ATOL, rtol=0)

    graph.train()
    optimiser = torch.optim.Adam(graph.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    before = None
    for _ in range(2):
        loss = loss_fn(graph(images)[0], labels)
        before = loss.item() if before is None else before
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        after = float(loss_fn(graph(images)[0], labels))
    assert after < before, (before, after)

    graph.eval()
    with torch.no_grad():
        (expected,) = graph(images)
    assert float((expected - logits).abs().max()) > ATOL  # training changed the weights
    graph.write_back(model)
    trained_path = tmp_path / "trained.onnx"
    save_model(model, trained_path)

    assert _shapes(trained_path) == widths
    onnx.checker.check_model(str(trained_path), full_check=True)
    np.testing.assert_allclose(_ort(trained_path, images), expected.numpy(), atol=ATOL, rtol=0)
