"""Convolutions: output channels are produced, input channels are consumed.

Rules, for ``X [N, C, ...]``, ``W [M, C/g, ...]``, ``B [M]``, ``Y [N, M, ...]``:

- ``group == 1``: ``W[m]`` and ``B[m]`` produce ``Y[:, m]`` (a source, role ``out``);
  ``X[:, c]`` is consumed by ``W[:, c]`` (a source, role ``in``). Channels stop here;
- depthwise (one input channel per group): a group's input channel, its output
  channels (the channel multiplier) and their weight rows go together, so the unit
  is a whole group, and the group count is patched;
- grouped with several input channels per group (AlexNet, ResNeXt, ShuffleNet): the
  groups must stay equal, so a unit is the same position inside every group: input
  position ``i`` of every group is consumed by ``W[:, i]``, output position ``o`` of
  every group is produced by the ``W`` rows at ``o`` in each group. The group count
  stays;
- ConvTranspose is the same with ``W [C, M/g, ...]``: ``W[c]`` consumes input channel
  ``c`` and ``W[:, m]`` produces output channel ``m``;
- spatial axes never carry channels (a channel axis that reaches one is pinned).
"""

from __future__ import annotations

import numpy as np

from spa_opt.passes.coupling.node import NodeCoupling
from spa_opt.passes.rules.registry import rule


def _grouped(c: NodeCoupling, weight_out_axis: int, weight_in_axis: int) -> None:
    data, weight, bias, out = c.input(0), c.input(1), c.input(2), c.output(0)
    c.identity(data, 0, out, 0)
    c.link(bias, 0, out, 1)
    c.role(bias, 0, "out")
    groups = c.attr("group", 1)
    in_dims, out_dims = c.dims(data), c.dims(out)
    if groups == 1:
        c.link(weight, weight_out_axis, out, 1)
        c.link(weight, weight_in_axis, data, 1)
        c.seed(weight, weight_out_axis, "out")
        c.seed(weight, weight_in_axis, "in")
        return
    c.seed(out, 1)
    c.seed(data, 1)
    if weight_out_axis == 0:
        c.link(weight, 0, out, 1)
        c.role(weight, 0, "out")
    else:  # ConvTranspose: W's first axis follows the input channels
        c.link(weight, 0, data, 1)
        c.role(weight, 0, "in")
    if in_dims is None or out_dims is None or in_dims[1] is None or out_dims[1] is None:
        c.pin_tracked(data, "grouped convolution with channel counts unknown")
        c.pin_tracked(out, "grouped convolution with channel counts unknown")
        return
    per_group_in, per_group_out = in_dims[1] // groups, out_dims[1] // groups
    if per_group_in == 1:  # depthwise: a whole group is one unit
        c.link(data, 1, out, 1, np.arange(in_dims[1]), np.arange(out_dims[1]) // per_group_out)
        c.patch("group", f"group={groups}", out, 1)
        return
    in_slot = np.arange(in_dims[1]) % per_group_in
    out_slot = np.arange(out_dims[1]) % per_group_out
    c.link(data, 1, data, 1, in_slot, in_slot)
    c.link(out, 1, out, 1, out_slot, out_slot)
    if weight_out_axis == 0:  # Conv: W[:, i] consumes slot i of every input group
        c.link(data, 1, weight, 1, keys_a=in_slot)
        c.role(weight, 1, "in")
    else:  # ConvTranspose: W[:, o] produces slot o of every output group
        c.link(out, 1, weight, 1, keys_a=out_slot)
        c.role(weight, 1, "out")


@rule("Conv")
def conv(c: NodeCoupling) -> None:
    """``W[m]`` produces output channel ``m``; ``W[:, c]`` consumes input channel ``c``."""
    _grouped(c, weight_out_axis=0, weight_in_axis=1)


@rule("ConvTranspose")
def conv_transpose(c: NodeCoupling) -> None:
    """``W[:, m]`` produces output channel ``m``; ``W[c]`` consumes input channel ``c``."""
    _grouped(c, weight_out_axis=1, weight_in_axis=0)
