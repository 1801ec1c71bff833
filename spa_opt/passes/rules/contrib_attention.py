"""Fused attention: onnxruntime's ``com.microsoft`` kernels and ONNX opset-23 Attention.

A head is a whole unit everywhere: its query, key and value columns of a packed
projection (and their bias entries), its slice of the output, its row of a cache. A
head's positions share one key, so the within-head dims (the head size, derived by the
kernels from ``hidden / num_heads``; the rotary pairs inside it) are never split, and
an axis that is the head dim of a 4-D tensor is pinned. For grouped-query attention the
unit is one kv head together with its group of ``num_heads / kv_num_heads`` query
heads; pruning query heads evenly inside every group is not offered (it would need a
second, finer unit on the same axes, and kernels require equal groups anyway). Every
head-count attribute the node carries is rewritten by the ``head-counts`` patch from
the new axis length; ``qkv_hidden_sizes`` by ``qkv-hidden-sizes``.

Rules (``N`` heads of size ``H``, ``G`` kv heads, ``r = N / G``):

- ``com.microsoft::Attention(input [B,S,C], weights [C, q+k+v], bias [q+k+v],
  mask_index, past [2,B,N,P,H], attention_bias [B|1,N,S,T])``: ``weights[:, c]``
  consumes ``input[..., c]`` (role ``in``); column ``j`` of section ``q``/``k``/``v``
  belongs to head ``j // H_section`` (role ``out``, bias likewise), output channel
  ``j`` to head ``j // H_v``; ``past``/``present`` axis 2 and ``attention_bias``
  axis 1 are head ``n``;
- ``com.microsoft::MultiHeadAttention(query, key, value, bias, key_padding_mask,
  attention_bias, past_key, past_value)``: 3-D query/key/value channels are heads in
  blocks of their head size, 4-D key/value ``[B,N,L,H]`` and caches ``[B,N,P,H]``
  carry heads on axis 1, a packed query ``[B,S,N,3,H]`` or packed key/value
  ``[B,L,N,2,H]`` on axis 2; the bias is three sections like Attention's;
- ``com.microsoft::GroupQueryAttention(query, key, value, past_key, past_value, ...,
  cos_cache, sin_cache)``: query channel ``j`` is unit ``j // H // r``, key/value
  channel ``j`` unit ``j // H``; a packed query (no key) holds the three sections;
  caches ``[B,G,P,H]`` carry unit ``g`` on axis 1; ``head_sink [N]`` (one logit per
  query head) entry ``n`` is unit ``n // r``; cos/sin caches and the fused q/k norm
  weights ``[H]`` have no channels; per-channel scales of a quantized cache pin the node;
- ``Attention`` (ONNX, opset 23/24): 4-D ``Q [B,Nq,S,H]``, ``K``/``V [B,Nkv,L,H]``
  carry units ``n // r`` / ``n`` on axis 1; 3-D inputs (``q_num_heads``,
  ``kv_num_heads``) carry them in blocks of the head size, as GQA; ``attn_mask``
  with a head axis follows the query heads, ``qk_matmul_output`` too;
- ``RotaryEmbedding`` (``com.microsoft`` and ONNX): every axis passes through; on a
  3-D input a channel is head ``j // H`` (``H`` from ``num_heads``, or twice the cos
  cache's width when ``rotary_embedding_dim`` and ``num_heads`` are absent); a 4-D
  input keeps heads on axis 1 (``[B,N,S,H]``) and pins its head dim.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from spa_opt.passes.coupling.node import NodeCoupling
from spa_opt.passes.rules.elementwise import link_all_axes
from spa_opt.passes.rules.registry import rule

MS = "com.microsoft"
_WITHIN_HEAD = "the head dim of fused attention (the kernel derives it from the head count)"


def _blocks(size: int, head_size: int, group: int = 1) -> np.ndarray:
    """Keys of ``size`` channels in heads of ``head_size``, ``group`` heads per unit."""
    return np.arange(size) // head_size // group


def _sections(sizes: list[int], head_sizes: list[int], groups: list[int]) -> np.ndarray:
    """Keys of a packed axis: consecutive sections, each keyed by its heads."""
    return np.concatenate([_blocks(s, h, g) for s, h, g in zip(sizes, head_sizes, groups,
                                                                strict=True)])


def _last(c: NodeCoupling, value: ir.Value | None) -> int | None:
    dims = c.dims(value)
    return None if not dims else dims[-1]


def _pin_all(c: NodeCoupling, detail: str) -> None:
    for value in (*c.node.inputs, *c.node.outputs):
        c.pin_tracked(value, detail)


def _link_heads(c: NodeCoupling, value: ir.Value | None, axis: int, anchor: ir.Value,
                anchor_axis: int, anchor_keys: np.ndarray, units: int, group: int = 1,
                head_dim: int | None = None) -> None:
    """Link ``value[axis]`` (one entry per head, ``group`` heads per unit) to the anchor."""
    dims = c.dims(value)
    if value is None or dims is None or axis >= len(dims) or dims[axis] in (None, 1):
        return
    if dims[axis] != units * group:
        c.pin_tracked(value, f"a head axis of {dims[axis]} entries where {units * group} "
                             "heads were expected")
        return
    c.link(anchor, anchor_axis, value, axis, anchor_keys, np.arange(dims[axis]) // group)
    if head_dim is not None and head_dim in c.tracked(value):
        c.pin(value, head_dim, _WITHIN_HEAD)


def _batch_and_sequence(c: NodeCoupling, source: ir.Value | None, out: ir.Value | None) -> None:
    c.identity(source, 0, out, 0)
    c.identity(source, 1, out, 1)


# --------------------------------------------------------------- com.microsoft Attention
@rule("Attention", domain=MS)
def ms_attention(c: NodeCoupling) -> None:
    """Packed qkv projection with whole heads as units (see the module docstring)."""
    data, weight, bias, out = c.input(0), c.input(1), c.input(2), c.output(0)
    heads = int(c.attr("num_heads", 0))
    w_dims = c.dims(weight)
    if not heads or w_dims is None or len(w_dims) != 2 or w_dims[1] is None:
        _pin_all(c, "Attention with an unknown head count or projection width")
        return
    given = c.attr("qkv_hidden_sizes")
    sizes = [int(s) for s in given] if given else [w_dims[1] // 3] * 3
    if sum(sizes) != w_dims[1] or any(s % heads for s in sizes):
        _pin_all(c, "Attention whose qkv_hidden_sizes do not split into equal heads")
        return
    head_sizes = [s // heads for s in sizes]
    keys = _sections(sizes, head_sizes, [1, 1, 1])
    _batch_and_sequence(c, data, out)
    c.link(data, 2, weight, 0)
    c.seed(weight, 0, "in")
    c.seed(weight, 1, "out")
    c.link(weight, 1, bias, 0)
    c.role(bias, 0, "out")
    c.link(weight, 1, out, 2, keys, _blocks(sizes[2], head_sizes[2]))
    past, present = c.input(4), c.output(1)
    for cache in (past, present):
        _link_heads(c, cache, 2, weight, 1, keys, heads, head_dim=4)
    c.identity(past, 1, present, 1)
    _link_heads(c, c.input(5), 1, weight, 1, keys, heads)
    c.patch("head-counts", f"num_heads={heads}", out, 2)
    if given:
        c.patch("qkv-hidden-sizes", f"qkv_hidden_sizes={sizes}", weight, 1)


# ------------------------------------------------------------------- MultiHeadAttention
def _bias_sections(c: NodeCoupling, bias: ir.Value | None, sizes: list[int], heads: int,
                   anchors: list[tuple[ir.Value | None, int, np.ndarray]]) -> None:
    """A ``[q+k+v]`` bias: each section links to the tensor it is added to."""
    size = _last(c, bias)
    if bias is None or size is None:
        return
    if size != sum(sizes):
        c.pin_tracked(bias, "a packed bias whose sections do not match q, k and v")
        return
    keys = _sections(sizes, [s // heads for s in sizes], [1, 1, 1])
    section = np.repeat(np.arange(3), sizes)
    for index, (anchor, axis, anchor_keys) in enumerate(anchors):
        if anchor is None:  # a 4-D or absent key/value: these entries stay
            c.pin(bias, 0, "bias entries of a key or value given per head",
                  positions=np.flatnonzero(section == index).tolist())
            continue
        # keys >= 0 inside this section, -1 elsewhere: links one section only
        masked = np.where(section == index, keys, -1)
        c.link(bias, 0, anchor, axis, masked, anchor_keys)
    c.role(bias, 0, "shift")


@rule("MultiHeadAttention", domain=MS)
def multi_head_attention(c: NodeCoupling) -> None:
    """Separate, packed or cached q/k/v; heads are units (see the module docstring)."""
    query, key, value, out = c.input(0), c.input(1), c.input(2), c.output(0)
    heads = int(c.attr("num_heads", 0))
    q_dims, out_size = c.dims(query), _last(c, out)
    if not heads or q_dims is None or out_size is None or out_size % heads:
        _pin_all(c, "MultiHeadAttention with an unknown head count or width")
        return
    unit = np.arange(heads)
    _batch_and_sequence(c, query, out)
    out_keys = _blocks(out_size, out_size // heads)
    anchors: list[tuple[ir.Value | None, int, np.ndarray]] = []
    sizes: list[int] | None = None
    if len(q_dims) == 5:  # packed [B, S, N, 3, H] (no key, no value)
        c.link(query, 2, out, 2, unit, out_keys)
        if 4 in c.tracked(query):
            c.pin(query, 4, _WITHIN_HEAD)
    else:
        q_size = q_dims[-1]
        if q_size is None or q_size % heads:
            _pin_all(c, "MultiHeadAttention whose query width is not whole heads")
            return
        q_keys = _blocks(q_size, q_size // heads)
        c.link(query, 2, out, 2, q_keys, out_keys)
        sizes = [q_size, q_size, out_size]
        anchors.append((query, 2, q_keys))
    for index, tensor in ((1, key), (2, value)):
        dims = c.dims(tensor)
        anchors.append((None, 0, unit))
        if tensor is None or dims is None:
            continue
        if len(dims) == 3:
            size = dims[2]
            if size is None or size % heads:
                c.pin_tracked(tensor, "a key/value width that is not whole heads")
                continue
            keys = _blocks(size, size // heads)
            c.link(tensor, 2, out, 2, keys, out_keys)
            anchors[-1] = (tensor, 2, keys)
            if sizes:
                sizes[index] = size
        elif len(dims) == 4:  # [B, N, L, H] (cross attention with a cache)
            _link_heads(c, tensor, 1, out, 2, out_keys, heads, head_dim=3)
        elif len(dims) == 5:  # packed key/value [B, L, N, 2, H]
            _link_heads(c, tensor, 2, out, 2, out_keys, heads, head_dim=4)
    if sizes:
        _bias_sections(c, c.input(3), sizes, heads, anchors)
    else:
        c.pin_tracked(c.input(3), "a bias of a packed query")
    _link_heads(c, c.input(5), 1, out, 2, out_keys, heads)
    for cache in (c.input(6), c.input(7), c.output(1), c.output(2)):
        _link_heads(c, cache, 1, out, 2, out_keys, heads, head_dim=3)
    _link_heads(c, c.output(3), 1, out, 2, out_keys, heads)
    c.patch("head-counts", f"num_heads={heads}", out, 2)


# ------------------------------------------------------------------ GroupQueryAttention
@rule("GroupQueryAttention", domain=MS)
def group_query_attention(c: NodeCoupling) -> None:
    """A unit is one kv head and its query group (see the module docstring)."""
    query, key, value, out = c.input(0), c.input(1), c.input(2), c.output(0)
    heads, kv_heads = int(c.attr("num_heads", 0)), int(c.attr("kv_num_heads", 0))
    out_size = _last(c, out)
    if not heads or not kv_heads or heads % kv_heads or out_size is None or out_size % heads:
        _pin_all(c, "GroupQueryAttention with unknown or unequal head groups")
        return
    for scale in (c.input(12), c.input(13)):  # k_scale/v_scale of a quantized cache
        dims = c.dims(scale)
        if scale is not None and (dims is None or any(d != 1 for d in dims)):
            _pin_all(c, "GroupQueryAttention with per-channel cache scales")
            return
    head, rep = out_size // heads, heads // kv_heads
    out_keys = _blocks(out_size, head, rep)
    _batch_and_sequence(c, query, out)
    if key is None:  # packed [B, S, q + 2 * kv]
        q_keys = _sections([out_size, kv_heads * head, kv_heads * head], [head] * 3,
                           [rep, 1, 1])
        if _last(c, query) != q_keys.size:
            _pin_all(c, "a packed GroupQueryAttention input that is not q, k and v")
            return
        c.link(query, 2, out, 2, q_keys, out_keys)
    else:
        c.link(query, 2, out, 2, _blocks(_last(c, query) or 0, head, rep), out_keys)
        for tensor in (key, value):
            size = _last(c, tensor)
            if size != kv_heads * head:
                c.pin_tracked(tensor, "a key/value width that is not kv_num_heads heads")
                continue
            _batch_and_sequence(c, query, tensor)
            c.link(tensor, 2, out, 2, _blocks(size, head), out_keys)
    for cache in (c.input(3), c.input(4), c.output(1), c.output(2)):
        _link_heads(c, cache, 1, out, 2, out_keys, kv_heads, head_dim=3)
    _link_heads(c, c.input(10), 1, out, 2, out_keys, kv_heads, rep)  # attention_bias
    sink = c.input(11)  # head_sink [N]: one logit per query head
    _link_heads(c, sink, 0, out, 2, out_keys, kv_heads, rep)
    c.role(sink, 0, "param")
    _link_heads(c, c.output(3), 1, out, 2, out_keys, kv_heads, rep)  # output_qk
    for extra in (c.input(7), c.input(8)):  # cos/sin caches: positions, rotary pairs
        c.pin_tracked(extra, "a rotary cache (positions and rotary pairs, no heads)")
    c.patch("head-counts", f"num_heads={heads}, kv_num_heads={kv_heads}", out, 2)


# --------------------------------------------------------------- ONNX Attention (opset 23)
@rule("Attention")
def onnx_attention(c: NodeCoupling) -> None:
    """3-D or 4-D q/k/v, kv heads with their query groups as units."""
    query, key, value, out = c.input(0), c.input(1), c.input(2), c.output(0)
    q_dims, k_dims, out_dims = c.dims(query), c.dims(key), c.dims(out)
    if q_dims is None or k_dims is None or out_dims is None:
        _pin_all(c, "Attention with unknown ranks")
        return
    if len(q_dims) == 4:
        heads, kv_heads = q_dims[1] or 0, (k_dims[1] if len(k_dims) == 4 else None) or 0
    else:
        heads, kv_heads = int(c.attr("q_num_heads", 0)), int(c.attr("kv_num_heads", 0))
    if not heads or not kv_heads or heads % kv_heads:
        _pin_all(c, "Attention with unknown or unequal head groups")
        return
    if len(k_dims) != len(q_dims) or len(c.dims(value) or k_dims) != len(q_dims):
        _pin_all(c, "Attention whose q, k and v differ in rank")  # kernels refuse it too
        return
    rep = heads // kv_heads
    if len(q_dims) == 4:
        anchor_keys = np.arange(heads) // rep
        c.identity(query, 0, out, 0)
        c.identity(query, 2, out, 2)
        c.link(query, 1, out, 1, anchor_keys, anchor_keys)
        anchor, anchor_axis = out, 1
        for tensor in (query, out):
            if 3 in c.tracked(tensor):
                c.pin(tensor, 3, _WITHIN_HEAD)
        for tensor in (key, value):
            _link_heads(c, tensor, 1, out, 1, anchor_keys, kv_heads, head_dim=3)
    else:
        q_size, out_size = q_dims[-1], out_dims[-1]
        if q_size is None or out_size is None or q_size % heads or out_size % heads:
            _pin_all(c, "Attention whose 3-D widths are not whole heads")
            return
        anchor_keys = _blocks(out_size, out_size // heads, rep)
        anchor, anchor_axis = out, 2
        _batch_and_sequence(c, query, out)
        c.link(query, 2, out, 2, _blocks(q_size, q_size // heads, rep), anchor_keys)
        for tensor in (key, value):
            size = _last(c, tensor)
            if size is None or size % kv_heads:
                c.pin_tracked(tensor, "a key/value width that is not kv_num_heads heads")
                continue
            c.link(tensor, 2, out, 2, _blocks(size, size // kv_heads), anchor_keys)
        c.patch("head-counts", f"q_num_heads={heads}, kv_num_heads={kv_heads}", out, 2)
    _link_heads(c, c.input(3), 1, anchor, anchor_axis, anchor_keys, kv_heads, rep)  # mask
    for cache in (c.input(4), c.input(5), c.output(1), c.output(2)):
        _link_heads(c, cache, 1, anchor, anchor_axis, anchor_keys, kv_heads, head_dim=3)
    _link_heads(c, c.output(3), 1, anchor, anchor_axis, anchor_keys, kv_heads, rep)


# --------------------------------------------------------------------- RotaryEmbedding
def _rotary(c: NodeCoupling, data: ir.Value | None, cos: ir.Value | None,
            extras: tuple[ir.Value | None, ...]) -> None:
    out = c.output(0)
    dims = c.dims(data)
    if data is None or dims is None:
        return
    for extra in (cos, *extras):
        c.pin_tracked(extra, "a rotary cache or position ids (no channels)")
    if len(dims) == 4:  # [B, N, S, H]: heads pass, the rotary pairs stay
        link_all_axes(c, data, out)
        if 3 in c.tracked(data):
            c.pin(data, 3, "the head dim of a rotary embedding (rotary pairs)")
        return
    heads = int(c.attr("num_heads", 0))
    rotary_dim = int(c.attr("rotary_embedding_dim", 0))
    cos_dims = c.dims(cos)
    size = dims[-1]
    if heads:
        head = size // heads if size is not None and size % heads == 0 else None
    elif not rotary_dim and cos_dims and cos_dims[-1] is not None:
        head = 2 * cos_dims[-1]
    else:
        head = None
    link_all_axes(c, data, out)
    if len(dims) != 3 or size is None or head is None or size % head:
        if 2 in c.tracked(data):
            c.pin(data, 2, "a rotary embedding whose head size is unknown")
        return
    keys = _blocks(size, head)
    c.link(data, 2, data, 2, keys, keys)
    if heads:
        c.patch("head-counts", f"num_heads={heads}", out, 2)


@rule("RotaryEmbedding", domain=MS)
def ms_rotary_embedding(c: NodeCoupling) -> None:
    """``(input, position_ids, cos_cache, sin_cache)``: whole heads only."""
    _rotary(c, c.input(0), c.input(2), (c.input(1), c.input(3)))


@rule("RotaryEmbedding")
def onnx_rotary_embedding(c: NodeCoupling) -> None:
    """``(X, cos_cache, sin_cache, position_ids)`` (opset 23): whole heads only."""
    _rotary(c, c.input(0), c.input(1), (c.input(2), c.input(3)))
