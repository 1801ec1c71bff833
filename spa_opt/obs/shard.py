"""One stage's Hessians over a shard of the calibration batches, anywhere (a Ray worker).

``Σ X Xᵀ`` over the calibration set is the sum of its shards' sums (associative), so
a stage's accumulation splits into shards of consecutive batches. A shard task gets:

- the stage as a serialized ONNX model plus the weights handed to onnxruntime as arrays
  (:class:`StageProgram`, shared by every shard of the stage, travelling once per node
  through Ray's object store);
- its batches' stage inputs (:class:`ShardTask`);

runs the stage in onnxruntime, feeds each consumer activation to an
:class:`~.hessian.Accumulator` seeded as the driver's would be (the global batch index
picks the positions), and returns the accumulators and the values later stages read.
It imports numpy, scipy and onnxruntime, nothing of the pass machinery (the worker's
whole need).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from spa_opt.obs.hessian import Accumulator, Geometry


@dataclasses.dataclass
class StageProgram:
    """A stage as onnxruntime runs it, and how its consumers read their activations."""

    model: bytes
    """The serialized ``ModelProto`` of the stage."""
    handed: list[tuple[str, np.ndarray]]
    """Weights given to onnxruntime as external initializers."""
    outputs: list[str]
    """Names the session computes."""
    carried: list[str]
    """Outputs later stages read (returned per batch)."""
    readers: list[tuple[Any, str, Geometry, int, int, int, int]]
    """Per accumulator: its key, the activation it reads, geometry, positions, seed, width
    and batches per ``ssyrk`` (a shard starts on a multiple of it)."""


@dataclasses.dataclass
class ShardTask:
    """Consecutive batches of one stage's inputs."""

    first: int
    """Global index of the first batch."""
    feeds: list[dict[str, np.ndarray]]


@dataclasses.dataclass
class ShardResult:
    """A shard's accumulators (keyed as the program's readers) and carried values."""

    accumulators: dict[Any, Accumulator]
    carried: list[dict[str, np.ndarray]]


def _session(program: StageProgram) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
              for _, array in program.handed]
    if program.handed:
        options.add_external_initializers([name for name, _ in program.handed], values)
    session = ort.InferenceSession(program.model, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    return session, values


def accumulate_shard(task: ShardTask, program: StageProgram) -> ShardResult:
    """Run the stage on the shard's batches and accumulate its consumers' Hessians."""
    session, _values = _session(program) if program.outputs else (None, [])
    accumulators = {key: Accumulator(geometry, positions, seed, width, every)
                    for key, _, geometry, positions, seed, width, every in program.readers}
    carried: list[dict[str, np.ndarray]] = []
    for offset, feed in enumerate(task.feeds):
        outputs = dict(zip(program.outputs, session.run(program.outputs, feed), strict=True)) \
            if session is not None else {}
        available = {**feed, **outputs}
        for key, name, *_ in program.readers:
            accumulators[key].add(available[name], batch=task.first + offset)
        carried.append({name: outputs[name] for name in program.carried})
    for accumulator in accumulators.values():
        accumulator.drop_scratch()
    return ShardResult(accumulators, carried)
