"""Normalizations: per-channel parameters travel with their channels.

Rules:

- BatchNormalization, InstanceNormalization: ``X[:, c]`` is ``Y[:, c]``; scale
  (role ``scale``), bias (role ``shift``), mean and variance (role ``param``) are
  members at position ``c``;
- LayerNormalization, RMSNormalization: every axis passes through; scale and bias
  align from the right with the normalized axes. Normalizing over a channel axis is
  allowed (it is how transformers' hidden size is pruned), and marked, because
  removing a channel there changes the others' values;
- LRN: channels pass through; its window over neighbouring channels normalizes;
- GroupNormalization: a group of channels is one unit (removing one channel would
  unbalance the groups), and ``num_groups`` is patched.
"""

from __future__ import annotations

import numpy as np

from spa_opt.passes.coupling.node import NodeCoupling
from spa_opt.passes.rules.elementwise import broadcast_into, link_all_axes
from spa_opt.passes.rules.layout import normalized
from spa_opt.passes.rules.registry import rule


@rule("BatchNormalization", "InstanceNormalization")
def per_channel(c: NodeCoupling) -> None:
    """Statistics and affine parameters are indexed by channel."""
    data, out = c.input(0), c.output(0)
    link_all_axes(c, data, out)
    for index, role in enumerate(("scale", "shift", "param", "param"), start=1):
        c.link(c.input(index), 0, data, 1)
        c.role(c.input(index), 0, role)
    for extra in c.node.outputs[1:]:  # training-mode running statistics
        c.link(extra, 0, data, 1)


@rule("LRN")
def local_response_norm(c: NodeCoupling) -> None:
    """Every axis passes through; the window over neighbouring channels normalizes."""
    link_all_axes(c, c.input(0), c.output(0))
    if 1 in c.tracked(c.input(0)):
        c.consume(c.input(0), 1, normalizes=True)


@rule("LayerNormalization", "RMSNormalization")
def layer_norm(c: NodeCoupling) -> None:
    """Normalized axes may carry channels; scale and bias align from the right."""
    data, out = c.input(0), c.output(0)
    dims = c.dims(data)
    if dims is None:
        return
    link_all_axes(c, data, out)
    first = normalized(c.attr("axis", -1), len(dims))
    for index, role in ((1, "scale"), (2, "shift")):
        parameter = c.input(index)
        if broadcast_into(c, parameter, out):
            for axis, size in enumerate(c.dims(parameter) or ()):
                if size != 1:
                    c.role(parameter, axis, role)
    for axis in range(first, len(dims)):
        if axis in c.tracked(data):
            c.consume(data, axis, normalizes=True)
    for extra in c.node.outputs[1:]:  # Mean and InvStdDev keep the outer axes
        for axis in range(first):
            c.identity(data, axis, extra, axis)


@rule("GroupNormalization")
def group_norm(c: NodeCoupling) -> None:
    """One unit per group; scale and bias follow channels (or groups, opset 18)."""
    data, out = c.input(0), c.output(0)
    link_all_axes(c, data, out)
    dims = c.dims(data)
    groups = c.attr("num_groups", 1)
    if dims is None or dims[1] is None:
        c.pin_tracked(data, "GroupNormalization with an unknown channel count")
        return
    channels = dims[1]
    group_of = np.arange(channels) // (channels // groups)
    c.link(data, 1, data, 1, group_of, group_of)
    c.consume(data, 1, normalizes=True)
    for index, role in ((1, "scale"), (2, "shift")):
        parameter = c.input(index)
        size = (c.dims(parameter) or (None,))[0]
        if size == channels:
            c.link(parameter, 0, data, 1)
        else:
            c.link(parameter, 0, data, 1, keys_b=group_of)
        c.role(parameter, 0, role)
    c.patch("num-groups", f"num_groups={groups}", data, 1)
