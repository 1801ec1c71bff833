"""The shared progress bar of long passes (:func:`spa_opt.passes._infra.instruments.progress`).

- enabled, it draws its label, count and unit on the stream it is given, and erases
  itself when the work is done (a pass's bar must not stay in the terminal);
- enabled, it appears after ``delay`` even when nothing advances (one long batch, one
  big layer): the ticker redraws it;
- the delay counts from ``since`` (the pass's start), so a later phase of a long pass
  shows at once;
- work shorter than ``delay`` draws nothing;
- disabled (tests, pipes, ``--no-progress``), it draws nothing and does not import tqdm.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time

from spa_opt.passes._infra.instruments import progress


def test_enabled_bar_draws_its_progress_and_erases_itself() -> None:
    stream = io.StringIO()
    with progress(True, 4, "obspa order", "group", file=stream, delay=0.0) as advance:
        for _ in range(4):
            advance(1)
            time.sleep(0.12)  # past tqdm's mininterval, so every update redraws
    text = stream.getvalue()
    assert "obspa order" in text and "group" in text
    assert "4/4" in text
    assert text.endswith("\r")  # leave=False: the last write clears the line


def test_bar_appears_while_nothing_advances() -> None:
    stream = io.StringIO()
    with progress(True, 128, "obspa hessians", "sample", file=stream, delay=0.2,
                  tick=0.05):
        time.sleep(0.6)  # one long batch: no update at all
        shown = stream.getvalue()
    assert "obspa hessians" in shown and "0/128" in shown


def test_a_pass_past_the_delay_draws_each_phase_at_once() -> None:
    stream = io.StringIO()
    began = time.perf_counter() - 10.0  # the pass has run for ten seconds already
    with progress(True, 12, "obspa order", "group", file=stream, since=began) as advance:
        advance(1)  # a phase shorter than the delay still shows
    assert "obspa order" in stream.getvalue()


def test_short_work_draws_nothing() -> None:
    stream = io.StringIO()
    with progress(True, 3, "synthesize", "step", file=stream, delay=30.0) as advance:
        for _ in range(3):
            advance(1)
    assert stream.getvalue() == ""


def test_disabled_bar_draws_nothing() -> None:
    stream = io.StringIO()
    with progress(False, 3, "synthesize", "step", file=stream, delay=0.0) as advance:
        for _ in range(3):
            advance(1)
        advance()
    assert stream.getvalue() == ""


def test_disabled_bar_does_not_import_tqdm() -> None:
    code = ("import sys\n"
            "from spa_opt.passes._infra.instruments import progress\n"
            "before = 'tqdm' in sys.modules\n"
            "with progress(False, 3, 'x', file=sys.stdout, delay=0.0) as advance:\n"
            "    advance(3)\n"
            "print(before, 'tqdm' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    before, after = result.stdout.split()
    assert after == before  # the disabled bar imported nothing
