"""precrop: layer-wise keep ratios by convex optimisation, PreCrop / PreConfig (analysis).

After Cai et al. 2022, "Structured Pruning is All You Need for Pruning CNNs at
Initialization". Pruning at initialisation cannot rank units by what training taught
them; what matters is how much of each layer survives. The accuracy proxy is SynExp,
the expected sum of SynFlow scores when layer ``l`` keeps a random fraction ``p_l`` of
its weights: ``SynExp ∝ prod_l p_l``. Maximising it under a FLOPs or parameter budget
is a geometric program, solved here over the coupled groups of ``group``.

Formulation:

    variables   x_g = log k_g,  k_g = kept units / units of eligible group g
                (eligible as for ``prune``: prunable, not ``--ignore``d, scored,
                patchable; every other group is fixed at k = 1)
    layers      every weight member of rank >= 2 that produces or consumes channels
                (Conv, ConvTranspose, Gemm, MatMul and Gather weights); its density is
                p_l = prod_(axes) d_(l,axis), where an axis of extent E hosting groups
                g with w_g = units_g·block_g / E keeps d = w_0 + sum_g w_g k_g
                (w_0: positions of fixed groups). By concavity of log (AM-GM),
                log d >= sum_g w_g x_g, with equality when one group owns the axis
    objective   maximise  a · x = sum_l sum_(axis, g) w_g x_g  (<= log SynExp + const)
    cost        C(k) = c_0 + sum_j c_j prod_g k_g^(S_jg),  c_j > 0, S_jg in {0, 1, 2..}
                the FLOPs (params) of CostModel with every member axis resized to
                E - sum_g block_g units_g (1 - k_g): each node's count is a product of
                such dims, so C is a posynomial; its monomials are read off exactly by
                evaluating CostModel on polynomials (:mod:`.pruning.posynomial`)
    budget      C(x) <= keep · C(0),  keep = --target-flops / --target-params (both:
                both constraints); with only --ratio r, the eligible channels:
                sum_g block_g units_g k_g <= (1 - r) sum_g block_g units_g
    bounds      log max(min-keep, least kept_g / units_g) <= x_g <= 0, or
                <= log(max-growth) with ``preconfig=true`` for groups that can grow;
                a group no layer reads (a_g = 0) says nothing to the proxy and stays
                whole (x_g = 0)

``log(C(x) - c_0)`` is a log-sum-exp of affine functions of ``x``, so the feasible set
is convex and the objective linear: a convex program. SLSQP solves it with analytic
gradients from the best uniform point ``x_g = t`` that meets the budget (the result is
never worse than it), and the report gives the KKT residual. At the optimum, for
every group strictly inside its bounds, ``a_g = λ ∂log C / ∂x_g``: each group's share
of the objective is proportional to its elasticity of cost.

Integer counts: ``k_g · units_g`` is rounded to the nearest count allowed (a multiple
of ``--round-to`` in channels, at least one unit or one rounding step, or all units;
never below the least the planner keeps: pinned units, the ``--ratio`` cap). While the
exact CostModel cost exceeds a budget, one step is taken off the group that loses the
least objective per budget share saved; then, while a step up still fits, the group
that gains the most objective per budget share spent grows by one step.

Which units go: the lowest scored, by the last criterion of the pipeline
(``couple,group,l1,precrop,prune``, or ``obspa``'s scores), else ``l1``; dead units
first when ``dead`` ran. The pass stores ``selection`` and ``plan`` as ``obspa`` does,
so ``prune`` removes them, and, with ``preconfig=true``, ``growth`` (group id to units
added), which ``prune`` applies (:mod:`.pruning.growth`: which groups can grow and how
new weights are initialised). The report's ``precrop`` gives per group the continuous
and rounded keep ratios, the objective (precrop, uniform and rounded), budgets and
costs reached, and the solver's outcome.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext, Targets
from spa_opt.passes._infra.registry import register
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.criteria.base import current_scores
from spa_opt.passes.group import groups_of
from spa_opt.passes.posynomial import Constraint, Posynomial, cost_polynomials, solve
from spa_opt.passes.pruning.costmodel import CostModel
from spa_opt.passes.pruning.growth import growth_problem
from spa_opt.passes.pruning.plan import Plan, eligible
from spa_opt.passes.pruning.select import Candidate, round_step


@dataclasses.dataclass
class PrecropOptions:
    """Options of ``precrop``."""

    preconfig: bool = option(False, "PreConfig: groups may also grow, up to max-growth")
    max_growth: float = option(2.0, "with preconfig, the most units a group may have, as a "
                                    "multiple of its units")
    min_keep: float = option(0.05, "the least fraction of a group's units kept")
    iterations: int = option(500, "iteration limit of the SLSQP solver")


def budget_goals(targets: Targets) -> dict[str, float]:
    """The budgets asked for: metric to fraction kept (see the module docstring)."""
    goals = {metric: keep for metric, keep in (("flops", targets.target_flops),
                                               ("params", targets.target_params))
             if keep is not None}
    if not goals and targets.ratio is not None:
        goals["channels"] = 1.0 - targets.ratio
    if not goals:
        raise InputError("precrop needs a budget: a FLOPs, params or ratio target "
                         "(--target-flops, --target-params or --ratio; target_flops=, "
                         "target_params= or ratio= in the API)")
    return goals


def layer_weights(groups: list[Group]) -> tuple[np.ndarray, int]:
    """The objective's ``a_g`` per group, and how many weighted layers it counts."""
    weights = np.zeros(len(groups))
    layers: set[int] = set()
    for index, group in enumerate(groups):
        for member in group.weights:
            if len(member.value.shape or ()) < 2 or not {"in", "out"} & set(member.roles):
                continue
            weights[index] += member.index_map.positions.size / member.index_map.extent
            layers.add(id(member.value))
    return weights, len(layers)


def allowed_counts(candidate: Candidate, round_to: int, min_keep: float, most: int
                   ) -> np.ndarray:
    """Unit counts the group may keep: rounding steps from its least count up to ``most``."""
    group = candidate.group
    units = group.units
    step = round_step(round_to, group.block)
    least = max(units - candidate.order.size, math.ceil(min_keep * units - 1e-9), 1)
    counts = {units} | set(range(-(-least // step) * step, most + 1, step))
    return np.array(sorted(c for c in counts if c >= least or c == units))


class _Costs:
    """Exact costs of kept-unit counts, one per budget metric, cached."""

    def __init__(self, model: CostModel, groups: list[Group], goals: dict[str, float]) -> None:
        self.model, self.metrics = model, list(goals)
        self._cache: dict[bytes, np.ndarray] = {}
        self.units = np.array([g.units for g in groups], dtype=np.int64)
        self.channels = np.array([g.block for g in groups], dtype=np.int64)
        self.before = self(self.units)
        self.budgets = np.array([goals[m] for m in self.metrics]) * self.before

    def __call__(self, kept: np.ndarray) -> np.ndarray:
        key = kept.tobytes()
        cache = self._cache
        if key not in cache:
            cost = self.model.cost(self.units - kept)
            cache[key] = np.array([float(kept @ self.channels) if m == "channels"
                                   else float(getattr(cost, m)) for m in self.metrics])
        return cache[key]


def integer_counts(keep: np.ndarray, allowed: list[np.ndarray], weights: np.ndarray,
                   costs: Callable[[np.ndarray], np.ndarray], budgets: np.ndarray,
                   units: np.ndarray) -> np.ndarray:
    """Kept units per group near ``keep · units`` within the budgets (module docstring)."""
    kept = np.array([a[np.abs(a - k * u).argmin()] for a, k, u in
                     zip(allowed, keep, units, strict=True)])
    position = [int(np.searchsorted(a, n)) for a, n in zip(allowed, kept, strict=True)]

    def step(direction: int) -> bool:
        current = costs(kept)
        over = current > budgets
        best, best_score = None, -math.inf
        for g, counts in enumerate(allowed):
            target = position[g] + direction
            if not 0 <= target < counts.size:
                continue
            trial = kept.copy()
            trial[g] = counts[target]
            new = costs(trial)
            change = weights[g] * math.log(counts[target] / kept[g])
            if direction < 0:  # least objective lost per budget share saved
                saved = float(((current - new) / budgets)[over].sum())
                score = change / saved if saved > 0 else -math.inf
            else:  # most objective gained per budget share spent
                if (new > budgets).any() or change <= 0:
                    continue
                spent = float(((new - current) / budgets).max())
                score = change / spent if spent > 0 else math.inf
            if score > best_score:
                best, best_score = g, score
        if best is None or best_score == -math.inf:
            return False
        position[best] += direction
        kept[best] = allowed[best][position[best]]
        return True

    while (costs(kept) > budgets).any() and step(-1):
        pass
    while not (costs(kept) > budgets).any() and step(+1):
        pass
    return kept


@register
class PrecropPass(SpaPass):
    """Keep ratios per group from a geometric program on SynExp under a budget (analysis)."""

    name = "precrop"
    Options = PrecropOptions
    preserves_analyses = True

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Solve, round, select, report."""
        o = self.options
        if not 0.0 < o.min_keep <= 1.0:
            raise InputError(f"precrop: min-keep must be in (0, 1], got {o.min_keep}")
        if o.max_growth < 1.0 or o.iterations < 1:
            raise InputError("precrop: max-growth must be >= 1 and iterations >= 1")
        goals = budget_goals(context.targets)
        groups = groups_of(model, context)
        with temporary_shapes(model, symbolic=True):  # the cost model, growth checks
            self._run(model, context, groups, goals)
        return ir.passes.PassResult(model, False)

    def _run(self, model: ir.Model, context: PipelineContext, groups: list[Group],
             goals: dict[str, float]) -> None:
        started = time.perf_counter()
        o, targets = self.options, context.targets
        scores = current_scores(model, context)
        candidates, skipped = eligible(model, groups, targets, scores, context.analyses.dead)
        variables = [c.group for c in candidates]
        units = np.array([g.units for g in variables], dtype=np.int64)
        cost_model = CostModel(model, variables)
        costs = _Costs(cost_model, variables, goals)
        polynomials = cost_polynomials(cost_model.evaluate, units.tolist())
        constraints = [Constraint(
            Posynomial.linear(units * costs.channels) if metric == "channels"
            else polynomials[metric].posynomial(len(variables)), float(budget))
            for metric, budget in zip(costs.metrics, costs.budgets, strict=True)]
        weights, n_layers = layer_weights(variables)

        excluded = {g.id: why for g in variables if (why := growth_problem(g))} \
            if o.preconfig else {}
        grows = np.array([o.preconfig and g.id not in excluded for g in variables], bool)
        blind = weights <= 0  # no weighted layer reads them: the proxy cannot size them
        grows &= ~blind
        least = np.array([1.0 if silent else max(o.min_keep, (g.units - c.order.size) / g.units)
                          for g, c, silent in zip(variables, candidates, blind, strict=True)])
        lower = np.log(least)
        upper = np.where(grows, math.log(o.max_growth), 0.0)
        tick = time.perf_counter()
        solution = solve(weights, constraints, lower, upper, o.iterations)
        self.count("solver-seconds", time.perf_counter() - tick)
        self.count("solver-iterations", solution.iterations)

        allowed = [np.array([c.group.units]) if silent else
                   allowed_counts(c, targets.fixed_round_to(), o.min_keep,
                                  math.floor(o.max_growth * c.group.units + 1e-9)
                                  if grow else c.group.units)
                   for c, grow, silent in zip(candidates, grows, blind, strict=True)]
        kept = integer_counts(np.exp(solution.x), allowed, weights, costs, costs.budgets,
                              units) if variables else units
        selection = {c.group.id: np.sort(c.order[:c.group.units - n])
                     for c, n in zip(candidates, kept, strict=True) if n < c.group.units}
        growth = {g.id: int(n - g.units) for g, n in zip(variables, kept, strict=True)
                  if n > g.units}
        outcome = self._outcome(costs, costs(kept), [c.cost.value(solution.x)
                                                     for c in constraints])
        context.analyses.update(selection=selection, plan=Plan(selection, skipped, outcome),
                                growth=growth)
        rounded = float(weights @ np.log(kept / units)) if variables else 0.0
        self.count("groups-shrunk", len(selection))
        self.count("groups-grown", len(growth))
        context.report["precrop"] = {
            "options": self.pipeline_text(),
            "criterion": context.analyses.criterion,
            "budgets": outcome,
            "layers": n_layers,
            "objective": {"continuous": solution.objective, "rounded": rounded,
                          "uniform": solution.uniform_objective,
                          "uniform_keep": math.exp(solution.uniform_level)},
            "solver": {"method": "SLSQP", "success": solution.success,
                       "message": solution.message, "iterations": solution.iterations,
                       "kkt_residual": solution.kkt, "feasible": solution.feasible,
                       "seconds": time.perf_counter() - tick},
            "groups": [
                {"group": g.id, "primary": f"{g.primary.name}:{g.primary.axis}",
                 "units": g.units, "block": g.block, "weight": float(a),
                 "keep_continuous": float(np.exp(x)), "kept": int(n),
                 "keep": float(n / g.units), "least": float(lo), "most": float(np.exp(hi))}
                for g, a, x, n, lo, hi in zip(variables, weights, solution.x, kept, least,
                                              upper, strict=True)],
            "fixed": skipped,
            "no_growth": [{"group": gid, "why": why} for gid, why in excluded.items()],
            "seconds": time.perf_counter() - started,
        }

    @staticmethod
    def _outcome(costs: _Costs, reached: np.ndarray, continuous: list[float]
                 ) -> dict[str, Any]:
        outcome: dict[str, Any] = {"scope": "precrop"}
        met_all = True
        for metric, before, budget, now, relaxed in zip(
                costs.metrics, costs.before, costs.budgets, reached, continuous, strict=True):
            met = bool(now <= budget)
            met_all &= met
            outcome[metric] = {"keep": float(budget / before) if before else 1.0,
                               "before": int(before), "expected": int(now),
                               "achieved": float(now / before) if before else 1.0,
                               "reached": met,
                               "continuous": float(relaxed / before) if before else 1.0}
        outcome["reached"] = met_all
        if not met_all:
            outcome["why_not"] = (
                "every group is at its least count (min-keep, pinned units, the --ratio "
                "cap, the last unit); the rest is fixed (see the report's precrop.fixed)")
        return outcome
