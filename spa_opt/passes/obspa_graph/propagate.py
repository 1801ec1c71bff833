"""Hessians from calibration inputs, one stage at a time (``propagate=original``).

The graph is cut into stages (:mod:`.stages`). For each stage in order, one onnxruntime
session runs only that stage's nodes over the whole calibration set, batch by batch:
its inputs are the graph inputs and the values earlier stages left in the
:class:`~.store.SpillStore`; its outputs are its consumer layers' activations, which
feed the stage's :class:`~spa_opt.obs.hessian.Accumulator` and are dropped with the
batch, and the values later stages read, which go into the store. Once every batch
has passed, the stage's accumulators are handed to the caller and the stored values
no later stage reads are freed. So memory holds the model's memory-mapped weights,
the values crossing one cut for the calibration set, two batches' activations (the
next batch's stage run overlaps this one's accumulation) and one stage's
accumulators; nothing is computed twice (each node runs once per sample).

Every layer sees the original network's activations, not those of a network already
pruned upstream; :mod:`.sequential` does the other (``propagate=pruned``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx_ir as ir

from spa_opt.calibration import Calibration
from spa_opt.errors import InputError
from spa_opt.obs.executor import Executor, ThreadExecutor
from spa_opt.obs.hessian import Accumulator, flush_every
from spa_opt.obs.shard import ShardTask, StageProgram, accumulate_shard
from spa_opt.obs.threads import pipelined, run_tasks
from spa_opt.passes.obspa_graph.layers import Layer, key_of
from spa_opt.passes.obspa_graph.stages import Stage, plan_stages
from spa_opt.passes.obspa_graph.store import SpillStore
from spa_opt.passes.obspa_graph.subgraph import StageSession, stage_model, stage_session

DEFAULT_BATCH_BYTES = 64 << 20
"""Rough budget of one batch's stage inputs and outputs. A decoder MLP stage's
intermediates are a few times that (its gate, up and product are 5632 wide): 256 MB
made the Hessian phase hold 370 MB more on the TinyLlama-width decoder, at the same
speed (docs/benchmarks.md)."""


@dataclasses.dataclass
class StageDone:
    """One stage's accumulators, handed over when every batch has passed."""

    stage: Stage
    accumulators: dict[tuple, Accumulator]
    layers: list[Layer]
    seconds: float


def stages_for(model: ir.Model, layers: Iterable[Layer]) -> list[Stage]:
    """The model's stages around these layers."""
    activations: dict[int, list[ir.Value]] = {}
    nodes: dict[int, ir.Node] = {}
    for layer in layers:
        if not layer.activation.name:
            raise InputError("obspa: a consumer layer reads an unnamed value; run on a model "
                             "whose values have names")
        nodes[id(layer.node)] = layer.node
        activations.setdefault(id(layer.node), []).append(layer.activation)
    return plan_stages(model.graph, list(nodes.values()), activations)


def _sample_bytes(values: Iterable[ir.Value], dims: dict[str, int]) -> int | None:
    total = 0
    for value in values:
        shape = value.shape
        if shape is None or value.dtype is None:
            return None
        count = 1
        for axis, dim in enumerate(shape):
            if axis == 0:
                continue
            size = dim if isinstance(dim, int) else dims.get(str(dim))
            if size is None:
                return None
            count *= size
        total += int(np.ceil(count * value.dtype.itemsize))  # itemsize is 0.5 for 4 bits
    return total


def batch_size(stages: list[Stage], calibration: Calibration, budget: int) -> int:
    """Samples per batch so one batch of the busiest stage takes about ``budget``."""
    per_sample = 0
    for stage in stages:
        found = _sample_bytes([*stage.inputs, *stage.outputs, *stage.activations],
                              calibration.dims)
        if found is None:
            return 8
        per_sample = max(per_sample, found)
    return int(max(1, min(256, budget // max(per_sample, 1))))


def last_reader(stages: list[Stage]) -> dict[str, int]:
    """Value name -> the last stage index that reads it from the store."""
    last: dict[str, int] = {}
    for position, stage in enumerate(stages):
        for value in stage.inputs:
            last[value.name] = position
    return last


def stream(model: ir.Model, layers: list[Layer], calibration: Calibration, store: SpillStore,
           *, max_positions: int, seed: int, jobs: int = 0,
           batch_bytes: int = DEFAULT_BATCH_BYTES,
           progress: Callable[[int], None] | None = None,
           executor: Executor | None = None) -> Iterator[StageDone]:
    """Yield every stage's accumulators in order (see the module docstring).

    The caller keeps the model's value types inferred (stage inputs and outputs need
    them), takes what it needs from each :class:`StageDone` before asking for the next,
    and closes ``store``. With an ``executor`` other than threads (a Ray cluster), each
    stage runs as shards of consecutive batches on its workers (:func:`_sharded`).
    """
    stages = stages_for(model, layers)
    by_node: dict[int, list[Layer]] = {}
    for layer in layers:
        by_node.setdefault(id(layer.node), []).append(layer)
    size = batch_size(stages, calibration, batch_bytes)
    last = last_reader(stages)
    for position, stage in enumerate(stages):
        started = time.perf_counter()
        stage_layers = [la for node in stage.layer_nodes for la in by_node[id(node)]]
        accumulators: dict[tuple, Accumulator] = {}
        reads: dict[tuple, str] = {}
        # one float64 addition per group of `every` batches, the same for the stage's
        # accumulators (so shards can start on its multiples)
        step = calibration.batch_step(model, size)
        every = flush_every(max_positions * step, -(-calibration.samples // step))
        for index, layer in enumerate(stage_layers):
            key = key_of(layer)
            if key not in accumulators:
                accumulators[key] = Accumulator(key[1], max_positions,
                                                seed + 7919 * position + index, layer.width,
                                                every)
                reads[key] = layer.activation.name
        names = [v.name for v in stage.outputs]
        if executor is not None and not isinstance(executor, ThreadExecutor):
            _sharded(model, stage, accumulators, reads, calibration, size, store, executor)
            _release(store, stage, position, last)
            yield StageDone(stage, accumulators, stage_layers, time.perf_counter() - started)
            continue
        session = stage_session(model, stage) if names else None
        # batch b + 1's stage run (onnxruntime, the store's reads and writes) overlaps
        # batch b's accumulation; at most two batches' values are alive
        pipelined(functools.partial(_run_batch, stage, names, session, store),
                  enumerate(calibration.batches(model, size)),
                  functools.partial(_accumulate, accumulators, reads, jobs,
                                    progress if position == 0 else None))
        if session is not None:
            session.close()
        _release(store, stage, position, last)
        yield StageDone(stage, accumulators, stage_layers, time.perf_counter() - started)


def _run_batch(stage: Stage, names: list[str], session: StageSession | None,
               store: SpillStore, item: tuple[int, dict[str, np.ndarray]]
               ) -> dict[str, np.ndarray]:
    """One batch through the stage: its inputs and outputs by name, the carried stored."""
    batch, feed = item
    inputs = {v.name: feed[v.name] for v in stage.graph_inputs}
    inputs.update({v.name: store.get((v.name, batch)) for v in stage.inputs})
    outputs = dict(zip(names, session.run(names, inputs), strict=True)) \
        if session is not None else {}
    for value in stage.carried:
        store.put((value.name, batch), outputs[value.name])
    return {**inputs, **outputs}


def _accumulate(accumulators: dict[tuple, Accumulator], reads: dict[tuple, str], jobs: int,
                progress: Callable[[int], None] | None,
                item: tuple[int, dict[str, np.ndarray]], available: dict[str, np.ndarray]
                ) -> None:
    """One batch's activations into the stage's accumulators (in parallel across them)."""
    keys = list(accumulators)
    run_tasks(lambda key: accumulators[key].add(available[reads[key]]), keys,
              [accumulators[k].width for k in keys], jobs)
    if progress is not None:
        feed = item[1]
        progress(len(next(iter(feed.values()))) if feed else 1)


def _sharded(model: ir.Model, stage: Stage, accumulators: dict[tuple, Accumulator],
             reads: dict[tuple, str], calibration: Calibration, size: int,
             store: SpillStore, executor: Executor) -> None:
    """One stage on the executor's workers, a shard of consecutive batches each.

    The batches are the ones the local path makes (same size, same global indices), so
    every accumulator draws the same positions and the merged sums equal the local ones
    to rounding. A shard's feeds are read from ``store`` when it is submitted; the
    values later stages read come back and go into ``store``.
    """
    proto, handed = stage_model(model, stage)
    readers = [(key, reads[key], acc.geometry, acc.max_positions, acc.seed, acc.width,
                acc.flush_every) for key, acc in accumulators.items()]
    program = StageProgram(proto.SerializeToString(), handed, [v.name for v in stage.outputs],
                           [v.name for v in stage.carried], readers)
    del proto
    feeds = [{v.name: feed[v.name] for v in stage.graph_inputs}
             for feed in calibration.batches(model, size)]
    shards = min(len(feeds), executor.workers)
    # shards start on multiples of the accumulators' flush groups, so each sums the
    # same float32 products one accumulator over every batch would
    every = max((acc.flush_every for acc in accumulators.values()), default=1)
    bounds = np.linspace(0, len(feeds), shards + 1)
    bounds = np.unique(np.clip(np.round(bounds / every) * every, 0, len(feeds)).astype(int))
    bounds = np.union1d(bounds, [0, len(feeds)])
    spans = [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]

    def shard(span: tuple[int, int]) -> ShardTask:
        return ShardTask(span[0], [{**feeds[b], **{v.name: store.get((v.name, b))
                                                   for v in stage.inputs}}
                                   for b in range(*span)])

    results = executor.map(accumulate_shard, spans, [0] * len(spans), prepare=shard,
                           shared=program)
    for (first, _), result in zip(spans, results, strict=True):
        for key, found in result.accumulators.items():
            accumulators[key].merge(found)
        for offset, carried in enumerate(result.carried):
            for name, array in carried.items():
                store.put((name, first + offset), array)


def _release(store: SpillStore, stage: Stage, position: int, last: dict[str, int]) -> None:
    """Drop the stored values no stage after ``position`` reads."""
    for value in stage.inputs:
        if last.get(value.name, -1) <= position:
            batch = 0
            while (value.name, batch) in store:
                store.drop((value.name, batch))
                batch += 1


def accumulate(model: ir.Model, layers: Iterable[Layer], calibration: Calibration, *,
               max_positions: int, seed: int, jobs: int = 0,
               batch_bytes: int = DEFAULT_BATCH_BYTES, budget: int = 1 << 62,
               progress: Callable[[int], None] | None = None) -> dict[tuple, Accumulator]:
    """Every stage's accumulators in one dict (for tests and benchmarks).

    Keyed by :func:`~spa_opt.passes.obspa_graph.layers.key_of`.
    """
    found: dict[tuple, Accumulator] = {}
    with SpillStore(budget) as store:
        for done in stream(model, list(layers), calibration, store,
                           max_positions=max_positions, seed=seed, jobs=jobs,
                           batch_bytes=batch_bytes, progress=progress):
            found.update(done.accumulators)
    return found


def finite(array: np.ndarray) -> bool:
    """Whether every entry is finite (activations overflowing float32 are not)."""
    return bool(np.isfinite(array).all())
