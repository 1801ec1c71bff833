"""Run ``spa-opt`` on a model and judge the run against the CLI contract.

A run goes through ``spa_opt.cli.main``, the console script's entry point, in a
worker process forked from a server that imported spa-opt, onnx and onnxruntime once
(multiprocessing's forkserver): each run costs a fork, not an interpreter start, and
the worker's file descriptors 1 and 2 go to files, so what onnxruntime's C++ logger
writes is judged with what Python prints. A worker still alive after the timeout is a
hang; one killed by a signal is a crash.

The verdicts:

- ``pruned``: exit 0, stderr only spa-opt's own lines, the output passes the full
  checker and strict shape inference, opens in onnxruntime with the input's graph
  inputs and outputs (names, element types, shapes), and the input is untouched;
- ``rejected``: exit 2 with one ``spa-opt: error:`` line, nothing written, the input
  untouched;
- ``failure``: anything else, with a ``kind`` saying which rule it broke.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

PIPELINE = "fold-constants,couple,group,l1,prune"
ARGV = ["-p", PIPELINE, "--ratio", "0.3", "--verify", "1", "in.onnx", "out.onnx"]
#: stderr lines a successful run may print (cli.py's summary, io and verify lines).
SPA_OPT_PREFIXES = ("prune: ", "verify: ", "io: ")
_PRELOAD = ["tests.fuzz._worker"]
_context: multiprocessing.context.ForkServerContext | None = None


@dataclass
class Verdict:
    """How one run went: ``status`` is pruned, rejected or failure (``kind`` says which)."""

    status: str
    kind: str
    code: int | None
    stderr: list[str]
    detail: str = ""

    @property
    def failed(self) -> bool:
        """Whether the run broke the contract."""
        return self.status == "failure"

    def signature(self) -> str:
        """What a reproducer must keep to count as the same failure."""
        return self.kind

    def to_dict(self) -> dict:
        """The verdict as JSON data."""
        return asdict(self)


def _forkserver() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    return _context


def run_model(model: onnx.ModelProto | bytes, *, timeout: float = 60.0,
              argv: list[str] | None = None) -> Verdict:
    """Run spa-opt on ``model`` in a scratch folder and judge it."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="spa-fuzz-") as scratch:
        folder = Path(scratch)
        work = folder / "work"
        work.mkdir()
        (work / "in.onnx").write_bytes(data)
        result = folder / "result.json"
        from tests.fuzz._worker import run_and_check

        process = _forkserver().Process(
            target=run_and_check, args=(str(work), list(argv or ARGV), str(result)))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            return Verdict("failure", "hang", None, [], f"still running after {timeout:.0f} s")
        stderr = _read_lines(folder / "work.stderr")
        if process.exitcode != 0 or not result.exists():
            return Verdict("failure", "crash", process.exitcode, stderr,
                           f"worker exit code {process.exitcode}")
        outcome = json.loads(result.read_text())
        files = sorted(p.name for p in work.iterdir())
        unchanged = (work / "in.onnx").read_bytes() == data
        return judge(outcome["code"], stderr, files, unchanged, outcome.get("invalid"))


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]


def judge(code: int, stderr: list[str], files: list[str], input_unchanged: bool,
          invalid: str | None) -> Verdict:
    """The verdict of a finished run, from what a user would see of it."""
    if not input_unchanged:
        return Verdict("failure", "input-modified", code, stderr)
    if code == 2:
        if files != ["in.onnx"]:
            return Verdict("failure", "written-on-error", code, stderr, f"files: {files}")
        if len(stderr) != 1 or not stderr[0].startswith("spa-opt: error: "):
            return Verdict("failure", "multi-line-error", code, stderr)
        return Verdict("rejected", "input-error", code, stderr)
    if code == 1:
        return Verdict("failure", "internal-error", code, stderr)
    if code != 0:
        return Verdict("failure", "exit-code", code, stderr)
    noise = [line for line in stderr if not line.startswith(SPA_OPT_PREFIXES)]
    if noise:
        return Verdict("failure", "noisy-stderr", code, stderr, noise[0])
    if invalid:
        return Verdict("failure", "invalid-output", code, stderr, invalid)
    return Verdict("pruned", "ok", code, stderr)


def summarise(verdicts: list[Verdict]) -> dict[str, int]:
    """Counts by status, and failures by kind."""
    counts: dict[str, int] = {"mutants": len(verdicts), "pruned": 0, "rejected": 0,
                              "failure": 0}
    for verdict in verdicts:
        counts[verdict.status] += 1
        if verdict.failed:
            counts[f"failure:{verdict.kind}"] = counts.get(f"failure:{verdict.kind}", 0) + 1
    return counts


def first_message(verdict: Verdict) -> str:
    """The line that best says what went wrong, for reports."""
    text = verdict.detail or (verdict.stderr[0] if verdict.stderr else "")
    return text if len(text) < 300 else text[:297] + "..."


__all__ = ["ARGV", "PIPELINE", "Verdict", "first_message", "judge", "run_model", "summarise"]
