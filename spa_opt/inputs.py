"""A model's inputs: what they are, how big their symbolic dims are, what values fit them.

Every place that feeds a model data it did not get from the user (calibration files and
image folders, noise and synthesized calibration, ``--verify``'s random inputs) reads
the model's inputs through this module, so they all agree. Rules:

- The inputs are ``model.graph.inputs`` minus initializers, each with a float, integer
  or bool type and a declared shape (:func:`model_inputs`).
- A symbolic dim takes its size from ``dims`` (what ``--input-dim`` gives, carried in
  ``PipelineContext.input_dims``), keyed by ``"input:axis"`` first (``{"x:2": 224}``,
  for unnamed dims), then by dim name (``{"seq": 128}``); sizes are positive integers.
  Calibration inputs choose their own batch (axis 0) and refuse any other symbolic dim
  without a size; ``--verify``'s random inputs take size 1 for every symbolic dim
  ``dims`` leaves out, batch included (:func:`resolve_shape`).
- Image layout of a rank-4 shape: NCHW when dim 1 is 1 or 3, else NHWC when the last
  dim is 1 or 3, else none (:func:`image_layout`, axes in :data:`LAYOUT_AXES`).
- Per-channel ``mean``/``std`` hold one value per channel of the image axis, or one for
  all; non-image inputs take one value only (:func:`per_channel_values`).
- Integer inputs that index an embedding hold ids in ``[0, rows)``: the rows of the
  smallest table a ``Gather`` reads them from, directly or through ops that keep the
  values (Cast, Reshape, ...; a table of unknown size counts as 2 rows), else ``[0, 2)``
  (masks, flags); never past what the input's dtype holds (:func:`token_id_bound`).
  Noise calibration and ``--verify`` draw ids from the same bound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError

InputKind = Literal["float", "int", "bool"]
Layout = Literal["NCHW", "NHWC"]

LAYOUT_AXES: dict[Layout, tuple[int, int, int]] = {"NCHW": (1, 2, 3), "NHWC": (3, 1, 2)}
"""Channel, height and width axes of each image layout."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input as generated and loaded data see it.

    Attributes:
        value: The graph input itself, to follow its uses (see :func:`token_id_bound`).
        name: The input's name, the key of its feed.
        dtype: Its numpy dtype, the one feeds are cast to.
        kind: ``"float"``, ``"int"`` or ``"bool"``: which values make sense.
        declared: The declared dims: ints, dim names, or None for unnamed symbolic dims.
    """

    value: ir.Value
    name: str
    dtype: np.dtype
    kind: InputKind
    declared: tuple[int | str | None, ...]


def model_inputs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (initializers excluded), in graph order.

    Raises:
        InputError: An input's type is not float, integer or bool, or it has no shape:
            no data can be made or checked for it.
    """
    initializers = set(model.graph.initializers)
    found = []
    for value in model.graph.inputs:
        if value.name in initializers:
            continue
        dtype = value.dtype
        kind = None if dtype is None else _kind(dtype)
        if dtype is None or kind is None or value.shape is None:
            raise InputError(f"input '{value.name}' has type {dtype and dtype.name} and shape "
                             f"{value.shape}: calibration and generated inputs need float, "
                             "integer or bool and a declared shape")
        declared = tuple(d if isinstance(d, int) else d.value for d in value.shape)
        found.append(InputSpec(value, value.name, np.dtype(dtype.numpy()), kind, declared))
    return found


def _kind(dtype: ir.DataType) -> InputKind | None:
    if dtype.is_floating_point():
        return "float"
    if dtype == ir.DataType.BOOL:
        return "bool"
    return "int" if dtype.is_integer() else None


def format_dims(declared: Sequence[int | str | None]) -> str:
    """Declared dims as error messages show them: ``[n, 3, ?, ?]``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in declared) + "]"


def given_size(spec: InputSpec, axis: int, dims: Mapping[str, int]) -> int | None:
    """The size of ``axis``: declared, or from ``dims`` ("input:axis" first, then name).

    Raises:
        InputError: ``dims`` gives a size that is not a positive integer.
    """
    dim = spec.declared[axis]
    if isinstance(dim, int):
        return dim
    size = dims.get(f"{spec.name}:{axis}", dims.get(dim) if dim else None)
    if size is not None and (not isinstance(size, int | np.integer) or size < 1):
        raise InputError(f"dims: size of input '{spec.name}' dim {axis} must be a positive "
                         f"integer, got {size!r}")
    return None if size is None else int(size)


def required_size(spec: InputSpec, axis: int, dims: Mapping[str, int]) -> int:
    """The size of ``axis``, which must be declared or given.

    Raises:
        InputError: The dim is symbolic and ``dims`` has no size for it; the message
            names the key to give.
    """
    size = given_size(spec, axis, dims)
    if size is None:
        key = spec.declared[axis] or f"{spec.name}:{axis}"
        raise InputError(f"input '{spec.name}' {format_dims(spec.declared)} dim {axis} is "
                         f"symbolic: give its size with dims={{'{key}': N}}")
    return size


def resolve_shape(spec: InputSpec, dims: Mapping[str, int], *, batch: int | None = None,
                  default: int | None = None) -> tuple[int, ...]:
    """The concrete shape of data for ``spec``.

    Args:
        spec: The input.
        dims: Sizes of symbolic dims, by name or ``"input:axis"``.
        batch: Size of axis 0 whatever is declared (calibration stacks its samples
            there); None: axis 0 is resolved like the others.
        default: Size of a symbolic dim ``dims`` leaves out (``--verify`` uses 1); None:
            such a dim is an error.

    Raises:
        InputError: A symbolic dim without a size, or a bad size in ``dims``.
    """
    if not spec.declared:
        return ()
    shape = []
    for axis in range(len(spec.declared)):
        if axis == 0 and batch is not None:
            shape.append(batch)
        elif default is None:
            shape.append(required_size(spec, axis, dims))
        else:
            size = given_size(spec, axis, dims)
            shape.append(default if size is None else size)
    return tuple(shape)


def image_layout(shape: Sequence[int | None]) -> Layout | None:
    """NCHW or NHWC for a rank-4 shape whose channel dim is 1 or 3, else None.

    Image folders, pink noise and the synthesis image prior need the channel axis;
    grey (1) and RGB (3) are the only channel counts that tell it apart from H or W.
    """
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3):
        return "NCHW"
    return "NHWC" if shape[3] in (1, 3) else None


def per_channel_values(values: Sequence[float], channels: int, what: str, name: str,
                       image: bool) -> np.ndarray:
    """``values`` (a ``mean`` or ``std``) as ``channels`` float32 numbers.

    One value broadcasts to every channel; otherwise there must be one per channel of
    an image input, so a list meant for another model fails loudly.

    Raises:
        InputError: The wrong number of values, a non-finite value, or a std <= 0.
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size not in (1, channels):
        hint = f"it has {channels} channels" if image else "it is not an image"
        raise InputError(f"{what} has {array.size} values for input '{name}': {hint}, give "
                         f"{'1 or ' + str(channels) if image and channels > 1 else '1'}")
    if not np.isfinite(array).all() or (what == "std" and (array <= 0).any()):
        raise InputError(f"{what} must be finite{' and positive' if what == 'std' else ''}, "
                         f"got {array.tolist()}")
    return np.broadcast_to(array, (channels,)).astype(np.float32)


ID_PRESERVING_OPS = frozenset({"Cast", "Identity", "Reshape", "Flatten", "Squeeze",
                               "Unsqueeze", "Transpose", "Expand", "Slice", "Tile"})
"""Ops that pass ids through unchanged on their first input, on the way to an embedding."""


def token_id_bound(value: ir.Value) -> int:
    """Exclusive upper bound of valid ids for an integer input ``value``.

    The rows of the smallest embedding table a ``Gather`` reads the ids from, followed
    through :data:`ID_PRESERVING_OPS`: exported models often cast or flatten ids first,
    and an id past the table makes onnxruntime fail. A table of unknown size counts as
    2 rows, and without any ``Gather``, 2: the input is taken for a mask or flag. The
    bound never exceeds what the value's dtype holds (2 for types numpy has no integer
    range for, such as int4).
    """
    bounds, stack, visited = [], [value], set()
    while stack:
        current = stack.pop()
        if id(current) in visited:
            continue
        visited.add(id(current))
        for node, position in current.uses():
            if node.op_type == "Gather" and position == 1:
                bounds.append(_gather_rows(node))
            elif node.op_type in ID_PRESERVING_OPS and position == 0 and node.outputs:
                stack.append(node.outputs[0])
    bound = min(bounds, default=2)
    if value.dtype is not None:
        dtype = np.dtype(value.dtype.numpy())
        bound = min(bound, int(np.iinfo(dtype).max) + 1 if dtype.kind in "iu" else 2)
    return max(1, bound)


def _gather_rows(node: ir.Node) -> int:
    """Size of the gathered axis of a ``Gather``'s table; 2 when not static (ids 0, 1)."""
    table = node.inputs[0]
    if table is None or table.shape is None:
        return 2
    dim = table.shape[node.attributes.get_int("axis", 0)]
    return dim if isinstance(dim, int) else 2
