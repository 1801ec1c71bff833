"""Validate the input once, on load, before any pass (issue 16).

A pass that meets an invalid graph fails deep inside an analysis or at ``prune``'s
final check, and the user reads an internal error about a model they gave us. So the
input is judged first, and whatever makes it unusable is an
:class:`~spa_opt.errors.InputError` (exit 2, one line naming the node or value):

- before onnx_ir reads the proto: every value is produced once (onnx_ir's
  deserializer fails on a name written twice with a message naming only the graph);
- after the load repairs (:mod:`spa_opt.ir.repair`: node order, stale value_info,
  graph outputs without a shape): the onnx checker's full check, strict shape
  inference and the channel counts of :func:`spa_opt.ir.check.check_model`, the same
  rules ``prune`` holds its result to, so a result can only fail them by our fault;
  and strict inference with data propagation (a declared shape the graph contradicts
  only once its shape computations fold);
- onnxruntime builds a session of it (:func:`input_session`): a model onnxruntime
  refuses is refused, in one line naming the node (:func:`spa_opt.ort.describe_error`).

Operators neither onnx nor onnxruntime knows are not refused: the coupling pins their
channels, and a model that merely has one is still a model to analyse.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from spa_opt.errors import InputError, VerificationError
from spa_opt.ir.check import check_model

_UNKNOWN_OPERATOR = ("No Op registered for", "is not a registered function/op",
                     "Could not find an implementation for", "No opset import for domain")


def unknown_operator(message: str) -> bool:
    """Whether a checker or onnxruntime failure only says an operator is unknown to it."""
    return any(marker in message for marker in _UNKNOWN_OPERATOR)


def known_invalidity(error: VerificationError) -> str | None:
    """The checker's reason without its prefix, None when it only names an unknown operator.

    An operator neither onnx nor onnxruntime knows pins its channels; it is not a reason
    to refuse the model (the contract), so both the input check and the result check
    pass over it.
    """
    message = str(error).removeprefix("the model is invalid: ")
    return None if unknown_operator(message) else message


def check_unique_names(proto: onnx.ModelProto, label: str) -> None:
    """Refuse a graph where two nodes (or an initializer and a node) write one name."""
    _check_graph_names(proto.graph, label, set())


def _check_graph_names(graph: onnx.GraphProto, label: str, outer: set[str]) -> None:
    written: dict[str, str] = {}
    for value in graph.input:
        written.setdefault(value.name, f"graph input '{value.name}'")
    for tensor in graph.initializer:
        if tensor.name in written and not written[tensor.name].startswith("graph input"):
            raise InputError(f"{label}: initializer '{tensor.name}' is defined twice")
        written[tensor.name] = f"initializer '{tensor.name}'"
    for index, node in enumerate(graph.node):
        where = f"node '{node.name or f'#{index}'}' ({node.op_type})"
        for name in node.output:
            if not name:
                continue
            if name in written:
                raise InputError(f"{label}: {where} writes '{name}', which "
                                 f"{written[name]} already defines (a value has one producer)")
            written[name] = where
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
                _check_graph_names(sub, label, outer | set(written))


def check_input(model: ir.Model) -> None:
    """Refuse a loaded (and repaired) model that fails the checks ``prune`` applies.

    The model is left exactly as it was: onnx_ir's checker pass reorders the
    initializers and annotates their shapes, and an analysis-only pipeline must save
    the bytes it loaded.
    """
    initializers = list(model.graph.initializers.values())
    saved = [(value, value.shape, value.type) for value in initializers]
    # Mapped weights were checked on load (spa_opt.ir.io.check_external_data); the
    # checker would look for their files from the working directory. Their values
    # are not needed to check the graph, only their types.
    mapped = [(value, value.const_value) for value in initializers
              if isinstance(value.const_value, ir.ExternalTensor)]
    for value, tensor in mapped:
        value.shape, value.dtype = tensor.shape, tensor.dtype
        value.const_value = None
    try:
        check_model(model)
        _infer_with_data_propagation(model)
    except VerificationError as error:
        message = known_invalidity(error)
        if message is None:
            return
        raise InputError(f"the input model is invalid: {message}") from None
    finally:
        for value, tensor in mapped:
            value.const_value = tensor
        _restore(model, initializers, saved)


def _infer_with_data_propagation(model: ir.Model) -> None:
    """Strict inference with data propagation, as the graph will be once folded.

    A declared shape (a graph output's, typically) can contradict what the graph
    computes only once ``Shape`` -> ``Reshape`` chains are folded: the checker passes
    the input, and ``fold-constants`` then leaves a model that fails it.
    """
    from onnx_ir.passes.common import _c_api_utils

    def infer(proto: onnx.ModelProto) -> None:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                          data_prop=True)

    try:
        _c_api_utils.call_onnx_api(infer, model)
    except onnx.shape_inference.InferenceError as error:
        raise VerificationError(" ".join(str(error).split())) from error


def _restore(model: ir.Model, initializers: list[ir.Value], saved: list) -> None:
    for value, shape, type_ in saved:
        value.type = type_
        value.shape = shape
    current = model.graph.initializers
    if list(current.values()) != initializers:
        for value in initializers:
            current.pop(value.name, None)
        for value in initializers:
            model.graph.register_initializer(value)
