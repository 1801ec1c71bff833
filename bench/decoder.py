r"""obspa on a Llama-architecture decoder in the 1.1B TinyLlama shape, against its floor.

In one run the script:

1. builds the decoder (``bench/decoder_model.py``; hidden 2048, 22 layers, 32/4 heads,
   intermediate 5632, vocab 32000, seq 128; seeded random weights, external data) under
   ``<tmp>/spa-opt-bench-decoder`` (reused when present) and ``windows`` calibration
   windows of 128 token ids (seeded) as ``calib.npz``;
2. times **the floor** of ``couple,group,obspa,prune`` on it: one onnxruntime forward of
   the calibration set (batches of 8, all cores), plus, for every Hessian obspa forms
   (q/k/v share one, gate/up share one, o_proj, down_proj, lm_head), one float32
   ``ssyrk`` of ``(d + 1) x N`` columns (``N`` = windows x min(positions = 256, 128)) and
   one float64 ``dpotrf`` of ``(d + 1) x (d + 1)``, BLAS on all cores;
3. runs ``spa-opt -p couple,group,obspa<OPTIONS>,prune --target-params 0.8 --calib
   calib.npz`` in a subprocess (``--stats``, the report beside the output), sampling its
   peak RSS (``VmHWM``) and anonymous memory (``RssAnon``, every 100 ms), killed after
   ``--timeout`` seconds;
4. prints the run's time, the floor, their ratio, the per-stage seconds from the report,
   the peak memory beside the model's size, and the goals as met / NOT MET: run <= 2x
   floor, run < 20 minutes, peak RSS < 0.5x the model's size.

Run from the repository root::

    python bench/decoder.py                                   # propagate=original
    python bench/decoder.py --obspa "propagate=pruned"
    python bench/decoder.py --layers 2 --hidden 256 --heads 8 --kv-heads 2 \\
        --intermediate 688 --vocab 512 --windows 16           # a small check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, revision  # noqa: E402
from bench.decoder_model import Shape, write  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "spa-opt-bench-decoder"


def _status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def floor(model: Path, calib: Path, shape: Shape, positions: int) -> dict[str, float]:
    """Seconds of one forward of the calibration set and of syrk + Cholesky per Hessian."""
    import onnxruntime as ort
    import scipy.linalg

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    ids = np.load(calib)["input_ids"]
    started = time.perf_counter()
    for start in range(0, len(ids), 8):
        session.run(["logits"], {"input_ids": ids[start:start + 8]})
    forward = time.perf_counter() - started
    del session
    columns = len(ids) * min(positions, shape.seq)
    widths = [shape.hidden] * 3 + [shape.intermediate]  # qkv, o, gate/up, down
    rng = np.random.default_rng(0)
    linalg = 0.0
    timed: dict[int, float] = {}
    for width in sorted(set(widths)):
        x = rng.standard_normal((columns, width + 1), dtype=np.float32).T  # Fortran view
        c = np.zeros((width + 1, width + 1), np.float32, order="F")
        started = time.perf_counter()
        c = scipy.linalg.blas.ssyrk(1.0, x, beta=0.0, c=c, trans=0, lower=0, overwrite_c=1)
        h = np.triu(c).astype(np.float64)
        h = h + np.triu(h, 1).T
        h[np.diag_indices_from(h)] += 1.0
        middle = time.perf_counter()
        scipy.linalg.lapack.dpotrf(h, lower=1, overwrite_a=1, clean=0)
        timed[width] = (middle - started) + (time.perf_counter() - middle)
        del x, c, h
    for width in widths:
        linalg += timed[width] * shape.layers
    linalg += timed[shape.hidden]  # lm_head reads the final norm's output
    return {"forward": forward, "linalg": linalg, "total": forward + linalg}


def run(model: Path, calib: Path, options: str, timeout: float) -> dict:
    """The pipeline in a subprocess: seconds, peak memory, the report."""
    out = CACHE / "pruned.onnx"
    report = CACHE / "report.json"
    pipeline = f"couple,group,obspa<{options}>,prune" if options else "couple,group,obspa,prune"
    command = [sys.executable, "-m", "spa_opt.cli", "-p", pipeline, "--target-params", "0.8",
               "--calib", str(calib), "--report", str(report), "--external-data",
               str(model), str(out)]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    peak_anon = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_anon
        while not done.wait(0.1):
            peak_anon = max(peak_anon, _status(child.pid, "RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    peak_rss = 0
    try:
        while child.poll() is None:
            peak_rss = max(peak_rss, _status(child.pid, "VmHWM"))
            if time.perf_counter() - started > timeout:
                child.kill()
                break
            time.sleep(0.2)
        _, stderr = child.communicate()
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "rc": child.returncode, "peak_rss": peak_rss,
              "peak_anon": peak_anon, "stderr": stderr.strip().splitlines()[-3:],
              "command": " ".join(command[2:])}
    if child.returncode == 0 and report.exists():
        result["report"] = json.loads(report.read_text())
    return result


def add_shape_arguments(parser: argparse.ArgumentParser, layers: int, windows: int) -> None:
    """The decoder's shape, calibration windows and obspa options as arguments."""
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--windows", type=int, default=windows)
    parser.add_argument("--obspa", default="propagate=original", help="obspa options")


def shape_of(args: argparse.Namespace) -> tuple[Shape, Path]:
    """The shape the arguments name and its model's path under ``CACHE``."""
    shape = Shape(args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate,
                  args.vocab)
    tag = f"h{shape.hidden}-l{shape.layers}-a{shape.heads}-{shape.kv_heads}-i" \
          f"{shape.intermediate}-v{shape.vocab}"
    return shape, CACHE / tag / "model.onnx"


def main() -> None:
    """Build, measure, print (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_arguments(parser, layers=22, windows=128)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    shape, model = shape_of(args)
    if not model.exists():
        started = time.perf_counter()
        write(shape, model)
        print(f"built {model} in {time.perf_counter() - started:.0f} s", flush=True)
    calib = model.parent / f"calib{args.windows}.npz"
    if not calib.exists():
        ids = np.random.default_rng(1).integers(0, shape.vocab, (args.windows, shape.seq))
        np.savez(calib, input_ids=ids)
    size = sum(f.stat().st_size for f in model.parent.glob("model.onnx*"))
    print(f"model: {shape.params() / 1e9:.3f} B parameters, {size / 2**30:.2f} GiB; "
          f"{args.windows} windows of {shape.seq} tokens", flush=True)
    found = floor(model, calib, shape, 256)
    print(f"floor: forward {found['forward']:.1f} s + syrk/Cholesky {found['linalg']:.1f} s "
          f"= {found['total']:.1f} s", flush=True)
    result = run(model, calib, args.obspa, args.timeout)
    print(f"run ({result['command']}): rc {result['rc']}, {result['seconds']:.1f} s, "
          f"peak RSS {result['peak_rss'] / 2**30:.2f} GiB, peak anonymous "
          f"{result['peak_anon'] / 2**30:.2f} GiB")
    if result["rc"] != 0:
        print("  " + "\n  ".join(result["stderr"]))
    report = result.get("report", {})
    obspa = report.get("obspa", {})
    stages = obspa.get("stages", [])
    if stages:
        print(f"stages: {len(stages)}, seconds per stage (last run): min {min(stages):.1f}, "
              f"median {float(np.median(stages)):.1f}, max {max(stages):.1f}")
        passes = {p["name"]: p for p in report.get("passes", [])}
        stats = passes.get("obspa", {}).get("stats", {})
        for key in ("hessian-seconds", "order-seconds", "reconstruct-seconds",
                    "sequential-seconds", "spilled-mb", "groups-split"):
            if key in stats:
                print(f"  {key}: {stats[key]:.1f}")
    ratio = result["seconds"] / found["total"]
    timed_out = result["rc"] != 0 and result["seconds"] >= args.timeout
    for label, met in (
            (f"run <= 2x floor: {ratio:.2f}x", ratio <= 2 and result["rc"] == 0),
            (f"run < 20 min: {result['seconds'] / 60:.1f} min"
             + (" (TIMEOUT)" if timed_out else ""), result["seconds"] < 1200
             and result["rc"] == 0),
            (f"peak RSS < 0.5x model size: {result['peak_rss'] / size:.2f}x",
             result["peak_rss"] < 0.5 * size and result["rc"] == 0)):
        print(f"goal {label}: {'met' if met else 'NOT MET'}")
    print(machine())
    print(f"spa-opt {revision(ROOT, 'spa_opt')}; load average "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
