"""Instruments for the pass manager: timing, statistics, IR printing, checking, progress.

They mirror LLVM ``opt``'s ``--time-passes``, ``--stats``, ``--print-ir-after`` and
``--verify-each``. Each writes to the stream it is given (stderr in the CLI), so
stdout stays free for a model or a pipeline printed by the user's request.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from typing import TextIO

import onnx_ir as ir

from spa_opt.errors import VerificationError
from spa_opt.passes._infra.base import SpaPass
from spa_opt.passes._infra.manager import Instrument, PassRecord


class TimingInstrument(Instrument):
    """Print a table of seconds per pass and the total after the run."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def after_run(self, model: ir.Model, records: Sequence[PassRecord]) -> None:
        """Print the table."""
        stream = self.stream or sys.stderr
        total = sum(r.seconds for r in records) or 1e-12
        width = max([len(r.name) for r in records] + [len("total")])
        print("===-- spa-opt pass timing --===", file=stream)
        print(f"  {'seconds':>10}  {'share':>6}  {'pass':<{width}}", file=stream)
        for r in records:
            share = 100.0 * r.seconds / total
            print(f"  {r.seconds:10.4f}  {share:5.1f}%  {r.name:<{width}}", file=stream)
        print(f"  {total:10.4f}  100.0%  {'total':<{width}}", file=stream)


class StatsInstrument(Instrument):
    """Print each pass's counters after the run."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def after_run(self, model: ir.Model, records: Sequence[PassRecord]) -> None:
        """Print the counters, one line each."""
        stream = self.stream or sys.stderr
        print("===-- spa-opt statistics --===", file=stream)
        for r in records:
            if not r.stats:
                print(f"  {r.name}: (no counters)", file=stream)
            for key, value in r.stats.items():
                shown = f"{value:.6g}" if isinstance(value, float) else str(value)
                print(f"  {r.name}: {key} = {shown}", file=stream)


class PrintIRAfterInstrument(Instrument):
    """Print the model as text after the named passes (or ``all``).

    onnx_ir's own text form is used: readable, and it elides large tensors.
    """

    def __init__(self, names: Collection[str], stream: TextIO | None = None) -> None:
        self.names = set(names)
        self.stream = stream

    def after_pass(self, pass_: SpaPass, model: ir.Model, record: PassRecord) -> None:
        """Print the IR if this pass was asked for."""
        if "all" in self.names or pass_.name in self.names:
            stream = self.stream or sys.stderr
            print(f"; *** IR dump after {pass_.name} ***", file=stream)
            print(model, file=stream)


class VerifyEachInstrument(Instrument):
    """Check the model after every pass that modified it, naming the pass that broke it."""

    def after_pass(self, pass_: SpaPass, model: ir.Model, record: PassRecord) -> None:
        """Run the full checker and strict shape inference."""
        from spa_opt.passes.check import check_model

        if not record.modified:
            return
        try:
            check_model(model)
        except VerificationError as error:
            raise VerificationError(f"after pass '{pass_.name}': {error}") from None


class ProgressInstrument(Instrument):
    """A progress bar over the passes on stderr; draws nothing unless stderr is a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None

    def before_run(self, model: ir.Model, passes: Sequence[SpaPass]) -> None:
        """Open the bar."""
        if self.enabled:
            from tqdm import tqdm

            # delay: runs shorter than two seconds never draw a bar.
            self._bar = tqdm(total=len(passes), unit="pass", file=sys.stderr, leave=False,
                             delay=2.0)

    def before_pass(self, pass_: SpaPass, model: ir.Model) -> None:
        """Show which pass runs."""
        if self._bar is not None:
            self._bar.set_description(pass_.name)

    def after_pass(self, pass_: SpaPass, model: ir.Model, record: PassRecord) -> None:
        """Advance."""
        if self._bar is not None:
            self._bar.update(1)

    def after_run(self, model: ir.Model, records: Sequence[PassRecord]) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
