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
import traceback
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine  # noqa: E402

BACKENDS = ("onnx2torch", "onnx2torch-op17", "jax", "jax-dynshape", "jax-x64", "spa")
DEFAULT_MODELS = "golden_models/**/*.onnx"
MAX_BYTES = 200 * 2**20
RESULT_MARK = "@@bench-autodiff-result "
SEED = 0
SYMBOLIC_DIM = 2
CHECKED_WEIGHTS = 3
STEP = 1e-6
ENTRIES = 3
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


def short(error: BaseException, width: int = 300) -> str:
    """``Class: first line of the message (in file.py)``, cut to ``width`` characters.

    ``in file.py``: the innermost frame in a backend's per-op code (onnx2torch's
    ``node_converters``, jaxonnxruntime's ``onnx_ops``) of the error or of its causes,
    which names the op at fault.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if "Assertion `false` failed: " in first:  # onnx's C++ asserts: keep the message only
        first = first.split("Assertion `false` failed: ", 1)[1]
    text = f"{type(error).__name__}: {first}"
    frames, seen = [], error
    while seen is not None:  # JAX raises in the backward pass: the op is in the cause
        frames += [f.filename for f in traceback.extract_tb(seen.__traceback__)
                   if "/onnx_ops/" in f.filename or "/node_converters/" in f.filename]
        seen = seen.__cause__ or seen.__context__
    if frames:
        text += f" (in {Path(frames[-1]).name})"
    return text if len(text) <= width else text[: width - 3] + "..."


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


def available_backends() -> list[str]:
    """The backends whose packages import here (``spa`` only once ``spa_opt.autodiff`` does)."""
    found = []
    if importlib.util.find_spec("onnx2torch") is not None:
        found += ["onnx2torch", "onnx2torch-op17"]
    if importlib.util.find_spec("jaxonnxruntime") is not None:
        found += ["jax", "jax-dynshape", "jax-x64"]
    try:
        importlib.import_module("spa_opt.autodiff")
        found.append("spa")
    except ImportError:
        pass
    return found


def stub_torchvision() -> bool:
    """Put a stub ``torchvision`` into ``sys.modules`` unless the real one imports.

    Returns:
        Whether the stub was installed.
    """
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:  # not installed, or the CUDA-only wheel failing beside CPU torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision stub (bench/autodiff_backends.py): op not available")

    package = types.ModuleType("torchvision")
    package.__stub__ = True  # type: ignore[attr-defined]
    ops = types.ModuleType("torchvision.ops")
    for name in ("nms", "roi_align", "box_convert", "batched_nms"):
        setattr(ops, name, missing)
    package.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"] = package
    sys.modules["torchvision.ops"] = ops
    return True


# --------------------------------------------------------------------------- inputs


def graph_inputs(model: Any) -> list[Any]:
    """The graph inputs of an ``onnx.ModelProto`` that are not initializers."""
    initializers = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def make_feeds(model: Any, rng: Any) -> dict[str, Any]:
    """Seeded inputs: see the module docstring (batch 2 for symbolic dims)."""
    import numpy as np
    from onnx import helper

    bounds: dict[str, list[int]] = {}
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in shapes:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            bounds.setdefault(node.input[1], []).append(shapes[node.input[0]][axis])
    feeds = {}
    for value in graph_inputs(model):
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else SYMBOLIC_DIM for d in tensor.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, dims).astype(bool)
        else:
            bound = min(bounds.get(value.name, [2]))
            feeds[value.name] = rng.integers(0, bound, dims).astype(dtype)
    return feeds


def bn_statistics(model: Any) -> set[str]:
    """Names of BatchNormalization running mean/var initializers (state, not weights)."""
    return {node.input[i] for node in model.graph.node if node.op_type == "BatchNormalization"
            for i in (3, 4) if len(node.input) > i and node.input[i]}


def checked_initializers(model: Any) -> list[str]:
    """Up to three float initializers reaching output 0: first, middle, last by first use.

    Reaching means through values, not only through ``Shape``/``Size``. BatchNorm running
    statistics are left out: they are state, not weights.
    """
    import numpy as np
    from onnx import helper

    floats = {i.name for i in model.graph.initializer
              if np.issubdtype(helper.tensor_dtype_to_np_dtype(i.data_type), np.floating)
              and int(np.prod(i.dims)) >= 2} - bn_statistics(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    reaching, stack = set(), [model.graph.output[0].name]
    while stack:
        name = stack.pop()
        if name in reaching:
            continue
        reaching.add(name)
        if name in producer and producer[name].op_type not in ("Shape", "Size"):
            stack.extend(i for i in producer[name].input if i)
    order = []
    for node in model.graph.node:
        for name in node.input:
            if name in floats and name in reaching and name not in order:
                order.append(name)
    if len(order) <= CHECKED_WEIGHTS:
        return order
    picks = [0, len(order) // 2, len(order) - 1]
    return [order[i] for i in dict.fromkeys(picks)]


# --------------------------------------------------------------------------- reference

FLOAT_TYPES = (1, 10, 16)  # TensorProto FLOAT, FLOAT16, BFLOAT16


def to_float64(graph: Any) -> None:
    """Make ``graph`` compute in float64, in place.

    Float initializers, graph inputs and outputs, float ``Constant``/``ConstantOfShape``
    tensors and ``Cast(to=float)`` become double; subgraphs too.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    for index, init in enumerate(graph.initializer):
        if init.data_type in FLOAT_TYPES:
            array = numpy_helper.to_array(init).astype(np.float64)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(array, init.name))
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type in FLOAT_TYPES:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i in FLOAT_TYPES:
                attr.i = TensorProto.DOUBLE
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in FLOAT_TYPES:
                array = numpy_helper.to_array(attr.t).astype(np.float64)
                attr.t.CopyFrom(numpy_helper.from_array(array, attr.t.name))
            elif attr.type == onnx.AttributeProto.GRAPH:
                to_float64(attr.g)


def float64_ops() -> list[type]:
    """``Erf`` and ``Gelu`` for the reference evaluator in the input's precision.

    onnx's ``Erf`` returns float32 (``np.vectorize(erf, otypes=["f"])``), and ``Gelu``
    (a function op) runs its body without the evaluator's ``new_ops``: both would put
    float32 rounding into the float64 finite differences.
    """
    import math

    import numpy as np
    from onnx.reference.op_run import OpRun

    def erf(x: Any) -> Any:
        return np.vectorize(math.erf, otypes=[x.dtype])(x)

    class Erf(OpRun):
        op_domain = ""

        def _run(self, x: Any) -> tuple[Any]:
            return (erf(x),)

    class Gelu(OpRun):
        op_domain = ""

        def _run(self, x: Any, approximate: str = "none") -> tuple[Any]:
            if approximate == "tanh":
                inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
                return (0.5 * x * (1 + np.tanh(inner)),)
            return (0.5 * x * (1 + erf(x / math.sqrt(2))),)

    return [Erf, Gelu]


class Reference:
    """The reference: onnxruntime for the outputs, float64 for the finite differences.

    onnxruntime (CPU, float32) gives the outputs the forward passes are compared with;
    the model converted to float64 and run by ``onnx.reference.ReferenceEvaluator``
    gives the losses of the finite differences, with the checked initializers made graph
    inputs so they can be fed.
    """

    def __init__(self, model: Any, checked: Sequence[str]) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper
        from onnx.reference import ReferenceEvaluator

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        to_float64(exposed.graph)
        already = {v.name for v in exposed.graph.input}
        self.weights = {}
        for init in exposed.graph.initializer:
            if init.name in checked:
                self.weights[init.name] = numpy_helper.to_array(init)
                if init.name not in already:
                    exposed.graph.input.append(onnx.helper.make_tensor_value_info(
                        init.name, init.data_type, list(init.dims)))
        self.evaluator = ReferenceEvaluator(exposed, new_ops=float64_ops())
        self.output0 = exposed.graph.output[0].name

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        """All outputs of onnxruntime on ``feeds``."""
        return self.session.run(self.names, feeds)

    def loss(self, feeds: dict[str, Any], weight: Any) -> float:
        """``sum(output0 * weight)`` computed in float64 (float feeds are cast)."""
        import numpy as np

        cast = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v
                for k, v in feeds.items()}
        out = self.evaluator.run([self.output0], cast)[0]
        return float(np.sum(out * weight.astype(np.float64)))


def central_fd(ref: Reference, feeds: dict[str, Any], weight: Any, name: str, value: Any,
               direction: Any, step: float) -> float:
    """``(L(v + tD) - L(v - tD)) / 2t`` in float64 with ``t = step * rms(v)``."""
    import numpy as np

    value = value.astype(np.float64)
    rms = float(np.sqrt(np.mean(value**2)))
    t = step * (rms if rms > 0 else 1.0)
    plus = dict(feeds, **{name: value + t * direction})
    minus = dict(feeds, **{name: value - t * direction})
    return (ref.loss(plus, weight) - ref.loss(minus, weight)) / (2 * t)


def make_check(ref: Reference, feeds: dict[str, Any], weight: Any, name: str, value: Any,
               rng: Any) -> dict[str, Any]:
    """Finite differences of one tensor: along a random direction, and at a few entries."""
    import numpy as np

    direction = rng.standard_normal(value.shape)
    fd = central_fd(ref, feeds, weight, name, value, direction, STEP)
    coarse = central_fd(ref, feeds, weight, name, value, direction, 10 * STEP)
    entries = []
    for flat in rng.choice(value.size, size=min(ENTRIES, value.size), replace=False):
        unit = np.zeros(value.size)
        unit[flat] = 1.0
        entries.append((int(flat), central_fd(ref, feeds, weight, name, value,
                                              unit.reshape(value.shape), STEP)))
    return {"direction": direction, "fd": fd, "fd_spread": relative(fd, coarse),
            "entries": entries}


def check_error(check: dict[str, Any], grad: Any) -> float:
    """Largest relative error of ``grad`` against the check's finite differences.

    The directional derivative is compared as ``relative``; an entry as
    ``|fd - ad| / max(|fd|, |ad|, rms(grad))`` (entries of a dead unit are ~0 and are
    judged against the tensor's gradient scale, not their own).
    """
    import numpy as np

    grad = np.asarray(grad, np.float64).reshape(check["direction"].shape)
    errors = [relative(check["fd"], float(np.sum(grad * check["direction"])))]
    scale = float(np.sqrt(np.mean(grad**2)))
    for flat, fd in check["entries"]:
        ad = float(grad.reshape(-1)[flat])
        denominator = max(abs(fd), abs(ad), scale)
        errors.append(abs(fd - ad) / denominator if denominator > 0 else 0.0)
    return max(errors)


def relative(fd: float, ad: float) -> float:
    """``|fd - ad| / max(|fd|, |ad|)``, 0 when both are 0."""
    scale = max(abs(fd), abs(ad))
    return abs(fd - ad) / scale if scale > 0 else 0.0


# --------------------------------------------------------------------------- backends


class Backend:
    """What the child asks of a backend after ``convert``."""

    keys = "name"
    note = ""

    def convert(self, model: Any, feeds: dict[str, Any]) -> None:
        """Build the differentiable function (timed as *convert s*)."""
        raise NotImplementedError

    def forward(self, feeds: dict[str, Any]) -> list[Any]:
        """All outputs as numpy arrays."""
        raise NotImplementedError

    def grads(self, feeds: dict[str, Any], weight: Any
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Gradients of ``sum(output0 * weight)`` by initializer name and by input name."""
        raise NotImplementedError


class TorchBackend(Backend):
    """A torch module called with the graph inputs in order; ``self.tensors`` maps names."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.module: Any = None
        self.tensors: dict[str, list[tuple[Any, Callable[[Any], Any]]]] = {}
        self.inputs: list[str] = []

    def _args(self, feeds: dict[str, Any], grad: bool) -> list[Any]:
        import torch

        args = []
        for name in self.inputs:
            tensor = torch.from_numpy(feeds[name].copy())
            if grad and tensor.is_floating_point():
                tensor.requires_grad_(True)
            args.append(tensor)
        return args

    def _outputs(self, args: list[Any]) -> list[Any]:
        outs = self.module(*args)
        if not isinstance(outs, list | tuple):
            outs = [outs]
        return list(outs)

    def forward(self, feeds: dict[str, Any]) -> list[Any]:
        """All outputs as numpy arrays (no autograd)."""
        import torch

        with torch.no_grad():
            return [o.detach().numpy() for o in self._outputs(self._args(feeds, False))]

    def grads(self, feeds: dict[str, Any], weight: Any
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Gradients w.r.t. every mapped float initializer and every float input."""
        import numpy as np
        import torch

        args = self._args(feeds, True)
        leaves = list({id(t): t for copies in self.tensors.values() for t, _ in copies
                       if t.requires_grad}.values())
        float_args = [a for a in args if a.requires_grad]
        out0 = self._outputs(args)[0]
        loss = (out0 * torch.from_numpy(weight)).sum()
        got = torch.autograd.grad(loss, leaves + float_args, allow_unused=True)
        by_id = {id(t): g for t, g in zip(leaves, got[: len(leaves)], strict=True)}
        weights = {}
        for name, copies in self.tensors.items():
            total = None
            for tensor, back in copies:
                if not tensor.requires_grad:
                    continue
                g = by_id.get(id(tensor))  # None: unused by the loss, a zero gradient
                g = back(np.zeros(tuple(tensor.shape), np.float32) if g is None
                         else g.detach().numpy())
                total = g if total is None else total + g
            if total is not None:
                weights[name] = total
        names = [n for n, a in zip(self.inputs, args, strict=True) if a.requires_grad]
        inputs = {n: None if g is None else g.detach().numpy()
                  for n, g in zip(names, got[len(leaves):], strict=True)}
        return weights, inputs


class Onnx2Torch(TorchBackend):
    """``onnx2torch.convert``; weights found by value (see the module docstring)."""

    def __init__(self, opset: int | None = None) -> None:
        super().__init__()
        self.opset = opset
        stub_torchvision()
        if getattr(sys.modules["torchvision"], "__stub__", False):
            self.note = "torchvision stubbed"
        importlib.import_module("onnx2torch")  # imported here, not in the timed convert

    def convert(self, model: Any, feeds: dict[str, Any]) -> None:
        """Version-convert (``-op17``) and convert to a ``GraphModule``."""
        import onnx
        from onnx2torch import convert

        if self.opset is not None:
            model = onnx.version_converter.convert_version(model, self.opset)
        self.module = convert(model).eval()
        self.inputs = [v.name for v in graph_inputs(model)]

    def map_weights(self, model: Any) -> None:
        """Map float ONNX initializers to the module's tensors holding equal values."""
        import numpy as np
        from onnx import helper, numpy_helper

        pool = {}
        for _, t in [*self.module.named_parameters(), *self.module.named_buffers()]:
            if t.is_floating_point():
                pool[id(t)] = t
        arrays = {t_id: t.detach().numpy() for t_id, t in pool.items()}
        floats = [i for i in model.graph.initializer
                  if np.issubdtype(helper.tensor_dtype_to_np_dtype(i.data_type), np.floating)]
        claimed: dict[int, int] = {}
        for init in floats:
            value = numpy_helper.to_array(init)
            same, transposed, reshaped = [], [], []
            for t_id, array in arrays.items():
                if array.size != value.size:
                    continue
                if array.shape == value.shape and np.array_equal(array, value):
                    same.append((t_id, lambda g: g))
                elif (value.ndim == 2 and array.shape == value.T.shape
                      and np.array_equal(array, value.T)):
                    transposed.append((t_id, lambda g: g.T))
                elif np.array_equal(array.reshape(-1), value.reshape(-1)):
                    reshaped.append((t_id, (lambda shape: lambda g: g.reshape(shape))(value.shape)))
            copies = same or transposed or reshaped  # as is first: a transposed copy of a
            for t_id, _ in copies:                   # weight (an untied head) is another one
                claimed[t_id] = claimed.get(t_id, 0) + 1
            if copies:
                self.tensors[init.name] = [(pool[t_id], back) for t_id, back in copies]
        ambiguous = sum(1 for count in claimed.values() if count > 1)
        for t_id in claimed:
            if not pool[t_id].requires_grad:
                pool[t_id].requires_grad_(True)
        self.keys = f"value {len(self.tensors)}/{len(floats)}"
        if ambiguous:
            self.keys += f", {ambiguous} ambiguous"
        self.statistics = [t for name, t in self.module.named_buffers()
                           if name.endswith(("running_mean", "running_var"))]

    def grads(self, feeds: dict[str, Any], weight: Any
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """As ``TorchBackend.grads``, without the BatchNorm statistics if autograd refuses.

        ``native_batch_norm`` is not differentiable w.r.t. its running mean and var; when
        the call fails for that reason those buffers stop requiring grad (and get no
        gradient) and the call is repeated.
        """
        try:
            return super().grads(feeds, weight)
        except RuntimeError as error:
            if "not differentiable" not in str(error) or not self.statistics:
                raise
            for tensor in self.statistics:
                tensor.requires_grad_(False)
            self.statistics = []
            self.note = ", ".join(filter(None, [
                self.note, "no grad w.r.t. BatchNorm running mean/var (autograd refuses)"]))
            return super().grads(feeds, weight)


class Spa(TorchBackend):
    """``spa_opt.autodiff.TorchGraph``, parameters keyed by initializer name."""

    def __init__(self) -> None:
        super().__init__()
        importlib.import_module("spa_opt.autodiff")  # not in the timed convert

    def convert(self, model: Any, feeds: dict[str, Any]) -> None:
        """Build ``TorchGraph`` from the onnx_ir model."""
        import onnx_ir as ir

        from spa_opt.autodiff import TorchGraph

        self.module = TorchGraph(ir.from_proto(model))
        self.module.eval()
        self.inputs = [v.name for v in graph_inputs(model)]

    def map_weights(self, model: Any) -> None:
        """``named_initializers()`` when the module has it, else its named parameters."""
        import numpy as np
        from onnx import helper

        if hasattr(self.module, "named_initializers"):
            found = self.module.named_initializers()
            items = found.items() if isinstance(found, dict) else found
        else:
            items = self.module.named_parameters()
        for name, tensor in items:
            if tensor.is_floating_point():
                tensor.requires_grad_(True)
                self.tensors[name] = [(tensor, lambda g: g)]
        floats = [i.name for i in model.graph.initializer
                  if np.issubdtype(helper.tensor_dtype_to_np_dtype(i.data_type), np.floating)]
        missing = {n for n in floats if n not in self.tensors}
        self.keys = "name" if not missing else f"name {len(floats) - len(missing)}/{len(floats)}"
        if missing and missing <= bn_statistics(model):
            self.keys += " (rest: BN stats)"


class Jax(Backend):
    """``jaxonnxruntime.call_onnx.call_onnx_model``; params keyed by initializer name."""

    def __init__(self, static_inputs: bool = False, x64: bool = False) -> None:
        import jax

        if x64:
            jax.config.update("jax_enable_x64", True)
        self.static_inputs = static_inputs
        self.step: Any = None
        importlib.import_module("jaxonnxruntime.call_onnx")  # not in the timed convert

    def _config(self) -> Any:
        from jaxonnxruntime import config_class

        return config_class.jaxort_only_allow_initializers_as_static_args(
            not self.static_inputs)

    def convert(self, model: Any, feeds: dict[str, Any]) -> None:
        """Trace the model on ``feeds``; split params into float (differentiated) and rest."""
        import jax
        import numpy as np
        from jaxonnxruntime import call_onnx

        self.inputs = [v.name for v in graph_inputs(model)]
        with self._config():
            self.fn, params = call_onnx.call_onnx_model(model, [feeds[n] for n in self.inputs])
        self.floats = {k: v for k, v in params.items()
                       if np.issubdtype(np.asarray(v).dtype, np.floating)}
        self.rest = {k: v for k, v in params.items() if k not in self.floats}
        self.floats = jax.device_put(self.floats)  # held as jax arrays, as in training

    def forward(self, feeds: dict[str, Any]) -> list[Any]:
        """All outputs as numpy arrays (eager)."""
        import numpy as np

        with self._config():
            outs = self.fn({**self.floats, **self.rest}, [feeds[n] for n in self.inputs])
        return [np.asarray(o) for o in outs]

    def _make_step(self, feeds: dict[str, Any]) -> Callable[..., Any]:
        import jax
        import jax.numpy as jnp
        import numpy as np

        float_inputs = [n for n in self.inputs if np.issubdtype(feeds[n].dtype, np.floating)]

        def loss(floats: dict[str, Any], xs: dict[str, Any], others: dict[str, Any],
                 weight: Any) -> Any:
            merged = {**others, **xs}
            outs = self.fn({**floats, **self.rest}, [merged[n] for n in self.inputs])
            return jnp.sum(outs[0] * weight)

        eager = jax.value_and_grad(loss, argnums=(0, 1))
        jitted = jax.jit(eager)

        def call(floats: dict[str, Any], all_feeds: dict[str, Any], weight: Any) -> Any:
            xs = {n: all_feeds[n] for n in float_inputs}
            others = {n: all_feeds[n] for n in self.inputs if n not in xs}
            with self._config():
                if self.step is None:
                    try:
                        result = jax.block_until_ready(jitted(floats, xs, others, weight))
                        self.step = jitted
                        return result
                    except Exception as error:  # jit refused: fall back to eager
                        self.note = f"no jit ({short(error, 60)})"
                        self.step = eager
                return jax.block_until_ready(self.step(floats, xs, others, weight))

        return call

    def grads(self, feeds: dict[str, Any], weight: Any
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Gradients w.r.t. every float initializer and every float input."""
        import numpy as np

        if not hasattr(self, "call"):
            self.call = self._make_step(feeds)
        _, (g_weights, g_inputs) = self.call(self.floats, feeds, weight)
        return ({k: np.asarray(v) for k, v in g_weights.items()},
                {k: np.asarray(v) for k, v in g_inputs.items()})


def make_backend(name: str) -> Backend:
    """A fresh backend object by its command-line name."""
    if name == "onnx2torch":
        return Onnx2Torch()
    if name == "onnx2torch-op17":
        return Onnx2Torch(opset=17)
    if name == "jax":
        return Jax()
    if name == "jax-dynshape":
        return Jax(static_inputs=True)
    if name == "jax-x64":
        return Jax(static_inputs=True, x64=True)
    if name == "spa":
        return Spa()
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


# --------------------------------------------------------------------------- child


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
