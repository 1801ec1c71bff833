"""The base of gradient criteria: saliencies from the autodiff backend, scored per unit.

A gradient criterion computes one saliency tensor per weight (same shape as the
weight, keyed by initializer name) with the optional autodiff backend
(:mod:`spa_opt.autodiff`), then scores units exactly as the magnitude criteria score
weights: a unit's score on a member is the sum of the saliency over its slice, and
members combine with ``agg`` and ``norm`` (see :mod:`spa_opt.passes.criteria.base`).

The data-driven criteria read the pipeline's calibration inputs (``--calib``, or a
``synthesize`` pass earlier in the pipeline); the supervised loss is described in
:mod:`spa_opt.autodiff.gradients`. ``mode`` chooses how BatchNormalization behaves
while gradients are taken: ``eval`` uses the running statistics (a trained model),
``train`` the batch statistics (a model at initialisation, whose running statistics
are still the defaults).

Importing this module never imports torch: the backend is loaded when a criterion
runs, and a missing extra is a one-line error naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_ir as ir

import spa_opt.autodiff as autodiff
from spa_opt.errors import InputError
from spa_opt.passes._infra.base import option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes.coupling.groups import Member
from spa_opt.passes.criteria.base import CriterionOptions, CriterionPass, per_unit, slice_sums


@dataclasses.dataclass
class GradientOptions(CriterionOptions):
    """Options of the data-driven gradient criteria."""

    samples: int = option(256, "calibration samples the gradients are averaged over")
    batch: int = option(64, "samples per forward and backward pass")
    mode: Literal["eval", "train"] = option(
        "eval", "BatchNormalization statistics while taking gradients: running (eval) or "
        "batch (train)")


class GradientCriterion(CriterionPass):
    """Base of the criteria scored from per-weight saliencies (analysis)."""

    Options = GradientOptions
    needs_data: ClassVar[bool] = True
    unscored_why = "no weight member with a gradient"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._saliency: dict[str, np.ndarray] = {}

    def saliencies(self, graph: Any, data: list[Any], model: ir.Model,
                   context: PipelineContext) -> dict[str, Any]:
        """Per-weight saliency tensors by initializer name; subclasses implement this.

        Args:
            graph: The model as a :class:`~spa_opt.autodiff.graph.TorchGraph`.
            data: ``(feeds, labels)`` batches (empty for data-free criteria).
            model: The model.
            context: The pipeline context (targets, groups).
        """
        raise NotImplementedError

    def member_tensor(self, member: Member) -> np.ndarray | None:
        """The member's saliency (None: the member has no gradient and takes no part)."""
        return self._saliency.get(member.value.name)

    def member_scores(self, tensor: np.ndarray, member: Member, axis_positions: np.ndarray
                      ) -> np.ndarray:
        """Sum of the saliency over each unit's slice."""
        return per_unit(slice_sums(tensor), axis_positions)

    def _data(self, model: ir.Model, context: PipelineContext) -> list[Any]:
        if not self.needs_data:
            return []
        if context.calibration is None:
            raise InputError(f"'{self.name}' needs calibration inputs: give them (--calib "
                             f"FILE, or calibration= in the API; labels from its 'label' "
                             f"member, else the model's own predictions) or run "
                             f"'synthesize' before it")
        if self.options.samples < 1 or self.options.batch < 1:
            raise InputError(f"{self.name}: samples and batch must be at least 1")
        from spa_opt.autodiff.gradients import batches

        return list(batches(context.calibration, model, self.options.batch,
                            self.options.samples))

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Compute the saliencies with the backend, then score every group from them."""
        autodiff.require(f"the '{self.name}' criterion")
        import torch

        from spa_opt.autodiff.graph import TorchGraph

        data = self._data(model, context)
        graph = self.make_graph(model, TorchGraph)
        graph.train(getattr(self.options, "mode", "eval") == "train")
        self._saliency = {n: t.detach().cpu().numpy() for n, t in
                          self.saliencies(graph, data, model, context).items()}
        del graph
        torch.set_grad_enabled(True)
        try:
            return super().run(model, context)
        finally:
            self._saliency = {}

    def make_graph(self, model: ir.Model, graph_class: Any) -> Any:
        """The differentiable model (float32; SynFlow overrides it for float64)."""
        return graph_class(model)
