"""Is a model valid? The onnx checker's full check, strict shape inference, channel counts.

Used by ``check``, by ``prune`` on its result and by ``--verify-each``; it lives in the
IR layer because it is a property of a model, not of a pass.

Rules:

- the full checker validates the graph, its opsets and node attributes;
- strict shape inference fails on inconsistent shapes, which is what a wrong
  pruning leaves behind (a Conv whose weight no longer matches its input);
- channel counts onnx's inference does not compare are checked on the IR: a
  Conv's input channels against ``W.shape[1] * group``, a ConvTranspose's
  against ``W.shape[0]``, a normalization's parameter lengths against its
  input channels (a pruned producer with an unpatched consumer);
- large initializers are stripped for both calls, so models over 2 GB check;
- an operator the checker has no schema for, in the default domain, is what
  onnxruntime's optimizer writes (``SimplifiedLayerNormalization``): then onnxruntime
  itself is the checker, building a session of the model (which infers and checks
  every shape it knows);
- a failure raises :class:`~spa_opt.errors.VerificationError` with onnx's message.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass

from spa_opt.errors import VerificationError
from spa_opt.ir.shapes import temporary_shapes


def _dim(value: ir.Value | None, axis: int) -> int | None:
    if value is None or value.shape is None or len(value.shape) <= axis:
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) else None


def _channel_mismatch(node: ir.Node) -> str | None:
    """Describe an inconsistent channel count at ``node``, or None."""
    op, x = node.op_type, node.inputs[0] if node.inputs else None
    channels = _dim(x, 1)
    if node.domain != "" or channels is None:
        return None
    if op == "Conv" and len(node.inputs) > 1:
        expected = _dim(node.inputs[1], 1)
        group = node.attributes.get_int("group", 1)
        if expected is not None and channels != expected * group:
            return f"Conv reads {channels} channels, its weight expects {expected} x {group}"
    if op == "ConvTranspose" and len(node.inputs) > 1:
        expected = _dim(node.inputs[1], 0)
        if expected is not None and channels != expected:
            return f"ConvTranspose reads {channels} channels, its weight expects {expected}"
    if op in ("BatchNormalization", "InstanceNormalization"):
        for param in node.inputs[1:]:
            length = _dim(param, 0)
            if length is not None and length != channels:
                return f"{op} has {channels} channels but a parameter of length {length}"
    return None


def _check_in_onnxruntime(model: ir.Model) -> None:
    """Build an onnxruntime session of ``model``; its failure is the model's invalidity."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failure is raised, not logged
    try:
        ort.InferenceSession(ir.to_proto(model).SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped failures
        message = " ".join(str(error).split()) or type(error).__name__
        raise VerificationError(f"the model is invalid: {message}") from error


def check_model(model: ir.Model) -> None:
    """Raise VerificationError unless the model passes every rule of the module docstring."""
    try:
        CheckerPass(full_check=True)(model)
    except Exception as error:  # onnx raises several unrelated types here
        cause = error.__cause__ or error
        message = " ".join(str(cause).split()) or type(cause).__name__
        if "No Op registered for" not in message:
            raise VerificationError(f"the model is invalid: {message}") from error
        _check_in_onnxruntime(model)
    with temporary_shapes(model):
        for node in model.graph.all_nodes():
            problem = _channel_mismatch(node)
            if problem:
                raise VerificationError(f"the model is invalid: node '{node.name}': {problem}")
