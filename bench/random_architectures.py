"""The long run of random architectures (issue 16): N seeded graphs through every property.

Each seed drives ``tests.fuzz.architectures.generate`` through a numpy generator
(:class:`~tests.fuzz.architectures.SeededChoices`), so a failure is reproduced by its
seed alone (``--seed S --count 1 --verbose``). Every graph is first validated (checker
full check, an onnxruntime run: an invalid graph is a generator bug and counted apart),
then judged by the checks of ``tests/fuzz/random_checks.py``: ``couple,group`` within
its bound, ``dead`` on zeroed units (lossless, finds what the oracle confirms),
``couple,group,l1,prune`` at a random ratio (a valid model with the same IO) and the
CLI's ``--print-ir-after all``.

Run from the repository root::

    python bench/random_architectures.py --count 1000
    python bench/random_architectures.py --seed 4242 --count 1 --verbose

Exit status 1 when any graph failed a property (or the generator made an invalid one).
"""

from __future__ import annotations

import argparse
import collections
import shlex
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, revision  # noqa: E402

PROPERTIES = ("coupling", "dead", "prune", "print-ir")


def judge(seed: int, properties: tuple[str, ...] = PROPERTIES) -> tuple[str, str, int]:
    """Generate the graph of ``seed`` and check it.

    Returns:
        ``(outcome, detail, nodes)``: outcome ``ok`` or ``invalid`` (a generator bug) or
        the first property that failed, with its one-line message.
    """
    import numpy as np

    from tests.fuzz import random_checks
    from tests.fuzz.architectures import SeededChoices, generate, validate

    arch = generate(SeededChoices(seed))
    try:
        validate(arch.proto)
    except Exception as error:
        return "invalid", f"{type(error).__name__}: {error}".splitlines()[0], arch.nodes
    ratio = float(np.random.default_rng(seed).choice([0.1, 0.25, 0.3, 0.5, 0.75, 0.9]))
    checks = {
        "coupling": lambda: random_checks.check_coupling(arch.proto),
        "dead": lambda: random_checks.check_dead(arch.proto, seed),
        "prune": lambda: random_checks.check_prune(arch.proto, ratio),
        "print-ir": lambda: random_checks.check_print_ir(arch.proto, ratio),
    }
    for name in properties:
        try:
            checks[name]()
        except Exception as error:
            lines = f"{type(error).__name__}: {error}".splitlines()
            return name, (lines[0] if lines else type(error).__name__)[:300], arch.nodes
    return "ok", "", arch.nodes


def main(argv: list[str] | None = None) -> int:
    """Run the seeds, print the counts and one line per failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="graphs to try (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--only", choices=PROPERTIES, action="append",
                        help="check only this property (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="a line per graph, tracebacks")
    args = parser.parse_args(argv)
    shown = ["python", "bench/random_architectures.py", *(argv if argv is not None
                                                         else sys.argv[1:])]
    print(f"Reproduce (from the repo root): {shlex.join(shown)}")
    print(f"{machine()}; {revision(ROOT, 'spa_opt', 'bench', 'tests')}")
    properties = tuple(args.only) if args.only else PROPERTIES
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    nodes = 0
    start = time.perf_counter()
    for seed in range(args.seed, args.seed + args.count):
        try:
            outcome, detail, size = judge(seed, properties)
        except Exception as error:  # the generator itself raised: our bug as well
            outcome, detail, size = "generator", f"{type(error).__name__}: {error}", 0
            if args.verbose:
                traceback.print_exc()
        counts[outcome] += 1
        nodes += size
        if outcome != "ok":
            failures.append(f"seed {seed}: {outcome}: {detail}")
        if args.verbose:
            print(f"  seed {seed}: {size} nodes, {outcome} {detail}", file=sys.stderr)
    seconds = time.perf_counter() - start
    tried = args.count
    failed = tried - counts["ok"]
    print()
    print(f"tried {tried} graphs ({nodes} nodes, {nodes / max(tried, 1):.1f} per graph) "
          f"in {seconds:.0f} s: {counts['ok']} pruned validly with every property kept, "
          f"{failed} failures")
    for outcome in ("invalid", "generator", *PROPERTIES):
        if counts[outcome]:
            print(f"  {outcome}: {counts[outcome]}")
    print("\n".join(failures) if failures else "no failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
