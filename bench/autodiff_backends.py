"""Autodiff backends for ONNX models, measured: which convert, are their gradients right, how fast.

spa-opt wants an optional backend that turns an ONNX model into a differentiable function:
outputs, and gradients of a loss w.r.t. the weights (the float initializers, by ONNX name)
and the inputs. This script measures the candidates on every golden model (files over
200 MB are skipped and listed), each model and backend in a fresh subprocess (a crash or
hang costs one cell; imports and JAX's compilation cache are not shared):

- ``onnx2torch``: ``onnx2torch.convert(model)`` (a ``torch.fx.GraphModule``), PyTorch
  autograd. onnx2torch imports ``torchvision`` at import time (its NMS and RoIAlign
  converters) and no torchvision wheel works beside the CPU build of torch, so the script
  puts a stub ``torchvision`` module (its ``ops`` functions raise) into ``sys.modules``
  before importing onnx2torch, when the real one does not import. No golden model has NMS
  or RoIAlign, so the stub changes no measured number.
- ``onnx2torch-op17``: the same after ``onnx.version_converter.convert_version(model, 17)``
  (onnx2torch 1.5.15 lacks converters for several opset-18+ versions of ops; converting
  down is the cheap workaround a user could try). *convert s* includes the version
  conversion.
- ``jax``: ``jaxonnxruntime.call_onnx.call_onnx_model(model, inputs)`` -> ``(fn, params)``
  with ``params`` keyed by initializer name; gradients with
  ``jax.jit(jax.value_and_grad(loss, argnums=(float params, float inputs)))`` (the whole
  step jitted; when jitting fails the script falls back to the eager ``jax.value_and_grad``
  and says so). Integer initializers are held constant.
- ``jax-dynshape``: the same with jaxonnxruntime's config
  ``jaxort_only_allow_initializers_as_static_args`` set to False: shapes computed from the
  inputs (``Shape -> ... -> Reshape/Expand``) are taken from the sample input at conversion
  instead of being refused, so the function is specialized to the input shapes.
- ``jax-x64``: ``jax-dynshape`` with ``jax_enable_x64``: without it JAX truncates int64
  to int32, so a ``Slice`` ending at ``INT64_MAX`` (torch's "to the end") ends at -1
  and drops an element (the RoPE halves of the llama and qwen3 exports). Float
  initializers and inputs stay float32; float64 constants may promote some ops.
- ``spa``: spa-opt's own interpreter, ``spa_opt.autodiff.TorchGraph(model)`` (torch eager;
  ``named_initializers()`` gives the parameters by ONNX name). Listed by default when
  ``spa_opt.autodiff`` imports.

Per model and backend:

1. **status**: ``no`` (the conversion fails: the error class and message), ``fails``
   (converted, but the forward or the gradient call raises), ``grad wrong`` (a checked
   gradient is off by more than ``1e-3``, or cannot be found by name), ``fwd wrong``
   (outputs off by more than ``1e-3``), else ``ok``.
2. **fwd err**: max abs difference of all outputs against onnxruntime (CPU, float32) on
   the same inputs: float inputs standard normal, integer inputs uniform below the
   smallest ``Gather`` table they index (else 2), symbolic dims set to 2 (batch 2), seed 0.
3. **w err / x err**: loss ``L = sum(output0 * R)`` for a fixed standard-normal ``R``;
   the backend's gradients against central finite differences of ``L`` computed in
   float64: the model converted to double (float initializers, inputs, ``Cast`` targets,
   float constants) and run by ``onnx.reference.ReferenceEvaluator`` (with float64
   ``Erf`` and ``Gelu``: onnx's own return float32), so that the differences are exact to
   ~1e-9 (onnxruntime in float32 is not: with a 1% step the ReLU kinks it crosses, with a
   small one the rounding, gave errors of 5e-2 to 1 that all backends shared). Checked
   tensors: three float initializers reaching output 0 through values (not only through
   ``Shape``), in order of first use the first, the middle and the last (BatchNorm
   running statistics left out: state, not weights), and each float input. Per tensor:
   the directional derivative along a random standard-normal direction ``D`` over the
   whole tensor, ``(L(W + tD) - L(W - tD)) / 2t`` with ``t = 1e-6 * rms(W)`` (``1e-6``
   if ``W`` is all zeros) against ``<grad, D>``, as ``|fd - ad| / max(|fd|, |ad|)``; and
   3 random entries, as ``|fd - ad| / max(|fd|, |ad|, rms(grad))``. *w err* is the
   largest over the initializers, *x err* over the inputs (``-``: no float input). The
   summary also prints the largest relative change of the directional differences
   between steps ``1e-6`` and ``1e-5`` (how far the differences themselves can be
   trusted: kinks crossed).
4. **times**: *convert s* (the conversion call, imports excluded), *1st s* (the first
   forward+backward: the jit compilation for JAX), *f+b ms* (forward + backward w.r.t. all
   float initializers and float inputs, median wall time of ``--repeat`` calls, default
   5, after that warm-up), *min ms* (the fastest of them) and *cpu ms* (median process
   CPU time per call: less sensitive to other work on a shared machine), and for scale
   *ort fwd ms* (onnxruntime's forward alone, median). One thread everywhere
   (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``, XLA single-threaded,
   onnxruntime ``intra_op_num_threads=1``). The load average is printed at the start and
   the end of the run.
5. **keys**: how gradients are found by ONNX initializer name. ``name``: the backend keys
   them by name (``name a/b (rest: BN stats)``: BatchNorm running statistics are buffers,
   not parameters). ``value a/b`` (onnx2torch): the converted module copies weights into
   ``nn`` modules named after nodes and keeps the rest as ``initializers.onnx_initializer_N``
   buffers, so the script maps every float ONNX initializer to the module's parameters
   and buffers holding equal values (as is; only when none does, transposed, else
   reshaped; a weight copied into several modules has all its copies' gradients summed);
   ``a`` of the ``b`` float initializers are mapped, ``, k ambiguous`` counts the module
   tensors that equal several initializers (their gradients cannot be attributed).
   Mapped buffers get ``requires_grad``; BatchNorm running statistics lose it again when
   autograd refuses them (noted).

Run from the repository root, with a Python that has the backends (the JAX ones in a
venv made with ``--system-site-packages``, see docs/autodiff.md)::

    OMP_NUM_THREADS=1 /tmp/jaxvenv/bin/python bench/autodiff_backends.py --json out.json
    python bench/autodiff_backends.py --models 'golden_models/digits/*.onnx' --backends spa
    python bench/autodiff_backends.py --from-json out.json --markdown   # tables for docs/
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from autodiff_candidates import BACKENDS, available_backends, make_backend  # noqa: E402
from autodiff_reference import (  # noqa: E402
    Reference,
    check_error,
    checked_initializers,
    make_check,
    make_feeds,
    short,
)
from common import format_table, machine  # noqa: E402

DEFAULT_MODELS = "golden_models/**/*.onnx"
MAX_BYTES = 200 * 2**20
RESULT_MARK = "@@bench-autodiff-result "
SEED = 0
STEP = 1e-6
CORRECT = 1e-3
REPEAT = 5
TIMEOUT = 1200
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "JAX_PLATFORMS": "cpu",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


# --------------------------------------------------------------------------- helpers


REASONS = (  # (pattern in the error, compact reason): what the tables print
    (r"operation_type='(\w+)', version=(\d+)", r"no converter for \1-\2"),
    (r"No Previous Version of (\w+) exists", r"version_converter: \1 has no older version"),
    (r"No Adapter From Version \$(\d+) for (\w+)", r"version_converter: no adapter for \2-\1"),
    (r'"allowzero=1" is not implemented', "Reshape allowzero=1 not implemented"),
    (r"^convert: NotImplementedError: (?!Converter)(\w+) is not implemented",
     r"no handler for \1"),
    (r"clip\(\) got an unexpected keyword argument 'a_max'",
     "Clip: jnp.clip(a_max=) gone from jax"),
    (r"Trilu's `k` is not constant", "Trilu k computed, refused as static arg"),
    (r"used as `shape` of Reshape", "Reshape shape computed, refused as static arg"),
    (r"static argument `shape` when `jax.jit` the `Expand`",
     "Expand shape computed, refused as static arg"),
    (r"only_allow_initializers_as_static_args = True but", "Cast of a computed value refused"),
    (r"mul got incompatible shapes", "Slice to INT64_MAX cut short (int32), Mul shapes"),
    (r"Linearization failed.*\(in (\w+)\.py\)", r"\1 not reverse-differentiable"),
    (r"native_batch_norm' is not differentiable", "BN running stats not differentiable"),
)


def reason(error: str) -> str:
    """A compact reason for a table cell, from a recorded error."""
    for pattern, replacement in REASONS:
        found = re.search(pattern, error)
        if found:
            return error.split(":", 1)[0] + ": " + found.expand(replacement)
    return error if len(error) <= 80 else error[:77] + "..."


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall seconds."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure_backend(name: str, model: Any, feeds: dict[str, Any], expected: list[Any],
                    ref: Reference, weight: Any, checks: dict[str, dict[str, Any]],
                    repeat: int = REPEAT) -> dict[str, Any]:
    """Convert, forward, gradient check and time one backend on one model."""
    import numpy as np

    row: dict[str, Any] = {"backend": name}
    try:
        backend = make_backend(name)
        _, row["convert_s"] = timed(lambda: backend.convert(model, feeds))
    except Exception as error:
        row["error"] = "convert: " + short(error)
        return row
    row["converts"] = True
    if hasattr(backend, "map_weights"):
        try:
            backend.map_weights(model)
        except Exception as error:
            row["error"] = "weights: " + short(error)
            return row
    row["keys"] = backend.keys
    try:
        outs = backend.forward(feeds)
        row["fwd_err"] = max(
            float(np.max(np.abs(np.asarray(got, np.float64) - want.astype(np.float64)),
                         initial=0.0))
            if np.shape(got) == want.shape else float("inf")
            for got, want in zip(outs, expected, strict=True))
    except Exception as error:
        row["error"] = "forward: " + short(error)
        row["note"] = backend.note
        return row
    try:
        (g_weights, g_inputs), row["first_s"] = timed(lambda: backend.grads(feeds, weight))
    except Exception as error:
        row["error"] = "grad: " + short(error)
        row["note"] = backend.note
        return row
    errors = {}
    for tensor, check in checks.items():
        grad = g_weights.get(tensor, g_inputs.get(tensor))
        # None: not keyed, the gradient cannot be found by name
        errors[tensor] = None if grad is None else check_error(check, grad)
    row["grad_errs"] = errors
    weight_errs = [e for t, e in errors.items() if t not in feeds]
    input_errs = [e for t, e in errors.items() if t in feeds]
    row["weight_err"] = (None if None in weight_errs else max(weight_errs, default=0.0))
    row["input_err"] = None if None in input_errs else max(input_errs, default=None)
    row["grad_err"] = (None if None in errors.values()
                       else max(errors.values(), default=0.0))
    walls, cpus = [], []
    for _ in range(repeat):
        cpu = time.process_time()
        _, seconds = timed(lambda: backend.grads(feeds, weight))
        cpus.append(time.process_time() - cpu)
        walls.append(seconds)
    row["fb_s"] = statistics.median(walls)
    row["fb_min_s"] = min(walls)
    row["fb_cpu_s"] = statistics.median(cpus)
    row["note"] = backend.note
    return row


def child(path: Path, backend: str, repeat: int) -> dict[str, Any]:
    """One backend on one model (runs in its own subprocess)."""
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    rng = np.random.default_rng(SEED)
    feeds = make_feeds(model, rng)
    checked = checked_initializers(model)
    ref = Reference(model, checked)
    expected = ref.run(feeds)
    weight = rng.standard_normal(expected[0].shape).astype(np.float32)
    checks = {}
    for name in [*checked, *(n for n, v in feeds.items() if np.issubdtype(v.dtype, np.floating))]:
        value = ref.weights.get(name, feeds.get(name))
        checks[name] = make_check(ref, feeds, weight, name, value, rng)
    ref.run(feeds)
    ort_times = [timed(lambda: ref.run(feeds))[1] for _ in range(repeat)]
    row = measure_backend(backend, model, feeds, expected, ref, weight, checks, repeat)
    return {"checked": list(checks), "ort_s": statistics.median(ort_times),
            "fd_spread": max((c["fd_spread"] for c in checks.values()), default=0.0),
            "row": row}


# --------------------------------------------------------------------------- parent


def run_child(path: Path, backend: str, timeout: float, repeat: int) -> dict[str, Any]:
    """One subprocess per model and backend (no imports or jit caches shared)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(path),
               "--backends", backend, "--repeat", str(repeat)]
    env = dict(os.environ, **THREAD_ENV)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"row": {"backend": backend, "error": f"timeout after {timeout:.0f} s"}}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"row": {"backend": backend,
                    "error": f"child exit {done.returncode}: {tail[:100]}"}}


def _e(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if value == float("inf") else f"{value:.1e}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.2f}"


def model_label(path: str) -> str:
    """``golden_models/torch/bert.dynamo.onnx`` -> ``torch/bert.dynamo``."""
    p = Path(path)
    parent = p.parent.name
    return p.stem if parent == "golden_models" else f"{parent}/{p.stem}"


def status(row: dict[str, Any]) -> str:
    """``ok``, ``grad wrong`` (error >= CORRECT or unkeyed), or the failing stage."""
    if "error" in row:
        return "no" if row["error"].startswith(("convert", "timeout", "child")) else "fails"
    if row.get("grad_err") is None or row["grad_err"] >= CORRECT:
        return "grad wrong"
    if row.get("fwd_err", float("inf")) > 1e-3:
        return "fwd wrong"
    return "ok"


def long_table(results: list[dict[str, Any]]) -> str:
    """One line per model and backend."""
    lines = [["model", "backend", "status", "fwd err", "w err", "x err", "keys", "convert s",
              "1st s", "f+b ms", "min ms", "cpu ms", "ort fwd ms", "error / note"]]
    for result in results:
        for row in result["rows"]:
            lines.append([
                model_label(result["model"]), row["backend"], status(row), _e(row.get("fwd_err")),
                _e(row.get("weight_err")), _e(row.get("input_err")), row.get("keys", "-"),
                _s(row.get("convert_s")), _s(row.get("first_s")), _ms(row.get("fb_s")),
                _ms(row.get("fb_min_s")), _ms(row.get("fb_cpu_s")), _ms(result.get("ort_s")),
                reason(row["error"]) if "error" in row else row.get("note") or "",
            ])
    return format_table(lines, left={0, 1, 2, 6, 13})


def summary(results: list[dict[str, Any]], backends: Sequence[str]) -> str:
    """Per backend: models converted, correct forward and gradients, median times.

    The median times are over the models every listed backend gets right (*common*), so
    that they compare the same work; below the table, the number of those models.
    """
    ok_sets = [{res["model"] for res in results for r in res["rows"]
                if r["backend"] == name and status(r) == "ok"} for name in backends]
    common = set.intersection(*ok_sets) if ok_sets else set()
    lines = [["backend", "models", "convert", "fwd ok", "grad ok", "med convert s",
              "med 1st s", "med f+b ms", "med min ms", "med cpu ms"]]
    for name in backends:
        rows = [r for res in results for r in res["rows"] if r["backend"] == name]
        shared = [r for res in results for r in res["rows"]
                  if r["backend"] == name and res["model"] in common]

        def median(key: str, rows: list[dict[str, Any]] = shared) -> float | None:
            return statistics.median([r[key] for r in rows]) if rows else None

        lines.append([
            name, str(len(rows)), str(sum(1 for r in rows if r.get("converts"))),
            str(sum(1 for r in rows if r.get("fwd_err", float("inf")) <= 1e-3)),
            str(sum(1 for r in rows if status(r) == "ok")),
            _s(median("convert_s")), _s(median("first_s")), _ms(median("fb_s")),
            _ms(median("fb_min_s")), _ms(median("fb_cpu_s")),
        ])
    table = format_table(lines, left={0})
    ort = [res["ort_s"] for res in results if res["model"] in common and res.get("ort_s")]
    spreads = [(res.get("fd_spread") or 0.0, res["model"]) for res in results]
    worst = max(spreads, default=(0.0, "-"))
    return (f"{table}\nmedians over the {len(common)} models all {len(backends)} backends get "
            f"right (onnxruntime forward alone: {_ms(statistics.median(ort) if ort else None)}"
            f" ms); finite differences: largest relative change between steps {STEP:g} and "
            f"{10 * STEP:g}: {worst[0]:.1e} ({worst[1]})")


def markdown(results: list[dict[str, Any]], backends: Sequence[str]) -> str:
    """One row per model, one cell per backend (for docs/autodiff.md).

    A cell is the status with, when the backend ran, the largest gradient error and the
    median CPU ms of forward+backward; else the compact reason. *fwd err* is the largest
    forward error over the backends that ran.
    """
    lines = ["| model | fwd err | " + " | ".join(backends) + " |",
             "|---|---:|" + "---|" * len(backends)]
    for result in results:
        rows = {r["backend"]: r for r in result["rows"]}
        fwd = [r["fwd_err"] for r in rows.values() if "fwd_err" in r]
        cells = []
        for name in backends:
            row = rows.get(name)
            if row is None:
                cells.append("")
            elif "error" in row:
                text = reason(row["error"]).removeprefix("convert: ")
                cells.append(f"{status(row)}: {text}".replace("|", "/"))
            else:
                cells.append(f"{status(row)} {_e(row.get('grad_err'))}, "
                             f"{_ms(row.get('fb_cpu_s'))} ms")
        lines.append(f"| {model_label(result['model'])} | {_e(max(fwd, default=None))} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; as the parent, run one child per model and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"glob of ONNX files, from the repo root (default: {DEFAULT_MODELS})")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated, from {', '.join(BACKENDS)} "
                             "(default: those importable here)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT,
                        help="seconds per model subprocess")
    parser.add_argument("--repeat", type=int, default=REPEAT,
                        help=f"timed forward+backward calls after the warm-up (default {REPEAT})")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the per-model table as Markdown (docs/autodiff.md)")
    parser.add_argument("--from-json", help="print the tables of a --json file, measure nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print("\n".join(saved.get("header", [])))
        report(saved["results"], saved["backends"], args.markdown)
        return 0
    backends = ([b.strip() for b in args.backends.split(",") if b.strip()]
                if args.backends else available_backends())
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if args.child:
        for key, value in THREAD_ENV.items():
            os.environ.setdefault(key, value)
        if len(backends) != 1:
            parser.error("--child takes one backend")
        result = child(Path(args.child), backends[0], args.repeat)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    shown = ["python", "bench/autodiff_backends.py", *(argv if argv is not None else sys.argv[1:])]
    header = [f"Reproduce (from the repo root): {shlex.join(shown)}", machine(),
              f"backends: {', '.join(backends)}; {versions()}",
              f"load average at start: {load()}"]
    paths, skipped = [], []
    for name in sorted(glob.glob(str(ROOT / args.models), recursive=True)):
        path = Path(name)
        (skipped if path.stat().st_size > MAX_BYTES else paths).append(path)
    header += [f"skipped (over 200 MB): {path.relative_to(ROOT)}" for path in skipped]
    header.append(f"{len(paths)} models, {len(skipped)} skipped (over 200 MB)")
    print("\n".join(header), flush=True)
    results = []
    for path in paths:
        print(f"  measuring {path.relative_to(ROOT)} ...", file=sys.stderr, flush=True)
        result: dict[str, Any] = {"model": str(path.relative_to(ROOT)), "rows": []}
        for backend in backends:
            print(f"    {backend}", file=sys.stderr, flush=True)
            done = run_child(path, backend, args.timeout, args.repeat)
            result["rows"].append(done["row"])
            for key in ("checked", "fd_spread", "ort_s"):
                result.setdefault(key, done.get(key))
        results.append(result)
        if args.json:  # after every model, so a long run can be looked at midway
            Path(args.json).write_text(json.dumps(
                {"header": header, "backends": backends, "results": results}, indent=1))
    header.append(f"load average at end: {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"header": header, "backends": backends, "results": results}, indent=1))
    print(header[-1])
    report(results, backends, args.markdown)
    return 0


def load() -> str:
    """The 1, 5 and 15 minute load averages (other work on the machine skews the times)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def report(results: list[dict[str, Any]], backends: Sequence[str], markdown_too: bool) -> None:
    """Print the long table, the summary and (``markdown_too``) the Markdown table."""
    print()
    print(long_table(results))
    print()
    print(summary(results, backends))
    if markdown_too:
        print()
        print(markdown(results, backends))


def versions() -> str:
    """Versions of the backend packages installed here."""
    from importlib import metadata

    parts = []
    for dist in ("onnx2torch", "jax", "jaxlib", "jaxonnxruntime", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{dist} {metadata.version(dist)}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())

