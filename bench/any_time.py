"""Any-time pruning: accuracy pruned before training, after it with and without fine-tuning.

The paper's table: test accuracy when pruning before training, after training with a
short fine-tune, and after training without one.

Models: the digits ``resnet``, ``mobilenetv2`` and ``vit`` of ``golden_models/digits``
(recipes in ``golden_models/scripts/make_digits.py``, whose data loading, ``Recipe`` and
training loop ``fit`` this script imports). Every pruning step runs the real command line,
``spa-opt -p couple,group,<criterion>,prune --target-flops R --no-progress --report ...``,
local scope unless ``--scope global``; accuracy is always measured in onnxruntime on the
360 test images of ``test.npz`` (one image is 0.28 points).

Settings (each job is one setting x model x method x FLOPs ratio):

- ``before-training``: the architecture at initialisation (``torch.manual_seed(recipe.seed)``,
  ``recipe.build()``, exactly the start of the golden model's training), exported as
  make_digits exports ``resnet_bn`` (TorchScript, ``do_constant_folding=False``, so the
  CNNs keep their ``BatchNormalization`` nodes; the ViT, which has none, through dynamo
  as ``vit.onnx``), with every initializer the exporter shared between layers because the
  values were equal at initialisation (zero biases, unit norms) given back its own copy;
  pruned with ``random``, ``l1``, ``snip``, ``grasp``, ``synflow``, ``crop`` (a criterion
  before ``prune``) or ``precrop`` (``couple,group,precrop,prune``); the data-driven ones
  (snip, grasp, crop) get ``--calib train256.npz``: 256 preprocessed training images
  (``np.random.default_rng(0)``) with their labels, keys ``image`` and ``label``. The
  pruned ONNX is then trained as a ``spa_opt.autodiff.TorchGraph`` (BatchNorm in batch
  statistics) with the dense model's full recipe (epochs, AdamW, warm-up + cosine, batch
  64, label smoothing, shifts) through ``make_digits.fit``, written back into the ONNX
  model and saved. ``unpruned`` is the control: the same path without pruning, so the
  harness itself (export, TorchGraph, write-back) can be compared with the golden model.
- ``fine-tune``: the trained ``golden_models/digits/<model>.onnx`` pruned with ``l1``,
  ``taylor`` (``--calib train256.npz``) or ``obspa`` (``--calib calib.npz``: 128 unlabeled
  training images), then fine-tuned the same way for ``--finetune-epochs`` (3) epochs at a
  tenth of the recipe's learning rate with cosine decay and no warm-up. Accuracy before
  and after the fine-tune.
- ``no-fine-tune``: the trained model pruned with ``l1``; ``obspa-synth``
  (``couple,group,synthesize,obspa,prune``: obspa on synthesized inputs); ``obspa-noise``
  (``obspa<hessian=noise>``: pink noise inputs, no ``--calib``); ``obspa`` (``--calib
  calib.npz``, 128 unlabeled real inputs).

Goals (checked under the tables): before training, ``precrop`` or ``synflow`` within 1
point of the dense model at 0.5 FLOPs kept; with fine-tuning, ``obspa`` within 0.5
points of the dense model at 0.5; without fine-tuning, data-free obspa (``obspa-synth``)
within 2 points of ``obspa`` with real inputs. The dense accuracy is the golden model's
(``accuracy.json``).

Each job runs in its own process (``--jobs`` at a time, one thread each: torch, OpenMP,
OpenBLAS), appends one JSON line to ``--results`` (default /tmp/any_time.jsonl) and a
rerun skips the jobs already there with the same settings (``--force`` reruns them; a
failed job is always retried). A failed job records its one-line error, shown under its
table. The queue runs the cheap settings first (no-fine-tune, fine-tune), then
before-training ResNet, MobileNetV2, ViT (ratio by ratio, precrop and synflow first), so a
run cut short still has complete columns. Logs and models of each job are under
``--work`` (default /tmp/any_time_work).

Run (from the repository root)::

    python bench/any_time.py                                   # the full table
    python bench/any_time.py --epochs-scale 0.05 --models resnet --ratios 0.5
        --methods l1,random,obspa --results /tmp/any_time_smoke.jsonl   # smoke test (one line)
    python bench/any_time.py --table-only                      # print what is recorded
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from any_time_jobs import (  # noqa: E402
    DATA_FREE,
    DIGITS,
    FLOPS_SLACK,
    GOAL_BEFORE,
    GOAL_DATA_FREE,
    GOAL_FINETUNE,
    GOAL_RATIO,
    MODELS,
    QUEUE_FIRST,
    RATIOS,
    SETTINGS,
    THREAD_ENV,
    Job,
    child,
    job_config,
    scaled,
)
from common import format_table, machine, revision  # noqa: E402


def queue(args: argparse.Namespace) -> list[Job]:
    """The selected jobs, cheapest and most important first."""
    jobs = []
    for setting in ("no-fine-tune", "fine-tune", "before-training"):
        if setting not in args.settings:
            continue
        names = [m for m in SETTINGS[setting] if m in args.methods]
        if setting == "before-training":
            names.sort(key=lambda m: QUEUE_FIRST.index(m) if m in QUEUE_FIRST else len(
                QUEUE_FIRST))
            for model in args.models:
                for ratio in args.ratios:
                    jobs += [Job(setting, model, m, ratio) for m in names if m != "unpruned"]
                if "unpruned" in names:
                    jobs.append(Job(setting, model, "unpruned", 1.0))
        else:
            jobs += [Job(setting, model, m, ratio) for model in args.models
                     for ratio in args.ratios for m in names]
    return jobs


def load_results(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every record of the results file, by job key, oldest first."""
    found: dict[str, list[dict[str, Any]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                found.setdefault(record["key"], []).append(record)
    return found


def current(records: dict[str, list[dict[str, Any]]], job: Job, args: argparse.Namespace
            ) -> dict[str, Any] | None:
    """The newest record of ``job`` made with the current options, if any."""
    config = job_config(job, args)
    matching = [r for r in records.get(job.key, []) if r.get("config") == config]
    return matching[-1] if matching else None


def run_all(jobs: list[Job], args: argparse.Namespace) -> None:
    """Run ``jobs`` in ``args.jobs`` child processes; append each record to the results."""
    work = Path(args.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **THREAD_ENV, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    pending = list(jobs)
    running: dict[subprocess.Popen, tuple[Job, Path, Path, float, Any]] = {}
    done = 0
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                job = pending.pop(0)
                out = work / "logs" / f"{job.slug}.json"
                out.unlink(missing_ok=True)
                log = work / "logs" / f"{job.slug}.log"
                spec = {"job": dataclasses.asdict(job), "config": job_config(job, args),
                        "work": str(work), "out": str(out)}
                handle = open(log, "w")  # noqa: SIM115 (closed when the job ends)
                proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                         "--child", json.dumps(spec)], stdout=handle,
                                        stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
                running[proc] = (job, out, log, time.perf_counter(), handle)
                print(f"  start {job.key}", file=sys.stderr, flush=True)
            time.sleep(0.5)
            for proc in list(running):
                job, out, log, start, handle = running[proc]
                elapsed = time.perf_counter() - start
                if proc.poll() is None:
                    if args.job_timeout and elapsed > args.job_timeout:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    else:
                        continue
                handle.close()
                del running[proc]
                record = finish(job, proc.returncode, out, log, elapsed, args)
                done += 1
                with open(args.results, "a") as results:
                    results.write(json.dumps(record) + "\n")
                shown = (f"ERROR {record['error']}" if record["error"] else
                         f"{100 * record['accuracy']:.1f}%")
                print(f"  [{done}/{len(jobs)}] {job.key}: {shown} ({record['seconds']:.0f} s)",
                      file=sys.stderr, flush=True)
    finally:
        for proc, (_, _, _, _, handle) in running.items():  # interrupted: stop our children
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            handle.close()


def finish(job: Job, code: int, out: Path, log: Path, elapsed: float,
           args: argparse.Namespace) -> dict[str, Any]:
    """The child's record, or an error record when it died without writing one."""
    if out.exists():
        return json.loads(out.read_text())
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
             if line.strip()]
    why = (f"timed out after {args.job_timeout:.0f} s" if code == -signal.SIGKILL
           else f"worker exit {code}: {lines[-1] if lines else 'no output'}")
    return {**dataclasses.asdict(job), "key": job.key, "config": job_config(job, args),
            "error": why, "seconds": elapsed, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


# --------------------------------------------------------------------------- tables


def dense_accuracy() -> dict[str, float]:
    """The golden models' onnxruntime test accuracy (accuracy.json)."""
    files = json.loads((DIGITS / "accuracy.json").read_text())["files"]
    return {m: files[f"{m}.onnx"]["test_accuracy"] for m in MODELS}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _delta(x: float | None, ref: float | None) -> str:
    return "" if x is None or ref is None else f"{100 * (x - ref):+.1f}"


def tables(setting: str, results: dict[tuple[str, str, float], dict[str, Any]],
           args: argparse.Namespace, dense: dict[str, float]) -> list[str]:
    """One setting's table, then its errors and FLOPs notes."""
    models = args.models
    methods = [m for m in SETTINGS[setting] if m in args.methods]
    header = ["method", "FLOPs"]
    for model in models:
        if setting == "fine-tune":
            header += [f"{model} pruned", "tuned", "Δdense"]
        else:
            header += [model, "Δdense"] + (["Δreal"] if setting == "no-fine-tune" else [])
    per_model = (len(header) - 2) // len(models)
    first = ["dense (golden)", "1"]
    for model in models:
        first += [_pct(dense[model])] + [""] * (per_model - 1)
    lines = [header, first]
    notes = []
    for method in methods:
        for ratio in ([1.0] if method == "unpruned" else args.ratios):
            row = [method, f"{ratio:g}"]
            for model in models:
                r = results.get((model, method, ratio))
                acc = None if r is None or r["error"] else r["accuracy"]
                if r is not None and r["error"]:
                    notes.append(f"  {r['key']}: {r['error']}")
                    cells = ["ERR"] + [""] * (per_model - 1)
                elif setting == "fine-tune":
                    cells = [_pct(r and r["pruned_accuracy"]), _pct(acc), _delta(acc, dense[model])]
                else:
                    cells = [_pct(acc), _delta(acc, dense[model])]
                    if setting == "no-fine-tune":
                        real = results.get((model, "obspa", ratio))
                        ref = None if real is None or real["error"] else real["accuracy"]
                        cells.append(_delta(acc, ref) if method in DATA_FREE else "")
                row += cells
                if (r is not None and not r["error"] and method != "unpruned"
                        and abs(r["flops_kept"] - ratio) > FLOPS_SLACK):
                    notes.append(f"  {r['key']}: FLOPs kept {r['flops_kept']:.3f}, "
                                 f"not {ratio:g}")
            lines.append(row)
    return [format_table(lines, {0}), *notes]


def goals(results: dict[str, dict[tuple[str, str, float], dict[str, Any]]],
          args: argparse.Namespace, dense: dict[str, float]) -> list[str]:
    """Each goal per model: met, not met, or not measured (and why)."""
    def acc(setting: str, model: str, method: str, ratio: float) -> float | None:
        r = results.get(setting, {}).get((model, method, ratio))
        return None if r is None or r["error"] else r["accuracy"]

    def verdict(ok: bool | None) -> str:
        return {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[ok]

    lines = []
    for model in args.models:
        if "before-training" in args.settings:
            got = {m: acc("before-training", model, m, GOAL_RATIO) for m in ("precrop", "synflow")}
            best = max((v for v in got.values() if v is not None), default=None)
            ok = None if best is None else 100 * (dense[model] - best) <= GOAL_BEFORE + 1e-9
            shown = ", ".join(f"{m} {_pct(v)}" for m, v in got.items())
            lines.append(f"goal before training, {model}: precrop or synflow within "
                         f"{GOAL_BEFORE:g} point of dense {_pct(dense[model])} at "
                         f"{GOAL_RATIO:g} ({shown}): {verdict(ok)}")
        if "fine-tune" in args.settings:
            got_ft = acc("fine-tune", model, "obspa", GOAL_RATIO)
            ok = (None if got_ft is None
                  else 100 * (dense[model] - got_ft) <= GOAL_FINETUNE + 1e-9)
            others = [m for m in SETTINGS["fine-tune"] if m != "obspa" and (
                v := acc("fine-tune", model, m, GOAL_RATIO)) is not None
                and 100 * (dense[model] - v) <= GOAL_FINETUNE + 1e-9]
            lines.append(f"goal fine-tune, {model}: obspa + fine-tune within {GOAL_FINETUNE:g} "
                         f"points of dense {_pct(dense[model])} at {GOAL_RATIO:g} "
                         f"({_pct(got_ft)}; also within: {', '.join(others) or 'none'}): "
                         f"{verdict(ok)}")
        if "no-fine-tune" in args.settings:
            for ratio in args.ratios:
                real = acc("no-fine-tune", model, "obspa", ratio)
                synth = acc("no-fine-tune", model, "obspa-synth", ratio)
                noise = acc("no-fine-tune", model, "obspa-noise", ratio)
                ok = (None if real is None or synth is None
                      else 100 * (real - synth) <= GOAL_DATA_FREE + 1e-9)
                lines.append(f"goal no fine-tune, {model} at {ratio:g}: obspa-synth "
                             f"{_pct(synth)} within {GOAL_DATA_FREE:g} points of obspa with "
                             f"real inputs {_pct(real)} (obspa-noise {_pct(noise)}): "
                             f"{verdict(ok)}")
    return lines


def report(jobs: list[Job], args: argparse.Namespace, wall: float) -> None:
    """Print the tables, goals, machine line and times from the results file."""
    records = load_results(Path(args.results))
    dense = dense_accuracy()
    by_setting: dict[str, dict[tuple[str, str, float], dict[str, Any]]] = {}
    every = argparse.Namespace(**{**vars(args), "methods": [
        m for methods in SETTINGS.values() for m in methods]})
    for job in queue(every):  # every method: the goals and Δreal may need unselected ones
        r = current(records, job, args)
        if r is not None:
            by_setting.setdefault(job.setting, {})[job.model, job.method, job.ratio] = r
    found = [r for job in jobs if (r := current(records, job, args)) is not None]
    job_seconds = sum(r.get("seconds", 0.0) for r in found)
    titles = {
        "no-fine-tune": "after training, no fine-tuning (test accuracy %)",
        "fine-tune": f"after training, then fine-tuned "
                     f"{scaled(args.finetune_epochs, args.epochs_scale)} epochs at lr/10 "
                     f"(test accuracy %: pruned, after the fine-tune)",
        "before-training": "pruned at initialisation, then trained with the dense recipe"
                           + ("" if args.epochs_scale == 1 else
                              f" x{args.epochs_scale:g} epochs") + " (test accuracy %)",
    }
    print(machine())
    measured = revision(ROOT, "spa_opt", "bench", "golden_models")
    print(f"spa-opt: {measured}; scope {args.scope}; epochs scale {args.epochs_scale:g}; "
          f"results {args.results}")
    for setting in ("no-fine-tune", "fine-tune", "before-training"):
        if setting in args.settings:
            print(f"\n## {setting}: {titles[setting]}")
            print("\n".join(tables(setting, by_setting.get(setting, {}), args, dense)))
    print()
    print("\n".join(goals(by_setting, args, dense)))
    print(f"\n{len(found)}/{len(jobs)} jobs recorded; this run {wall:.0f} s wall; "
          f"the recorded jobs took {job_seconds:.0f} s (one thread each)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    every = sorted({m for methods in SETTINGS.values() for m in methods})
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS),
                        help="FLOPs kept, comma-separated")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--methods", default=",".join(every),
                        help=f"comma-separated, from {', '.join(every)} (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="shorten every training schedule (smoke tests); 1.0 records")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--scope", choices=("local", "global"), default="local")
    parser.add_argument("--results", default="/tmp/any_time.jsonl")
    parser.add_argument("--work", default="/tmp/any_time_work",
                        help="models at initialisation, calibration data, logs, job models")
    parser.add_argument("--force", action="store_true", help="rerun jobs already recorded")
    parser.add_argument("--table-only", action="store_true", help="run nothing, print tables")
    parser.add_argument("--job-timeout", type=float, default=7200.0,
                        help="seconds before a job is killed (0: never)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    for name, choices in (("models", MODELS), ("settings", tuple(SETTINGS)), ("methods", every)):
        values = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
        if bad := [v for v in values if v not in choices]:
            parser.error(f"unknown {name} {bad}; choose from {', '.join(choices)}")
        setattr(args, name, values)
    args.ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    if args.jobs < 1 or args.epochs_scale <= 0 or args.finetune_epochs < 1:
        parser.error("--jobs, --epochs-scale and --finetune-epochs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    shown = ["python", "bench/any_time.py", *(argv if argv is not None else sys.argv[1:])]
    print(f"Reproduce (from the repo root): {shlex.join(shown)}", flush=True)
    start = time.perf_counter()
    jobs = queue(args)
    if not args.table_only:
        records = load_results(Path(args.results))
        todo = [j for j in jobs if args.force or (r := current(records, j, args)) is None
                or r["error"]]
        print(f"{len(jobs)} jobs, {len(jobs) - len(todo)} already recorded, running "
              f"{len(todo)} with {args.jobs} workers", file=sys.stderr, flush=True)
        run_all(todo, args)
    report(jobs, args, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())

