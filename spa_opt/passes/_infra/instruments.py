"""Instruments for the pass manager: timing, statistics, IR printing, checking, progress.

They mirror LLVM ``opt``'s ``--time-passes``, ``--stats``, ``--print-ir-after`` and
``--verify-each``. Each writes to the stream it is given (stderr in the CLI), so
stdout stays free for a model or a pipeline printed by the user's request.

:func:`progress` is the one progress bar a long pass draws of its own work (obspa's
samples, groups and layers; synthesize's steps), beside :class:`ProgressInstrument`'s
bar over the passes.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, TextIO

import onnx_ir as ir

from spa_opt.errors import VerificationError
from spa_opt.passes._infra.base import SpaPass
from spa_opt.passes._infra.context import PipelineContext
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
        for key, value in PipelineContext.of(model).report.get("load", {}).items():
            if value:  # repairs made on load (spa_opt.ir.repair), before the first pass
                print(f"  load: {key} = {value}", file=stream)
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
        from spa_opt.ir.check import check_model

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


PROGRESS_DELAY = 2.0
"""Seconds before a bar is drawn: shorter work never shows one."""

PROGRESS_TICK = 0.5
"""Seconds between redraws while nothing advances (the elapsed time keeps moving)."""


def _ignore(n: int = 1, note: str | None = None) -> None:
    """The advance function of a disabled bar."""


def _screen(stream: TextIO) -> dict[str, Any]:
    """The bar's size arguments: follow the terminal, or 80 x 24 where it reports none.

    A pseudo-terminal nobody sized (``script`` run without a terminal, some CI runners)
    reports 0 x 0, and tqdm then draws nothing at all.
    """
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return {}  # not a terminal (a StringIO in tests): tqdm's own fallbacks
    if size.columns > 0 and size.lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": size.columns or 80, "nrows": size.lines or 24}


@contextlib.contextmanager
def progress(enabled: bool, total: int | None, label: str, unit: str = "it", *,
             file: TextIO | None = None, delay: float = PROGRESS_DELAY,
             tick: float = PROGRESS_TICK, since: float | None = None
             ) -> Iterator[Callable[..., None]]:
    """A progress bar for one stretch of a pass's work; yields its ``advance(n=1, note)``.

    ``note`` replaces the text after the bar (obspa: the last stage's time).

    Passes call it with ``context.show_progress``, which the CLI sets only when stderr
    is a terminal (and ``--no-progress`` clears), so tests, pipes and the API draw
    nothing: disabled, tqdm is not even imported and ``advance`` does nothing.

    tqdm alone draws only inside ``update()``, and only once ``delay`` has passed; work
    that advances rarely (one big batch, one big layer) would then show nothing until
    its last update, and ``leave=False`` erases that at once. So a daemon thread ticks
    the bar every ``tick`` seconds: it appears ``delay`` seconds in even if nothing has
    advanced, its elapsed time keeps moving, and it is erased when the work is done.

    A pass whose work comes in phases (obspa: Hessians, then ordering, then
    reconstruction) passes its own start as ``since``: the delay then counts from the
    pass's start, so a pass that has run for two seconds shows each later phase at
    once, even when no single phase takes two seconds.

    Args:
        enabled: Whether to draw at all.
        total: Units of work expected (None or 0: unknown, a counter).
        label: What is running, e.g. ``"obspa order"``.
        unit: What one unit is (``"sample"``, ``"group"``, ``"step"``).
        file: Where to draw (stderr by default; a StringIO in tests).
        delay: Seconds before the first draw.
        tick: Seconds between redraws while nothing advances.
        since: ``time.perf_counter()`` when the delay starts counting (default: now).
    """
    if not enabled:
        yield _ignore
        return
    from tqdm import tqdm

    if since is not None:
        delay = max(0.0, delay - (time.perf_counter() - since))
    # miniters=0: every update may redraw (tqdm still limits redraws to mininterval),
    # so the ticker's update(0) redraws even after fast updates raised tqdm's own count.
    stream = file or sys.stderr
    bar = tqdm(total=total or None, desc=label, unit=unit, file=stream, leave=False,
               delay=delay, miniters=0, **_screen(stream))
    lock = threading.Lock()
    done = threading.Event()

    def advance(n: int = 1, note: str | None = None) -> None:
        with lock:
            if note is not None:
                bar.set_postfix_str(note, refresh=False)
            bar.update(n)

    def redraw() -> None:
        while not done.wait(tick):
            advance(0)

    ticker = threading.Thread(target=redraw, name=f"progress: {label}", daemon=True)
    ticker.start()
    try:
        yield advance
    finally:
        done.set()
        ticker.join()
        bar.close()
