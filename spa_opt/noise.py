"""Calibration inputs made from the model alone: noise images, token ids, masks.

The rules for float inputs (white and pink noise, per-channel ``mean`` and ``std``),
integer inputs (uniform ids below :func:`spa_opt.inputs.token_id_bound`, the bound
``--verify`` uses too) and bool inputs are listed in :mod:`spa_opt.calibration`; shapes,
symbolic dims and layouts follow :mod:`spa_opt.inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx_ir as ir

from spa_opt.calibration import Calibration
from spa_opt.decoder_inputs import buildable
from spa_opt.errors import InputError
from spa_opt.inputs import (
    LAYOUT_AXES,
    InputSpec,
    image_layout,
    model_inputs,
    per_channel_values,
    resolve_shape,
    token_id_bound,
)


def noise_calibration(model: ir.Model, samples: int, *, kind: Literal["white", "pink"] = "pink",
                      mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                      seed: int = 0, dims: Mapping[str, int] | None = None,
                      exponent: float | tuple[float, float] = 1.0) -> Calibration:
    """Synthetic calibration inputs, for when no data is at hand.

    Pink noise is the default because natural images have a roughly 1/f amplitude
    spectrum: activations from it are closer to real ones than from white noise.

    Args:
        model: The model the inputs are for.
        samples: Samples along axis 0.
        kind: ``"pink"`` or ``"white"``; see the module rules.
        mean: Per-channel mean of the float noise (one value for all).
        std: Per-channel std of the float noise (one value for all).
        seed: Seed of ``numpy.random.default_rng``.
        dims: Sizes of symbolic dims other than the batch, by name or ``"input:axis"``.
        exponent: Pink noise amplitude falls as ``1/f^exponent`` (1: pink, the spectrum of
            natural images; larger: smoother); a ``(low, high)`` pair draws each sample's
            exponent uniformly from that range, a mixture of smoothness levels.

    Raises:
        InputError: Bad ``samples``/``kind``/``mean``/``std``, or a size not given.
    """
    if samples < 1:
        raise InputError(f"calibration samples must be at least 1, got {samples}")
    if kind not in ("white", "pink"):
        raise InputError(f"noise kind must be 'white' or 'pink', got {kind!r}")
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    inputs = model_inputs(model)
    built = buildable(inputs)  # a cache, masks, positions: built per batch from the ids
    for inp in inputs:
        if inp.name in built:
            continue
        shape = resolve_shape(inp, dims, batch=samples)
        if inp.kind == "float":
            feeds[inp.name] = _float_noise(inp, shape, kind, mean, std, rng, exponent)
        elif inp.kind == "int":
            feeds[inp.name] = rng.integers(0, token_id_bound(inp.value), shape).astype(inp.dtype)
        else:
            feeds[inp.name] = np.ones(shape, dtype=bool)
    return Calibration(feeds, f"noise:{kind}", dims=dims)


def _float_noise(inp: InputSpec, shape: tuple[int, ...], kind: str, mean: Sequence[float],
                 std: Sequence[float], rng: np.random.Generator,
                 exponent: float | tuple[float, float] = 1.0) -> np.ndarray:
    layout = image_layout(shape)
    c_axis, h_axis, w_axis = LAYOUT_AXES[layout] if layout else (0, 0, 0)
    channels = shape[c_axis] if layout else 1
    shift = per_channel_values(mean, channels, "mean", inp.name, layout is not None)
    scale = per_channel_values(std, channels, "std", inp.name, layout is not None)
    if not shape:
        return np.asarray(rng.standard_normal() * scale[0] + shift[0], dtype=inp.dtype)
    if layout:  # drawn channels first, one sample at a time: no float64 copy of everything
        sample = (channels, shape[h_axis], shape[w_axis])
        shift, scale = shift[:, None, None], scale[:, None, None]
    else:
        sample, shift, scale = shape[1:], shift[0], scale[0]
    pink = kind == "pink" and layout is not None and sample[1] * sample[2] > 1
    if pink:
        freq = np.hypot(np.fft.fftfreq(sample[1])[:, None], np.fft.rfftfreq(sample[2])[None, :])
        base = np.maximum(freq, 1.0 / max(sample[1:]))
        low, high = exponent if isinstance(exponent, tuple) else (exponent, exponent)
    out = np.empty(shape, dtype=inp.dtype)
    for i in range(shape[0]):
        if pink:
            amplitude = base ** -(low if low == high else rng.uniform(low, high))
            phase = rng.uniform(0.0, 2 * np.pi, (channels, *amplitude.shape))
            field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=sample[1:])
            field -= field.mean(axis=(1, 2), keepdims=True)
            field /= np.maximum(field.std(axis=(1, 2), keepdims=True), 1e-12)
        else:
            field = rng.standard_normal(sample, dtype=np.float32)
        field = field * scale + shift
        out[i] = field.transpose(1, 2, 0) if layout == "NHWC" else field
    return out
