"""One stage as an onnxruntime session, built from the model's nodes without touching it.

onnx_ir nodes belong to one graph, so a stage is not an ``ir.Graph`` of its own: its
nodes, inputs, outputs and the initializers they read are serialized straight into a
``ModelProto``. Weights over ``HANDOVER_BYTES`` or memory-mapped go to onnxruntime as
arrays (``add_external_initializers``), as :func:`spa_opt.ort.session_from_model` does,
so a stage of a model over 2 GB copies no weight into the proto.

``overrides`` replaces initializers (or ``Constant`` outputs) by other arrays for this
session only: the pruned-network emulation of ``propagate=pruned`` runs the same stage
with reconstructed and zeroed weights.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.passes.obspa_graph.stages import Stage

_PLACEHOLDER = "spa-opt-stage-initializer"
_HANDOVER_BYTES = 1 << 20


def _tensor_proto(name: str, tensor: ir.TensorProtocol, handed: list[tuple[str, np.ndarray]]
                  ) -> onnx.TensorProto:
    if tensor.nbytes < _HANDOVER_BYTES and not isinstance(tensor, ir.ExternalTensor):
        proto = ir.serde.serialize_tensor(tensor)
        proto.name = name
        return proto
    handed.append((name, np.ascontiguousarray(tensor.numpy())))
    placeholder = ir.ExternalTensor(_PLACEHOLDER, offset=0, length=tensor.nbytes,
                                    dtype=tensor.dtype, shape=tensor.shape, name=name)
    return ir.serde.serialize_tensor(placeholder)


def stage_model(model: ir.Model, stage: Stage,
                overrides: Mapping[str, np.ndarray] | None = None
                ) -> tuple[onnx.ModelProto, list[tuple[str, np.ndarray]]]:
    """The stage as a proto, and the arrays to hand over as external initializers."""
    overrides = dict(overrides or {})
    graph = model.graph
    proto = onnx.GraphProto(name=f"obspa-stage-{stage.index}")
    handed: list[tuple[str, np.ndarray]] = []
    initializers: dict[str, ir.TensorProtocol] = {}
    for node in stage.nodes:
        output = node.outputs[0] if node.outputs else None
        if node.op_type == "Constant" and output is not None and output.name in overrides:
            initializers[output.name] = ir.tensor(overrides.pop(output.name), name=output.name)
            continue
        proto.node.append(ir.serde.serialize_node(node))
        for value in node.inputs:
            if value is None or not value.name or value.name in initializers:
                continue
            if graph.initializers.get(value.name) is value and value.const_value is not None \
                    and value not in graph.inputs:
                initializers[value.name] = value.const_value
    for name in list(initializers):
        if name in overrides:
            initializers[name] = ir.tensor(overrides[name], name=name)
    for name, tensor in initializers.items():
        proto.initializer.append(_tensor_proto(name, tensor, handed))
    for value in [*stage.graph_inputs, *stage.inputs]:
        if value.type is None:
            raise InputError(f"obspa: the type of `{value.name}` is unknown; it crosses a "
                             "stage boundary and onnxruntime needs it")
        proto.input.append(ir.serde.serialize_value(value))
    for value in stage.outputs:
        proto.output.append(ir.serde.serialize_value(value) if value.type is not None
                            else onnx.ValueInfoProto(name=value.name))
    opsets = [onnx.helper.make_opsetid(domain, version)
              for domain, version in model.opset_imports.items()]
    result = onnx.helper.make_model(proto, opset_imports=opsets)
    result.ir_version = model.ir_version
    result.functions.extend(ir.serde.serialize_function(f) for f in model.functions.values())
    return result, handed


class StageSession:
    """An onnxruntime session of one stage that can give its weights' pages back.

    A memory-mapped weight read for the session stays resident in this process (its
    pages count in the RSS) for as long as its tensor keeps the mapping open. ``close``
    drops the session, the arrays handed to it, and closes the mappings of the external
    tensors it read, so a decoder's weights are resident one stage at a time.
    """

    def __init__(self, session: Any, handed: list[tuple[str, np.ndarray]], values: list[Any],
                 external: list[ir.ExternalTensor]) -> None:
        self._session = session
        self._keep = (handed, values)
        self._external = external

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``InferenceSession.run``."""
        return self._session.run(names, feed)

    def close(self) -> None:
        """Drop the session and release the memory-mapped weights it read."""
        self._session = None
        self._keep = ([], [])
        if not self._external:  # nothing mapped to release (a collection costs 70 ms)
            return
        gc.collect()  # onnxruntime's OrtValues hold views of the mappings until collected
        for tensor in self._external:
            with contextlib.suppress(BufferError):  # a view is alive elsewhere: keep it
                tensor.release()
        self._external = []


def stage_session(model: ir.Model, stage: Stage,
                  overrides: Mapping[str, np.ndarray] | None = None) -> StageSession:
    """An onnxruntime session that runs ``stage`` (see the module docstring)."""
    import onnxruntime as ort

    from spa_opt.ort import describe_error, quiet_session_options

    # every memory-mapped weight the stage reads, mapped now or before (the layer records
    # map them all when they are built): closing releases each mapping no array still
    # views, so a decoder's weights are resident one stage at a time
    external = [v.const_value for node in stage.nodes for v in node.inputs
                if v is not None and isinstance(v.const_value, ir.ExternalTensor)]
    proto, handed = stage_model(model, stage, overrides)
    options = quiet_session_options()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no arena: a stage runs a few large batches, and an arena would keep the largest
    # batch's intermediates allocated while the accumulators sum its activations
    options.enable_cpu_mem_arena = False
    values = [ort.OrtValue.ortvalue_from_numpy(array) for _, array in handed]
    if handed:
        options.add_external_initializers([name for name, _ in handed], values)
    try:
        session = ort.InferenceSession(proto.SerializeToString(), sess_options=options,
                                       providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises untyped failures
        raise InputError(f"obspa: stage {stage.index} of the model does not run in "
                         f"onnxruntime: {describe_error(error)}") from None
    return StageSession(session, handed, values, external)
