"""The inputs a decoder takes beside its token ids, built from the token ids alone.

A decoder exported with its key/value cache (optimum's ``text-generation-with-past``,
onnxruntime-genai, onnxruntime's fused GPT-2) has inputs no user wants to write into a
calibration file: the cache of every layer, the attention mask, the positions. Given
``input_ids`` of shape ``[batch, sequence]``, every input below that the user did not
give is built, so ``--calib`` windows of token ids alone are enough. Arrays the user
gives always win. Conventions, by input name (any case):

- ``past_key_values.N.key|value``, ``past_key_values_N_key``, ``past_N``, ``past_key``,
  ``past_value``, ``cache.*``, anything starting with ``past``: a float cache. Its
  past-length axis is the symbolic axis whose dim name holds ``past``, else the one
  whose name holds ``seq``, else axis ``-2`` (``[batch, heads, past, head_size]`` of
  optimum and genai; ``[2, batch, heads, past, head_size]`` of onnxruntime's GPT-2).
  Its batch axis is the symbolic axis named like ``input_ids``' axis 0, else the first
  symbolic axis that is not the past length. Calibration uses an empty cache (past
  length 0); ``past_length > 0`` fills it with seeded normal noise (``--verify`` does,
  so the cache path of the graph runs too). Other dims: declared, or from ``dims``.
- ``attention_mask``: ones, ``[batch, past + sequence]`` (static dims as declared).
- ``position_ids``: ``past, past + 1, ...`` for every batch row, ``[batch, sequence]``.
- ``cache_position``: ``past, ..., past + sequence - 1`` (rank 1).
- ``token_type_ids``: zeros, ``[batch, sequence]``.
- ``seqlens_k`` (onnxruntime's GroupQueryAttention): ``past + sequence - 1`` per row.
- ``total_sequence_length``: ``past + sequence``, a scalar or ``[1]``.

Anything else without data stays missing, and the caller says so in one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from spa_opt.errors import InputError
from spa_opt.inputs import InputSpec, format_dims, given_size

TOKEN_IDS = "input_ids"
"""The one input every built input is sized from."""

_PAST = re.compile(r"^(past|cache)", re.IGNORECASE)
_CACHE = re.compile(r"^(past|present|cache)", re.IGNORECASE)


def is_cache_name(name: str | None) -> bool:
    """Whether a graph input or output is, by its name, a key/value cache.

    ``past*``/``cache*`` inputs and ``present*`` outputs (optimum, onnxruntime-genai,
    onnxruntime's GPT-2): the tensors ``--io rewrite`` lets pruning reshape.
    """
    return bool(name) and _CACHE.match(name) is not None


def input_role(spec: InputSpec) -> str | None:
    """Which convention ``spec`` follows (``"past"``, ``"attention_mask"``, ...), or None."""
    name = spec.name.lower()
    if spec.kind == "float" and _PAST.match(name):
        return "past"
    if spec.kind not in ("int", "bool"):
        return None
    for role in ("attention_mask", "position_ids", "cache_position", "token_type_ids",
                 "seqlens_k", "total_sequence_length"):
        if name == role or name.endswith("." + role) or name.endswith("/" + role):
            return role
    return None


def buildable(inputs: Sequence[InputSpec]) -> set[str]:
    """Names of the inputs :func:`complete_feeds` can build (token ids must exist)."""
    if not any(i.name == TOKEN_IDS and len(i.declared) == 2 for i in inputs):
        return set()
    return {i.name for i in inputs if input_role(i) is not None}


def complete_feeds(inputs: Sequence[InputSpec], feeds: Mapping[str, np.ndarray],
                   dims: Mapping[str, int] | None = None, *, past_length: int = 0,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """``feeds`` with every missing conventional input built from ``input_ids``.

    Args:
        inputs: The model's inputs (:func:`spa_opt.inputs.model_inputs`).
        feeds: What there is: must hold ``input_ids`` ``[batch, sequence]`` for anything
            to be built; returned unchanged otherwise.
        dims: Sizes of other symbolic dims (``--input-dim``).
        past_length: Length of the cache fed in (0: empty, as calibration runs).
        seed: Seed of the cache's noise when ``past_length > 0``.

    Raises:
        InputError: A cache dim that is neither declared, nor given, nor a batch or
            past-length dim.
    """
    ids = feeds.get(TOKEN_IDS)
    if ids is None or ids.ndim != 2:
        return dict(feeds)
    dims = dict(dims or {})
    if not any(input_role(i) == "past" for i in inputs):
        past_length = 0  # an encoder, or a decoder without a cache: nothing is past
    batch, sequence = ids.shape
    total = past_length + sequence
    by_name = {i.name: i for i in inputs}
    id_spec = by_name.get(TOKEN_IDS)
    batch_name = id_spec.declared[0] if id_spec is not None and id_spec.declared else None
    rng = np.random.default_rng(seed)
    result = dict(feeds)
    for spec in inputs:
        role = input_role(spec)
        if spec.name in result or role is None:
            continue
        positions = np.arange(past_length, total, dtype=np.int64)
        if role == "past":
            shape = _cache_shape(spec, batch, batch_name, past_length, dims)
            data = rng.standard_normal(shape) if past_length else np.zeros(shape)
        elif role == "attention_mask":
            data = np.ones(_mask_shape(spec, batch, total))
        elif role == "position_ids":
            data = np.broadcast_to(positions, (batch, sequence))
        elif role == "cache_position":
            data = positions
        elif role == "token_type_ids":
            data = np.zeros((batch, sequence))
        elif role == "seqlens_k":
            data = np.full((batch,), total - 1)
        else:  # total_sequence_length
            data = np.array(total).reshape((1,) * len(spec.declared))
        result[spec.name] = np.array(data, dtype=spec.dtype)  # a copy, 0-d stays 0-d
    return result


def _mask_shape(spec: InputSpec, batch: int, total: int) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else (batch if axis == 0 else total)
                 for axis, d in enumerate(spec.declared))


def past_axis(spec: InputSpec) -> int:
    """The past-length axis of a cache input (see the module rules)."""
    names = [(axis, str(d).lower()) for axis, d in enumerate(spec.declared)
             if not isinstance(d, int) and d is not None]
    for word in ("past", "seq"):
        for axis, name in names:
            if word in name:
                return axis
    return len(spec.declared) - 2


def _cache_shape(spec: InputSpec, batch: int, batch_name: object, past_length: int,
                 dims: Mapping[str, int]) -> tuple[int, ...]:
    past = past_axis(spec)
    symbolic = [axis for axis, d in enumerate(spec.declared) if not isinstance(d, int)]
    batch_axis = next((a for a in symbolic if a != past and batch_name is not None
                       and spec.declared[a] == batch_name),
                      next((a for a in symbolic if a != past), None))
    shape = []
    for axis, dim in enumerate(spec.declared):
        if axis == past:
            shape.append(dim if isinstance(dim, int) else past_length)
        elif axis == batch_axis:
            shape.append(batch)
        elif isinstance(dim, int):
            shape.append(dim)
        else:
            size = given_size(spec, axis, dims)
            if size is None:
                raise InputError(f"cache input '{spec.name}' {format_dims(spec.declared)} "
                                 f"dim {axis} is symbolic: give its size with "
                                 f"--input-dim {dim or f'{spec.name}:{axis}'}=N")
            shape.append(size)
    return tuple(shape)
