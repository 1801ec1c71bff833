"""CLI start-up cost beside ``python -c 'import numpy, onnx'`` (issue 13, point 9).

Every figure is the minimum wall time over ``--runs`` fresh subprocesses (default 10),
measured in the same run, round-robin, so a busy machine slows all of them alike:

- ``import numpy, onnx``: the reference, what any ONNX tool in Python pays;
- ``spa-opt --version`` and ``spa-opt --help``: the console script, nothing to import
  but the CLI itself;
- ``first pass``: from process start to the moment the first pass of
  ``spa-opt -p dce golden_models/resnet_tiny.onnx OUT`` starts, that is argument
  parsing, the imports a run needs, loading the model and counting its cost. A probe
  (below) adds an instrument whose ``before_pass`` prints the wall clock and exits, so
  neither the pass nor the save is timed.

The goal is within 1.5x of the reference. ``--breakdown`` adds, for the reference and
the first-pass path, the ``python -X importtime`` seconds each package's own modules
take (one run each, inflated by the tracing itself), to show where the time goes.

Run: ``python bench/startup.py`` (``--runs 20``, ``--breakdown``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import format_table, machine

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "golden_models" / "resnet_tiny.onnx"
GOAL = 1.5

#: Runs the CLI as the console script does, with one more instrument that prints the
#: wall clock when the first pass starts and ends the process there.
PROBE = """\
import os, sys, time
import spa_opt.cli as cli

_instruments = cli._instruments

def _probed(args):
    from spa_opt.passes._infra.manager import Instrument

    class FirstPass(Instrument):
        def before_pass(self, pass_, model):
            print(repr(time.time()), flush=True)
            os._exit(0)

    return [*_instruments(args), FirstPass()]

cli._instruments = _probed
sys.exit(cli.main(sys.argv[1:]))
"""

#: Packages whose own import time ``--breakdown`` reports; the rest is summed as other.
PACKAGES = ("numpy", "onnx", "ml_dtypes", "onnx_ir", "sympy", "mpmath", "onnxruntime",
            "scipy", "onnxscript", "torch", "spa_opt", "google")


def spa_opt_command() -> list[str]:
    """The ``spa-opt`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("spa-opt")
    if script.exists():
        return [str(script)]
    found = shutil.which("spa-opt")
    if found is None:
        sys.exit("spa-opt is not installed: pip install -e . first")
    return [found]


def wall(command: list[str]) -> float:
    """Seconds one run of ``command`` takes, start to exit; it must succeed."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def first_pass(command: list[str]) -> float:
    """Seconds from starting ``command`` (the probe) to its first pass starting."""
    start = time.time()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1]) - start


def breakdown(command: list[str]) -> list[list[str]]:
    """Self ``-X importtime`` seconds per top-level package on ``command``'s path.

    Self times (not cumulative) so that each package counts once whoever imports it:
    sympy's own seconds are sympy's even though onnx_ir imports it.
    """
    done = subprocess.run([sys.executable, "-X", "importtime", *command[1:]],
                          capture_output=True, text=True, check=True)
    own: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        self_us, _, name = line.removeprefix("import time:").split("|")
        if not self_us.strip().isdigit():
            continue  # the header line
        root = name.strip().split(".")[0]
        group = root if root in PACKAGES else "other (standard library, protobuf, ...)"
        own[group] = own.get(group, 0) + int(self_us)
    rows = [[name, f"{own[name] / 1e6:.3f}"] for name in sorted(own, key=own.get, reverse=True)]
    return [*rows, ["total", f"{sum(own.values()) / 1e6:.3f}"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command (minimum kept)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print -X importtime per package on the first-pass path")
    args = parser.parse_args()

    spa = spa_opt_command()
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "out.onnx")
        probe = [sys.executable, "-c", PROBE, "-p", "dce", "--no-progress", str(MODEL), out]
        cases = {
            "python -c 'import numpy, onnx'": lambda: wall(
                [sys.executable, "-c", "import numpy, onnx"]),
            "spa-opt --version": lambda: wall([*spa, "--version"]),
            "spa-opt --help": lambda: wall([*spa, "--help"]),
            "first pass (spa-opt -p dce resnet_tiny.onnx)": lambda: first_pass(probe),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, measure in cases.items():
                times[name].append(measure())
        rows = [["command", "min s", "median s", "x reference", f"within {GOAL}x"]]
        reference = min(next(iter(times.values())))
        for name, values in times.items():
            best = min(values)
            median = sorted(values)[len(values) // 2]
            ratio = best / reference
            rows.append([name, f"{best:.3f}", f"{median:.3f}", f"{ratio:.2f}x",
                         "yes" if ratio <= GOAL else "NO"])
        print(f"{machine()}; minimum of {args.runs} runs each")
        print(format_table(rows, left={0}))
        if args.breakdown:
            for title, command in (("reference", [sys.executable, "-c", "import numpy, onnx"]),
                                   ("first-pass path", probe)):
                print(f"\n-X importtime, {title} (own seconds per package, one run):")
                print(format_table([["package", "seconds"], *breakdown(command)], left={0}))


if __name__ == "__main__":
    main()
