"""Latency measured on the target runtime, for ``--target-latency`` and ``--round-to auto``.

- :mod:`.layers`: a node as a single-layer model at given widths (the unit timed);
- :mod:`.timer`: onnxruntime timing of layers and models (:class:`.timer.OrtTimer`);
- :mod:`.cache`: the on-disk table, keyed by runtime, version, provider and machine;
- :mod:`.model`: the latency of the model as a function of the units removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import onnx_ir as ir

from spa_opt.latency.cache import LatencyCache, default_cache_dir
from spa_opt.latency.model import LatencyModel
from spa_opt.latency.timer import LatencySpec, OrtTimer, Paired, Timer, time_paired

if TYPE_CHECKING:  # the latency package imports no pass
    from spa_opt.passes.pruning.costmodel import CostModel

__all__ = ["LatencyCache", "LatencyModel", "LatencySpec", "OrtTimer", "Paired", "Timer",
           "build_latency_model", "model_feed", "time_paired", "timer_for"]


def timer_for(spec: LatencySpec) -> Timer:
    """The spec's timer: onnxruntime, unless the spec carries its own (tests)."""
    return spec.timer if spec.timer is not None else OrtTimer(spec)


def cache_for(spec: LatencySpec, timer: Timer) -> LatencyCache:
    """The spec's on-disk table for the timer's identity (memory only with ``none``)."""
    if spec.cache_dir.lower() == "none":
        return LatencyCache(None, timer.identity)
    return LatencyCache(Path(spec.cache_dir) if spec.cache_dir else default_cache_dir(),
                        timer.identity)


def model_feed(model: ir.Model, input_dims: Mapping[str, int] | None) -> dict:
    """One seeded random feed for the model's inputs (symbolic dims: ``input_dims`` or 1)."""
    from spa_opt.verify import random_inputs

    return random_inputs(model, 1, seed=0, dims=input_dims)[0]


def build_latency_model(model: ir.Model, cost: CostModel, groups: int, spec: LatencySpec,
                        input_dims: Mapping[str, int] | None = None) -> LatencyModel:
    """Measure (or read from the cache) the latency model of ``model``'s groups."""
    timer = timer_for(spec)
    return LatencyModel(model, cost, groups, timer, cache_for(spec, timer),
                        model_feed(model, input_dims), input_dims)
