"""Convolution, matrix products, normalisation and pooling.

ONNX pads are ``[x1_begin, x2_begin, ..., x1_end, x2_end]`` and may be asymmetric or
come from ``auto_pad``; torch's convolutions take one symmetric padding per axis, so
asymmetric padding is applied with ``F.pad`` first (``-inf`` for max pooling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spa_opt.autodiff.ops.registry import NodeCall, rule

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _window_pads(call: NodeCall, spatial: list[int], kernel: list[int], strides: list[int],
                 dilations: list[int]) -> tuple[list[int], list[int]]:
    """Begin and end pads per spatial axis, from ``pads`` or ``auto_pad``."""
    auto_pad = call.string("auto_pad", "NOTSET")
    n = len(spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=False):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else big)
            ends.append(big if auto_pad == "SAME_UPPER" else small)
        return begins, ends
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    pads = call.ints("pads", [0] * (2 * n))
    return pads[:n], pads[n:]


def _torch_pad(begins: list[int], ends: list[int]) -> list[int]:
    """ONNX begin/end pads in ``F.pad`` order (last axis first)."""
    order: list[int] = []
    for begin, end in zip(reversed(begins), reversed(ends), strict=False):
        order += [begin, end]
    return order


def _padded(x: torch.Tensor, begins: list[int], ends: list[int], value: float = 0.0
            ) -> tuple[torch.Tensor, list[int]]:
    """``x`` padded where torch cannot pad symmetrically, and the symmetric rest."""
    if begins == ends:
        return x, begins
    return F.pad(x, _torch_pad(begins, ends), value=value), [0] * len(begins)


@rule("Conv")
def _conv(call: NodeCall, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
          ) -> torch.Tensor:
    n = w.ndim - 2
    strides, dilations = call.ints("strides", [1] * n), call.ints("dilations", [1] * n)
    kernel = list(w.shape[2:])
    begins, ends = _window_pads(call, list(x.shape[2:]), kernel, strides, dilations)
    x, padding = _padded(x, begins, ends)
    return _CONV[n](x, w, b, strides, padding, dilations, call.int("group", 1))


@rule("ConvTranspose")
def _conv_transpose(call: NodeCall, x: torch.Tensor, w: torch.Tensor,
                    b: torch.Tensor | None = None) -> torch.Tensor:
    if call.ints("output_shape") is not None:
        raise NotImplementedError("ConvTranspose with output_shape")
    n = w.ndim - 2
    strides, dilations = call.ints("strides", [1] * n), call.ints("dilations", [1] * n)
    extra = call.ints("output_padding", [0] * n)
    pads = call.ints("pads", [0] * (2 * n))
    if call.string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise NotImplementedError("ConvTranspose with auto_pad SAME_*")
    y = _CONV_TRANSPOSE[n](x, w, None, strides, 0, 0, call.int("group", 1), dilations)
    if any(extra):
        y = F.pad(y, _torch_pad([0] * n, extra))
    crops = zip(pads[:n], pads[n:], y.shape[2:], strict=True)
    index = [slice(None), slice(None)] + [slice(b0, size - b1) for b0, b1, size in crops]
    y = y[tuple(index)]
    return y if b is None else y + b.reshape([1, -1] + [1] * n)


@rule("Gemm")
def _gemm(call: NodeCall, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None
          ) -> torch.Tensor:
    a = a.transpose(0, 1) if call.int("transA", 0) else a
    b = b.transpose(0, 1) if call.int("transB", 0) else b
    y = call.float("alpha", 1.0) * (a @ b)
    return y if c is None else y + call.float("beta", 1.0) * c


@rule("MatMul")
def _matmul(call: NodeCall, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


@rule("Einsum")
def _einsum(call: NodeCall, *xs: torch.Tensor) -> torch.Tensor:
    return torch.einsum(call.string("equation"), *xs)


@rule("BatchNormalization")
def _batch_norm(call: NodeCall, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Running statistics in eval mode; batch statistics (and a running update) in training."""
    eps, momentum = call.float("epsilon", 1e-5), call.float("momentum", 0.9)
    if call.training:
        # ONNX: running = running * momentum + batch * (1 - momentum); torch's momentum is
        # the weight of the batch. The buffers are updated in place.
        return F.batch_norm(x, mean, var, scale, shift, True, 1.0 - momentum, eps)
    return F.batch_norm(x, mean, var, scale, shift, False, 0.0, eps)


def _normalize(x: torch.Tensor, dims: list[int], eps: float) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


@rule("LayerNormalization")
def _layer_norm(call: NodeCall, x: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    axis = call.int("axis", -1) % x.ndim
    dims = list(range(axis, x.ndim))
    eps = call.float("epsilon", 1e-5)
    mean = x.mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt((x - mean).pow(2).mean(dim=dims, keepdim=True) + eps)
    y = (x - mean) * inv_std * scale
    return (y if bias is None else y + bias), mean, inv_std


@rule("RMSNormalization")
def _rms_norm(call: NodeCall, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    axis = call.int("axis", -1) % x.ndim
    dims = list(range(axis, x.ndim))
    return x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True)
                           + call.float("epsilon", 1e-5)) * scale


@rule("InstanceNormalization")
def _instance_norm(call: NodeCall, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
                   ) -> torch.Tensor:
    y = _normalize(x, list(range(2, x.ndim)), call.float("epsilon", 1e-5))
    shape = [1, -1] + [1] * (x.ndim - 2)
    return y * scale.reshape(shape) + shift.reshape(shape)


@rule("GroupNormalization")
def _group_norm(call: NodeCall, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
                ) -> torch.Tensor:
    groups, channels = call.int("num_groups"), x.shape[1]
    grouped = x.reshape(x.shape[0], groups, -1)
    y = _normalize(grouped, [2], call.float("epsilon", 1e-5)).reshape(x.shape)
    if scale.numel() == groups and groups != channels:  # opset 18: one scale per group
        scale = scale.repeat_interleave(channels // groups)
        shift = shift.repeat_interleave(channels // groups)
    shape = [1, -1] + [1] * (x.ndim - 2)
    return y * scale.reshape(shape) + shift.reshape(shape)


@rule("Softmax", "LogSoftmax")
def _softmax(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    fn = torch.softmax if call.op_type == "Softmax" else torch.log_softmax
    if call.opset >= 13:
        return fn(x, call.int("axis", -1))
    axis = call.int("axis", 1) % x.ndim  # before opset 13: softmax of the 2-D flattening
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)


def _pool_geometry(call: NodeCall, x: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    kernel = call.ints("kernel_shape")
    n = len(kernel)
    return kernel, call.ints("strides", [1] * n), call.ints("dilations", [1] * n)


@rule("MaxPool")
def _max_pool(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    kernel, strides, dilations = _pool_geometry(call, x)
    begins, ends = _window_pads(call, list(x.shape[2:]), kernel, strides, dilations)
    if begins != ends or any(2 * p > k for p, k in zip(begins, kernel, strict=False)):
        x, begins = F.pad(x, _torch_pad(begins, ends), value=float("-inf")), [0] * len(kernel)
    return _MAX_POOL[len(kernel)](x, kernel, strides, begins, dilations,
                                  bool(call.int("ceil_mode", 0)))


@rule("AveragePool")
def _average_pool(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    kernel, strides, dilations = _pool_geometry(call, x)
    if any(d != 1 for d in dilations):
        raise NotImplementedError("AveragePool with dilations")
    begins, ends = _window_pads(call, list(x.shape[2:]), kernel, strides, dilations)
    include_pad = bool(call.int("count_include_pad", 0))
    ceil_mode = bool(call.int("ceil_mode", 0))
    pool = _AVG_POOL[len(kernel)]
    if begins == ends and all(2 * p <= k for p, k in zip(begins, kernel, strict=False)):
        return pool(x, kernel, strides, begins, ceil_mode, include_pad)
    padded = F.pad(x, _torch_pad(begins, ends))
    mean = pool(padded, kernel, strides, 0, ceil_mode, True)
    if include_pad:
        return mean
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(begins, ends))
    return mean / pool(ones, kernel, strides, 0, ceil_mode, True)


@rule("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(call: NodeCall, x: torch.Tensor) -> torch.Tensor:
    dims = list(range(2, x.ndim))
    if call.op_type == "GlobalAveragePool":
        return x.mean(dim=dims, keepdim=True)
    return x.amax(dim=dims, keepdim=True)


@rule("Resize", "Upsample")
def _resize(call: NodeCall, x: torch.Tensor, *args: torch.Tensor | None) -> torch.Tensor:
    if call.op_type == "Upsample":
        scales, sizes = args[0], None
    else:
        scales = args[1] if len(args) > 1 else None
        sizes = args[2] if len(args) > 2 else None
    mode = call.string("mode", "nearest")
    transform = call.string("coordinate_transformation_mode",
                            "half_pixel" if call.op_type == "Resize" else "asymmetric")
    if sizes is not None and sizes.numel():
        size = [int(v) for v in sizes.tolist()[2:]]
    else:
        size = [math.floor(d * s) for d, s in zip(x.shape[2:], scales.tolist()[2:], strict=False)]
    if mode == "nearest":
        nearest = call.string("nearest_mode", "round_prefer_floor")
        if transform == "asymmetric" and nearest == "floor":
            return F.interpolate(x, size=size, mode="nearest")
        if transform in ("half_pixel", "pytorch_half_pixel") and nearest.startswith("round"):
            return F.interpolate(x, size=size, mode="nearest-exact")
        raise NotImplementedError(f"Resize nearest with {transform}/{nearest}")
    torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2] if mode == "linear" \
        else "bicubic"
    if transform == "align_corners":
        return F.interpolate(x, size=size, mode=torch_mode, align_corners=True)
    if transform in ("half_pixel", "pytorch_half_pixel"):
        return F.interpolate(x, size=size, mode=torch_mode, align_corners=False)
    raise NotImplementedError(f"Resize {mode} with {transform}")


@rule("Pad")
def _pad(call: NodeCall, x: torch.Tensor, pads: torch.Tensor | None = None,
         value: torch.Tensor | None = None, axes: torch.Tensor | None = None) -> torch.Tensor:
    pad_list = call.ints("pads") if pads is None else [int(v) for v in pads.tolist()]
    axis_list = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in axes.tolist()]
    n = len(axis_list)
    begins, ends = [0] * x.ndim, [0] * x.ndim
    for i, axis in enumerate(axis_list):
        begins[axis], ends[axis] = pad_list[i], pad_list[n + i]
    mode = call.string("mode", "constant")
    fill = call.float("value", 0.0) if value is None or value.numel() == 0 else float(value)
    if mode == "constant":
        return F.pad(x, _torch_pad(begins, ends), value=fill)
    first = next((i for i in range(x.ndim) if begins[i] or ends[i]), x.ndim)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return F.pad(x, _torch_pad(begins[first:], ends[first:])[: 2 * (x.ndim - first)],
                 mode=torch_mode)
