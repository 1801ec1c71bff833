"""Make chosen units of a group dead, and check where that shows in the model's values.

This is the correctness test of coupling: an index map with a wrong offset or
permutation, or a group that misses a producer, shows up as a channel that should be
input-independent but is not, or as a channel that changed although it should not
(checked up to the first node that consumes or normalizes the group's channels:
after it every channel may legitimately change).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper

from spa_opt.ir import nbits
from spa_opt.ir.quant import expand, quantization_of
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.ort import quiet_session_options
from spa_opt.passes.coupling.groups import Group
from spa_opt.passes.coupling.solver import Coupling

KEEP_ROLES = {"in", "param"}
"""Weights that consume channels, or statistics such as a BatchNorm's mean: kept."""


def randomize_weights(model: ir.Model, seed: int = 0) -> None:
    """Seeded random float weights: constant-filled zoo weights would hide wrong maps."""
    rng = np.random.default_rng(seed)
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
            continue
        shape = tuple(tensor.shape)
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            data = rng.standard_normal(shape) / np.sqrt(fan_in)
        else:
            data = rng.uniform(0.5, 1.5, shape)
        value.const_value = ir.tensor(data.astype(tensor.dtype.numpy()), name=value.name)


def zero_code(value: ir.Value, data: np.ndarray) -> np.ndarray:
    """What ``data`` holds where it stands for 0: its zero point for quantized codes.

    MatMulNBits' packed ``[N, blocks, bytes]`` codes stand for 0 at each block's zero
    point, packed as the codes are (4-bit: ``zp | zp << 4``, 0x88 for the default 8).
    """
    packed = nbits.reader_of(value) if data.dtype == np.uint8 else None
    if packed is not None and data.ndim == 3:
        points = nbits.zero_points(packed)
        if points is not None:
            codes = np.repeat(points.astype(np.uint8)[..., None], packed.block_size, axis=2)
            return nbits.pack(codes, packed.bits).reshape(data.shape)
    quantization = quantization_of(value) if data.dtype.kind in "iu" else None
    if quantization is None or quantization.zero_point is None:
        return np.zeros_like(data)
    point = expand(quantization.zero_point, data.shape, quantization.axis,
                   quantization.block_size)
    return np.broadcast_to(point, data.shape).astype(data.dtype)


def kill(model: ir.Model, group: Group, units: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` whose producers of ``units`` are zero."""
    zeroed: dict[str, np.ndarray] = {}
    for member in group.weights:
        if set(member.roles) & KEEP_ROLES:
            continue
        value = member.value
        data = zeroed.get(value.name) if value.name in zeroed else value.const_value.numpy().copy()
        index = [slice(None)] * data.ndim
        index[member.axis] = member.index_map.take(units)
        data[tuple(index)] = zero_code(value, data)[tuple(index)]
        zeroed[value.name] = data
    proto = ir.serde.serialize_model(model)
    for initializer in proto.graph.initializer:
        if initializer.name in zeroed:
            initializer.CopyFrom(onnx.numpy_helper.from_array(zeroed[initializer.name],
                                                              initializer.name))
    return proto


def element_types(model: ir.Model) -> dict[str, int]:
    """Element types of every computed value, from spa-opt's shape inference (which
    types onnxruntime's contrib ops; ONNX inference leaves them untyped)."""
    with temporary_shapes(model):
        return {out.name: out.dtype.value for node in model.graph for out in node.outputs
                if out.dtype is not None}


def expose(proto: onnx.ModelProto, names: list[str],
           model: ir.Model | None = None) -> onnx.ModelProto:
    """The model with ``names`` added as graph outputs (typed by ONNX shape inference,
    else by :func:`element_types` of ``model``, else float)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    untyped = model is not None and any(n not in infos for n in names)
    recorded = {name: helper.make_tensor_value_info(name, dtype, None)
                for name, dtype in (element_types(model) if untyped else {}).items()}
    present = {o.name for o in proto.graph.output}
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    for name in names:
        if name in present:
            continue
        info = infos.get(name) or recorded.get(name) or helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, None)
        result.graph.output.append(info)
    return result


def run(proto: onnx.ModelProto, feeds: list[dict]) -> list[dict[str, np.ndarray]]:
    """Every output of the model for every feed."""
    session = ort.InferenceSession(proto.SerializeToString(), quiet_session_options(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, feed), strict=True)) for feed in feeds]


def descendants(starts: list[ir.Node]) -> set[str]:
    """Names of every value computed by ``starts`` or after them."""
    seen: set[str] = set()
    queue = collections.deque(starts)
    while queue:
        node = queue.popleft()
        for out in node.outputs:
            if out.name not in seen:
                seen.add(out.name)
                queue.extend(out.consumers())
    return seen


def _mixes_channels(node: ir.Node, members: set[str]) -> bool:
    """A contraction reading a member as its data input: every output channel mixes them.

    Its output may belong to the same group (a residual block with one Conv writes back
    into the stream it reads), so reading and writing the group does not make it a
    pass-through. Depthwise convolutions keep channels apart and do not count.
    """
    data = node.inputs[0] if node.inputs else None
    if data is None or data.name not in members:
        return False
    if node.op_type == "Conv":
        return node.attributes.get_int("group", 1) == 1
    return node.op_type in ("Gemm", "MatMul", "ConvTranspose")


def downstream_of_consumers(coupling: Coupling, group: Group) -> set[str]:
    """Names of values computed after the group's channels were consumed or normalized.

    A consumer is a node that reads a member of the group and writes none (a Conv
    taking the channels in, a contraction), or a contraction that reads a member as its
    data input whatever it writes: its outputs mix every channel, so killing units
    legitimately changes them. Normalizations over the channel axis do too.
    """
    members = {m.name for m in group.members}
    axes = {(id(m.value), m.axis) for m in group.members}
    graph = group.members[0].value.graph or group.members[0].value.consumers()[0].graph
    starts = [
        node for node in graph
        if any(v is not None and v.name in members for v in node.inputs)
        and (not any(v.name in members for v in node.outputs) or _mixes_channels(node, members))
    ]
    starts += [
        node for node_name, value, axis in coupling.normalizers
        if (id(value), axis) in axes
        for node in value.consumers() if node.name == node_name
    ]
    return descendants(starts)


def broadcast_mixed(group: Group) -> set[str]:
    """Values computed after a member met a run-time operand broadcast over its channels.

    ``scores + mask`` (the mask is the same for every head) or ``x - mean(x)``: a dead
    unit there takes the other operand's value, which depends on the input. A missing
    branch would be a full-width operand, so it is not excused.
    """
    by_value = {m.name: m for m in group.members}
    graph = group.members[0].value.graph or group.members[0].value.consumers()[0].graph
    starts = []
    for node in graph:
        member_in = [by_value[v.name] for v in node.inputs if v is not None and v.name in by_value]
        if not member_in or not any(v.name in by_value for v in node.outputs):
            continue
        rank = max((len(v.shape) for v in node.inputs if v is not None and v.shape is not None),
                   default=None)
        if rank is None:  # an unshaped contrib op: nothing to tell broadcast from
            continue
        for other in node.inputs:
            if other is None or other.name in by_value or other.const_value is not None:
                continue
            if other.shape is None:
                continue
            axis = member_in[0].axis - (rank - len(other.shape))
            if 0 <= axis < len(other.shape) and other.shape[axis] == 1:
                starts.append(node)
    return descendants(starts)


def dynamic_codes(value: ir.Value) -> tuple[str, str] | None:
    """(scale, zero point) names when ``value`` is DynamicQuantizeLinear's codes."""
    node = value.producer()
    if node is None or node.op_type != "DynamicQuantizeLinear" or node.outputs[0] is not value:
        return None
    return node.outputs[1].name, node.outputs[2].name


def exposed_names(groups: list[Group]) -> list[str]:
    """Every activation member of ``groups``, and the run-time quantization parameters
    of dynamically quantized ones (see :func:`check_dead_units`)."""
    names = {m.name for g in groups for m in g.members if m.kind in ("value", "output")}
    names |= {n for g in groups for m in g.members if m.kind in ("value", "output")
              for n in dynamic_codes(m.value) or ()}
    return sorted(names)


def _dequantized(run_: dict[str, np.ndarray], value: ir.Value) -> tuple[np.ndarray, float]:
    scale, zero = dynamic_codes(value)
    step = float(run_[scale])
    return (run_[value.name].astype(np.float64) - float(run_[zero])) * step, step


def check_dead_units(
    model: ir.Model, coupling: Coupling, group: Group, units: np.ndarray,
    feeds: list[dict], reference: list[dict[str, np.ndarray]],
) -> list[str]:
    """Problems found when ``units`` of ``group`` are dead (empty list: correct).

    Both runs expose the same values (the reference's): onnxruntime fuses QDQ pairs
    into integer kernels only where the intermediate values are not graph outputs, so
    exposing different sets compares two arithmetics. DynamicQuantizeLinear's codes
    are compared as the real values they stand for: a dead unit holds the run-time zero
    point (real 0), and killing units moves the tensor's range, so the other channels
    are re-rounded to the new grid: each run is within half its step of the same real
    value (the range covers it, so nothing clips), hence within one step of each other.
    """
    activations = [m for m in group.members if m.kind in ("value", "output")]
    names = sorted(reference[0])
    dead = run(expose(kill(model, group, units), names, model), feeds)
    after_norm = downstream_of_consumers(coupling, group)
    mixed = broadcast_mixed(group)
    problems = []
    for member in activations:
        positions = member.index_map.take(units)
        others = np.setdiff1d(np.arange(member.index_map.extent), positions)
        dynamic = dynamic_codes(member.value) is not None
        first, second = (np.take(_dequantized(run_, member.value)[0] if dynamic
                                 else run_[member.name], positions, axis=member.axis)
                         for run_ in dead)
        if member.name not in mixed and not np.allclose(first, second, rtol=1e-5, atol=1e-5):
            problems.append(f"{member.name}:{member.axis} units {units.tolist()} are not "
                            "input-independent")
        if member.name in after_norm:
            continue
        for run_, ref in zip(dead, reference, strict=True):
            if dynamic:
                (got, step), (want, ref_step) = (_dequantized(r, member.value)
                                                 for r in (run_, ref))
                got, want = (np.take(v, others, axis=member.axis) for v in (got, want))
                if not np.all(np.abs(got - want) <= max(step, ref_step) * (1 + 1e-6)):
                    problems.append(f"{member.name}:{member.axis} other channels changed "
                                    "by more than one quantization step")
                    break
                continue
            got = np.take(run_[member.name], others, axis=member.axis)
            want = np.take(ref[member.name], others, axis=member.axis)
            scale = max(1.0, float(np.abs(want).max(initial=0.0)))
            # fp16 activations round at 2^-11: a changed accumulation order shows there.
            tolerance = 2e-3 if want.dtype == np.float16 else 1e-5
            if not np.allclose(got, want, rtol=max(1e-4, tolerance), atol=tolerance * scale):
                problems.append(f"{member.name}:{member.axis} other channels changed")
                break
    return problems


def alternate(keys: list, half: int = 0) -> list:
    """``keys`` (or pytest params) with every other one by position marked slow.

    The two golden dead-unit tests (the lattice's removal in ``test_prune_golden``, the
    index maps in ``test_golden_groups``) take ``half`` 0 and 1: the default run checks
    every model with one of them and CI's slow step with the other, which keeps the
    default suite within its time budget. A key already a param keeps its marks.
    """
    result = []
    for i, key in enumerate(keys):
        if i % 2 == half:
            result.append(key)
        elif isinstance(key, str):
            result.append(pytest.param(key, marks=pytest.mark.slow))
        else:
            result.append(pytest.param(*key.values, marks=[*key.marks, pytest.mark.slow],
                                       id=key.id))
    return result
