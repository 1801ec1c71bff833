"""Elementwise and logical operators (NumPy broadcasting, as torch does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spa_opt.autodiff.ops.registry import NodeCall, rule, torch_dtype

_BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}
_UNARY = {
    "Abs": torch.abs, "Neg": torch.neg, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log,
    "Reciprocal": torch.reciprocal, "Erf": torch.erf, "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Sin": torch.sin, "Cos": torch.cos,
    "Tan": torch.tan, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Not": torch.logical_not, "IsNaN": torch.isnan, "Softsign": F.softsign,
    "Mish": F.mish, "Atan": torch.atan, "Asin": torch.asin, "Acos": torch.acos,
    "Sinh": torch.sinh, "Cosh": torch.cosh,
}


def _binary(call: NodeCall, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if call.op_type == "Pow" and not b.is_floating_point() and a.is_floating_point():
        b = b.to(a.dtype)
    return _BINARY[call.op_type](a, b)


def _unary(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return _UNARY[call.op_type](x)


for _name in _BINARY:
    rule(_name)(_binary)
for _name in _UNARY:
    rule(_name)(_unary)


@rule("Div")
def _div(call: NodeCall, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


@rule("Mod")
def _mod(call: NodeCall, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.fmod(a, b) if call.int("fmod", 0) else torch.remainder(a, b)


@rule("Max", "Min", "Sum", "Mean")
def _variadic(call: NodeCall, *xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = {"Max": torch.maximum, "Min": torch.minimum}.get(call.op_type, torch.add)(out, x)
    return out / len(xs) if call.op_type == "Mean" else out


@rule("Identity", "Dropout")
def _identity(call: NodeCall, x: torch.Tensor, *rest: torch.Tensor | None) -> torch.Tensor:
    if call.op_type == "Dropout" and call.training:
        ratio = float(rest[0]) if rest and rest[0] is not None else call.float("ratio", 0.5)
        return F.dropout(x, ratio, training=True)
    return x


@rule("Cast")
def _cast(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return x.to(torch_dtype(call.int("to"), call))


@rule("CastLike")
def _cast_like(call: NodeCall, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype)


@rule("Where")
def _where(call: NodeCall, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(cond, a, b)


@rule("IsInf")
def _isinf(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    positive, negative = call.int("detect_positive", 1), call.int("detect_negative", 1)
    return (torch.isposinf(x) & bool(positive)) | (torch.isneginf(x) & bool(negative))


@rule("Clip")
def _clip(call: NodeCall, x: torch.Tensor, low: torch.Tensor | None = None,
          high: torch.Tensor | None = None) -> torch.Tensor:
    low_value = call.float("min") if low is None else low
    high_value = call.float("max") if high is None else high
    if isinstance(low_value, torch.Tensor):
        low_value = low_value.to(x.dtype)
    if isinstance(high_value, torch.Tensor):
        high_value = high_value.to(x.dtype)
    return torch.clamp(x, low_value, high_value)


@rule("LeakyRelu")
def _leaky_relu(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, call.float("alpha", 0.01))


@rule("Elu", "Celu")
def _elu(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    alpha = call.float("alpha", 1.0)
    return F.elu(x, alpha) if call.op_type == "Elu" else F.celu(x, alpha)


@rule("Selu")
def _selu(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    alpha, gamma = call.float("alpha", 1.67326319217681884765625), call.float(
        "gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@rule("Softplus")
def _softplus(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x)


@rule("HardSigmoid")
def _hard_sigmoid(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(call.float("alpha", 0.2) * x + call.float("beta", 0.5), 0.0, 1.0)


@rule("HardSwish")
def _hard_swish(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return F.hardswish(x)


@rule("Gelu")
def _gelu(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate=call.string("approximate", "none"))


@rule("PRelu")
def _prelu(call: NodeCall, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, x * slope)


@rule("ThresholdedRelu")
def _thresholded_relu(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > call.float("alpha", 1.0), x, torch.zeros_like(x))
