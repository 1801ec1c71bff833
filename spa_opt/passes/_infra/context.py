"""The pipeline context: how passes hand results to each other.

Data flows one way: the driver sets the :class:`Targets`, analyses fill the typed
slots of :class:`Analyses`, transforms read them. The context lives in the model's
``meta`` store (scratch space onnx_ir never saves), so passes composed with plain
``onnx_ir.passes.Sequential`` find it without any wiring::

    ctx = PipelineContext.of(model)
    ctx.targets = Targets(ratio=0.5)

Invalidation is a mechanism, not a list kept by hand:

- every analysis slot declares the slots it is derived from (``groups`` from
  ``couplings``, ``selection`` from ``groups``, ``scores`` and ``dead``, ...); setting a
  slot clears every slot derived from it, transitively, so a result can never outlive
  what it was computed from (``couple,group,obspa,couple,prune``: the second ``couple``
  clears obspa's selection *and* the weights it reconstructed for it, and ``prune``
  plans afresh; a criterion run after ``obspa`` supersedes obspa's selection the same
  way, so the last word wins);
- a pass that changes the graph and does not declare ``preserves_analyses`` clears
  every slot: a grouping computed before a transform never reaches a transform after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import onnx_ir as ir

from spa_opt.errors import OptionError

if TYPE_CHECKING:  # annotations only: the infrastructure imports no pass
    import numpy as np

    from spa_opt.latency.timer import LatencySpec
    from spa_opt.passes.coupling.groups import Group
    from spa_opt.passes.coupling.solver import Coupling
    from spa_opt.passes.pruning.plan import Plan

_META_KEY = "spa_opt.context"


@dataclasses.dataclass
class Targets:
    """What the user asked pruning to achieve; read by the selection passes."""

    ratio: float | None = None
    """Fraction of prunable channels to remove (with a FLOPs or params target: the
    most any one group may lose)."""
    target_flops: float | None = None
    """Fraction of the original FLOPs to keep."""
    target_params: float | None = None
    """Fraction of the original parameters to keep."""
    scope: Literal["local", "global"] = "local"
    """Rank channels within each group (local) or across all groups (global)."""
    round_to: int | Literal["auto"] = 1
    """Keep channel counts multiples of this; ``auto``: per group, the step the
    measured latency model finds the kernels fast at (:mod:`spa_opt.latency.model`)."""
    ignore: tuple[str, ...] = ()
    """Glob patterns of node names never pruned."""
    seed: int = 0
    """Seed of every random choice (random criterion, synthetic inputs)."""
    target_latency: float | None = None
    """Fraction of the model's latency, measured on the target runtime, to keep."""

    def __post_init__(self) -> None:
        # OptionError names the keyword; the CLI shows it as the flag.
        for name in ("ratio", "target_flops", "target_params"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise OptionError(name, f"must be in [0, 1], got {value}")
        if self.target_latency is not None and not 0.0 < self.target_latency <= 1.0:
            raise OptionError("target_latency", "must be in (0, 1]: no model runs in no "
                              f"time, got {self.target_latency}")
        if self.scope not in ("local", "global"):
            raise OptionError("scope", f"must be 'local' or 'global', got {self.scope!r}")
        if self.round_to != "auto" and (not isinstance(self.round_to, int)
                                        or self.round_to < 1):
            raise OptionError("round_to", f"must be at least 1 or 'auto', got {self.round_to!r}")

    @property
    def given(self) -> bool:
        """Whether any removal target (ratio, FLOPs, params or latency) is set.

        Without one, selection removes only provably dead units and scores are not
        needed; with one, units go in score order. A latency target counts.
        """
        return any(t is not None for t in (self.ratio, self.target_flops, self.target_params,
                                           self.target_latency))

    @property
    def needs_latency(self) -> bool:
        """Whether selection needs the measured latency model.

        It does for a latency target, and for ``round_to`` auto with any target.
        """
        return self.target_latency is not None or (self.round_to == "auto" and self.given)

    def fixed_round_to(self) -> int:
        """The one ``round_to`` step, for passes that plan without the latency model."""
        if self.round_to == "auto":
            raise OptionError("round_to", "'auto' needs the latency model, which only "
                              "prune and obspa's selection build; give a number")
        return self.round_to


def _slot(*derived_from: str, doc: str) -> dict[str, Any]:
    """Metadata of an analysis slot: what it is derived from (cleared when they change)."""
    return {"derived_from": derived_from, "doc": doc}


@dataclasses.dataclass
class Analyses:
    """The analysis results of one pipeline, each in a typed slot (None: not computed).

    Assigning a slot clears the slots derived from it (see the module docstring); use
    :meth:`update` to set several slots that were computed together.
    """

    couplings: Coupling | None = dataclasses.field(
        default=None, metadata=_slot(doc="coupled channels (``couple``)"))
    groups: list[Group] | None = dataclasses.field(
        default=None, metadata=_slot("couplings", doc="channel groups (``group``)"))
    scores: dict[str, np.ndarray] | None = dataclasses.field(
        default=None, metadata=_slot(
            "groups", doc="one score per unit, per group id (a criterion, or ``obspa``)"))
    criterion: str | None = dataclasses.field(
        default=None, metadata=_slot("scores", doc="pipeline text of the pass that scored"))
    dead: dict[str, np.ndarray] | None = dataclasses.field(
        default=None, metadata=_slot(
            "groups", doc="per group id, a mask of the units provably zero (``dead``)"))
    selection: dict[str, np.ndarray] | None = dataclasses.field(
        default=None, metadata=_slot(
            "groups", "scores", "dead",
            doc="units to remove per group id, chosen by ``obspa`` or ``precrop``; "
                "``prune`` plans its own when empty"))
    plan: Plan | None = dataclasses.field(
        default=None, metadata=_slot(
            "selection", doc="skipped groups and target outcome behind ``selection``"))
    reconstructed: dict[ir.Value, np.ndarray] | None = dataclasses.field(
        default=None, metadata=_slot(
            "selection", doc="new data for weights, written by ``prune`` before slicing"))
    growth: dict[str, int] | None = dataclasses.field(
        default=None, metadata=_slot(
            "selection", doc="units to add per group id (precrop<preconfig=true>)"))

    def __setattr__(self, name: str, value: Any) -> None:
        self.update(**{name: value})

    def update(self, **values: Any) -> None:
        """Set slots computed together; clear every other slot derived from any of them."""
        unknown = set(values) - _SLOTS.keys()
        if unknown:
            raise AttributeError(f"no analysis slot {sorted(unknown)}")
        for stale in _dependents(values) - values.keys():
            object.__setattr__(self, stale, None)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def clear(self) -> None:
        """Forget every result: the graph they describe has changed."""
        for name in _SLOTS:
            object.__setattr__(self, name, None)

    def filled(self) -> dict[str, Any]:
        """The slots that hold a result, by name, in declaration order."""
        return {name: value for name in _SLOTS if (value := getattr(self, name)) is not None}


_SLOTS: dict[str, tuple[str, ...]] = {
    f.name: f.metadata["derived_from"] for f in dataclasses.fields(Analyses)}


def _dependents(names: Iterable[str]) -> set[str]:
    """Every slot derived, directly or through others, from any of ``names``."""
    found: set[str] = set()
    frontier = set(names)
    while frontier:
        frontier = {slot for slot, sources in _SLOTS.items()
                    if slot not in found and frontier & set(sources)}
        found |= frontier
    return found


@dataclasses.dataclass
class PipelineContext:
    """Everything passes share for one model, besides the model itself."""

    targets: Targets = dataclasses.field(default_factory=Targets)
    analyses: Analyses = dataclasses.field(default_factory=Analyses)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Facts passes add to the run's report (``groups``, ``channels``, ...); never invalidated."""
    calibration: Any = None
    """Calibration inputs (a :class:`spa_opt.calibration.Calibration`) the user gave with
    ``--calib``, or a pass synthesized; read by passes that need activations."""
    input_dims: dict[str, int] = dataclasses.field(default_factory=dict)
    """Sizes of symbolic input dims (by name or ``"input:axis"``) for inputs a pass
    generates (obspa's noise inputs)."""
    io: str = "keep"
    """``keep``: the graph's inputs and outputs keep their shapes (channels reaching them
    are pinned); ``rewrite``: key/value-cache inputs and outputs (``past*``,
    ``present*``, ``cache*``) may lose heads, their new shapes are written and listed
    in the report (``--io rewrite``). Read by ``couple``."""
    show_progress: bool = False
    """Whether long-running passes draw a progress bar (the CLI sets it for terminals)."""
    executor: str = ""
    """Where obspa's per-layer work and Hessian shards run (``threads``, ``ray``,
    ``ray://HOST:PORT``; :mod:`spa_opt.obs.executor`); empty: threads (``--executor``)."""
    replay_plan: dict[str, Any] | None = None
    """A saved pruning plan (``--plan``; :mod:`spa_opt.passes.pruning.replay`) that
    ``prune`` applies instead of planning from targets."""
    record_plan: bool = False
    """Whether ``prune`` records its plan in ``plan_document`` (``--save-plan``)."""
    plan_document: dict[str, Any] | None = None
    """The plan of the last ``prune`` (what ``--save-plan`` writes), by stable names."""
    latency: LatencySpec | None = None
    """How latency is measured for ``--target-latency`` and ``--round-to auto``
    (provider, threads, cache folder: ``--ep``, ``--threads``, ``--latency-cache``);
    None: the CPU provider on every core, the default cache."""
    scratch_dir: str = ""
    """Folder for arrays a pass spills to disk (obspa's activations and Hessians past its
    memory budget): the output's folder when the CLI knows it, else the system's
    temporary folder."""

    @classmethod
    def of(cls, model: ir.Model) -> PipelineContext:
        """The model's context, created empty on first use."""
        context = model.meta.get(_META_KEY)
        if context is None:
            context = cls()
            model.meta[_META_KEY] = context
        return context

    def attach(self, model: ir.Model) -> PipelineContext:
        """Make this the context of ``model`` and return it."""
        model.meta[_META_KEY] = self
        return self

    def invalidate_analyses(self) -> None:
        """Forget every analysis result: the graph they describe has changed."""
        self.analyses.clear()
