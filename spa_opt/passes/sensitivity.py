"""sensitivity: rank units across groups by the measured output error of removing them.

A criterion orders the units of one group well, but its scores do not compare across
groups of different kinds: an l1 norm says nothing about whether a decoder's residual
stream (read by every layer) can lose a channel as cheaply as one MLP. On the trained
byte-level Llama (``bench/llm.py``) every cross-group normalisation of l1 tried ranks
worse than Torch-Pruning's rule of pruning only the MLPs. This analysis measures instead.

For every group the planner could prune (its candidates: pins, ``--ignore``, the
``--ratio`` cap and dead units first, exactly as ``prune`` would see them), in the order
of the previous criterion's scores (:func:`~spa_opt.passes.criteria.current_scores`), and
for each fraction ``q`` of ``fractions``, a copy of the model with the first
``k = round(q · units)`` units of that order removed, and nothing else, runs on
``samples`` inputs (the calibration inputs when given, else random ones: uniform token
ids, N(0, 1) floats; ``--input-dim`` sizes symbolic dims). Its error is

    e_g(k) = mean over outputs o of  Σ_samples ||y'_o - y_o||² / Σ_samples ||y_o||²

over the float outputs the original keeps finite on those inputs (none: refused), with
logits (a ``[batch, classes]`` output, or a ``[batch, sequence, vocab]`` one named
``*logit*``) measured by the mean KL divergence of their softmax instead, what accuracy
and perplexity follow; an output the removal makes non-finite errs by :data:`BEYOND`
times the group's worst finite error. With ``c_g(k)`` the cost that removing ``k`` units of
``g`` alone saves (parameters when the only target is a params target, FLOPs otherwise),
the unit at position ``i`` of the group's order scores the slope of its segment between
measured counts,

    s = (e_g(k_j) - e_g(k_{j-1})) / (c_g(k_j) - c_g(k_{j-1})),   k_{j-1} < i + 1 <= k_j,

with ``(k_0, e, c) = (0, 0, 0)``, made non-decreasing along the order and raised by
``i · ε`` so the criterion's order within the group is kept exactly. Units past the
largest count measured score :data:`BEYOND` times the largest measured score of any group:
they go after every measured unit.

With ``rounds=R > 1`` (a FLOPs or params target) the budget is spent in ``R`` chunks:
round ``r`` measures every group as above but on top of the units rounds ``1..r-1``
chose (errors are what the group adds to theirs), and takes units by those keys until
the cost is ``r/R`` of the way to the target; scores encode the round first, so the
global prefix at the target removes what the rounds chose (exactly with ``--round-to 1``
and one target; rounding and a second target add to it). It costs ``R`` times
the copies, and sees how groups' errors combine, which one round cannot.

In the global scope a prefix of the merged order then takes units where they cost the
least measured error per unit of the target: the greedy solution of "minimise the sum of
the groups' errors under the budget" when errors add and grow convexly (sensitivity
analysis in the manner of Li et al. 2017, "Pruning Filters for Efficient ConvNets", with
the error per cost as the exchange rate). Each group is measured with the rest of the
network intact, so how errors combine is not measured: at high ratios they do not add
(``bench/llm.py``). The local scope uses only the order within each group, which this
pass does not change, so it is refused.

Cost: ``len(fractions)`` pruned copies per candidate group, each coupled, pruned and run on
``samples`` inputs; the report's ``sensitivity`` lists every measurement. A group whose
pruned copy groups differently (nothing to measure) gets no score and ``prune`` skips it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register
from spa_opt.passes.criteria.base import current_scores
from spa_opt.passes.group import groups_of
from spa_opt.passes.pruning.costmodel import CostModel
from spa_opt.passes.pruning.plan import eligible
from spa_opt.passes.pruning.select import Candidate

BEYOND = 1e3
"""Units past the largest count measured score this times the largest measured key of any
group: errors grow fast as a group nears empty (a decoder layer's MLP measured harmless up
to 7/8 of its units is not at 687 of 688), so units nobody measured go after every measured
one. A removal whose output is not finite errs this times the group's worst finite error."""


@dataclasses.dataclass
class SensitivityOptions:
    """Options of ``sensitivity``."""

    fractions: str = option(
        "0.125:0.25:0.5:0.75:0.875",
        "colon-separated fractions of each group's units removed, one pruned "
        "copy each (in (0, 1))")
    samples: int = option(8, "inputs each copy runs on (calibration inputs when given)")
    rounds: int = option(
        1, "chunks of the FLOPs/params budget measured in turn, each on top of the units "
           "the rounds before chose (1: every group measured on the intact model)")


def parse_fractions(text: str) -> tuple[float, ...]:
    """The sorted, distinct fractions of the ``fractions`` option."""
    try:
        values = sorted({float(part) for part in text.replace(":", ",").split(",") if part})
    except ValueError:
        raise InputError(f"pass 'sensitivity': fractions must be numbers separated by ':', "
                         f"got {text!r}") from None
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise InputError(f"pass 'sensitivity': fractions must be in (0, 1), got {text!r}")
    return tuple(values)


def comparable_outputs(reference: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """The outputs errors are measured on: float, and finite on every reference sample.

    An output the original already makes NaN or infinite on these inputs says nothing
    about a removal; integer and bool outputs (class indices, masks) have no size of error.
    """
    return [name for name, first in reference[0].items()
            if first.dtype.kind == "f"
            and all(np.isfinite(sample[name]).all() for sample in reference)]


def is_logits(name: str, array: np.ndarray) -> bool:
    """Whether an output is scored by softmax KL.

    A classifier's ``[batch, classes]``, or a language model's ``[batch, sequence, vocab]``
    named ``*logit*``; not a key/value cache, a box regression or hidden states, whose
    shifts a softmax would not see.
    """
    return array.ndim in (2, 3) and array.shape[-1] >= 2 and (
        array.ndim == 2 or "logit" in name.lower())


def output_error(reference: Sequence[Mapping[str, np.ndarray]],
                 result: Sequence[Mapping[str, np.ndarray]],
                 names: Sequence[str] | None = None) -> float:
    """The mean over the outputs ``names`` of each output's error (module docstring).

    Logits (:func:`is_logits`) err by the mean KL divergence of their softmax, what top-1
    accuracy and perplexity follow; any other output by its relative squared error summed
    over samples. ``names`` defaults to :func:`comparable_outputs`; an output whose shape
    changed (a rewritten key/value cache) is left out. A result that is not finite where
    the reference is errs by ``inf``.
    """
    errors = []
    for name in comparable_outputs(reference) if names is None else names:
        first = reference[0][name]
        if result[0].get(name) is None or result[0][name].shape != first.shape:
            continue
        pairs = [(w[name].astype(np.float64), r[name].astype(np.float64))
                 for w, r in zip(reference, result, strict=True)]
        if not all(np.isfinite(r).all() for _, r in pairs):
            errors.append(float("inf"))
        elif is_logits(name, first):
            errors.append(float(np.mean([_kl(w, r) for w, r in pairs])))
        else:
            num = sum(float(np.sum((r - w) ** 2)) for w, r in pairs)
            den = sum(float(np.sum(w ** 2)) for w, _ in pairs)
            errors.append(num / den if den > 0 else num)
    return float(np.mean(errors)) if errors else 0.0


def _kl(before: np.ndarray, after: np.ndarray) -> float:
    """Mean over positions of KL(softmax(before) || softmax(after)) on the last axis."""
    from spa_opt.verify import log_softmax

    p, q = log_softmax(before), log_softmax(after)
    return float(np.mean((np.exp(p) * (p - q)).sum(-1)))


def unit_keys(order_size: int, counts: Sequence[int], errors: Sequence[float],
              saved: Sequence[float]) -> np.ndarray:
    """Keys of a group's order positions: marginal error per cost saved (module docstring).

    ``counts[j]`` units removed gave error ``errors[j]`` and saved ``saved[j]`` of the
    target's cost. Between measured counts a unit's key is the slope
    ``Δerror / Δsaved`` of its segment (the first from ``(0, 0)``), non-decreasing along
    the order; an infinite error (a removal that makes the output non-finite) counts as
    :data:`BEYOND` times the largest finite one, a segment that saves nothing as saving a
    millionth of the group's largest saving. Positions past the last count are NaN: the
    caller ranks them after every group's measured units (:func:`past_measured`).
    """
    errors = np.asarray(errors, float)
    finite = errors[np.isfinite(errors)]
    worst = BEYOND * max(float(finite.max(initial=0.0)), 1.0)
    ks = np.concatenate([[0.0], np.asarray(counts, float)])
    es = np.concatenate([[0.0], np.where(np.isfinite(errors), errors, worst)])
    cs = np.concatenate([[0.0], np.asarray(saved, float)])
    floor = max(float(np.max(np.abs(cs))), 1.0) * 1e-6
    slopes = np.diff(es) / np.maximum(np.diff(cs), floor)
    positions = np.arange(1, order_size + 1, dtype=float)
    segment = np.searchsorted(ks[1:], positions)
    past = segment >= slopes.size
    keys = np.maximum.accumulate(np.maximum(slopes[np.minimum(segment, slopes.size - 1)], 0.0))
    scale = float(keys[~past].max(initial=0.0)) or 1.0
    keys = keys + np.arange(order_size) * (scale * 1e-9 / max(order_size, 1))
    keys[past] = np.nan
    return keys


def past_measured(keys: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``keys`` with every group's unmeasured positions (NaN) ranked after every measured key.

    They get :data:`BEYOND` times the largest measured key of any group, raised along each
    group's order so the order stays.
    """
    top = max((float(np.nanmax(k)) for k in keys.values() if np.isfinite(k).any()),
              default=1.0)
    ceiling = BEYOND * (top if top > 0 else 1.0)
    done = {}
    for gid, k in keys.items():
        k = k.copy()
        past = np.isnan(k)
        k[past] = ceiling * (1.0 + np.arange(1, int(past.sum()) + 1) * 1e-9)
        done[gid] = k
    return done


@register
class SensitivityPass(SpaPass):
    """Rescore units by the measured output error of removing them, across groups (analysis)."""

    name = "sensitivity"
    Options = SensitivityOptions
    preserves_analyses = True

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Measure every candidate group and store comparable scores (module docstring)."""
        fractions = parse_fractions(self.options.fractions)
        for key in ("samples", "rounds"):
            if getattr(self.options, key) < 1:
                raise InputError(f"pass 'sensitivity': {key} must be at least 1, got "
                                 f"{getattr(self.options, key)}")
        targets = context.targets
        if self.options.rounds > 1 and targets.given and \
                targets.target_flops is None and targets.target_params is None:
            raise InputError("sensitivity: rounds > 1 splits a FLOPs or params budget; give "
                             "--target-flops or --target-params")
        if targets.given and targets.scope == "local":
            raise InputError("sensitivity: its scores rank units across groups, which the "
                             "local scope ignores; plan with --scope global")
        groups = groups_of(model, context)
        scores = current_scores(model, context)
        criterion = context.analyses.criterion or "l1"
        entry: dict[str, Any] = {"criterion": criterion, "fractions": list(fractions),
                                 "samples": self.options.samples, "groups": [],
                                 "unmeasured": []}
        started = time.perf_counter()
        if targets.given:
            candidates, _ = eligible(model, groups, targets, scores, context.analyses.dead)
            feeds, entry["inputs"] = measurement_feeds(model, context, self.options.samples)
            with temporary_shapes(model, symbolic=True):
                cost = CostModel(model, [c.group for c in candidates])
            metric = "params" if targets.target_params is not None and \
                targets.target_flops is None else "flops"
            entry["cost"] = metric
            measure = _Measure(model, candidates, fractions, feeds, context, entry, cost,
                               metric)
            measured = (_one_shot(measure) if self.options.rounds == 1 else
                        _progressive(measure, self.options.rounds, targets))
            entry["rounds"] = self.options.rounds
            entry["copies"] = measure.copies
            planned = {c.group.id for c in candidates}  # unmeasured candidates lose their score
            scores = {gid: s for gid, s in scores.items() if gid not in planned} | measured
            context.analyses.update(scores=scores, criterion=f"{criterion},{self.pipeline_text()}")
        entry["seconds"] = time.perf_counter() - started
        context.report["sensitivity"] = entry
        self.count("groups-measured", len(entry["groups"]))
        self.count("copies-run", entry.get("copies", 0))
        return ir.passes.PassResult(model, False)


class _Measure:
    """Measures every candidate group's error curve on top of a base selection."""

    def __init__(self, model: ir.Model, candidates: list[Candidate],
                 fractions: tuple[float, ...], feeds: list[dict[str, np.ndarray]],
                 context: PipelineContext, entry: dict[str, Any], cost: CostModel,
                 metric: str) -> None:
        from spa_opt.ort import session_from_model
        from spa_opt.verify import run_all

        self.model, self.candidates = model, candidates
        self.fractions, self.feeds, self.context, self.entry = fractions, feeds, context, entry
        self.cost, self.metric = cost, metric
        self.reference = run_all(session_from_model(model), feeds)
        self.names = comparable_outputs(self.reference)
        entry["outputs"] = self.names
        if not self.names:
            raise InputError(
                "sensitivity: no output to measure errors on: the model's outputs are not "
                "floating point, or not finite on the measurement inputs "
                f"({', '.join(self.reference[0]) if self.reference else 'no outputs'})")
        self.signature = _input_shapes(model)
        self.copies = 0
        """Pruned copies made so far (the report's ``copies-run``)."""

    def value(self, counts: np.ndarray) -> float:
        """The budget's measure (FLOPs or params) with ``counts`` units removed per group."""
        return float(getattr(self.cost.cost(counts), self.metric))

    def error(self, counts: np.ndarray) -> float | None:
        """The output error with the first ``counts`` units of every group removed.

        None when the pruned copy groups differently (nothing comparable).
        """
        from spa_opt.ort import session_from_model
        from spa_opt.passes.pruning.trial import pruned_copy
        from spa_opt.verify import run_all

        selection = {c.group.id: np.sort(c.order[:k])
                     for c, k in zip(self.candidates, counts, strict=True) if k}
        if not selection:
            return 0.0
        copy = pruned_copy(self.model, selection, self.context.io)
        self.copies += 1
        if copy is None:
            return None
        feeds = self.feeds if _input_shapes(copy) == self.signature else \
            measurement_feeds(copy, self.context, len(self.feeds))[0]
        return output_error(self.reference, run_all(session_from_model(copy), feeds),
                            self.names)

    def keys(self, base: np.ndarray, round_index: int = 1) -> dict[int, np.ndarray]:
        """Per candidate index, the keys of its units after ``base`` (NaN past the measured).

        Each group's errors are what removing more of it adds to the error of ``base``.
        """
        floor = self.error(base)
        if floor is None or not np.isfinite(floor):  # nothing to subtract: absolute errors
            floor = 0.0
        keys: dict[int, np.ndarray] = {}
        for index, found in enumerate(self.candidates):
            group, done = found.group, int(base[index])
            remaining = found.order.size - done
            if remaining <= 0:
                continue
            extras = sorted({min(remaining, max(1, round(q * (group.units - done))))
                             for q in self.fractions})
            errors, saved = [], []
            before = self.value(base)
            for extra in extras:
                counts = base.copy()
                counts[index] += extra
                found_error = self.error(counts)
                if found_error is None:
                    break
                errors.append(found_error - floor)
                saved.append(before - self.value(counts))
            if len(errors) < len(extras):
                if all(u["group"] != group.id for u in self.entry["unmeasured"]):
                    self.entry["unmeasured"].append({"group": group.id,
                                                     "why": "its pruned copy groups "
                                                     "differently: nothing to measure"})
                continue
            keys[index] = unit_keys(remaining, extras, errors, saved)
            self.entry["groups"].append({"group": group.id, "round": round_index,
                                         "units": group.units, "removed_before": done,
                                         "removed": [done + e for e in extras],
                                         "error": errors, "saved": saved})
        return keys


def _one_shot(measure: _Measure) -> dict[str, np.ndarray]:
    """Scores from one measurement of every group on the intact model."""
    keys = measure.keys(np.zeros(len(measure.candidates), dtype=np.int64))
    ranked = past_measured({str(i): k for i, k in keys.items()})
    scores = {}
    for index, found in enumerate(measure.candidates):
        if index in keys:
            unit_scores = np.full(found.group.units, np.inf)
            unit_scores[found.order] = ranked[str(index)]
            scores[found.group.id] = unit_scores
    return scores


def _progressive(measure: _Measure, rounds: int, targets: Any) -> dict[str, np.ndarray]:
    """Scores that replay ``rounds`` chunks of the budget, each measured on top of the last.

    Round ``r`` measures every group after the units rounds ``1..r-1`` chose and takes,
    by those keys, units until the budget's measure falls to ``r/rounds`` of the way to
    the target. A unit chosen in round ``r`` scores ``r + rank / (chosen + 1)``; the units
    no round chose score after ``rounds + 1`` in the last round's order, so the global
    prefix at the target removes exactly what the rounds chose (with ``round_to`` 1 and
    one target: rounding and a second target move the prefix by what they add). Dead
    units count as removed before round 1, as ``select`` removes them first. A group no
    later round can measure keeps what earlier rounds chose and loses no more.
    """
    candidates = measure.candidates
    keep = targets.target_params if measure.metric == "params" else targets.target_flops
    # Dead units go first whatever the scores (select's keys are -inf): start from them.
    base = np.array([c.dead for c in candidates], dtype=np.int64)
    goal = keep * measure.value(np.zeros(len(candidates), dtype=np.int64))
    start = measure.value(base)
    scores = {c.group.id: np.full(c.group.units, np.inf) for c in candidates}
    for found in candidates:
        scores[found.group.id][found.order[:found.dead]] = np.arange(found.dead) * 1e-9
    unmeasured: set[int] = set()
    merged: list[tuple[float, int]] = []
    for round_index in range(1, rounds + 1):
        keys = measure.keys(base, round_index)
        if round_index == 1:  # a group unmeasured later keeps what earlier rounds chose
            unmeasured = {i for i in range(len(candidates)) if i not in keys
                          and base[i] < candidates[i].order.size}
        ranked = past_measured({str(i): k for i, k in keys.items()})
        merged = sorted((float(key), i) for i, k in ranked.items() for key in k)
        merged = [(key, int(i)) for key, i in merged]
        target = start - round_index / rounds * (start - goal)
        counts = base.copy()
        chosen: list[int] = []
        for _, index in merged:
            if measure.value(counts) <= target:
                break
            counts[index] += 1
            chosen.append(index)
        for rank, index in enumerate(chosen):
            found = candidates[index]
            position = int(base[index])
            base[index] += 1
            scores[found.group.id][found.order[position]] = round_index + rank / (len(chosen) + 1)
        merged = merged[len(chosen):]
    rest = base.copy()
    for rank, (_, index) in enumerate(merged):
        found = candidates[index]
        if rest[index] < found.order.size:
            scores[found.group.id][found.order[rest[index]]] = rounds + 1 + rank / (
                len(merged) + 1)
            rest[index] += 1
    return {c.group.id: scores[c.group.id] for i, c in enumerate(candidates)
            if i not in unmeasured}


def measurement_feeds(model: ir.Model, context: PipelineContext, samples: int
                      ) -> tuple[list[dict[str, np.ndarray]], str]:
    """The inputs ``model`` runs on, and where they came from.

    Key/value caches are empty (past length 0), as in calibration: a copy whose cache
    inputs lost heads (``--io rewrite``) gets the same token ids and an empty cache of its
    own shape, so the original and every copy see the same data.
    """
    from spa_opt.verify import calibration_inputs, random_inputs

    if context.calibration is not None:
        return calibration_inputs(context.calibration, model, samples), "calibration"
    return random_inputs(model, samples, context.targets.seed, context.input_dims,
                         past_length=0), "random"


def _input_shapes(model: ir.Model) -> list[tuple[str, str]]:
    """The graph inputs' names and shapes: equal when the same feeds fit."""
    return [(value.name, str(value.shape)) for value in model.graph.inputs]
