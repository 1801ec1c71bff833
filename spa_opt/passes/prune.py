"""prune: remove the selected channels physically (transform).

Rules:

- the groups come from the context (``group`` runs on demand if it did not);
- the selection is the context's ``selection`` when an earlier pass chose the units
  (obspa), and the weights it ``reconstructed`` get their new values before slicing
  (their removed positions are then sliced away like any other); otherwise it is
  planned here (:mod:`spa_opt.passes.pruning.plan`) from the scores of the last
  criterion (``l1`` when targets are given and no criterion ran), the ``dead``
  analysis when it ran, and the targets;
- a group is skipped, with the reason in the report, when ``--ignore`` matches a node
  it touches, when the criterion could not score it, or when one of its patches cannot
  follow a removal; pinned units and the last unit of a group always stay;
- removal slices weights lazily, rewrites every patched count, sets the new declared
  shapes, then removes dead nodes and unused initializers (:mod:`.pruning.apply`);
- groups in the context's ``growth`` (``precrop<preconfig=true>``: group id to units
  added) grow in the same edit: new units at the end of every member, initialised like
  the existing ones, depthwise group counts and shape entries rewritten
  (:mod:`.pruning.growth`; a grown group owns its axes, so no removal touches them); the
  report's ``prune`` then lists them as ``grown`` and ``channels`` counts them as
  ``added``;
- with a latency target or ``--round-to auto`` the plan came with the latency model's
  prediction (:mod:`spa_opt.latency`); the pruned model is timed the same way and the
  report's target gains the measured figures (``measured_after``, ``measured_kept``,
  ``prediction_error``, and for a target ``measured_reached`` within 5%);
- with a saved plan in the context (``--plan``) and no selection, the plan's selection
  is applied (:mod:`.pruning.replay`: each planned group matched by weight name, else
  by structure and values; the report's ``prune.replay`` says how); with the context's
  ``record_plan`` set (``--save-plan``) the run leaves its own plan in
  ``plan_document`` (replay's same_structure check also records it);
- the result is checked (full onnx checker, strict shape inference, channel counts):
  a failure raises before anything is written, never an invalid model;
- the report gains ``prune`` (per group removed units, skipped groups, target outcome,
  per-layer weight shapes before and after) and ``channels``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.ir.check import check_model
from spa_opt.ir.cost import is_param, node_cost
from spa_opt.ir.ops import WEIGHTED
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.ir.tensors import set_constant
from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.criteria.base import current_scores
from spa_opt.passes.dce import DeadCodeEliminationPass
from spa_opt.passes.group import groups_of
from spa_opt.passes.pruning.apply import apply_removal, set_new_shapes
from spa_opt.passes.pruning.growth import apply_growth, set_grown_shapes
from spa_opt.passes.pruning.plan import plan_selection
from spa_opt.passes.pruning.removal import Removal
from spa_opt.passes.pruning.replay import fingerprint, plan_document, replay


@dataclasses.dataclass
class PruneOptions:
    """Options of ``prune``."""

    check: bool = option(True, "verify the result with the full checker before going on")


def _layers(model: ir.Model) -> dict[str, dict[str, Any]]:
    """Every weighted layer: op, weight name and shape, its FLOPs and its params.

    The FLOPs are counted on inferred shapes (as the targets are); the params are the
    float initializer elements the node reads (weight and bias), for the HTML report's
    per-layer columns.
    """
    with temporary_shapes(model, symbolic=True):
        return _layers_shaped(model)


def _layers_shaped(model: ir.Model) -> dict[str, dict[str, Any]]:
    """:func:`_layers` inside a ``temporary_shapes`` block the caller holds."""
    layers = {}
    for node in model.graph.all_nodes():
        weight = node.inputs[1] if node.op_type in WEIGHTED and len(node.inputs) > 1 else None
        if weight is None or weight.const_value is None:
            continue
        params = sum(int(np.prod(v.const_value.shape.numpy())) for v in node.inputs
                     if v is not None and v.const_value is not None and is_param(v))
        shape = [int(d) for d in weight.const_value.shape]
        layers[node.name or ""] = {"op": node.op_type, "weight": weight.name or "",
                                   "shape": shape, "width": _out_width(node, shape),
                                   "flops": node_cost(node).flops, "params": params}
    return layers


def _out_width(node: ir.Node, shape: list[int]) -> int | None:
    """The layer's output channels, read from its weight's shape and its attributes."""
    if not shape:
        return None
    if node.op_type == "Conv":
        return shape[0]
    if node.op_type == "ConvTranspose":
        return shape[1] * node.attributes.get_int("group", 1) if len(shape) > 1 else None
    if node.op_type == "Gemm":
        if len(shape) != 2:
            return None
        return shape[0] if node.attributes.get_int("transB", 0) else shape[1]
    return shape[-1]  # MatMul: (..., K, N)


def _pipeline_text(context: PipelineContext) -> str:
    """What chose the selection, for the plan file: the criterion, or ``prune`` alone."""
    return context.analyses.criterion or "prune"


def _write_reconstructed(context: PipelineContext) -> int:
    """Give the weights an earlier pass reconstructed their new values, before slicing."""
    reconstructed = context.analyses.reconstructed or {}
    for value, data in reconstructed.items():
        set_constant(value, data)
    return len(reconstructed)


def _nothing_removed(context: PipelineContext, skipped: list, groups: list) -> str:
    """Why a run with prunable groups removed nothing, in words."""
    if context.analyses.selection is not None:
        return "nothing removed: the given selection is empty"
    if context.targets.given:
        if skipped:
            return f"nothing removed: every eligible group was skipped ({len(skipped)})"
        round_to = context.targets.round_to
        widest = max((g.channels for g in groups if g.prunable), default=0)
        if round_to != "auto" and round_to > 1 and 0 < widest <= round_to:
            # Keeping a multiple of round_to channels means keeping them all (issue 16).
            return (f"nothing removed: the --round-to step ({round_to} channels) is not "
                    f"smaller than any prunable group (the widest has {widest} channels), "
                    "so every group keeps all its channels")
        return "nothing removed: the targets are met without removing a unit"
    if context.analyses.dead is not None:
        return "nothing removed: the dead analysis found no removable zero channels"
    return ("nothing removed: give --ratio, --target-flops or --target-params, "
            "or run the dead analysis before prune")


#: How far above the latency target the measured pruned model may be and still count as
#: met (the plan was checked on timed copies, :mod:`.pruning.trial`; this final timing of
#: the result, beside the original, is what the report calls measured).
LATENCY_TOLERANCE = 0.05


def _measure_pruned(original: ir.Model, model: ir.Model, context: PipelineContext,
                    outcome: dict[str, Any]) -> None:
    """Time the pruned model in alternation with the original; report both.

    The kept fraction is the median of per-round ratios (:func:`time_paired`), so a slow
    spell of the machine does not decide it; the prediction error compares the latency
    model's predicted fraction with it.
    """
    from spa_opt.latency import LatencySpec, model_feed, time_paired, timer_for

    detail = outcome["latency_model"]
    timer = timer_for(context.latency or LatencySpec())
    paired = time_paired(timer, original, model, model_feed(model, context.input_dims))
    predicted = detail["predicted_after"] / detail["measured_before"]
    detail.update(predicted_kept=predicted, measured_before=paired.before,
                  measured_after=paired.after, measured_kept=paired.ratio,
                  prediction_error=predicted / paired.ratio - 1.0 if paired.ratio else 0.0)
    target = outcome.get("latency")
    if target is not None:
        target["measured_achieved"] = paired.ratio
        target["tolerance"] = LATENCY_TOLERANCE
        target["measured_reached"] = paired.ratio <= target["keep"] * (1 + LATENCY_TOLERANCE)


@register
class PrunePass(SpaPass):
    """Remove selected channel groups physically and patch every channel count (transform)."""

    name = "prune"
    Options = PruneOptions

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Plan, remove, clean up, check and report."""
        groups = groups_of(model, context)
        by_id = {g.id: g for g in groups}
        skipped: list[dict[str, str]] = []
        outcome = None
        with temporary_shapes(model, symbolic=True):
            layers_before = _layers_shaped(model)
            selection = context.analyses.selection
            replayed = None
            if selection is None and context.replay_plan is not None:
                selection, replayed = replay(context.replay_plan, groups)
                structure = fingerprint(groups)
            if selection is None:
                targets = context.targets
                scores = current_scores(model, context) if targets.given else None
                plan = plan_selection(model, groups, targets, scores, context.analyses.dead,
                                      latency=context.latency, input_dims=context.input_dims,
                                      io=context.io)
                selection, skipped, outcome = plan.selection, plan.skipped, plan.target
            elif context.analyses.plan is not None:  # the selecting pass kept its plan's report
                skipped, outcome = context.analyses.plan.skipped, context.analyses.plan.target
            # With a latency figure to check, the original is kept to time beside the result.
            original = (ir.from_proto(ir.to_proto(model))
                        if outcome is not None and "latency_model" in outcome else None)
            removal = Removal(groups, selection)
            if context.record_plan:
                context.plan_document = plan_document(groups, selection,
                                                      _pipeline_text(context))
            if removal:
                self.count("weights-reconstructed", _write_reconstructed(context))
                patches = [p for g in groups if g.id in selection for p in g.patches]
                for key, value in apply_removal(model.graph, removal, patches).items():
                    self.count(key, value)
            growth = context.analyses.growth or {}
            grown: list[dict[str, Any]] = []
            if growth:
                grown, patched = apply_growth(model.graph, groups, growth, context.targets.seed)
                self.count("nodes-patched", patched)
        for row in grown:
            self.count("channels-added", row["channels_added"])
        if removal or grown:
            set_grown_shapes(groups, growth)
            set_new_shapes(removal)
            nodes = sum(1 for _ in model.graph.all_nodes())
            DeadCodeEliminationPass()(model)
            self.count("nodes-removed", nodes - sum(1 for _ in model.graph.all_nodes()))
            if self.options.check:
                check_model(model)
        if original is not None:
            _measure_pruned(original, model, context, outcome)
        removed = {gid: units for gid, units in selection.items() if len(units)}
        self.count("groups-pruned", len(removed))
        self.count("channels-removed", sum(len(u) * by_id[g].block for g, u in removed.items()))
        context.report["prune"] = self._report(groups, removed, skipped, outcome,
                                               layers_before, _layers(model))
        if grown:
            context.report["prune"]["grown"] = grown
        if replayed is not None:
            context.report["prune"]["replay"] = {
                "groups": replayed,
                "same_structure": context.replay_plan.get("fingerprint") == structure}
        if context.report["prune"]["message"] is None and not removed and not grown:
            context.report["prune"]["message"] = _nothing_removed(context, skipped, groups)
        context.report["channels"] = {
            "total": sum(g.channels for g in groups if g.prunable),
            "removed": self.stats["channels-removed"],
        }
        if grown:
            context.report["channels"]["added"] = self.stats["channels-added"]
        return ir.passes.PassResult(model, bool(removal) or bool(grown))

    @staticmethod
    def _report(groups: list[Group], removed: dict[str, np.ndarray], skipped: list,
                outcome: dict[str, Any] | None, before: dict, after: dict) -> dict[str, Any]:
        pruned = [
            {"group": g.id, "primary": f"{g.primary.name}:{g.primary.axis}", "units": g.units,
             "block": g.block, "removed": len(removed[g.id]),
             "channels_removed": len(removed[g.id]) * g.block,
             "units_removed": removed[g.id].tolist()}
            for g in groups if g.id in removed
        ]
        layers = []
        for name, layer in before.items():
            now = after.get(name, {})
            layers.append({"node": name, "op": layer["op"], "weight": layer["weight"],
                           "before": layer["shape"], "after": now.get("shape"),
                           "width": {"before": layer["width"], "after": now.get("width")},
                           "flops": {"before": layer["flops"], "after": now.get("flops", 0)},
                           "params": {"before": layer["params"],
                                      "after": now.get("params", 0)}})
        prunable = sum(g.prunable for g in groups)
        message = None
        if not prunable:
            message = "nothing to prune: every group is pinned (see --print-groups for why)"
        return {"groups": pruned, "skipped": skipped, "target": outcome, "layers": layers,
                "message": message}
