"""Sequential reconstruction (``propagate=pruned``): each stage fits its real input.

The input of a stage is what the pruned network before it feeds it. Once the
selection is planned, the stages (:mod:`.stages`) run again in order, each twice per
batch and wave: as the original network (its stored values from the original run of
the stages before) and as the *emulated pruned network*: the same nodes with

- every consumer layer solved so far carrying its sequential reconstruction (the
  others cannot reach the inputs of the layers being solved: those come after them).
  Within a stage the layers are solved in waves (:func:`waves`: o_proj after q, k and
  v), the stage running again for each;
- every weight that reads a group's channels (grouped convolutions, layers too wide
  to reconstruct) zero at the selected units' columns.

A removed channel is then read by no weight, so wherever the channels go through
consumer layers and channel-local operators the emulation computes exactly what the
physically pruned network computes. Producers are left as they are: where removed
channels enter a reduction over the channel axis (``LayerNormalization`` or an RMS
norm over a pruned residual stream) the statistics then run over all channels with
their real values, close to the pruned network's over the kept ones; zeroed, they would
be biased by the kept fraction (measured on the digits ViT: 81% test accuracy with the
producers zeroed, against 97.8% with them left alone, at half the FLOPs).

Each stage's layers then get ``W'_K = W G_:K (H̃_KK)⁻¹`` (:mod:`spa_opt.obs.cross`):
the original output on the original input is the target, so a layer also corrects
what the layers before it lost. The damping ``λ`` added to ``H̃``'s diagonal is added
to ``G``'s too: that is ridge regression toward the original weights
(``+ λ ||W'_K - W_K||²``), so a layer whose input did not change gets exactly its
``propagate=original`` reconstruction. Layers of a stage are independent given the stage's
inputs and are solved on the executor (:mod:`spa_opt.obs.executor`: threads, or a Ray
cluster); stages follow one another, their forwards on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from spa_opt.calibration import Calibration
from spa_opt.ir.tensors import constant_array
from spa_opt.obs.cross import CrossAccumulator, CrossResult, CrossTask, solve_cross
from spa_opt.obs.executor import Executor, ThreadExecutor
from spa_opt.obs.threads import run_tasks
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.obspa_graph.layers import Layer, key_of
from spa_opt.passes.obspa_graph.propagate import batch_size, last_reader, stages_for
from spa_opt.passes.obspa_graph.stages import Stage
from spa_opt.passes.obspa_graph.store import SpillStore
from spa_opt.passes.obspa_graph.subgraph import stage_session


def zeroed_members(groups: Iterable[Group], selection: dict[str, np.ndarray]
                   ) -> dict[str, tuple[int, np.ndarray]]:
    """Weight name -> ``(axis, positions)`` to zero for the selected units, per member."""
    found: dict[str, list[tuple[int, np.ndarray]]] = {}
    for group in groups:
        units = selection.get(group.id)
        if units is None or not len(units):
            continue
        for member in group.members:
            if member.kind != "weight" or not member.name or "in" not in member.roles:
                continue
            positions = member.index_map.positions[np.asarray(units)].ravel()
            found.setdefault(member.name, []).append((member.axis, positions))
    return {name: entries for name, entries in found.items()}  # type: ignore[misc]


def _zero(array: np.ndarray, entries: list[tuple[int, np.ndarray]]) -> np.ndarray:
    out = np.array(array, copy=True)
    for axis, positions in entries:
        index = [slice(None)] * out.ndim
        index[axis] = positions
        out[tuple(index)] = 0
    return out


class Emulation:
    """The overrides that turn the original graph into the emulated pruned network.

    Rewritable consumer layers need none until they are solved: a layer's weights only
    reach the inputs of layers after it, and those are solved after it (the next wave or
    stage); its solved weights are zero at the removed columns. Every other weight that
    reads a group's channels is zeroed at the selected units once, here.
    """

    def __init__(self, groups: Iterable[Group], selection: dict[str, np.ndarray],
                 weights: dict[str, Any], solved: set[str]) -> None:
        self.zero = zeroed_members(groups, selection)
        self.overrides: dict[str, np.ndarray] = {}
        for name, entries in self.zero.items():
            value = weights.get(name)
            source = constant_array(value) if value is not None and name not in solved \
                else None
            if source is not None:
                self.overrides[name] = _zero(np.asarray(source), entries)

    def set(self, name: str, array: np.ndarray) -> None:
        """A solved weight (zero at the removed columns already)."""
        self.overrides[name] = array

    def unsolved(self, name: str, weights: dict[str, Any]) -> None:
        """A layer that could not be solved keeps its weights, zeroed at removed columns."""
        value = weights.get(name)
        entries = self.zero.get(name)
        if value is not None and entries:
            self.overrides[name] = _zero(np.asarray(constant_array(value)), entries)


def sequential(model: Any, layers: list[Layer], infos: dict[int, Any], groups: list[Group],
               selection: dict[str, np.ndarray], calibration: Calibration,
               store: SpillStore, hessian_of: Callable[[Any], np.ndarray],
               *, max_positions: int, seed: int, damp: float, jobs: int,
               batch_bytes: int, progress: Callable[..., None] | None = None,
               executor: Executor | None = None
               ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray | None]], list[dict[str, Any]],
                          list[float]]:
    """Run the stages again with the emulated pruned network; new weights per layer.

    Args:
        model: The original model (value types inferred).
        layers: Every consumer layer.
        infos: ``id(layer.weight)`` -> the pass's layer record (``blocks``,
            ``with_bias``, ``layer``).
        groups: The groups (for the emulation's zeroed members).
        selection: Group id -> selected units.
        calibration: The same inputs as the first run.
        store: Where values crossing a cut go (one for both networks).
        hessian_of: The original run's dampened Hessian of a layer record.
        max_positions: Columns per sample and layer beyond which a subset is drawn.
        seed: Seed of those subsets.
        damp: Damping of the pruned network's Hessians (and the ridge toward ``W``).
        jobs: Threads for the accumulators (0: all cores), and for the solves when no
            ``executor`` is given.
        batch_bytes: Rough budget of one batch's stage inputs and outputs (both networks).
        progress: Called with 1 and the stage's time after each stage.
        executor: Where the layers' solves run (:mod:`spa_opt.obs.executor`); the
            stages' forwards and accumulation run here.

    Returns:
        ``id(layer.weight)`` -> (weight, bias) in the model's layout for rewritable
        layers; the report rows; the seconds per stage.
    """
    executor = executor if executor is not None else ThreadExecutor(jobs)
    weights = {v.name: v for v in model.graph.initializers.values()}
    for node in model.graph:
        if node.op_type == "Constant" and node.outputs:
            weights[node.outputs[0].name] = node.outputs[0]
    emulation = Emulation(groups, selection, weights,
                          {la.weight.name for la in layers if la.rewritable})
    stages = stages_for(model, layers)
    by_node: dict[int, list[Layer]] = {}
    for layer in layers:
        by_node.setdefault(id(layer.node), []).append(layer)
    size = batch_size(stages, calibration, batch_bytes // 2)
    last = last_reader(stages)
    results: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    rows: list[dict[str, Any]] = []
    seconds: list[float] = []
    for position, stage in enumerate(stages):
        started = time.perf_counter()
        stage_layers = [la for node in stage.layer_nodes for la in by_node[id(node)]]
        names = [v.name for v in stage.outputs]
        original = stage_session(model, stage) if names else None
        for wave, members in enumerate(waves(stage, stage_layers)):
            accumulators: dict[tuple, CrossAccumulator] = {}
            reads: dict[tuple, str] = {}
            for index, layer in enumerate(members):
                key = key_of(layer)
                if key not in accumulators:
                    accumulators[key] = CrossAccumulator(
                        key[1], max_positions, seed + 7919 * position + 101 * wave + index,
                        layer.width)
                    reads[key] = layer.activation.name
            emulated = stage_session(model, stage, emulation.overrides) if names else None
            keys = list(accumulators)
            widths = [accumulators[k].width for k in keys]
            for batch, feed in enumerate(calibration.batches(model, size)):
                seen = _run(original, "orig", stage, names, feed, batch, store,
                            carry=wave == 0)
                fed = _run(emulated, "emul", stage, names, feed, batch, store, carry=False)
                run_tasks(lambda key, a=seen, b=fed, acc=accumulators, at=reads:
                          acc[key].add(a[at[key]], b[at[key]]), keys, widths, jobs)
                del seen, fed
            if emulated is not None:
                emulated.close()
            solved = executor.map(
                solve_cross, members, [la.width for la in members],
                prepare=lambda layer, acc=accumulators: _task(
                    layer, infos[id(layer.weight)], acc[key_of(layer)], selection,
                    hessian_of, damp))
            del accumulators
            for layer, result in zip(members, solved, strict=True):
                row, matrix = _row(layer, infos[id(layer.weight)], selection, result)
                rows.append(row)
                if matrix is None or not layer.rewritable:
                    if layer.rewritable:  # not solved: zeroed as a non-rewritable one is
                        emulation.unsolved(layer.weight.name, weights)
                    continue
                new_weight, new_bias = layer.unmatrix(matrix)
                store.put(("weight", layer.weight.name), new_weight)  # spilled past budget
                new_weight = store.get(("weight", layer.weight.name))
                results[id(layer.weight)] = (new_weight, new_bias)
                emulation.set(layer.weight.name, new_weight)
                if new_bias is not None and layer.bias is not None:
                    emulation.set(layer.bias.name, new_bias)
        if original is not None:
            original.close()
        if stage.carried:  # what later stages read, now from this stage's new weights
            emulated = stage_session(model, stage, emulation.overrides)
            for batch, feed in enumerate(calibration.batches(model, size)):
                _run(emulated, "emul", stage, names, feed, batch, store, carry=True)
            emulated.close()
        for value in stage.inputs:
            if last.get(value.name, -1) <= position:
                for tag in ("orig", "emul"):
                    batch = 0
                    while (tag, value.name, batch) in store:
                        store.drop((tag, value.name, batch))
                        batch += 1
        seconds.append(time.perf_counter() - started)
        if progress is not None:
            progress(1, f"stage {position + 1}/{len(stages)}: {seconds[-1]:.1f} s")
    return results, rows, seconds


def waves(stage: Stage, layers: list[Layer]) -> list[list[Layer]]:
    """The stage's layers in waves, each solved from the solved ones before it.

    A layer comes after every layer of the stage it reads through (o_proj after q, k
    and v; down after gate and up), so it fits what those layers now feed it.
    """
    made: dict[int, int] = {}  # value id -> how many of the stage's layers it comes after
    depth: dict[int, int] = {}
    layer_nodes = {id(layer.node) for layer in layers}
    for node in stage.nodes:
        level = max((made.get(id(v), 0) for v in node.inputs if v is not None), default=0)
        if id(node) in layer_nodes:
            depth[id(node)] = level
            level += 1
        for value in node.outputs:
            made[id(value)] = level
    for layer in layers:  # a layer reading a stage input directly
        depth.setdefault(id(layer.node), 0)
    found: dict[int, list[Layer]] = {}
    for layer in layers:
        found.setdefault(depth[id(layer.node)], []).append(layer)
    return [found[level] for level in sorted(found)]


def _run(session: Any, tag: str, stage: Any, names: list[str], feed: dict[str, np.ndarray],
         batch: int, store: SpillStore, *, carry: bool) -> dict[str, np.ndarray]:
    """One batch through one network's stage; its carried values into ``store``."""
    inputs = {v.name: feed[v.name] for v in stage.graph_inputs}
    inputs.update({v.name: store.get((tag, v.name, batch)) for v in stage.inputs})
    outputs = dict(zip(names, session.run(names, inputs), strict=True)) \
        if session is not None else {}
    if carry:
        for value in stage.carried:
            store.put((tag, value.name, batch), outputs[value.name])
    return {**inputs, **outputs}


def _removed(info: Any, selection: dict[str, np.ndarray]) -> np.ndarray:
    parts = [blocks[selection[g]].ravel() for g, blocks in info.blocks.items()
             if g in selection and len(selection[g])]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _task(layer: Layer, info: Any, accumulator: CrossAccumulator,
          selection: dict[str, np.ndarray], hessian_of: Callable[[Any], np.ndarray],
          damp: float) -> CrossTask:
    pruned, cross = accumulator.matrices(info.with_bias)
    return CrossTask(layer.matrix(info.with_bias), pruned, cross, hessian_of(info),
                     _removed(info, selection), damp)


def _row(layer: Layer, info: Any, selection: dict[str, np.ndarray], result: CrossResult
         ) -> tuple[dict[str, Any], np.ndarray | None]:
    row: dict[str, Any] = {
        "layer": layer.name, "op": layer.node.op_type, "weight": layer.weight.name,
        "columns": layer.width, "removed": int(_removed(info, selection).size),
        "source": info.source, "propagate": "pruned", "error": result.error,
        "relative_error": result.error / result.energy if result.energy > 0 else 0.0,
        "rewritten": False, "seconds": result.seconds,
    }
    if result.weight is None:
        row["source"] = f"{info.source} (pruned activations overflow: not rewritten)"
        return row, None
    row["rewritten"] = layer.rewritable
    return row, result.weight
