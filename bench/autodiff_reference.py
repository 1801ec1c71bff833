"""The reference of bench/autodiff_backends.py: inputs, and gradients by float64 finite differences.

onnxruntime computes in float32, too coarse for finite differences; the reference runs
the model converted to float64 in ``onnx.reference`` (with float64 ``Erf``/``Gelu``) and
takes central differences along a direction over a whole tensor and at a few entries.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def graph_inputs(model: Any) -> list[Any]:
    """The graph inputs of an ``onnx.ModelProto`` that are not initializers."""
    initializers = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]

SYMBOLIC_DIM = 2

CHECKED_WEIGHTS = 3

STEP = 1e-6

ENTRIES = 3


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
