"""Seeded mutation operators over ONNX models.

Each operator takes a model and a ``random.Random`` and returns a mutated copy with a
short description, or None when it does not apply (no Reshape to retarget, say). The
mutants are what a user's toolchain gets wrong: a node deleted and its readers
rewired, inputs swapped, attributes and Reshape targets changed, weights of the wrong
shape or dtype, a name produced twice, an op inserted, nodes out of order, value_info
dropped, another opset. :func:`mutate` picks one operator from ``(model, seed)`` alone,
so a mutant is reproduced by its seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MutationFn = Callable[[onnx.ModelProto, random.Random], "str | None"]


@dataclass(frozen=True)
class Mutant:
    """A mutated model and how it was made (operator, description, seed)."""

    model: onnx.ModelProto
    operator: str
    description: str
    seed: int


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {name: i for i, node in enumerate(graph.node) for name in node.output if name}


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every read of ``old`` in the graph (node inputs, graph outputs) reads ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for output in graph.output:
        if output.name == old:
            output.name = new


def delete_node(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Remove a node; its readers read its first input instead."""
    graph = model.graph
    candidates = [i for i, n in enumerate(graph.node) if n.input and n.input[0] and n.output]
    if not candidates:
        return None
    index = rng.choice(candidates)
    node = graph.node[index]
    source = node.input[0]
    outputs = list(node.output)
    del graph.node[index]
    for name in outputs:
        if name:
            _rename_reads(graph, name, source)
    return f"deleted {node.op_type} '{node.name}', readers read '{source}'"


def swap_inputs(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Swap two inputs of a node with at least two."""
    candidates = [n for n in model.graph.node if len([x for x in n.input if x]) >= 2]
    if not candidates:
        return None
    node = rng.choice(candidates)
    present = [i for i, x in enumerate(node.input) if x]
    a, b = rng.sample(present, 2)
    node.input[a], node.input[b] = node.input[b], node.input[a]
    return f"swapped inputs {a} and {b} of {node.op_type} '{node.name}'"


def _new_int(value: int, rng: random.Random) -> int:
    return rng.choice([0, 1, -1, value + 1, value - 1, value * 2, 3])


def change_attribute(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Change one int, ints or float attribute of a node."""
    kinds = (onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT)
    candidates = [(n, a) for n in model.graph.node for a in n.attribute if a.type in kinds]
    if not candidates:
        return None
    node, attr = rng.choice(candidates)
    if attr.type == onnx.AttributeProto.INT:
        before = attr.i
        attr.i = _new_int(attr.i, rng)
        after: object = attr.i
    elif attr.type == onnx.AttributeProto.FLOAT:
        before = attr.f
        attr.f = rng.choice([0.0, -1.0, attr.f * 10, 1e-12])
        after = attr.f
    else:
        before = list(attr.ints)
        if attr.ints and rng.random() < 0.7:
            i = rng.randrange(len(attr.ints))
            attr.ints[i] = _new_int(attr.ints[i], rng)
        elif attr.ints:
            del attr.ints[rng.randrange(len(attr.ints))]
        else:
            attr.ints.append(rng.choice([0, 1, -1]))
        after = list(attr.ints)
    return f"{node.op_type} '{node.name}' attribute {attr.name}: {before} -> {after}"


def _constant_tensor(graph: onnx.GraphProto, name: str) -> onnx.TensorProto | None:
    for tensor in graph.initializer:
        if tensor.name == name:
            return tensor
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    return attr.t
    return None


def change_reshape_target(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Change one entry of a constant Reshape target (or drop or add one)."""
    graph = model.graph
    candidates = [(n, t) for n in graph.node if n.op_type == "Reshape" and len(n.input) > 1
                  and (t := _constant_tensor(graph, n.input[1])) is not None]
    if not candidates:
        return None
    node, tensor = rng.choice(candidates)
    shape = numpy_helper.to_array(tensor).astype(np.int64).reshape(-1).tolist()
    before = list(shape)
    choice = rng.random()
    if shape and choice < 0.6:
        i = rng.randrange(len(shape))
        shape[i] = rng.choice([-1, 0, 1, 2 * max(shape[i], 1), 7])
    elif shape and choice < 0.8:
        del shape[rng.randrange(len(shape))]
    else:
        shape.insert(rng.randrange(len(shape) + 1), 1)
    tensor.CopyFrom(numpy_helper.from_array(np.array(shape, dtype=np.int64), tensor.name))
    return f"Reshape '{node.name}' target {before} -> {shape}"


def _weights(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    return [t for t in graph.initializer if t.data_location != TensorProto.EXTERNAL]


def change_initializer_shape(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Give an initializer another shape: one slice fewer, an axis more or fewer."""
    candidates = [t for t in _weights(model.graph) if t.dims]
    if not candidates:
        return None
    tensor = rng.choice(candidates)
    array = numpy_helper.to_array(tensor)
    choice = rng.random()
    if choice < 0.5 and max(array.shape) > 1:
        axis = rng.choice([i for i, d in enumerate(array.shape) if d > 1])
        array = np.take(array, range(array.shape[axis] - 1), axis=axis)
    elif choice < 0.75:
        array = array[None]
    else:
        array = array.reshape(-1)
    before = list(tensor.dims)
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), tensor.name))
    return f"initializer '{tensor.name}' shape {before} -> {list(array.shape)}"


def change_initializer_dtype(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Store an initializer in another element type."""
    candidates = _weights(model.graph)
    if not candidates:
        return None
    tensor = rng.choice(candidates)
    array = numpy_helper.to_array(tensor)
    dtype = rng.choice([np.float64, np.float16, np.int32, np.int64, np.float32])
    if array.dtype == dtype:
        dtype = np.float64 if dtype != np.float64 else np.int32
    with np.errstate(all="ignore"):
        converted = array.astype(dtype)
    tensor.CopyFrom(numpy_helper.from_array(converted, tensor.name))
    return f"initializer '{tensor.name}' dtype {array.dtype} -> {np.dtype(dtype)}"


def duplicate_output_name(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Make a node write a name another node already writes."""
    nodes = [n for n in model.graph.node if n.output and n.output[0]]
    if len(nodes) < 2:
        return None
    first, second = rng.sample(nodes, 2)
    old = second.output[0]
    second.output[0] = first.output[0]
    return f"{second.op_type} '{second.name}' writes '{first.output[0]}' (was '{old}')"


_UNARY = ("Relu", "Identity", "Neg", "Sigmoid", "Abs", "Transpose", "Softmax", "Flatten")


def insert_op(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Put a unary op (or x + x) between a value and all its readers."""
    graph = model.graph
    values = [name for node in graph.node for name in node.output if name]
    values += [value.name for value in graph.input]
    if not values:
        return None
    value = rng.choice(values)
    op = rng.choice((*_UNARY, "Add"))
    new = f"{value}__fuzz_{op.lower()}"
    _rename_reads(graph, value, new)
    inputs = [value, value] if op == "Add" else [value]
    node = helper.make_node(op, inputs, [new], name=f"fuzz_{op.lower()}")
    producers = _producers(graph)
    position = producers[value] + 1 if value in producers else 0
    graph.node.insert(position, node)
    return f"inserted {op} after '{value}'"


def shuffle_nodes(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Put the nodes in a random order."""
    nodes = list(model.graph.node)
    if len(nodes) < 2:
        return None
    rng.shuffle(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return f"shuffled {len(nodes)} nodes"


def drop_value_info(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Drop intermediate value_info, and sometimes the graph outputs' shapes too."""
    dropped = len(model.graph.value_info)
    del model.graph.value_info[:]
    if rng.random() < 0.5:
        for output in model.graph.output:
            output.type.tensor_type.ClearField("shape")
        return f"dropped {dropped} value_info and the outputs' shapes"
    return f"dropped {dropped} value_info"


def change_opset(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Declare another default-domain opset version."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            before = opset.version
            opset.version = rng.choice([7, 9, 11, 13, 15, 17, 18, 21, 23, 30])
            return f"opset {before} -> {opset.version}"
    return None


OPERATORS: dict[str, MutationFn] = {
    "delete-node": delete_node,
    "swap-inputs": swap_inputs,
    "change-attribute": change_attribute,
    "change-reshape": change_reshape_target,
    "initializer-shape": change_initializer_shape,
    "initializer-dtype": change_initializer_dtype,
    "duplicate-output": duplicate_output_name,
    "insert-op": insert_op,
    "shuffle-nodes": shuffle_nodes,
    "drop-value-info": drop_value_info,
    "change-opset": change_opset,
}


def mutate(model: onnx.ModelProto, seed: int, operator: str | None = None) -> Mutant | None:
    """One mutant of ``model`` from ``seed`` (the operator too, unless given).

    Tries the operators in a seeded order until one applies; None when none does.
    The input proto is never modified.
    """
    rng = random.Random(seed)
    names = [operator] if operator else rng.sample(sorted(OPERATORS), len(OPERATORS))
    for name in names:
        mutant = onnx.ModelProto()
        mutant.CopyFrom(model)
        description = OPERATORS[name](mutant, rng)
        if description is not None:
            return Mutant(mutant, name, description, seed)
    return None
