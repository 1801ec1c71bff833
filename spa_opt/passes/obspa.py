"""obspa: Optimal Brain SPA, structured OBS with weight reconstruction (analysis + update).

Rules:

- every prunable group's consumer layers (:mod:`.obspa_graph.layers`: Conv with
  ``group = 1``, Gemm, MatMul with a constant weight) get a layer-wise Hessian
  ``H = 2 X Xᵀ / N``, dampened by ``damp`` times its mean diagonal
  (:mod:`spa_opt.obs.linalg`), from ``hessian``:

  - ``data``: the calibration inputs given with ``--calib`` (an ``.npz``/``.npy`` of
    input arrays or a folder of images, :mod:`spa_opt.calibration`), at most
    ``samples`` of them, propagated through the original model in onnxruntime;
  - ``noise``: ``samples`` random inputs; ``pink`` noise has a ``1/f^e`` amplitude
    spectrum with ``e`` drawn per sample from [``exponent``, ``exponent-max``] = [2, 3]
    (1 is the spectrum of natural images, larger is smoother; [2, 3] measured best over
    six digits architectures, ``bench/datafree.py``), or
    ``white``; per-channel ``mean`` and ``std`` (the defaults 0 and 1 match a model
    that takes normalised inputs, as exported vision models do); integer inputs get
    uniform token ids;
  - ``synth``: inputs synthesized from the model alone by the ``synthesize`` pass
    (run with its defaults and ``samples``; needs the ``autodiff`` extra), then used
    as ``data``;
  - ``bn``: analytic, from BatchNormalization statistics (:mod:`.obspa_graph.analytic`);
  - ``auto``: ``data`` when there are calibration inputs (``--calib`` or an earlier
    ``synthesize``), else ``synth`` when the ``autodiff`` extra is installed and every
    input is float (falling back to ``noise``, with the reason in the report, when
    ``synthesize`` fails), else ``noise``;
- each group's units are ordered by structured OBS over all its consumers, greedily
  one unit at a time (``order=greedy``) or ``rounds`` blocks per group
  (``order=blocks``), downdating ``H⁻¹`` after every removal
  (:mod:`spa_opt.obs.order`); the costs become the context's ``scores`` (raw, or
  divided per group by its consumers' output energy with ``norm=relative``);
- the selection is planned from those scores and the targets exactly as ``prune``
  plans it, and stored as ``selection`` (and ``plan``);
- every consumer layer that loses columns gets the least-squares optimal weights of
  its remaining columns under its ``H`` (bias included as a constant-one column with
  ``bias=true``), stored as ``reconstructed`` for ``prune`` to write;
- fp16/bf16 weights are read and solved in float64 and written back in the model's
  dtype;
- quantized graphs (a ``DequantizeLinear`` of integer weights, or QLinearConv /
  QLinearMatMul / ConvInteger / MatMulInteger weights, MatMulNBits) are refused with an
  ``InputError`` (exit 2) naming a weight. Measured on a QDQ CNN (3 Conv + Gemm,
  ``quantize_static`` per-channel int8, ``--ratio 0.3``, noise Hessians): re-quantizing
  the reconstructed weights with the existing per-channel scales clips 42 of 1562 codes
  (2.7%: reconstruction grows the kept columns past the calibrated range), adds up to
  16% relative L2 error to a layer's weights and moves the outputs by 5.6% of their
  range on top of the float reconstruction, over 40% of the model's whole quantization
  error (13%). Re-calibrating the scales would change the quantization,
  which is the quantizer's job: run obspa on the float model, then quantize;
- the report's ``obspa`` lists, per layer, the Hessian source, columns removed,
  reconstruction error (absolute and relative to the layer's output energy) and time;
  ``--stats`` prints the same per layer.

Layers are independent given their Hessians, so ordering and reconstruction run as one
task per group or layer on ``jobs`` threads (numpy and LAPACK release the GIL). The
numeric kernels are the graph-free library :mod:`spa_opt.obs` (numpy and scipy only);
this module and :mod:`.obspa_graph` tie them to the graph and onnxruntime. Only
``synth`` imports torch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TypeVar

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.obs.executor import Executor, ExecutorError, ThreadExecutor, executor_for
from spa_opt.obs.linalg import (
    ReconstructResult,
    dampen,
    energy,
    solve_reconstruct,
)
from spa_opt.obs.order import OrderTask, solve_order
from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.instruments import progress
from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.group import groups_of
from spa_opt.passes.obspa_graph.consumers import (
    order_consumers,
    runs_within,
    sharing,
    stored_hessian,
)
from spa_opt.passes.obspa_graph.layers import Layer, consumers, key_of
from spa_opt.passes.obspa_graph.propagate import DEFAULT_BATCH_BYTES, finite, stages_for, stream
from spa_opt.passes.obspa_graph.records import LayerRecord, reconstruct_row, reconstruct_task
from spa_opt.passes.obspa_graph.sources import can_synthesize, synthesize
from spa_opt.passes.obspa_graph.store import DEFAULT_BUDGET_MB, SpillStore
from spa_opt.passes.pruning.plan import plan_selection

T = TypeVar("T")
R = TypeVar("R")

QUANTIZED = ("obspa: `{name}` is a quantized weight; obspa reconstructs float weights, and "
             "re-quantizing them with the model's scales clips them (measured: 2.7% of codes, "
             "up to 16% weight error per layer): run obspa on the float model, then quantize")


BLOCK_QUANTIZED = ("obspa: `{name}` is a MatMulNBits ({bits}-bit weights in blocks of "
                   "{block}); obspa reconstructs float weights, and re-quantizing them into "
                   "blocks about doubles the quantization error (bench/nbits_requant.py): run "
                   "obspa on the float model, then quantize")


def _refuse_quantized(model: ir.Model) -> None:
    """Stop on a quantized graph (QDQ weights, QOperator ops, MatMulNBits), naming one."""
    from spa_opt.ir.nbits import nbits_of
    from spa_opt.ir.quant import quantization_of

    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None and tensor.dtype.is_integer() and quantization_of(value):
                raise InputError(QUANTIZED.format(name=value.name))
        for node in graph:
            packed = nbits_of(node)
            if packed is not None:
                raise InputError(BLOCK_QUANTIZED.format(
                    name=node.name or packed.input(1).name, bits=packed.bits,
                    block=packed.block_size))


PART_FLOOR = 512 << 20
"""A group's joint ordering may always hold this much (Hessians and inverses) at once,
whatever ``memory`` says: splitting a group changes its scores, spilling does not."""


NO_CONSUMER = ("obspa: no consumer layer (Conv with group 1, Gemm, or MatMul with a "
               "constant weight) reads its channels")


@dataclasses.dataclass
class ObspaOptions:
    """Options of ``obspa``."""

    hessian: Literal["auto", "data", "synth", "noise", "bn"] = option(
        "auto", "source of the layer Hessians: data (--calib or an earlier synthesize), "
        "synth (synthesize inputs now), noise, bn, or auto (data when there are calibration "
        "inputs, else synth when the autodiff extra is installed and the inputs are float, "
        "else noise)")
    samples: int = option(128, "noise or synthesized inputs to make; with data, the most "
                               "calibration inputs used (0: all)")
    noise: Literal["pink", "white"] = option("pink", "noise spectrum for float inputs")
    exponent: float = option(2.0, "pink noise amplitude falls as 1/f^exponent")
    exponent_max: float = option(
        3.0, "when above exponent, each noise sample draws its exponent uniformly from "
        "[exponent, exponent-max]: a mix of smoothness levels")
    mean: float = option(0.0, "per-channel mean of noise inputs")
    std: float = option(1.0, "per-channel standard deviation of noise inputs")
    damp: float = option(0.01, "fraction of the mean diagonal added to each Hessian")
    order: Literal["blocks", "greedy"] = option(
        "blocks", "remove units one at a time (greedy) or in rounds (blocks) between "
        "downdates")
    rounds: int = option(32, "downdate rounds per group with order=blocks")
    precision: Literal["float32", "float64"] = option(
        "float32", "arithmetic of the ordering's working weights and inverse Hessians "
        "(reconstruction is float64 either way); float32 is 1.3-2.3x faster and chose the "
        "same units in every case measured, and falls back to float64 for a group whose "
        "downdates lose positive definiteness")
    norm: Literal["none", "relative"] = option(
        "none", "compare groups by raw OBS cost (none: measured best in the global scope) "
        "or divide a group's costs by its consumers' output energy (relative)")
    bias: bool = option(True, "let the bias absorb the mean of removed inputs")
    positions: int = option(256, "most columns (output positions) drawn per sample and "
                                 "layer")
    max_columns: int = option(
        12288, "wider layers are not reconstructed (their float64 Hessian alone would "
        "take more than 1.2 GB); their groups rank by their other consumers")
    jobs: int = option(0, "threads for per-group and per-layer work (0: all cores)")
    propagate: Literal["auto", "original", "pruned"] = option(
        "auto", "Hessians from the original network's activations (original: every layer "
        "independent) or, after the selection, from the pruned and reconstructed network's, "
        "stage by stage, fitting the original outputs (pruned: measured better with data "
        "and with noise); auto: pruned, original for hessian=bn")
    memory: int = option(DEFAULT_BUDGET_MB, "megabytes of activations and Hessians held "
                                            "across stages before they spill to disk")
    executor: str = option(
        "", "where per-layer and per-group work and Hessian shards run: threads, ray (a "
        "local cluster, or RAY_ADDRESS's), ray://HOST:PORT; empty: the run's --executor")


@register
class ObspaPass(SpaPass):
    """Order, select and reconstruct with structured OBS from layer-wise Hessians (analysis)."""

    name = "obspa"
    Options = ObspaOptions
    preserves_analyses = True
    _started: float = 0.0
    _executor: Executor = ThreadExecutor()
    """``time.perf_counter()`` when the current run began: the progress bars' delay
    counts from there."""

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Hessians, order, selection, reconstruction, report."""
        self._started = time.perf_counter()
        self._check_options()
        _refuse_quantized(model)
        groups = groups_of(model, context)
        budget = int(self.options.memory) << 20
        spec = self.options.executor or context.executor or "threads"
        try:
            executor = executor_for(spec, self.options.jobs)
        except ExecutorError as error:
            raise InputError(f"obspa: {error}") from None
        with executor, temporary_shapes(model, symbolic=True), \
                SpillStore(budget, context.scratch_dir or None) as store:
            self._executor = executor
            try:
                self._run(model, context, groups, store)
            finally:
                self._executor = ThreadExecutor()
            context.report["obspa"]["executor"] = {"name": spec, **executor.traffic.as_dict()}
        return ir.passes.PassResult(model, False)

    def _run(self, model: ir.Model, context: PipelineContext, groups: list[Group],
             store: SpillStore) -> None:
        started = time.perf_counter()
        records, unscored, too_wide = self._layers(groups, self.options.max_columns)
        source, calibration, stage_seconds = self._hessians(model, context, records, store)
        self.count("hessian-seconds", time.perf_counter() - started)

        tick = time.perf_counter()
        scores = self._order(context, groups, records, unscored, store)
        self.count("order-seconds", time.perf_counter() - tick)
        context.analyses.update(scores=scores, criterion=self.pipeline_text())

        plan = plan_selection(model, groups, context.targets, scores, context.analyses.dead,
                              unscored, context.latency, context.input_dims, context.io)
        context.analyses.update(selection=plan.selection, plan=plan)

        tick = time.perf_counter()
        listed = list(records.values())
        if self.options.propagate != "original" and calibration is not None:
            new_weights, table, stage_seconds = self._sequential(
                model, context, groups, records, plan.selection, calibration, store)
            self.count("sequential-seconds", time.perf_counter() - tick)
        else:
            losing = [r for r in listed if r.removed(plan.selection).size and r.key in store]
            new_weights = {}

            def keep(index: int, result: ReconstructResult) -> dict[str, Any]:
                # Each new weight goes to the store (spilled past the budget) as it
                # arrives, in the model's dtype: never every layer's float64 result at once.
                record = losing[index]
                row, matrix = reconstruct_row(record, plan.selection, result)
                if matrix is not None:
                    weight, bias = record.layer.unmatrix(matrix)
                    new_weights[id(record.layer.weight)] = (
                        _held(store, record.layer.weight.name, weight), bias)
                return row

            solved = dict(zip(map(id, losing), self._map(
                context, "obspa reconstruct", "layer", solve_reconstruct, losing,
                [r.layer.width for r in losing],
                lambda r: reconstruct_task(r, stored_hessian(store, r), plan.selection), keep),
                strict=True))
            table = [solved[id(record)] if id(record) in solved
                     else reconstruct_row(record, plan.selection, None)[0] for record in listed]
            self.count("reconstruct-seconds", time.perf_counter() - tick)
        reconstructed: dict[ir.Value, np.ndarray] = {}
        for record in listed:
            found = new_weights.get(id(record.layer.weight))
            if found is None:
                continue
            weight, bias = found
            reconstructed[record.layer.weight] = weight
            if bias is not None and record.layer.bias is not None:
                reconstructed[record.layer.bias] = bias
        context.analyses.reconstructed = reconstructed
        self.count("layers", len(records))
        self.count("hessians", len({r.key for r in records.values()}))
        self.count("stages", len(stage_seconds))
        self.count("weights-reconstructed", len(reconstructed))
        self.count("spilled-mb", store.spilled / 2**20)
        for row in table:
            if row["removed"]:
                self.count(f"error[{row['layer']}]", row["relative_error"])
                self.count(f"seconds[{row['layer']}]", row["seconds"])
        context.report["obspa"] = {
            "hessian": source, "options": self.pipeline_text(),
            "propagate": "original" if calibration is None or
                         self.options.propagate == "original" else "pruned",
            "groups": {"scored": len(scores), "unscored": len(unscored)},
            "too_wide": too_wide,
            "layers": table,
            "stages": [round(s, 4) for s in stage_seconds],
            "memory": {"budget_mb": self.options.memory, "spilled_mb": store.spilled / 2**20,
                       "peak_held_mb": store.peak / 2**20},
            "seconds": {"total": time.perf_counter() - started},
        }

    def _check_options(self) -> None:
        o = self.options
        if o.samples < 0 or o.rounds < 1 or o.positions < 1 or o.jobs < 0:
            raise InputError("obspa: samples and jobs must be >= 0, rounds and positions >= 1")
        if not 0.0 <= o.damp <= 10.0 or o.std <= 0:
            raise InputError("obspa: damp must be in [0, 10] and std positive")
        if o.memory < 0:
            raise InputError("obspa: memory must be >= 0 (megabytes)")
        if o.propagate == "pruned" and o.hessian == "bn":
            raise InputError("obspa: propagate=pruned needs activations; hessian=bn has none")

    @staticmethod
    def _layers(groups: list[Group], max_columns: int
                ) -> tuple[dict[int, LayerRecord], dict[str, str], list[str]]:
        records: dict[int, LayerRecord] = {}
        unscored: dict[str, str] = {}
        too_wide: set[str] = set()
        for group in groups:
            if not group.prunable:
                continue
            found = consumers(group)
            wide = [layer.name for layer, _ in found if layer.width > max_columns]
            too_wide.update(wide)
            found = [(layer, blocks) for layer, blocks in found if layer.width <= max_columns]
            if not found:
                unscored[group.id] = NO_CONSUMER if not wide else (
                    f"obspa: its only consumers are wider than max-columns: {', '.join(wide)}")
            for layer, blocks in found:
                record = records.setdefault(id(layer.weight), LayerRecord(layer))
                record.blocks[group.id] = blocks
        return records, unscored, sorted(too_wide)

    def _mode(self, model: ir.Model, context: PipelineContext, any_layer: bool
              ) -> tuple[str, str]:
        o = self.options
        mode = o.hessian
        fallback = ""
        if mode == "auto":
            mode = "data" if context.calibration is not None else (
                "synth" if can_synthesize(model) else "noise")
        if mode == "synth" and any_layer:
            fallback = synthesize(model, context, o.hessian == "synth", o.samples)
            mode = "noise" if fallback else "synth"
        return mode, fallback

    def _hessians(self, model: ir.Model, context: PipelineContext,
                  records: dict[int, LayerRecord], store: SpillStore
                  ) -> tuple[dict[str, Any], Any, list[float]]:
        """Every record's dampened Hessian into ``store``.

        Returns the facts for the report, the calibration used and the seconds per stage.
        """
        o = self.options
        mode, fallback = self._mode(model, context, bool(records))
        for record in records.values():
            record.with_bias = o.bias and record.layer.bias is not None
        if not records:
            return {"mode": mode}, None, []
        if mode == "bn":
            from spa_opt.passes.obspa_graph.analytic import bn_hessian, identity_hessian

            made: dict[tuple, LayerRecord] = {}
            for record in records.values():
                if _shares(made, record):
                    continue
                found = bn_hessian(record.layer, record.with_bias)
                width = record.layer.width + record.with_bias
                hessian = found if found is not None else identity_hessian(width)
                record.source = "bn" if found is not None else "identity (no BatchNorm source)"
                self._keep(store, record, dampen(hessian, o.damp))
            return {"mode": "bn"}, None, []
        calibration = self._calibration(model, context, "data" if mode == "synth" else mode)
        from spa_opt.passes.obspa_graph.analytic import identity_hessian

        by_weight = {id(r.layer.weight): r for r in records.values()}
        layers = [r.layer for r in records.values()]
        seconds: list[float] = []
        total = len(stages_for(model, layers))
        with progress(context.show_progress, total, "obspa hessians", "stage",
                      since=self._started) as advance:
            made: dict[tuple, LayerRecord] = {}
            for done in stream(model, layers, calibration, store, max_positions=o.positions,
                               seed=context.targets.seed, jobs=o.jobs,
                               executor=self._executor):
                wanted = []
                for layer in done.layers:
                    record = by_weight[id(layer.weight)]
                    record.stage = done.stage.index
                    if not _shares(made, record):
                        wanted.append((record, key_of(layer)))
                # an accumulator's last Hessian is made in its own sum (no d x d copy)
                last = {key: index for index, (_, key) in enumerate(wanted)}
                for index, (record, key) in enumerate(wanted):
                    hessian = done.accumulators[key].hessian(record.with_bias,
                                                             copy=last[key] != index)
                    record.source = mode
                    if not finite(hessian):  # activations overflowed float32
                        hessian = identity_hessian(hessian.shape[0])
                        record.source = f"identity ({mode} activations overflow)"
                    self._keep(store, record, dampen(hessian, o.damp))
                del done.accumulators
                seconds.append(done.seconds)
                advance(1, f"stage {done.stage.index + 1}/{total}: {done.seconds:.1f} s")
        facts = {"mode": mode, "source": calibration.source, "samples": calibration.samples,
                 "stages": total}
        if fallback:
            facts["fallback"] = fallback
        return facts, calibration, seconds

    @staticmethod
    def _keep(store: SpillStore, record: LayerRecord, hessian: np.ndarray) -> None:
        record.hessian_bytes = hessian.nbytes
        store.put(record.key, hessian)

    def _calibration(self, model: ir.Model, context: PipelineContext, mode: str) -> Any:
        o = self.options
        if mode == "data":
            if context.calibration is None:
                raise InputError("obspa<hessian=data> needs calibration inputs: give "
                                 "--calib FILE.npz or --calib IMAGE_FOLDER")
            calibration = context.calibration
            if o.samples and calibration.samples > o.samples:
                calibration = calibration.subset(o.samples, context.targets.seed)
            return calibration
        from spa_opt.noise import noise_calibration

        return noise_calibration(model, max(o.samples, 1), kind=o.noise, mean=(o.mean,),
                                 std=(o.std,), seed=context.targets.seed,
                                 dims=context.input_dims,
                                 exponent=(o.exponent, max(o.exponent, o.exponent_max)))

    def _order(self, context: PipelineContext, groups: list[Group],
               records: dict[int, LayerRecord], unscored: dict[str, str],
               store: SpillStore) -> dict[str, np.ndarray]:
        """Every scored group's unit scores (one task per group, or per part of a group)."""
        # A task's float64 weights and Hessians are gathered when it runs, not before:
        # gathered up front, every consumer's would be held at once.
        specs: list[tuple[Group, list[LayerRecord], Literal["none", "relative"]]] = []
        part_budget = max(self.options.memory << 19, PART_FLOOR)  # half the budget
        split = 0
        for group in groups:
            if not group.prunable or group.id in unscored:
                continue
            mine = [r for r in records.values() if group.id in r.blocks]
            parts = runs_within(mine, part_budget, group.id)
            split += len(parts) > 1
            norm = "none" if len(parts) > 1 else self.options.norm
            specs.extend((group, part, norm) for part in parts)
        results = self._map(
            context, "obspa order", "group", solve_order, specs,
            [max((r.layer.width for r in part), default=0) for _, part, _ in specs],
            lambda spec: self._task(spec[0], spec[1], store, spec[2]))
        owners = [group.id for group, _, _ in specs]
        scores: dict[str, np.ndarray] = {}
        for owner, result in zip(owners, results, strict=True):
            scores[owner] = scores[owner] + result.scores if owner in scores else result.scores
        if self.options.norm == "relative":
            for group in groups:
                mine = [r for r in records.values() if group.id in r.blocks]
                if group.id in scores and len(runs_within(mine, part_budget, group.id)) > 1:
                    scale = sum(energy(r.layer.matrix(r.with_bias), stored_hessian(store, r))
                                for r in mine)
                    scores[group.id] = scores[group.id] / scale if scale > 0 else \
                        scores[group.id]
        self.count("order-steps", sum(r.steps for r in results))
        self.count("order-float64-fallbacks",
                   sum(r.precision != self.options.precision for r in results))
        self.count("groups-split", split)
        return scores

    def _task(self, group: Group, part: list[LayerRecord], store: SpillStore,
              norm: Literal["none", "relative"]) -> OrderTask:
        consumers_ = [c for same in sharing(part)
                      for c in order_consumers(group.id, same, store, self.options.precision)]
        return OrderTask(group.id, group.units, np.flatnonzero(~group.pinned), consumers_,
                         self.options.order, self.options.rounds, norm,
                         self.options.precision)

    def _sequential(self, model: ir.Model, context: PipelineContext, groups: list[Group],
                    records: dict[int, LayerRecord], selection: dict[str, np.ndarray],
                    calibration: Any, store: SpillStore
                    ) -> tuple[dict, list[dict[str, Any]], list[float]]:
        from spa_opt.passes.obspa_graph.sequential import sequential

        layers = [r.layer for r in records.values()]
        infos = {id(r.layer.weight): r for r in records.values()}
        total = len(stages_for(model, layers))
        with progress(context.show_progress, total, "obspa sequential", "stage",
                      since=self._started) as advance:
            return sequential(model, layers, infos, groups, selection, calibration,
                              store, lambda r: stored_hessian(store, r),
                              max_positions=self.options.positions,
                              seed=context.targets.seed, damp=self.options.damp,
                              jobs=self.options.jobs, batch_bytes=DEFAULT_BATCH_BYTES,
                              progress=advance, executor=self._executor)

    def _map(self, context: PipelineContext, label: str, unit: str,
             function: Callable[[T], R], items: list[Any], sizes: list[int],
             prepare: Callable[[Any], T] | None = None,
             keep: Callable[[int, R], Any] | None = None) -> list[Any]:
        """The executor's ``map`` with a progress bar of one ``unit`` per finished item."""
        with progress(context.show_progress, len(items), label, unit,
                      since=self._started) as advance:
            return self._executor.map(function, items, sizes, advance, prepare, keep=keep)


def _held(store: SpillStore, name: str, weight: np.ndarray) -> np.ndarray:
    """``weight`` as the store keeps it: itself, or memory-mapped once past the budget.

    A spilled weight stays readable after the store closes (its file is unlinked, the
    mapping lives on), until ``prune`` has written it.
    """
    store.put(("weight", name), weight)
    return store.get(("weight", name))


def _shares(made: dict[tuple, LayerRecord], record: LayerRecord) -> bool:
    """Whether ``record``'s Hessian was made already (for a layer reading the same input).

    The first record of a key is remembered in ``made``; a later one takes its source and
    size, and the Hessian is neither computed nor stored again.
    """
    first = made.setdefault(record.key, record)
    if first is record:
        return False
    record.source, record.hessian_bytes = first.source, first.hessian_bytes
    return True


def layers_of(groups: Iterable[Group]) -> Iterator[Layer]:
    """Every consumer layer of the prunable groups (for benchmarks and tests)."""
    seen: set[int] = set()
    for group in groups:
        if group.prunable:
            for layer, _ in consumers(group):
                if id(layer.weight) not in seen:
                    seen.add(id(layer.weight))
                    yield layer


