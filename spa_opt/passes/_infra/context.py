"""The pipeline context: how passes hand results to each other.

Data flows one way: the driver sets the :class:`Targets`, analyses fill the
``analyses`` slots, transforms read them. The context lives in the model's
``meta`` store (scratch space onnx_ir never saves), so passes composed with plain
``onnx_ir.passes.Sequential`` find it without any wiring::

    ctx = PipelineContext.of(model)
    ctx.targets = Targets(ratio=0.5)

A pass that changes the graph and does not declare ``preserves_analyses``
invalidates the analyses: a grouping computed before a transform never reaches a
transform after it.

Slots filled by later passes (one name each, documented where they are produced):
``couplings`` (couple), ``groups`` (group), ``scores`` (criteria), ``dead`` (dead),
``selection`` (obspa; ``prune`` plans its own when absent), ``plan`` (obspa: the skipped
groups and target outcome behind ``selection``), ``reconstructed`` (obspa: new data for
weights, keyed by their ``ir.Value``, written by ``prune`` before slicing), ``growth``
(precrop with PreConfig: units to add per group, applied by ``prune``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import onnx_ir as ir

from spa_opt.errors import InputError

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
    round_to: int = 1
    """Keep channel counts multiples of this."""
    ignore: tuple[str, ...] = ()
    """Glob patterns of node names never pruned."""
    seed: int = 0
    """Seed of every random choice (random criterion, synthetic inputs)."""

    def __post_init__(self) -> None:
        for name in ("ratio", "target_flops", "target_params"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise InputError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.scope not in ("local", "global"):
            raise InputError(f"--scope must be 'local' or 'global', got '{self.scope}'")
        if self.round_to < 1:
            raise InputError(f"--round-to must be at least 1, got {self.round_to}")


@dataclasses.dataclass
class PipelineContext:
    """Everything passes share for one model, besides the model itself."""

    targets: Targets = dataclasses.field(default_factory=Targets)
    analyses: dict[str, Any] = dataclasses.field(default_factory=dict)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Facts passes add to the run's report (``groups``, ``channels``, ...); never invalidated."""
    calibration: Any = None
    """Calibration inputs (a :class:`spa_opt.calibration.Calibration`) the user gave with
    ``--calib``, or a pass synthesized; read by passes that need activations."""
    input_dims: dict[str, int] = dataclasses.field(default_factory=dict)
    """Sizes of symbolic input dims (by name or ``"input:axis"``) for inputs a pass
    generates (obspa's noise inputs)."""
    show_progress: bool = False
    """Whether long-running passes draw a progress bar (the CLI sets it for terminals)."""

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
