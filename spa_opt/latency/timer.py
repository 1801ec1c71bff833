"""Timing on the target runtime: single layers and whole models, the same way.

A :class:`Timer` answers two questions, in seconds: how long one :class:`Layer` takes
alone, and how long the whole model takes. :class:`OrtTimer` asks onnxruntime on the
execution provider and thread count the user names (``--ep``, ``--threads``); tests
use a timer with a known cost function instead, so the latency model and the
selection are checked against an exact answer.

How onnxruntime is timed (the same for layers and models):

- a fresh session (every graph optimization, sequential execution, ``threads``
  intra-op threads), closed before the next one opens: on 2 cores an idle session's
  spinning pool distorts another session's runs by milliseconds;
- ``warmup`` runs (2), then runs until both ``reps`` runs (10) and ``min_seconds`` (0.02 s;
  a whole model: ``model_seconds``, 1 s) have passed;
- the median of the timed runs;
- for a layer, minus the time of an empty model (one Identity) timed the same way:
  ``session.run``'s own overhead is paid once per model, not once per layer, so it
  belongs to the model's remainder, not to each layer.

:attr:`Timer.identity` names everything a timing depends on besides the layer: the
runtime and its version, the provider, the threads, the machine (processor model and
core count). The on-disk cache is keyed by it, so another runtime version or machine
never reads this one's numbers.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.latency.layers import Layer, LayerInput, layer_model


@dataclasses.dataclass(frozen=True)
class LatencySpec:
    """Where and how latency is measured (``--ep``, ``--threads``, ``--latency-cache``)."""

    ep: str = "CPUExecutionProvider"
    """onnxruntime execution provider."""
    threads: int = 0
    """Intra-op threads; 0: one per core."""
    cache_dir: str = ""
    """Folder of the latency tables; empty: ``$XDG_CACHE_HOME/spa-opt/latency`` (or
    ``~/.cache/...``); ``none``: no cache."""
    warmup: int = 2
    """Untimed runs of each fresh session."""
    reps: int = 10
    """Fewest timed runs; the median is reported."""
    min_seconds: float = 0.02
    """Fewest seconds of timed runs of a layer (small layers run more often)."""
    model_seconds: float = 1.0
    """Fewest seconds of timed runs of a whole model (its figure is the target's)."""
    timer: Timer | None = dataclasses.field(default=None, compare=False, repr=False)
    """A timer to use instead of onnxruntime (a known cost function, in tests)."""

    def resolved_threads(self) -> int:
        """The thread count actually used."""
        return self.threads or os.cpu_count() or 1


class Timer(Protocol):
    """Measures layers and models on one runtime configuration."""

    @property
    def identity(self) -> str:
        """Runtime, version, provider, threads and machine: the cache key."""
        ...

    def time_layer(self, layer: Layer) -> float:
        """Seconds ``layer`` takes alone, the runtime's per-run overhead excluded."""
        ...

    def time_model(self, model: ir.Model, feed: Mapping[str, np.ndarray]) -> float:
        """Seconds one run of ``model`` on ``feed`` takes."""
        ...

    def blocked(self, layer: Layer) -> bool:
        """Whether the runtime runs ``layer`` in a blocked layout (CPU: NCHWc)."""
        ...


def machine_identity() -> str:
    """The processor model and core count (Linux's ``/proc/cpuinfo``, else platform)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} x{os.cpu_count()}"


class OrtTimer:
    """Times layers and models in onnxruntime, as the module docstring describes."""

    def __init__(self, spec: LatencySpec) -> None:
        import onnxruntime as ort

        if spec.ep not in ort.get_available_providers():
            raise InputError(f"--ep: '{spec.ep}' is not available in this onnxruntime "
                             f"(available: {', '.join(ort.get_available_providers())})")
        self._ort = ort
        self.spec = spec
        self._overhead: float | None = None
        self._layouts: dict[str, bool] = {}

    @property
    def identity(self) -> str:
        """See :attr:`Timer.identity`."""
        return (f"onnxruntime {self._ort.__version__} | {self.spec.ep} | threads "
                f"{self.spec.resolved_threads()} | {machine_identity()}")

    def _options(self) -> Any:
        """Every graph optimization, sequential, the spec's threads, silent."""
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.spec.resolved_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 4
        return options

    def _median(self, run: Callable[[], object], seconds: float) -> float:
        for _ in range(self.spec.warmup):
            run()
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < self.spec.reps or time.perf_counter() - began < seconds:
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
            if len(times) >= 50 * self.spec.reps:
                break
        return float(np.median(times))

    def _time_proto(self, model: ir.Model, feed: Mapping[str, np.ndarray],
                    seconds: float, layout_to: str | None = None) -> float:
        from spa_opt.ort import describe_error, session_from_model

        options = self._options()
        if layout_to is not None:
            options.optimized_model_filepath = layout_to
        try:
            session = session_from_model(model, options, [self.spec.ep])
            inputs = dict(feed)
            # The session and its thread pool go when this frame does (reference
            # counting), before the next timing starts.
            return self._median(lambda: session.run(None, inputs), seconds)
        except Exception as error:  # onnxruntime raises its own exception types
            raise InputError(f"latency: onnxruntime ({self.spec.ep}) cannot run "
                             f"'{model.graph.name or 'the model'}': "
                             f"{describe_error(error)}") from None

    def overhead(self) -> float:
        """Seconds one run of an empty model (a single Identity) takes."""
        if self._overhead is None:
            item = LayerInput((1, 8), ir.DataType.FLOAT, False)
            model, feed = layer_model(Layer("Identity", "", 17, (), (item,)))
            self._overhead = self._time_proto(model, feed, self.spec.min_seconds)
        return self._overhead

    def time_layer(self, layer: Layer) -> float:
        """See :meth:`Timer.time_layer`; notes the layout the session chose on the way."""
        model, feed = layer_model(layer)
        overhead = self.overhead()
        with tempfile.TemporaryDirectory(prefix="spa-opt-layout-") as folder:
            path = os.path.join(folder, "optimized.onnx")
            seconds = self._time_proto(model, feed, self.spec.min_seconds, path)
            self._layouts[layer.signature()] = _has_blocked_nodes(path)
        return max(seconds - overhead, 0.0)

    def time_model(self, model: ir.Model, feed: Mapping[str, np.ndarray]) -> float:
        """See :meth:`Timer.time_model`."""
        return self._time_proto(model, feed, self.spec.model_seconds)

    def blocked(self, layer: Layer) -> bool:
        """See :meth:`Timer.blocked`: read from the session's optimized graph.

        The CPU provider's NCHWc transformer rewrites a Conv into the
        ``com.microsoft.nchwc`` domain when its widths allow; onnxruntime writes the
        optimized graph where ``optimized_model_filepath`` says, and the domains in it
        tell, without timing noise.
        """
        known = self._layouts.get(layer.signature())
        if known is not None:
            return known
        model, _ = layer_model(layer)
        with tempfile.TemporaryDirectory(prefix="spa-opt-layout-") as folder:
            options = self._options()
            options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
            try:
                self._ort.InferenceSession(ir.to_proto(model).SerializeToString(), options,
                                           providers=[self.spec.ep])
            except Exception:
                return False  # no optimized graph: no blocked layout known
            return _has_blocked_nodes(options.optimized_model_filepath)


def _has_blocked_nodes(path: str) -> bool:
    """Whether the optimized graph onnxruntime wrote at ``path`` has NCHWc nodes."""
    import onnx

    try:
        optimized = onnx.load(path, load_external_data=False)
    except Exception:
        return False
    return any(n.domain.endswith(".nchwc") for n in optimized.graph.node)


@dataclasses.dataclass
class Paired:
    """Two models timed in alternation: medians and the median of per-round ratios."""

    before: float
    after: float
    ratio: float
    """Median over rounds of ``after / before``: a slow spell of the machine slows both
    halves of a round alike, so the ratio is steadier than either median."""


def time_paired(timer: Timer, before: ir.Model, after: ir.Model,
                feed: Mapping[str, np.ndarray], rounds: int = 2) -> Paired:
    """Time ``before`` and ``after`` alternately, ``rounds`` times each."""
    firsts, seconds = [], []
    for _ in range(rounds):
        firsts.append(timer.time_model(before, feed))
        seconds.append(timer.time_model(after, feed))
    ratios = [b / a for a, b in zip(firsts, seconds, strict=True) if a > 0]
    return Paired(float(np.median(firsts)), float(np.median(seconds)),
                  float(np.median(ratios)) if ratios else 1.0)
