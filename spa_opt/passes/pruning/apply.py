"""Carry out a removal on the graph: weights, patched counts, shapes.

Steps, each reading the same :class:`~spa_opt.passes.pruning.removal.Removal`:

1. every weight (initializer or ``Constant``) with removed positions is sliced once,
   along all its pruned axes, lazily: the slice of a memory-mapped tensor is read
   only when the model is saved or run, one tensor at a time;
2. every recorded patch is rewritten (:mod:`~spa_opt.passes.pruning.patches`);
3. the shapes the model declares for pruned values get their new lengths; values
   without a declared shape stay without one, so no stale shape is saved.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

from spa_opt.ir.tensors import NameAllocator, constant_tensor, lazy_take, set_constant
from spa_opt.passes.coupling.node import Patch
from spa_opt.passes.pruning.patches import apply_patches
from spa_opt.passes.pruning.removal import Removal


def slice_weights(removal: Removal) -> int:
    """Slice every constant tensor with removed positions; the number sliced."""
    sliced = 0
    for value, axes in removal.by_value().values():
        tensor = constant_tensor(value)
        if tensor is None:
            continue  # a ConstantOfShape: its shape entry is patched instead
        for found in axes:
            tensor = lazy_take(tensor, found.kept, found.axis)
        set_constant(value, tensor)
        sliced += 1
    return sliced


def set_new_shapes(removal: Removal) -> None:
    """Give every declared shape of a pruned value its new axis lengths."""
    for value, _ in removal.by_value().values():
        if value.const_value is not None:
            value.shape = ir.Shape(value.const_value.shape)
        elif value.shape is not None:
            value.shape = ir.Shape(removal.new_dims(value))


def apply_removal(graph: ir.Graph, removal: Removal, patches: Iterable[Patch]) -> dict[str, int]:
    """Steps 1 and 2 of the module docstring; counts for the pass statistics."""
    names = NameAllocator(graph)
    weights = slice_weights(removal)
    patched = apply_patches(patches, removal, names)
    return {"weights-sliced": weights, "nodes-patched": patched}
