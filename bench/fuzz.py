"""Mutation fuzzing of the CLI contract over the golden models (issue 16).

Each mutant is ``tests.fuzz.mutations.mutate(model, seed)`` of one golden model
(``golden_models/**/*.onnx``, and the onnx package's light model zoo with
``--light``), run through ``spa-opt -p fold-constants,couple,group,l1,prune --ratio 0.3
--verify 1`` by ``tests.fuzz.oracle`` and judged pruned validly, rejected cleanly or a
failure. Failures are minimised to a reproducer saved in the reproducers folder
beside the JSON report.

Run from the repository root::

    python bench/fuzz.py --mutants 2000                      # over every golden model
    python bench/fuzz.py --mutants 50 --filter hf/ --seed 7  # a slice, other seeds
    python bench/fuzz.py --mutants 300 --no-minimise --out /tmp/fuzz

Mutant ``i`` uses model ``i mod M`` and seed ``base_seed + i``, so any mutant is
re-made from the report's ``model`` and ``seed``. Exit status 1 when a run failed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzz.minimise import minimise  # noqa: E402
from tests.fuzz.models import golden_models  # noqa: E402
from tests.fuzz.mutations import mutate  # noqa: E402
from tests.fuzz.oracle import ARGV, first_message, run_model, summarise  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first mutant")
    parser.add_argument("--filter", default="", help="only model keys containing this")
    parser.add_argument("--light", action="store_true", help="add the light model zoo")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "fuzz_out")
    parser.add_argument("--no-minimise", action="store_true")
    args = parser.parse_args(argv)

    models = {k: p for k, p in golden_models(args.light).items() if args.filter in k}
    keys = sorted(models)
    loaded: dict[str, onnx.ModelProto] = {}
    reproducers = args.out / "reproducers"
    reproducers.mkdir(parents=True, exist_ok=True)
    verdicts, failures, started = [], [], time.monotonic()
    for i in range(args.mutants):
        key, seed = keys[i % len(keys)], args.seed + i
        if key not in loaded:
            loaded[key] = onnx.load(str(models[key]))
        mutant = mutate(loaded[key], seed)
        if mutant is None:
            continue
        verdict = run_model(mutant.model, timeout=args.timeout)
        verdicts.append(verdict)
        line = f"[{i + 1}/{args.mutants}] {key} seed {seed} {mutant.operator}: {verdict.status}"
        if verdict.failed:
            line += f" ({verdict.kind}: {first_message(verdict)})"
            failures.append(_record(key, mutant, verdict, reproducers, not args.no_minimise))
        print(line, flush=True)
    counts = summarise(verdicts)
    report = {"command": "python bench/fuzz.py " + shlex.join(sys.argv[1:] if argv is None
                                                              else argv),
              "spa_opt_argv": ARGV, "seconds": round(time.monotonic() - started, 1),
              "models": len(keys), "counts": counts, "failures": failures}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(counts, indent=2))
    return 1 if counts["failure"] else 0


def _record(key: str, mutant, verdict, folder: Path, shrink: bool) -> dict:
    """Save the mutant (and its minimised reproducer) and describe the failure."""
    stem = f"{key.replace('/', '_')}.seed{mutant.seed}.{verdict.kind}"
    onnx.save(mutant.model, str(folder / f"{stem}.mutant.onnx"))
    entry = {"model": key, "seed": mutant.seed, "operator": mutant.operator,
             "mutation": mutant.description, "kind": verdict.kind,
             "message": first_message(verdict), "stderr": verdict.stderr[:20],
             "mutant": f"reproducers/{stem}.mutant.onnx"}
    if shrink:
        small, runs = minimise(mutant.model, verdict.signature())
        onnx.save(small, str(folder / f"{stem}.min.onnx"))
        entry.update(reproducer=f"reproducers/{stem}.min.onnx", nodes=len(small.graph.node),
                     minimise_runs=runs)
    return entry


if __name__ == "__main__":
    sys.exit(main())
