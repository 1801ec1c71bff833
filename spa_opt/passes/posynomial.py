"""Posynomial costs and the geometric program behind ``precrop``.

A cost that is multilinear in channel counts is a *posynomial* in the kept fractions
``k_g``: ``C(k) = c_0 + sum_j c_j prod_g k_g^(S_jg)`` with ``c_j > 0`` and integer
exponents ``S_jg >= 0``. In log space, ``x_g = log k_g``, each monomial is
``c_j exp(S_j · x)``, so ``log(C(x) - c_0)`` is a log-sum-exp of affine functions:
convex. Maximising a linear function of ``x`` under ``C_i(x) <= B_i`` and box bounds is
therefore a convex program (a geometric program in standard form).

- :class:`Polynomial`: a sparse polynomial with ``+`` and ``*``; resizing every member
  axis with one (``E -> E_fixed + sum_g block_g units_g k_g``) and evaluating the
  formulas of :mod:`spa_opt.ir.cost` through
  :meth:`~spa_opt.passes.pruning.costmodel.CostModel.evaluate` yields the cost's
  monomials exactly, without sampling;
- :class:`Posynomial`: the dense form ``(c_0, c, S)`` with the log-sum-exp value and
  gradient;
- :func:`solve`: the program above with scipy's SLSQP and analytic gradients, started
  from (and never worse than) the best uniform point;
- :func:`kkt_residual`: how far a point is from the KKT conditions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

Key = tuple[tuple[int, int], ...]
"""A monomial: ``((variable, power), ...)`` sorted by variable; ``()`` is the constant."""


class Polynomial:
    """A polynomial in indexed variables, closed under ``+`` and ``*`` with numbers."""

    __slots__ = ("terms",)
    __array_ufunc__ = None  # numpy scalars defer to our operators

    def __init__(self, terms: dict[Key, float] | None = None) -> None:
        self.terms: dict[Key, float] = {k: c for k, c in (terms or {}).items() if c}

    @classmethod
    def variable(cls, index: int, coefficient: float = 1) -> Polynomial:
        """``coefficient * v_index``."""
        return cls({((index, 1),): coefficient})

    @staticmethod
    def _of(other: Any) -> Polynomial:
        """``other`` as a polynomial (a number becomes a constant)."""
        return other if isinstance(other, Polynomial) else Polynomial({(): other})

    def __add__(self, other: Any) -> Polynomial:
        terms = dict(self.terms)
        for key, coefficient in self._of(other).terms.items():
            terms[key] = terms.get(key, 0) + coefficient
        return Polynomial(terms)

    __radd__ = __add__

    def __mul__(self, other: Any) -> Polynomial:
        terms: dict[Key, float] = {}
        right = self._of(other).terms
        for key_a, a in self.terms.items():
            for key_b, b in right.items():
                powers = dict(key_a)
                for variable, power in key_b:
                    powers[variable] = powers.get(variable, 0) + power
                key = tuple(sorted(powers.items()))
                terms[key] = terms.get(key, 0) + a * b
        return Polynomial(terms)

    __rmul__ = __mul__

    def __bool__(self) -> bool:
        return bool(self.terms)

    def __call__(self, values: Sequence[float]) -> float:
        """The value at ``values`` (one per variable)."""
        return sum(c * math.prod(values[v] ** p for v, p in key) for key, c in self.terms.items())

    def posynomial(self, variables: int) -> Posynomial:
        """The dense form over ``variables`` variables (coefficients must be >= 0)."""
        constant = float(self.terms.get((), 0))
        keys = [k for k in self.terms if k]
        exponents = np.zeros((len(keys), variables))
        for row, key in enumerate(keys):
            for variable, power in key:
                exponents[row, variable] = power
        coefficients = np.array([float(self.terms[k]) for k in keys])
        if (coefficients < 0).any():
            raise ValueError("a cost monomial has a negative coefficient")
        return Posynomial(constant, coefficients, exponents)


@dataclasses.dataclass
class Posynomial:
    """``c_0 + sum_j c_j exp(S_j · x)`` over log kept fractions ``x``."""

    constant: float
    coefficients: np.ndarray
    exponents: np.ndarray

    @classmethod
    def linear(cls, weights: np.ndarray) -> Posynomial:
        """``sum_g w_g k_g`` (a channel count); zero weights are dropped."""
        rows = np.flatnonzero(weights > 0)
        return cls(0.0, np.asarray(weights, float)[rows], np.eye(len(weights))[rows])

    def value(self, x: np.ndarray) -> float:
        """``C(x)``."""
        return self.constant + float(self.coefficients @ np.exp(self.exponents @ x))

    def log_variable(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """``log(C(x) - c_0)`` and its gradient (the monomials' softmax times ``S``)."""
        if not self.coefficients.size:
            return -math.inf, np.zeros_like(x)
        logits = np.log(self.coefficients) + self.exponents @ x
        total = float(logsumexp(logits))
        return total, np.exp(logits - total) @ self.exponents


@dataclasses.dataclass
class Constraint:
    """``C(x) <= budget``."""

    cost: Posynomial
    budget: float

    @property
    def room(self) -> float:
        """What the budget leaves for the variable monomials (``budget - c_0``)."""
        return self.budget - self.cost.constant

    def holds(self, x: np.ndarray, slack: float = 1e-9) -> bool:
        """Whether the constraint holds at ``x`` (within a relative ``slack``)."""
        return self.cost.value(x) <= self.budget * (1 + slack)


@dataclasses.dataclass
class Solution:
    """The optimum found and how it was found."""

    x: np.ndarray
    objective: float
    uniform: np.ndarray
    """The best uniform point ``clip(t, lower, upper)`` that meets every budget."""
    uniform_objective: float
    uniform_level: float
    """The ``t`` of ``uniform``: ``exp(t)`` is the uniform keep ratio."""
    feasible: bool
    """False when even the lower bounds exceed a budget (``x`` is then the lower bounds)."""
    success: bool
    message: str
    iterations: int
    kkt: float


def uniform_point(constraints: Sequence[Constraint], lower: np.ndarray, upper: np.ndarray
                  ) -> tuple[np.ndarray, float, bool]:
    """The largest ``t`` with ``clip(t, lower, upper)`` within every budget (bisection).

    Costs only grow with ``t`` (exponents are non-negative), so bisection finds it.
    """
    def point(t: float) -> np.ndarray:
        return np.clip(np.full(lower.shape, t), lower, upper)

    def fits(t: float) -> bool:
        return all(c.holds(point(t)) for c in constraints)

    low, high = float(lower.min(initial=0.0)), float(upper.max(initial=0.0))
    if fits(high):
        return point(high), high, True
    if not fits(low):
        return point(low), low, False
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return point(low), low, True


def _pull_in(x: np.ndarray, constraints: Sequence[Constraint], lower: np.ndarray,
             upper: np.ndarray) -> np.ndarray:
    """``x`` lowered uniformly (clipped to the bounds) until every budget holds."""
    if all(c.holds(x) for c in constraints):
        return x
    low, high = float(lower.min() - x.max()), 0.0
    for _ in range(100):
        middle = (low + high) / 2
        if all(c.holds(np.clip(x + middle, lower, upper)) for c in constraints):
            low = middle
        else:
            high = middle
    return np.clip(x + low, lower, upper)


def solve(weights: np.ndarray, constraints: Sequence[Constraint], lower: np.ndarray,
          upper: np.ndarray, iterations: int = 500, tolerance: float = 1e-10) -> Solution:
    """Maximise ``weights · x`` subject to every ``C_i(x) <= B_i`` and the bounds.

    Args:
        weights: The objective's coefficients ``a`` (non-negative).
        constraints: The budgets.
        lower: Lower bounds of ``x`` (log of the smallest kept fraction).
        upper: Upper bounds of ``x`` (0, or log of the largest growth).
        iterations: SLSQP's iteration limit.
        tolerance: SLSQP's tolerance on the (normalised) objective.
    """
    start, level, feasible = uniform_point(constraints, lower, upper)
    uniform_objective = float(weights @ start)
    if not feasible or not len(weights):
        return Solution(start, uniform_objective, start, uniform_objective, level, feasible,
                        feasible, "infeasible: the lower bounds exceed a budget"
                        if not feasible else "no variables", 0, 0.0)
    scale = float(np.abs(weights).sum()) or 1.0
    active = [c for c in constraints if c.cost.coefficients.size]

    def make(c: Constraint) -> dict[str, Any]:
        log_room = math.log(c.room)

        def fun(x: np.ndarray) -> float:
            return log_room - c.cost.log_variable(x)[0]

        def jac(x: np.ndarray) -> np.ndarray:
            return -c.cost.log_variable(x)[1]

        return {"type": "ineq", "fun": fun, "jac": jac}

    result = minimize(
        lambda x: -float(weights @ x) / scale, start.copy(), jac=lambda x: -weights / scale,
        method="SLSQP", bounds=list(zip(lower, upper, strict=True)),
        constraints=[make(c) for c in active],
        options={"maxiter": iterations, "ftol": tolerance})
    x = _pull_in(np.clip(result.x, lower, upper), constraints, lower, upper)
    if weights @ x < uniform_objective:  # never worse than the uniform point
        x = start
    return Solution(x, float(weights @ x), start, uniform_objective, level, True,
                    bool(result.success),
                    str(result.message), int(result.nit),
                    kkt_residual(weights, constraints, lower, upper, x))


def kkt_residual(weights: np.ndarray, constraints: Sequence[Constraint], lower: np.ndarray,
                 upper: np.ndarray, x: np.ndarray, bound_tolerance: float = 1e-6,
                 active_tolerance: float = 1e-4) -> float:
    """How far ``x`` is from optimal, relative to ``|weights|`` (0 at a KKT point).

    With the constraints in log form, ``g_i(x) = log(C_i(x) - c_0) - log(B_i - c_0)``,
    a maximiser of ``a · x`` satisfies ``a = sum_i λ_i ∇g_i(x) + μ⁺ - μ⁻`` with
    ``λ_i >= 0`` on active budgets only, ``μ⁺ >= 0`` on variables at their upper bound
    and ``μ⁻ >= 0`` at their lower bound. ``λ`` is fitted by non-negative least squares
    on the free variables; the residual counts the free variables' misfit and any bound
    multiplier of the wrong sign.
    """
    from scipy.optimize import nnls

    free = (x > lower + bound_tolerance) & (x < upper - bound_tolerance)
    gradients = []
    for c in constraints:
        if c.cost.coefficients.size and c.room > 0:
            log_value, gradient = c.cost.log_variable(x)
            if log_value >= math.log(c.room) - active_tolerance:
                gradients.append(gradient)
    jacobian = np.array(gradients).reshape(len(gradients), len(x))
    if gradients and free.any():
        multipliers, _ = nnls(jacobian[:, free].T, weights[free])
    elif gradients:  # every variable at a bound: fit on all, signs checked below
        multipliers, _ = nnls(jacobian.T, weights)
    else:
        multipliers = np.zeros(0)
    residual = weights - multipliers @ jacobian
    pinned = upper - lower <= bound_tolerance  # a fixed variable has no sign condition
    at_upper = ~free & ~pinned & (x >= upper - bound_tolerance)
    at_lower = ~free & ~pinned & ~at_upper
    misfit = np.concatenate([residual[free], np.minimum(residual[at_upper], 0),
                             np.maximum(residual[at_lower], 0)])
    norm = float(np.abs(weights).max(initial=0.0)) or 1.0
    return float(np.abs(misfit).max(initial=0.0)) / norm


def cost_polynomials(evaluate: Callable[[Callable[[int, Sequence[tuple[int, int]]], Any]], Any],
                     units: Sequence[int]) -> dict[str, Polynomial]:
    """A cost model's ``params``, ``macs`` and ``flops`` as polynomials in ``k``.

    Args:
        evaluate: :meth:`~spa_opt.passes.pruning.costmodel.CostModel.evaluate`.
        units: Units per group, in the cost model's group order: an axis of extent
            ``E`` hosting ``(group, block)`` pairs becomes
            ``E - sum block·units + sum block·units·k_group``.
    """
    def resize(extent: int, hosted: Sequence[tuple[int, int]]) -> Polynomial:
        fixed = int(extent) - sum(block * units[group] for group, block in hosted)
        total = Polynomial({(): fixed})
        for group, block in hosted:
            total = total + Polynomial.variable(group, block * units[group])
        return total

    cost = evaluate(resize)
    return {metric: Polynomial._of(getattr(cost, metric))
            for metric in ("params", "macs", "flops")}
