"""Elementwise operators: channels pass straight through.

Rules:

- unary ops (activations, math, Cast, Identity): every axis of the input is the same
  axis of the output; a Cast of a constant (bf16/fp16 storage) makes the stored tensor
  the group's weight member;
- n-ary ops with numpy broadcasting (Add, Mul, Where, PRelu, Clip, ...): inputs align
  with the output from the right; an input axis of the output's size is the same
  channel axis, an axis of size 1 broadcasts and carries no channels;
- a constant operand on a channel axis (a bias, a layer-scale, a PRelu slope) is a
  member of the group, with the role ``shift`` (Add, Sub), ``scale`` (Mul) or
  ``param`` (anything else).
"""

from __future__ import annotations

import onnx_ir as ir

from spa_opt.passes.coupling.node import NodeCoupling
from spa_opt.passes.rules.registry import rule

UNARY = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot",
    "Ceil", "Celu", "Cos", "Cosh", "Elu", "Erf", "Exp",
    "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu",
    "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu",
    "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt",
    "Swish", "Tan", "Tanh", "ThresholdedRelu",
)

BROADCASTING = (
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal",
    "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod",
    "Mul", "Or", "Pow", "PRelu", "Sub", "Sum", "Where", "Xor",
    "Clip",
)

_ROLE_OF_CONSTANT = {"Add": "shift", "Sub": "shift", "Mul": "scale"}


def link_all_axes(c: NodeCoupling, source: ir.Value | None, target: ir.Value | None) -> None:
    """Couple every axis of ``source`` with the same axis of ``target``."""
    dims = c.dims(source)
    if dims is None or source is None:
        return
    for axis in range(len(dims)):
        c.identity(source, axis, target, axis)


def broadcast_into(c: NodeCoupling, operand: ir.Value | None, target: ir.Value | None) -> bool:
    """Couple ``operand`` with ``target`` under numpy broadcasting; True if any axis linked."""
    operand_dims, target_dims = c.dims(operand), c.dims(target)
    if operand is None or operand_dims is None or target_dims is None:
        return False
    offset = len(target_dims) - len(operand_dims)
    linked = False
    for axis, size in enumerate(operand_dims):
        target_axis = axis + offset
        if target_axis < 0:
            return linked
        if size == 1 and target_dims[target_axis] != 1:
            continue  # broadcast: one value for every channel
        c.identity(operand, axis, target, target_axis)
        linked = True
    return linked


@rule(*UNARY)
def unary(c: NodeCoupling) -> None:
    """Every axis passes through."""
    link_all_axes(c, c.input(0), c.output(0))


@rule("Cast")
def cast(c: NodeCoupling) -> None:
    """Every axis passes through; a Cast of a weight (bf16 storage read as float) is it."""
    link_all_axes(c, c.input(0), c.output(0))
    if c.is_constant(c.input(0)):
        c.stores(c.input(0), c.output(0))


@rule("CastLike")
def cast_like(c: NodeCoupling) -> None:
    """Like Cast; the second input only lends its type."""
    link_all_axes(c, c.input(0), c.output(0))
    for axis in c.tracked(c.input(1)):
        c.consume(c.input(1), axis)


@rule("Dropout")
def dropout(c: NodeCoupling) -> None:
    """Data and mask outputs both follow the input."""
    link_all_axes(c, c.input(0), c.output(0))
    link_all_axes(c, c.input(0), c.output(1))


@rule(*BROADCASTING)
def broadcasting(c: NodeCoupling) -> None:
    """Inputs align from the right; constants on a channel axis are group members."""
    broadcast_with_constants(c, _ROLE_OF_CONSTANT.get(c.node.op_type, "param"))


def broadcast_with_constants(c: NodeCoupling, role: str) -> None:
    """Align every input with the output from the right; constants become members.

    A constant input's non-1 axes are members with ``role``, which says how removal
    treats them: a ``shift`` is added, a ``scale`` multiplies, a plain ``param`` is sliced.
    """
    out = c.output(0)
    for operand in c.node.inputs:
        if operand is None or not broadcast_into(c, operand, out):
            continue
        if c.is_constant(operand):
            for axis, size in enumerate(c.dims(operand) or ()):
                if size != 1:
                    c.role(operand, axis, role)
