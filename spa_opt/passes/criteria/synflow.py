"""synflow: iterative synaptic flow pruning (Tanaka et al. 2020), data-free, per unit.

SynFlow linearises the network (every weight and statistic replaced by its absolute
value), feeds an all-ones input and takes ``R = sum(output)``, the total "synaptic
flow" through every path. A weight's saliency is ``|w dR/dw|``: the flow through it.
A unit's score is the saliency summed over its slice::

    score_u = sum_{p in P_u} sum_{rest} |W[p, rest] * dR/dW[p, rest]|

Pruning in one shot lets a layer collapse; SynFlow prunes in ``iterations`` rounds on
an exponential schedule instead: round ``k`` of ``n`` plans the targets raised to the
power ``k/n`` (FLOPs or params kept; ``1 - (1 - ratio)^(k/n)`` for a ratio) from the
current scores with the same planner as ``prune``, zeroes the chosen units (so their
flow, and their score, drop to zero) and scores again. The last round's scores are
the result; the units removed on the way score zero, so ``prune`` removes them first.
Products of many weights overflow float32, so the flow is computed in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.noise import noise_calibration
from spa_opt.passes._infra.base import option
from spa_opt.passes._infra.context import PipelineContext, Targets
from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.criteria.base import CriterionOptions
from spa_opt.passes.criteria.gradient import GradientCriterion
from spa_opt.passes.group import groups_of
from spa_opt.passes.pruning.plan import plan_selection


@dataclasses.dataclass
class SynFlowOptions(CriterionOptions):
    """SynFlow's options: the number of pruning rounds."""

    iterations: int = option(
        20, "pruning rounds on the exponential schedule (1: one-shot scores)")


def _partial(targets: Targets, fraction: float) -> Targets:
    """The targets a fraction of the way along the exponential schedule."""
    return dataclasses.replace(
        targets,
        ratio=None if targets.ratio is None else 1.0 - (1.0 - targets.ratio) ** fraction,
        target_flops=None if targets.target_flops is None else targets.target_flops**fraction,
        target_params=None if targets.target_params is None
        else targets.target_params**fraction,
        target_latency=None if targets.target_latency is None
        else targets.target_latency**fraction)


@register
class SynFlowCriterion(GradientCriterion):
    """Score units by the synaptic flow through them, pruning iteratively (analysis)."""

    name = "synflow"
    Options = SynFlowOptions
    needs_data = False

    def make_graph(self, model: ir.Model, graph_class: Any) -> Any:
        """The model in float64, as SynFlow multiplies many weights."""
        import torch

        return graph_class(model, dtype=torch.float64)

    def saliencies(self, graph: Any, data: list[Any], model: ir.Model,
                   context: PipelineContext) -> dict[str, Any]:
        """The flow saliencies after the iterative schedule."""
        import torch

        if self.options.iterations < 1:
            raise InputError(f"synflow: iterations must be at least 1, got "
                             f"{self.options.iterations}")
        with torch.no_grad():
            for _, tensor in graph.named_initializers(trainable=False):
                if tensor.is_floating_point():
                    tensor.abs_()
        feeds = {name: np.ones_like(a) if a.dtype.kind == "f" else np.zeros_like(a)
                 for name, a in noise_calibration(model, 1, kind="white",
                                                  dims=context.input_dims).feeds.items()}
        targets = context.targets
        rounds = self.options.iterations if targets.given else 1
        groups = groups_of(model, context)
        for k in range(1, rounds + 1):
            saliency = self._flow(graph, feeds)
            if k == rounds:
                return saliency
            self._saliency = {n: t.numpy() for n, t in saliency.items()}
            scores = {}
            for index, group in enumerate(groups):
                if group.prunable and (s := self.score_group(group, index, context)) is not None:
                    scores[group.id] = s
            plan = plan_selection(model, groups, _partial(targets, k / rounds), scores,
                                  context.analyses.dead, latency=context.latency,
                                  input_dims=context.input_dims, measure_latency=False)
            self._mask(graph, groups, plan.selection)
        raise AssertionError("unreachable")

    @staticmethod
    def _flow(graph: Any, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """``|w dR/dw|`` with ``R`` the sum of the first output."""
        import torch

        names, weights = zip(*graph.named_initializers(), strict=True)
        flow = graph.run(feeds)[graph.output_names[0]].sum()
        grads = torch.autograd.grad(flow, weights, allow_unused=True)
        return {n: (w.detach() * g).abs() for n, w, g in zip(names, weights, grads, strict=True)
                if g is not None}

    @staticmethod
    def _mask(graph: Any, groups: list[Group], selection: dict[str, np.ndarray]) -> None:
        """Zero the selected units in every weight member of their groups."""
        import torch

        tensors = dict(graph.named_initializers(trainable=False))
        with torch.no_grad():
            for group in groups:
                units = selection.get(group.id)
                if units is None or not len(units):
                    continue
                for member in group.weights:
                    tensor = tensors.get(member.value.name)
                    if tensor is None or not tensor.is_floating_point():
                        continue
                    positions = member.index_map.positions[units].ravel()
                    tensor.index_fill_(member.axis, torch.as_tensor(positions), 0.0)
