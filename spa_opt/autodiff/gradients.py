"""Losses and gradients on a :class:`~spa_opt.autodiff.graph.TorchGraph`.

The supervised loss is the cross-entropy of the first output read as class logits
over axis 1 (``(N, C)`` or ``(N, C, ...)``), against the calibration labels when the
data has them and otherwise against the model's own predictions (the argmax of its
logits, computed without gradient): a trained model's predictions are the labels it
would be fine-tuned towards, and at initialisation they are as good as any.

Gradients are averaged over batches weighted by batch size, so they are the gradient
of the mean loss over every sample. Hessian-gradient products (GraSP, CroP) use the
double-backward trick: with ``g`` the detached full gradient, ``Hg = d/dw (g . dL/dw)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from spa_opt.autodiff.graph import TorchGraph
from spa_opt.calibration import Calibration
from spa_opt.errors import InputError

Batch = tuple[dict[str, np.ndarray], np.ndarray | None]


def batches(calibration: Calibration, model: ir.Model, size: int, limit: int | None = None
            ) -> Iterator[Batch]:
    """Feeds and labels of at most ``size`` samples, over the first ``limit`` samples."""
    data = calibration if limit is None else calibration.subset(limit, 0)
    start = 0
    for feeds in data.batches(model, size):
        count = next((a.shape[0] for a in feeds.values() if a.ndim), 1)
        labels = None if data.labels is None else data.labels[start:start + count]
        start += count
        yield feeds, labels


def supervised_loss(graph: TorchGraph, feeds: dict[str, np.ndarray],
                    labels: np.ndarray | None) -> torch.Tensor:
    """Mean cross-entropy of the first output against ``labels`` or the model's predictions.

    Raises:
        InputError: the first output is not class logits (rank < 2) or labels are out
            of its class range.
    """
    logits = graph.run(feeds)[graph.output_names[0]]
    if logits.ndim < 2 or not logits.is_floating_point():
        raise InputError(f"a supervised loss needs class logits (N, C, ...) as the first "
                         f"output; '{graph.output_names[0]}' has shape {tuple(logits.shape)}")
    if labels is None:
        target = logits.detach().argmax(dim=1)
    else:
        target = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        if target.shape[0] != logits.shape[0]:
            raise InputError(f"{target.shape[0]} labels for a batch of {logits.shape[0]}")
        if int(target.min()) < 0 or int(target.max()) >= logits.shape[1]:
            raise InputError(f"labels must lie in [0, {logits.shape[1]}) for this model")
        if target.ndim == 1:  # one label per sample, for every position of dense logits
            target = target.reshape(target.shape[0], *([1] * (logits.ndim - 2))).expand(
                logits.shape[0], *logits.shape[2:])
        elif tuple(target.shape[1:]) != tuple(logits.shape[2:]):
            raise InputError(f"labels of shape {tuple(target.shape)} do not fit logits "
                             f"{tuple(logits.shape)}")
    return F.cross_entropy(logits, target)


def _weights(graph: TorchGraph) -> tuple[list[str], list[torch.Tensor]]:
    names, tensors = zip(*graph.named_initializers(), strict=True)
    return list(names), list(tensors)


def _batch_size(feeds: dict[str, np.ndarray]) -> int:
    return next((a.shape[0] for a in feeds.values() if a.ndim), 1)


def _sample_mean(weights: list[torch.Tensor], per_batch: Iterator[tuple[int, tuple]]
                 ) -> list[torch.Tensor]:
    """Per-weight means over samples of per-batch results ``(count, tensors)``."""
    total = [torch.zeros_like(w) for w in weights]
    samples = 0
    for count, tensors in per_batch:
        for acc, t in zip(total, tensors, strict=True):
            if t is not None:
                acc.add_(t.detach(), alpha=count)
        samples += count
    return [t / max(samples, 1) for t in total]


def gradient(graph: TorchGraph, data: list[Batch]) -> dict[str, torch.Tensor]:
    """The gradient of the mean supervised loss over ``data``, by initializer name."""
    names, weights = _weights(graph)

    def per_batch() -> Iterator[tuple[int, tuple]]:
        for feeds, labels in data:
            loss = supervised_loss(graph, feeds, labels)
            yield _batch_size(feeds), torch.autograd.grad(loss, weights, allow_unused=True)

    return dict(zip(names, _sample_mean(weights, per_batch()), strict=True))


def per_batch_products(graph: TorchGraph, data: list[Batch]) -> list[dict[str, torch.Tensor]]:
    """``w * dL_b/dw`` for every batch ``b`` (first-order Taylor terms), by name."""
    names, weights = _weights(graph)
    out = []
    for feeds, labels in data:
        loss = supervised_loss(graph, feeds, labels)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        out.append({n: (w.detach() * g) for n, w, g in zip(names, weights, grads, strict=True)
                    if g is not None})
    return out


def hessian_gradient(graph: TorchGraph, data: list[Batch]) -> dict[str, torch.Tensor]:
    """``H g`` with ``g`` the full-data gradient and ``H`` the Hessian of the mean loss."""
    g = gradient(graph, data)
    names, weights = _weights(graph)

    def per_batch() -> Iterator[tuple[int, tuple]]:
        for feeds, labels in data:
            loss = supervised_loss(graph, feeds, labels)
            grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
            dot = sum((gi * g[n]).sum() for n, gi in zip(names, grads, strict=True)
                      if gi is not None)
            if isinstance(dot, torch.Tensor) and dot.requires_grad:
                yield _batch_size(feeds), torch.autograd.grad(dot, weights, allow_unused=True)

    return dict(zip(names, _sample_mean(weights, per_batch()), strict=True))
