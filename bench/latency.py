"""onnxruntime CPU latency of original and pruned models: does half the FLOPs give 2x?

For each model (ResNet-50, MobileNetV2, ViT-B/16 of ``bench/torch_models.py``, exported
once and cached like ``bench/analysis.py`` does) and each thread count in ``--threads``
the script prunes with
``spa_opt.optimize(path, "couple,group,l1,prune", target_flops=F, round_to=R, scope=S)``
for every ``R`` in ``--round-to`` (``auto``: the measured latency model's step per
group) and ``S`` in ``--scopes``, and with ``target_latency=L, round_to="auto"`` for
every ``L`` in ``--target-latency``; the latency model measures on the same thread
count, in a fresh cache folder per run, so the first ``auto`` variant builds the table
(its time is printed) and the next ones read it. It saves each result, opens it
in onnxruntime (CPU, ``intra_op_num_threads`` = threads, sequential execution,
``ORT_ENABLE_ALL``), checks that it runs and gives the original's output shape, and
times every session on one fixed random input.

Timing is warm and interleaved: the timed runs go in rounds; in each round every model
gets a fresh session, warmup runs (``--warmup`` in the first round, a third of it
after), then its share of the timed runs, and the session is closed. Only one session is
alive at a time: idle onnxruntime pools keep spinning and, on 2 cores, add 4-8 ms spikes
to another session's runs. Reported: median and interquartile range; speedup = median
before / median after; ideal = FLOPs before / FLOPs after (spa-opt's cost model); ratio =
speedup / ideal (goal: at least 0.95 with ``round_to=auto``). For a latency target: the
latency kept as this script measures it against the target (goal: within 5%), and the
latency model's prediction for the pruned model against that measurement (goal: within
10%).

Run from the repository root::

    python bench/latency.py                      # full run (a few minutes)
    python bench/latency.py --quick              # smoke run: fewer repetitions
    python bench/latency.py --models resnet,vit  # models whose name contains one
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine  # noqa: E402

PIPELINE = "couple,group,l1,prune"
GOAL = 0.95


@dataclass
class Variant:
    """One session to time: the original model or one pruned result."""

    model: str
    label: str
    path: Path
    round_to: int | str | None = None
    scope: str | None = None
    flops: tuple[int, int] = (0, 0)
    params: tuple[int, int] = (0, 0)
    pass_seconds: float = 0.0
    threads: int = 0
    target: float = 0.0
    target_latency: float | None = None
    predicted_kept: float | None = None
    """The latency model's prediction for the pruned model, as a fraction of the original."""
    others: str = ""
    times: list[float] = field(default_factory=list)

    def median(self) -> float:
        """Median latency in seconds."""
        return float(np.median(self.times))

    def iqr(self) -> float:
        """Interquartile range in seconds."""
        low, high = np.percentile(self.times, [25, 75])
        return float(high - low)


def session_options(threads: int) -> ort.SessionOptions:
    """CPU, ``threads`` intra-op threads, sequential, every graph optimization."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def open_session(variant: Variant, threads: int) -> ort.InferenceSession:
    """Open ``variant``'s file in onnxruntime."""
    return ort.InferenceSession(
        str(variant.path), session_options(threads), providers=["CPUExecutionProvider"]
    )


def feeds_for(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """One seeded random input per graph input (float32, symbolic dimensions = 1)."""
    rng = np.random.default_rng(0)
    return {
        i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
        .astype(np.float32)
        for i in session.get_inputs()
    }


def prune_variants(model: str, path: Path, args: argparse.Namespace, folder: Path) -> list[Variant]:
    """Prune ``path`` once per (round_to, scope) and latency target; save into ``folder``."""
    import spa_opt
    from spa_opt.latency import LatencySpec

    spec = LatencySpec(threads=args.threads, cache_dir=str(folder / "latency-cache"))
    runs = [(r, s, None) for r in args.round_to for s in args.scopes]
    runs += [("auto", "local", keep) for keep in args.target_latency]
    found = []
    for round_to, scope, keep in runs:
        label = (f"round_to={round_to} {scope}" if keep is None else
                 f"target_latency={keep} round_to=auto {scope}")
        print(f"  pruning {model}: {label}", file=sys.stderr, flush=True)
        goals = ({"target_flops": args.target_flops} if keep is None else
                 {"target_latency": keep})
        pruned, report = spa_opt.optimize(str(path), PIPELINE, round_to=round_to, scope=scope,
                                          latency=spec, **goals)
        out = folder / f"{path.stem}.r{round_to}.{scope}.l{keep}.onnx"
        spa_opt.save_model(pruned, out)
        data = report.to_dict()
        detail = (data["prune"]["target"] or {}).get("latency_model") or {}
        seconds = sum(p["seconds"] for p in data["passes"])
        if detail and detail.get("layers_measured"):
            print(f"  latency table of {model} ({args.threads} threads): "
                  f"{detail['layers_measured']} layers measured; passes {seconds:.1f} s",
                  flush=True)
        found.append(
            Variant(
                model, label, out, round_to, scope,
                (data["flops"]["before"], data["flops"]["after"]),
                (data["params"]["before"], data["params"]["after"]),
                seconds, threads=args.threads, target=args.target_flops,
                target_latency=keep,
                predicted_kept=(detail["predicted_after"] / detail["measured_before"]
                                if detail else None),
            )
        )
        del pruned
    return found


def check_outputs(variants: list[Variant], feeds: dict[str, np.ndarray], threads: int) -> None:
    """Every pruned model runs, gives finite outputs, and keeps the original's shapes."""
    original, *pruned = variants
    expected = [o.shape for o in open_session(original, threads).run(None, feeds)]
    for variant in pruned:
        got = open_session(variant, threads).run(None, feeds)
        shapes = [o.shape for o in got]
        if shapes != expected:
            raise RuntimeError(f"{variant.model} {variant.label}: output shapes {shapes} "
                               f"!= original {expected}")
        if not all(np.isfinite(o).all() for o in got):
            raise RuntimeError(f"{variant.model} {variant.label}: non-finite outputs")


def time_sessions(variants: list[Variant], feeds: dict[str, np.ndarray],
                  args: argparse.Namespace) -> None:
    """Time every variant in interleaved rounds, one live session at a time."""
    rounds, runs = args.rounds, args.runs
    per_round = [runs // rounds + (i < runs % rounds) for i in range(rounds)]
    for index, count in enumerate(per_round):
        warmup = args.warmup if index == 0 else max(1, args.warmup // 3)
        shift = index % len(variants)  # no variant always follows the same one
        for variant in variants[shift:] + variants[:shift]:
            session = open_session(variant, args.threads)
            for _ in range(warmup):
                session.run(None, feeds)
            for _ in range(count):
                start = time.perf_counter()
                session.run(None, feeds)
                variant.times.append(time.perf_counter() - start)
            del session
            gc.collect()  # the session's thread pool goes now, not later


def bench_model(name: str, path: Path, args: argparse.Namespace, folder: Path) -> list[Variant]:
    """Prune, check and time one model; return the original then the pruned variants."""
    original = Variant(name, "original", path, threads=args.threads)
    variants = [original, *prune_variants(name, path, args, folder)]
    feeds = feeds_for(open_session(original, args.threads))
    check_outputs(variants, feeds, args.threads)
    print(f"  timing {name}: {len(variants)} models x {args.runs} runs",
          file=sys.stderr, flush=True)
    start, began = busy_cores(), time.perf_counter()
    time_sessions(variants, feeds, args)
    original.others = others_during(start, time.perf_counter() - began)
    return variants


def busy_cores() -> tuple[float, float] | None:
    """(CPU seconds used by every process, by this one), to tell other load apart (Linux)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    mine = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), mine.user + mine.system


def others_during(start: tuple[float, float] | None, wall: float) -> str:
    """Average cores other processes kept busy since ``start`` (a :func:`busy_cores`)."""
    end = busy_cores()
    if start is None or end is None or wall <= 0:
        return "n/a"
    return f"{max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / wall:.2f}"


def table(results: list[list[Variant]]) -> str:
    """One row per pruned variant, against its original."""
    header = ("model", "threads", "target", "round_to", "scope", "FLOPs kept", "ideal x",
              "measured x", "measured/ideal", "latency kept", "predicted kept", "pred err",
              "before ms (IQR)", "after ms (IQR)", "passes s")
    lines: list[tuple[str, ...]] = [header]
    for original, *pruned in results:
        for v in pruned:
            kept = v.flops[1] / v.flops[0]
            ideal = v.flops[0] / v.flops[1]
            measured = original.median() / v.median()
            latency_kept = v.median() / original.median()
            target = (f"flops {v.target}" if v.target_latency is None
                      else f"latency {v.target_latency}")
            predicted = "-" if v.predicted_kept is None else f"{v.predicted_kept:.3f}"
            error = ("-" if v.predicted_kept is None else
                     f"{v.predicted_kept / latency_kept - 1:+.1%}")
            lines.append((
                v.model, str(v.threads), target, str(v.round_to), str(v.scope), f"{kept:.3f}",
                f"{ideal:.2f}x", f"{measured:.2f}x", f"{measured / ideal:.2f}",
                f"{latency_kept:.3f}", predicted, error,
                f"{original.median() * 1e3:.1f} ({original.iqr() * 1e3:.1f})",
                f"{v.median() * 1e3:.1f} ({v.iqr() * 1e3:.1f})",
                f"{v.pass_seconds:.2f}",
            ))
    return format_table(lines, {0, 2, 3, 4})


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, prune and time every chosen model, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,mobilenet,vit",
                        help="comma-separated name filters (default: resnet,mobilenet,vit)")
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--round-to", default="1,8,auto",
                        help="comma-separated (default 1,8,auto)")
    parser.add_argument("--target-latency", default="0.5",
                        help="comma-separated latency targets, pruned with round_to=auto "
                             "(default 0.5; empty: none)")
    parser.add_argument("--scopes", default="local", help="comma-separated (default local)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=40, help="timed runs per model")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 warmup + 6 timed runs in 2 rounds")
    parser.add_argument("--threads", default=f"{os.cpu_count() or 1},1",
                        help="comma-separated intra-op thread counts (default: the number "
                             "of cores, then 1)")
    parser.add_argument("--refresh", action="store_true", help="re-export the cached models")
    args = parser.parse_args(argv)
    args.round_to = [r.strip() if r.strip() == "auto" else int(r)
                     for r in args.round_to.split(",")]
    args.target_latency = [float(t) for t in args.target_latency.split(",") if t.strip()]
    args.scopes = [s.strip() for s in args.scopes.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    if args.quick:
        args.warmup, args.runs, args.rounds = 2, 6, 2
    if args.runs < args.rounds or args.rounds < 1:
        parser.error("--runs must be at least --rounds, and --rounds at least 1")
    shown = ["python", "bench/latency.py", *(argv if argv is not None else sys.argv[1:])]
    print(f"Reproduce (from the repo root): {shlex.join(shown)}")
    print(machine())
    print(f"onnxruntime {ort.__version__}: CPUExecutionProvider, intra_op_num_threads="
          f"{args.threads}, sequential, ORT_ENABLE_ALL")
    from analysis import cases

    filters = [f.strip().lower() for f in args.models.split(",") if f.strip()]
    found, skipped = cases(args.refresh, ["torch"])
    for line in skipped:
        print(line)
    chosen = [c for c in found if any(f in c.name.lower() for f in filters)]
    if not chosen:
        print("no model matched (the models need torch: pip install torch==2.13.0)")
        return 1
    results = []
    with tempfile.TemporaryDirectory(prefix="spa-opt-latency-") as tmp:
        for threads in thread_counts:
            run = argparse.Namespace(**{**vars(args), "threads": threads})
            for case in chosen:
                results.append(bench_model(case.name, case.path, run, Path(tmp)))
    print()
    print(table(results))
    print()
    print(
        f"Pipeline {PIPELINE}, target_flops={args.target_flops}, criterion l1. Latency: "
        f"median of {args.runs} warm runs per model in {args.rounds} interleaved rounds "
        f"(a fresh session per round, {args.warmup} warmup runs in the first, "
        f"{max(1, args.warmup // 3)} after); IQR in parentheses. ideal = FLOPs before / "
        "after (spa-opt cost model); measured = median before / after; goal: "
        f"measured/ideal >= {GOAL} (round_to auto). latency kept = median after / before; "
        "predicted kept = the latency model's prediction (its own timing of the original); "
        "pred err = predicted / latency kept - 1 (goal: within 10%). Every pruned model ran "
        "and kept the output shape."
    )
    busy = ", ".join(f"{r[0].model} {r[0].others}" for r in results)
    print(f"Cores kept busy by other processes while timing (0 = quiet machine): {busy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
