"""The pass manager: runs passes in order and lets instruments watch.

Instruments (timing tables, statistics, IR printing, checking after each pass,
progress) are kept outside the passes, as in TVM and LLVM: a pass only transforms
and counts; the manager times it and hands a :class:`PassRecord` to every
instrument. The manager is itself an ``InPlacePass``, so a whole spa-opt pipeline
nests inside another onnx_ir pass pipeline.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import onnx_ir as ir

from spa_opt.errors import PassError, SpaOptError
from spa_opt.passes._infra.base import SpaPass


@dataclasses.dataclass
class PassRecord:
    """What one pass did: the row of ``--time-passes`` and of the report's ``passes``."""

    name: str
    seconds: float
    modified: bool
    stats: dict[str, int | float]

    def to_dict(self) -> dict:
        """The report's JSON form."""
        return dataclasses.asdict(self)


class Instrument:
    """Hooks called around every pass; override the ones you need."""

    def before_run(self, model: ir.Model, passes: Sequence[SpaPass]) -> None:
        """Called once before the first pass."""

    def before_pass(self, pass_: SpaPass, model: ir.Model) -> None:
        """Called before each pass."""

    def after_pass(self, pass_: SpaPass, model: ir.Model, record: PassRecord) -> None:
        """Called after each pass with what it did."""

    def after_run(self, model: ir.Model, records: Sequence[PassRecord]) -> None:
        """Called once after the last pass."""


class PassManager(ir.passes.InPlacePass):
    """Run spa-opt passes in order with instruments; keeps the records of the last run."""

    def __init__(self, passes: Sequence[SpaPass], instruments: Sequence[Instrument] = ()) -> None:
        super().__init__()
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.records: list[PassRecord] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Run every pass; modified if any pass modified the model."""
        self.records = []
        for instrument in self.instruments:
            instrument.before_run(model, self.passes)
        for pass_ in self.passes:
            for instrument in self.instruments:
                instrument.before_pass(pass_, model)
            start = time.perf_counter()
            result = self._run_one(pass_, model)
            record = PassRecord(
                pass_.name, time.perf_counter() - start, result.modified, dict(pass_.stats)
            )
            self.records.append(record)
            for instrument in self.instruments:
                instrument.after_pass(pass_, model, record)
        for instrument in self.instruments:
            instrument.after_run(model, self.records)
        return ir.passes.PassResult(model, any(r.modified for r in self.records))

    @staticmethod
    def _run_one(pass_: SpaPass, model: ir.Model) -> ir.passes.PassResult:
        """Run one pass; an unexpected failure becomes a :class:`PassError` naming it."""
        try:
            return pass_(model)
        except SpaOptError as error:  # deliberate: keep its type and words, say where
            if getattr(error, "pass_name", None) is None:
                error.pass_name = pass_.name  # type: ignore[attr-defined]
            raise
        except Exception as error:
            raise PassError(pass_.name, error) from error
