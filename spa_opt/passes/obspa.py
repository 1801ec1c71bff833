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
    spectrum with ``e`` drawn per sample from [``exponent``, ``exponent-max``] (1 is
    the spectrum of natural images, larger is smoother; the mix measured best), or
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
from spa_opt.obs.linalg import dampen, energy, error, reconstruct
from spa_opt.obs.order import Consumer, OrderTask, solve_order
from spa_opt.obs.threads import run_tasks
from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.instruments import progress
from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.group import groups_of
from spa_opt.passes.obspa_graph.layers import Layer, consumers
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
    exponent: float = option(1.0, "pink noise amplitude falls as 1/f^exponent")
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


@dataclasses.dataclass
class _LayerInfo:
    layer: Layer
    blocks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    hessian: np.ndarray | None = None
    source: str = ""
    with_bias: bool = False


@register
class ObspaPass(SpaPass):
    """Order, select and reconstruct with structured OBS from layer-wise Hessians (analysis)."""

    name = "obspa"
    Options = ObspaOptions
    preserves_analyses = True
    _started: float = 0.0
    """``time.perf_counter()`` when the current run began: the progress bars' delay
    counts from there."""

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Hessians, order, selection, reconstruction, report."""
        self._started = time.perf_counter()
        self._check_options()
        _refuse_quantized(model)
        groups = groups_of(model, context)
        with temporary_shapes(model, symbolic=True):  # weight shapes, outputs, costs
            self._run(model, context, groups)
        return ir.passes.PassResult(model, False)

    def _run(self, model: ir.Model, context: PipelineContext, groups: list[Group]) -> None:
        started = time.perf_counter()
        layers, unscored, too_wide = self._layers(groups, self.options.max_columns)
        source = self._hessians(model, context, layers)
        self.count("hessian-seconds", time.perf_counter() - started)

        tick = time.perf_counter()
        tasks = [self._task(g, layers) for g in groups if g.prunable and g.id not in unscored]
        results = self._map(context, "obspa order", "group", solve_order, tasks,
                            [max((c.weight.shape[1] for c in t.consumers), default=0)
                             for t in tasks])
        scores = {r.group: r.scores for r in results}
        self.count("order-seconds", time.perf_counter() - tick)
        self.count("order-steps", sum(r.steps for r in results))
        context.analyses.update(scores=scores, criterion=self.pipeline_text())

        plan = plan_selection(model, groups, context.targets, scores, context.analyses.dead,
                              unscored)
        context.analyses.update(selection=plan.selection, plan=plan)

        tick = time.perf_counter()
        infos = list(layers.values())
        rows = self._map(context, "obspa reconstruct", "layer",
                         lambda info: _reconstruct(info, plan.selection), infos,
                         [i.layer.width for i in infos])
        reconstructed: dict[ir.Value, np.ndarray] = {}
        for info, (_, weight, bias) in zip(layers.values(), rows, strict=True):
            if weight is not None:
                reconstructed[info.layer.weight] = weight
                if bias is not None and info.layer.bias is not None:
                    reconstructed[info.layer.bias] = bias
        context.analyses.reconstructed = reconstructed
        self.count("reconstruct-seconds", time.perf_counter() - tick)
        self.count("layers", len(layers))
        self.count("weights-reconstructed", len(reconstructed))
        table = [row for row, _, _ in rows]
        for row in table:
            if row["removed"]:
                self.count(f"error[{row['layer']}]", row["relative_error"])
                self.count(f"seconds[{row['layer']}]", row["seconds"])
        context.report["obspa"] = {
            "hessian": source, "options": self.pipeline_text(),
            "groups": {"scored": len(scores), "unscored": len(unscored)},
            "too_wide": too_wide,
            "layers": table,
            "seconds": {"total": time.perf_counter() - started},
        }

    def _check_options(self) -> None:
        o = self.options
        if o.samples < 0 or o.rounds < 1 or o.positions < 1 or o.jobs < 0:
            raise InputError("obspa: samples and jobs must be >= 0, rounds and positions >= 1")
        if not 0.0 <= o.damp <= 10.0 or o.std <= 0:
            raise InputError("obspa: damp must be in [0, 10] and std positive")

    @staticmethod
    def _layers(groups: list[Group], max_columns: int
                ) -> tuple[dict[int, _LayerInfo], dict[str, str], list[str]]:
        layers: dict[int, _LayerInfo] = {}
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
                info = layers.setdefault(id(layer.weight), _LayerInfo(layer))
                info.blocks[group.id] = blocks
        return layers, unscored, sorted(too_wide)

    def _hessians(self, model: ir.Model, context: PipelineContext,
                  layers: dict[int, _LayerInfo]) -> dict[str, Any]:
        o = self.options
        mode = o.hessian
        fallback = ""
        if mode == "auto":
            mode = "data" if context.calibration is not None else (
                "synth" if _can_synthesize(model) else "noise")
        if mode == "synth" and layers:
            fallback = _synthesize(model, context, o.hessian == "synth", o.samples)
            mode = "noise" if fallback else "synth"
        for info in layers.values():
            info.with_bias = o.bias and info.layer.bias is not None
        if not layers:
            return {"mode": mode}
        if mode == "bn":
            from spa_opt.passes.obspa_graph.analytic import bn_hessian, identity_hessian

            for info in layers.values():
                found = bn_hessian(info.layer, info.with_bias)
                width = info.layer.width + info.with_bias
                info.hessian = found if found is not None else identity_hessian(width)
                info.source = "bn" if found is not None else "identity (no BatchNorm source)"
                dampen(info.hessian, o.damp)
            return {"mode": "bn"}
        calibration = self._calibration(model, context, "data" if mode == "synth" else mode)
        from spa_opt.passes.obspa_graph.layers import key_of
        from spa_opt.passes.obspa_graph.propagate import accumulate

        with progress(context.show_progress, calibration.samples, "obspa hessians",
                      "sample", since=self._started) as advance:
            accumulators = accumulate(
                model, [i.layer for i in layers.values()], calibration,
                max_positions=o.positions, seed=context.targets.seed, jobs=o.jobs,
                progress=advance)
        from spa_opt.passes.obspa_graph.analytic import identity_hessian

        for info in layers.values():
            hessian = accumulators[key_of(info.layer)].hessian(info.with_bias)
            info.source = mode
            if not np.isfinite(hessian).all():  # activations overflowed float32
                hessian = identity_hessian(hessian.shape[0])
                info.source = f"identity ({mode} activations overflow)"
            info.hessian = dampen(hessian, o.damp)
        facts = {"mode": mode, "source": calibration.source, "samples": calibration.samples}
        if fallback:
            facts["fallback"] = fallback
        return facts


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

    def _task(self, group: Group, layers: dict[int, _LayerInfo]) -> OrderTask:
        consumers_ = []
        for info in layers.values():
            blocks = info.blocks.get(group.id)
            if blocks is not None:
                weight = info.layer.matrix(info.with_bias)
                consumers_.append(Consumer(info.layer.name, weight, info.hessian, blocks))
        return OrderTask(group.id, group.units, np.flatnonzero(~group.pinned), consumers_,
                         self.options.order, self.options.rounds, self.options.norm)

    def _map(self, context: PipelineContext, label: str, unit: str,
             function: Callable[[T], R], items: list[T], sizes: list[int]) -> list[R]:
        """``run_tasks`` with a progress bar of one ``unit`` per finished item."""
        with progress(context.show_progress, len(items), label, unit,
                      since=self._started) as advance:
            return run_tasks(function, items, sizes, self.options.jobs, advance)


def _reconstruct(info: _LayerInfo, selection: dict[str, np.ndarray]
                 ) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """One layer's new weights for the selected removal, and its report row."""
    start = time.perf_counter()
    removed_parts = [blocks[selection[g]].ravel() for g, blocks in info.blocks.items()
                     if g in selection and len(selection[g])]
    removed = np.unique(np.concatenate(removed_parts)) if removed_parts else \
        np.zeros(0, np.int64)
    layer = info.layer
    row: dict[str, Any] = {
        "layer": layer.name, "op": layer.node.op_type, "weight": layer.weight.name,
        "columns": layer.width, "removed": int(removed.size), "source": info.source,
        "error": 0.0, "relative_error": 0.0, "rewritten": False, "seconds": 0.0,
    }
    if removed.size == 0 or info.hessian is None:
        return row, None, None
    weight = layer.matrix(info.with_bias)
    new = reconstruct(weight, info.hessian, removed)
    scale = energy(weight, info.hessian)
    row["error"] = error(weight, new, info.hessian)
    row["relative_error"] = row["error"] / scale if scale > 0 else 0.0
    row["seconds"] = time.perf_counter() - start
    if not layer.rewritable:
        return row, None, None
    row["rewritten"] = True
    new_weight, new_bias = layer.unmatrix(new)
    return row, new_weight, new_bias


def layers_of(groups: Iterable[Group]) -> Iterator[Layer]:
    """Every consumer layer of the prunable groups (for benchmarks and tests)."""
    seen: set[int] = set()
    for group in groups:
        if group.prunable:
            for layer, _ in consumers(group):
                if id(layer.weight) not in seen:
                    seen.add(id(layer.weight))
                    yield layer


def _can_synthesize(model: ir.Model) -> bool:
    """Whether the data-free default can synthesize inputs: the extra, float inputs only."""
    import spa_opt.autodiff as autodiff

    inputs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    return autodiff.available() and bool(inputs) and all(
        v.dtype is not None and v.dtype.is_floating_point() for v in inputs)


def _synthesize(model: ir.Model, context: PipelineContext, explicit: bool, samples: int
                ) -> str:
    """Run ``synthesize`` (its defaults, ``samples`` inputs) into the context; why not, or ''.

    Asked for explicitly (``hessian=synth``) a failure is the user's error; as the
    data-free default it falls back to noise and the report says why.
    """
    from spa_opt.passes.synthesize import SynthesizePass

    synthesizer = SynthesizePass(**({"samples": samples} if samples else {}))
    synthesizer.stats = {}
    try:
        synthesizer.run(model, context)
    except Exception as error:  # the data-free default must not fail where noise works
        if explicit:
            raise
        return f"synthesize failed, noise used: {type(error).__name__}: {error}"
    return ""
