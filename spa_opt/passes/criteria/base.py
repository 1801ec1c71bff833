"""The base of group-level importance criteria: score every unit of every prunable group.

A criterion is an analysis. For each prunable group it reads every weight member that
has a role (``out``, ``in``, ``scale``, ``shift``, ``param``), moves the member's axis
to the front, and asks the subclass for one score per group unit
(:meth:`CriterionPass.member_scores`; a unit's score on a member is usually the sum
over its block positions of per-position scores). Then:

- ``agg`` combines a group's member scores unit by unit: ``sum``, ``mean``, ``max``,
  ``prod`` (product), or ``first``: the scores of the group's primary member
  (:attr:`Group.primary`), or of the first scored member when the primary did not score;
- ``norm`` rescales the combined scores: ``none``; ``mean``, ``max`` or ``sum``: divide by
  that statistic; ``minmax``: ``(s - min) / (max - min)``. A zero denominator leaves the
  scores as they are (``minmax`` then gives zeros). ``share`` (magnitude criteria ``l1``
  and ``l2`` only) instead rescales each *member* before ``agg`` combines them
  (:func:`member_share`): a unit's score on a member becomes the fraction of that
  member's total it carries.

The defaults, ``agg=mean`` and ``norm=mean``, follow Torch-Pruning's ``group_reduction``
and ``normalizer``.

Across groups (``--scope global``; the ``local`` scope only uses the order within each
group, so no normalisation changes it) the per-group normalisations do not compare.
``mean`` gives every group a mean score of 1 whatever it is: the residual stream, whose
every channel is read by every layer, then ranks with an MLP whose channels each feed one
layer, and its weakest channels go as early as the MLP's weakest (measured on the trained
byte-level Llama: ``bench/llm.py``). ``share`` with ``agg=sum`` scores a unit by how many
members' worth of weight it removes: the fraction of each member it carries, summed. That
is free of the members' scales (an RMSNorm gain of 1 against a 688-wide projection),
falls with the group's width (one of 688 channels carries less than one of 256) and grows
with the number of members (a residual channel touches every projection of every layer),
so one order ranks MLP channels, attention heads and residual channels together.
 Results go to ``context.analyses.scores`` (a new dict each run,
``{group.id: float64 array of shape (group.units,)}``: the last criterion of a pipeline
wins) and ``context.analyses.criterion`` (its pipeline text). Groups the criterion
cannot score get no entry and are listed, with why, in the report's ``criterion``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.ir.quant import float_weight
from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import get_pass
from spa_opt.passes.coupling.groups import Group, Member
from spa_opt.passes.group import groups_of


@dataclasses.dataclass
class CriterionOptions:
    """Options shared by every criterion."""

    agg: Literal["sum", "mean", "max", "prod", "first"] = option(
        "mean",
        "how a group's member scores combine per unit: sum, mean, max, prod (product), "
        "or first (the group's primary member)",
    )
    norm: Literal["none", "mean", "max", "sum", "minmax"] = option(
        "mean",
        "how a group's scores are rescaled: none, divided by their mean, max or sum, "
        "or minmax to [0, 1]",
    )


@dataclasses.dataclass
class MagnitudeOptions(CriterionOptions):
    """Options of the magnitude criteria (l1, l2): ``norm`` may also be ``share``."""

    norm: Literal["none", "mean", "max", "sum", "minmax", "share"] = option(  # type: ignore
        "mean",
        "how a group's scores are rescaled: none, divided by their mean, max or sum, "
        "minmax to [0, 1], or share: each member's scores divided by the member's sum "
        "before agg (comparable across groups in the global scope with agg=sum)",
    )


def slice_sums(values: np.ndarray) -> np.ndarray:
    """Sum over every axis but the first, accumulated in float64 (weights stay float32)."""
    return values.reshape(values.shape[0], -1).sum(axis=1, dtype=np.float64)


def per_unit(per_position: np.ndarray, axis_positions: np.ndarray) -> np.ndarray:
    """Sum per-position scores over each unit's block positions."""
    return per_position[axis_positions].sum(axis=1)


def unit_slices(tensor: np.ndarray, axis_positions: np.ndarray) -> np.ndarray:
    """Each unit's whole slice (all its block positions, every other axis), flattened."""
    return tensor[axis_positions].reshape(axis_positions.shape[0], -1)


def combine(scores: list[tuple[Member, np.ndarray]], primary: Member, agg: str) -> np.ndarray:
    """Combine a group's member scores per unit with ``agg`` (see the module docstring)."""
    if agg == "first":
        return next((s for m, s in scores if m is primary), scores[0][1])
    stacked = np.stack([s for _, s in scores])
    return {"sum": np.sum, "mean": np.mean, "max": np.max, "prod": np.prod}[agg](stacked, axis=0)


def member_share(scores: np.ndarray) -> np.ndarray:
    """A member's unit scores as fractions of the member's total (unchanged if it is 0).

    The cross-group normalisation of ``norm=share`` (see the module docstring), applied
    per member before ``agg``; any criterion whose scores are magnitudes can call it.
    """
    total = float(np.sum(scores))
    return scores / total if total > 0 else scores


def normalize(scores: np.ndarray, norm: str) -> np.ndarray:
    """Rescale a group's scores with ``norm`` (see the module docstring).

    ``share`` acts on members before they combine (:func:`member_share`), so here it
    leaves the combined scores as they are.
    """
    if norm in ("none", "share") or scores.size == 0:
        return scores
    if norm == "minmax":
        low, span = scores.min(), scores.max() - scores.min()
        return (scores - low) / span if span else np.zeros_like(scores)
    denominator = {"mean": np.mean, "max": np.max, "sum": np.sum}[norm](scores)
    return scores / denominator if denominator else scores


class CriterionPass(SpaPass):
    """Base of the criteria: one score per unit of every prunable group (analysis)."""

    Options = CriterionOptions
    preserves_analyses = True
    roles: ClassVar[frozenset[str]] = frozenset({"out", "in", "scale", "shift"})
    """Member roles the criterion reads; others are not even loaded. Statistics
    (``param``: a BatchNorm's running mean and variance) are not magnitudes."""
    unscored_why: ClassVar[str] = "no weight member this criterion scores"
    """Why a group got no score, for the report."""

    def member_scores(
        self, tensor: np.ndarray, member: Member, axis_positions: np.ndarray
    ) -> np.ndarray | None:
        """One member's score per group unit; subclasses implement this.

        Args:
            tensor: The member's weight (float32 or float64; reduce with ``dtype=np.float64``),
                with ``member.axis`` moved to the front.
            member: The group member (name, roles, index map).
            axis_positions: ``(units, block)``: the front-axis positions of each unit.

        Returns:
            A ``(units,)`` array, or None when this member does not take part.
        """
        raise NotImplementedError

    def member_tensor(self, member: Member) -> np.ndarray | None:
        """The tensor a member is scored from: its weight; gradient criteria give a saliency.

        The weight as the real values it stands for (:func:`spa_opt.ir.quant.float_weight`):
        int8 codes of a QDQ or QOperator graph dequantized per channel, fp16/bf16 widened,
        so magnitudes compare across channels with different scales.
        """
        return float_weight(member.value)

    def start_group(self, group: Group, index: int, context: PipelineContext) -> None:
        """Called before a group's members are scored (``index``: its place in ``groups``)."""

    def score_group(self, group: Group, index: int, context: PipelineContext) -> np.ndarray | None:
        """The group's combined, normalized scores, or None when no member scored."""
        self.start_group(group, index, context)
        scored: list[tuple[Member, np.ndarray]] = []
        for member in group.weights:
            if not self.roles & set(member.roles):
                continue
            array = self.member_tensor(member)
            if array is None or array.ndim == 0:
                continue
            if array.dtype not in (np.float32, np.float64):
                array = array.astype(np.float32)  # half precision: widen once, not per op
            tensor = np.moveaxis(array, member.axis, 0)
            scores = self.member_scores(tensor, member, member.index_map.positions)
            if scores is not None:
                unit_scores = np.asarray(scores, dtype=np.float64).reshape(group.units)
                if self.options.norm == "share":
                    unit_scores = member_share(unit_scores)
                scored.append((member, unit_scores))
        if not scored:
            return None
        combined = combine(scored, group.primary, self.options.agg)
        return normalize(combined.astype(np.float64), self.options.norm)

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Score every prunable group; store the scores and report what went unscored."""
        scores: dict[str, np.ndarray] = {}
        unscored: list[dict[str, str]] = []
        for index, group in enumerate(groups_of(model, context)):
            if not group.prunable:
                continue
            result = self.score_group(group, index, context)
            if result is None:
                unscored.append({"group": group.id, "why": self.unscored_why})
            else:
                scores[group.id] = result
        context.analyses.update(scores=scores, criterion=self.pipeline_text())
        context.report["criterion"] = {
            "name": self.name,
            "pipeline": self.pipeline_text(),
            "scored": len(scores),
            "unscored": unscored,
        }
        self.count("groups-scored", len(scores))
        self.count("groups-unscored", len(unscored))
        return ir.passes.PassResult(model, False)


DEFAULT_CRITERION = "l1"
"""The criterion that scores units when targets are given and no criterion ran."""


def current_scores(model: ir.Model, context: PipelineContext) -> dict[str, np.ndarray]:
    """The context's scores, or the default criterion's when no criterion ran.

    The one place that decides what "no criterion" means: ``prune`` and ``precrop``
    plan from these; planning itself (:mod:`spa_opt.passes.pruning.plan`) never scores.
    """
    if context.analyses.scores is not None:
        return context.analyses.scores
    return score_groups(model, context, DEFAULT_CRITERION)


def score_groups(
    model: ir.Model, context: PipelineContext, criterion_name: str = "l1", **options: Any
) -> dict[str, np.ndarray]:
    """Run the criterion ``criterion_name`` with ``options`` on demand; return its scores.

    Groups are computed first when the context has none. The scores also land in
    ``context.analyses`` and the report, as when the criterion runs as a pass.
    """
    cls = get_pass(criterion_name)
    if not issubclass(cls, CriterionPass):
        raise InputError(f"pass '{criterion_name}' is not an importance criterion")
    criterion = cls(**options)
    criterion.stats = {}
    criterion.run(model, context)
    scores = context.analyses.scores
    assert scores is not None  # set by CriterionPass.run
    return scores
