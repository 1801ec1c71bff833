"""onnxruntime as the runtime after spa-opt: sessions built in memory, at any size.

onnxruntime cannot be extended from Python at session creation, so "a
pre-optimization step" means: run spa-opt's passes on the model in memory, then
hand the result to ``InferenceSession``. Two rules make that work for every size:

- large initializers are never serialized: the proto carries them as external
  references and their arrays (memory-mapped or in memory) go to onnxruntime
  through ``SessionOptions.add_external_initializers``, so a model over 2 GB needs
  no temporary copy of its weights;
- spa-opt's output is plain ONNX, so onnxruntime's own graph optimizations
  (fusions, layout changes) run on it afterwards as usual.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

#: Initializers at least this big are handed over as arrays, not serialized.
HANDOVER_BYTES = 1 << 20
_PLACEHOLDER_LOCATION = "spa-opt-in-memory-initializer"


def quiet_session_options() -> ort.SessionOptions:
    """Session options that log nothing below fatal.

    Verification and validation sessions are not the user's: their failures become
    spa-opt's own one-line messages (:func:`describe_error`), and onnxruntime's
    colour-coded ``[E:onnxruntime:...]`` line on stderr would only repeat them.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return options


_RUNNING = re.compile(r"Non-zero status code returned while running (\S+) node\. "
                      r"Name:'(.*?)' Status Message: (.*)")
_STATUS = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE = re.compile(r"^(\S*/)?\S+\.(h|cc|cpp):\d+ (\S+ )?")


def describe_error(error: BaseException, limit: int = 300) -> str:
    """One line naming the node, for an onnxruntime failure, without its source paths.

    onnxruntime's messages span lines and start with a status code and the C++ file
    that raised them; the user needs the node and what is wrong with it.
    """
    text = " ".join(str(error).split()) or type(error).__name__
    text = _STATUS.sub("", text)
    running = _RUNNING.search(text)
    if running:
        op, name, status = running.groups()
        text = f"node '{name}' ({op}): {_SOURCE.sub('', status)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def session_from_model(
    model: ir.Model,
    sess_options: ort.SessionOptions | None = None,
    providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
) -> ort.InferenceSession:
    """Create an onnxruntime session from an in-memory model without copying big weights.

    Args:
        model: The model; it is not modified.
        sess_options: Passed through (a fresh one is made when None; the given one
            gains the external initializers).
        providers: Passed through; CPU when None.

    Returns:
        The session. It keeps the handed-over arrays alive as long as it lives.
    """
    options = sess_options if sess_options is not None else ort.SessionOptions()
    # Memory-mapped tensors always go as arrays: serialized, their relative locations
    # would be resolved against onnxruntime's working directory, not the model's.
    big = [
        value
        for value in model.graph.initializers.values()
        if value.const_value is not None
        and (value.const_value.nbytes >= HANDOVER_BYTES
             or isinstance(value.const_value, ir.ExternalTensor))
    ]
    arrays: list[np.ndarray] = []
    originals = [value.const_value for value in big]
    try:
        for value, tensor in zip(big, originals, strict=True):
            arrays.append(np.ascontiguousarray(tensor.numpy()))
            value.const_value = ir.ExternalTensor(
                _PLACEHOLDER_LOCATION, offset=0, length=tensor.nbytes, dtype=tensor.dtype,
                shape=tensor.shape, name=value.name,
            )
        proto_bytes = ir.to_proto(model).SerializeToString()
    finally:
        for value, tensor in zip(big, originals, strict=False):
            value.const_value = tensor
    ort_values = [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays]
    if big:
        options.add_external_initializers([value.name for value in big], ort_values)
    session = ort.InferenceSession(
        proto_bytes, sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
    )
    session._spa_opt_keepalive = (arrays, ort_values)  # type: ignore[attr-defined]
    return session
