"""Fused attention ops pruned end to end and run, each against an exact reference.

``tests/test_rules_contrib.py`` checks the coupling of these ops; this file proves the
pruning. Each graph is small and laid out as the real toolchains write it
(onnxruntime's transformer optimizer, onnxruntime-genai's builder): q/k/v projections
as MatMuls (or one packed QKV MatMul), the attention op, an output projection, with
rotary embeddings, position ids and key/value caches where those toolchains use them.
It must pass onnx's checker and run in onnxruntime's CPU provider before it is pruned.

The reference is exact: ``l1,prune`` at ratio 0.5 removes some whole heads; the rows
of the output projection that survived (matched row by row, weights are random) name
the kept heads; the ORIGINAL model with the other rows zeroed must then give the
pruned model's outputs within 1e-5 (its caches sliced to the kept kv heads), and its
present caches, sliced, the pruned ones. A head pruned with the wrong q, k or v
columns, a wrong head count attribute or a cache row of another head fails that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa_opt

MS = "com.microsoft"
BATCH, SEQ, PAST = 1, 3, 2
HIDDEN, HEADS, KV_HEADS, HEAD = 16, 4, 2, 16
RNG = np.random.default_rng(15)
INT32, INT64 = TensorProto.INT32, TensorProto.INT64


def weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def io(name: str, *shape: int | str, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def op(kind: str, inputs: list[str], outputs: list[str] | str, **attrs) -> onnx.NodeProto:
    outputs = [outputs] if isinstance(outputs, str) else outputs
    return helper.make_node(kind, inputs, outputs, name=f"n_{outputs[0]}", **attrs)


def rotary_caches(width: int) -> list[onnx.TensorProto]:
    """cos/sin caches ``[max positions, width]`` as the builders store them."""
    angles = np.arange(16)[:, None] / 10000 ** (np.arange(width) / width)
    return [numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos_cache"),
            numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin_cache")]


def model(nodes: list, inputs: list, outputs: list, inits: list,
          opset: int = 23) -> onnx.ModelProto:
    """A checked model (onnx knows no com.microsoft schema; those nodes pass unchecked)."""
    graph = helper.make_graph(nodes, "attention", inputs, outputs, inits)
    proto = helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    onnx.checker.check_model(proto, full_check=True)
    return proto


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def initializer(proto: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == name))


def kept_rows(original: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    """Which rows of ``original`` the pruned weight kept (random rows are unique)."""
    found = [int(np.flatnonzero((original == row).all(axis=1))[0]) for row in pruned]
    assert found == sorted(found), "kept rows changed order"
    return np.array(found)


def attribute(proto: onnx.ModelProto, kind: str, name: str) -> list[int]:
    """``name`` of every ``kind`` node, in graph order."""
    return [helper.get_attribute_value(a) for n in proto.graph.node if n.op_type == kind
            for a in n.attribute if a.name == name]


@dataclass
class Case:
    """A graph, its feeds, and where its heads show.

    ``out_proj`` is the output projection, ``head`` its rows per query head, ``rep`` the
    query heads per kv head; ``caches``/``presents`` carry kv heads on ``cache_axis``; the nodes
    ``ignore`` names (an embedding, whose hidden width would go too) are not pruned.
    """

    proto: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    out_proj: str = "Wo"
    head: int = HEAD
    rep: int = 1
    caches: list[str] = field(default_factory=list)
    presents: list[str] = field(default_factory=list)
    cache_axis: int = 1
    ignore: list[str] = field(default_factory=list)


def prune_exactly(case: Case, io_policy: str = "keep") -> tuple[onnx.ModelProto, np.ndarray]:
    """Prune half the heads and compare with the zeroed original; the pruned model and
    the kept kv heads (units)."""
    run(case.proto, case.feeds)  # the original runs as built
    pruned_ir, report = spa_opt.optimize(case.proto, "couple,group,l1,prune", ratio=0.5,
                                         verify=1, io=io_policy, ignore=case.ignore)
    pruned = ir.to_proto(pruned_ir)
    before = initializer(case.proto, case.out_proj)
    rows = kept_rows(before, initializer(pruned, case.out_proj))
    heads = np.unique(rows // case.head)
    assert rows.tolist() == [h * case.head + i for h in heads for i in range(case.head)], \
        f"rows {rows.tolist()} are not whole heads"
    units = np.unique(heads // case.rep)
    assert heads.tolist() == [u * case.rep + i for u in units for i in range(case.rep)], \
        f"heads {heads.tolist()} are not whole kv groups"
    total = before.shape[0] // case.head // case.rep
    assert 0 < units.size < total, f"kept {units.size} of {total} units"
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(case.proto)
    data = before.copy()
    data[np.setdiff1d(np.arange(before.shape[0]), rows)] = 0
    target = next(i for i in zeroed.graph.initializer if i.name == case.out_proj)
    target.CopyFrom(numpy_helper.from_array(data, case.out_proj))
    want = run(zeroed, case.feeds)
    heads_of = (slice(None),) * case.cache_axis + (units,)
    feeds = {k: v[heads_of] if k in case.caches else v for k, v in case.feeds.items()}
    got = run(pruned, feeds)
    for name, value in want.items():
        expected = value[heads_of] if name in case.presents else value
        np.testing.assert_allclose(got[name], expected, atol=1e-5, err_msg=name)
    assert report.to_dict()["channels"]["removed"] > 0
    return pruned, units


def x_feed(seq: int = SEQ) -> np.ndarray:
    return RNG.standard_normal((BATCH, seq, HIDDEN)).astype(np.float32)


def cache_feed(heads: int) -> np.ndarray:
    return RNG.standard_normal((BATCH, heads, PAST, HEAD)).astype(np.float32)


def projections(widths: dict[str, int]) -> tuple[list, list]:
    """``x @ W{name}`` per name: nodes and weights."""
    nodes = [op("MatMul", ["x", f"W{n}"], n) for n in widths]
    return nodes, [weight(f"W{n}", HIDDEN, width) for n, width in widths.items()]


def cache_io(heads: int) -> tuple[list, list]:
    """``past_key``/``past_value`` inputs and their ``present_*`` outputs."""
    inputs = [io(f"past_{n}", "batch", heads, "past_sequence_length", HEAD)
              for n in ("key", "value")]
    outputs = [io(f"present_{n}", "batch", heads, "total_sequence_length", HEAD)
               for n in ("key", "value")]
    return inputs, outputs


X = io("x", "batch", "sequence_length", HIDDEN)
Y = io("y", "batch", "sequence_length", HIDDEN)
IDS = io("input_ids", "batch", "sequence_length", dtype=INT64)
VOCAB = 32


# ------------------------------------------------------- com.microsoft MultiHeadAttention
@pytest.mark.parametrize("cached", [False, True])
def test_multi_head_attention_loses_whole_heads(cached: bool) -> None:
    """The transformer optimizer's MultiHeadAttention: separate q/k/v MatMuls, their biases
    packed into input 3; with a cache (a decoder's self attention) heads reach it."""
    width = HEADS * HEAD
    nodes, inits = projections({"q": width, "k": width, "v": width})
    inputs, outputs = [X], [Y]
    extra, present = [], []
    if cached:
        inputs_, outputs_ = cache_io(HEADS)
        inputs += inputs_
        outputs += outputs_
        extra, present = ["", "", "past_key", "past_value"], ["present_key", "present_value"]
    nodes += [op("MultiHeadAttention", ["q", "k", "v", "qkv_bias", *extra], ["o", *present],
                 domain=MS, num_heads=HEADS),
              op("MatMul", ["o", "Wo"], "y")]
    inits += [weight("qkv_bias", 3 * width), weight("Wo", width, HIDDEN)]
    feeds = {"x": x_feed()}
    if cached:
        feeds |= {"past_key": cache_feed(HEADS), "past_value": cache_feed(HEADS)}
    case = Case(model(nodes, inputs, outputs, inits, opset=17), feeds,
                caches=["past_key", "past_value"], presents=present)
    pruned, units = prune_exactly(case, "rewrite" if cached else "keep")
    assert attribute(pruned, "MultiHeadAttention", "num_heads") == [units.size]
    assert initializer(pruned, "qkv_bias").shape == (3 * units.size * HEAD,)



def test_multi_head_attention_cross_attention_reads_its_heads_from_the_cache() -> None:
    """A decoder's cross attention: 4-D ``[B, N, L, H]`` key and value straight from the
    encoder's cache inputs (``past_*_cross``), which lose the removed heads."""
    width, names = HEADS * HEAD, ["past_key_cross", "past_value_cross"]
    nodes = [op("MatMul", ["x", "Wq"], "q"),
             op("MultiHeadAttention", ["q", *names], "o", domain=MS, num_heads=HEADS),
             op("MatMul", ["o", "Wo"], "y")]
    inputs = [X, *(io(n, "batch", HEADS, "encoder_sequence_length", HEAD) for n in names)]
    feeds = {"x": x_feed()} | {
        n: RNG.standard_normal((BATCH, HEADS, 5, HEAD)).astype(np.float32) for n in names}
    inits = [weight("Wq", HIDDEN, width), weight("Wo", width, HIDDEN)]
    case = Case(model(nodes, inputs, [Y], inits, opset=17), feeds, caches=names)
    pruned, units = prune_exactly(case, "rewrite")
    assert attribute(pruned, "MultiHeadAttention", "num_heads") == [units.size]


def test_ms_attention_with_past_loses_heads_in_its_cache() -> None:
    """GPT-2 as the transformer optimizer fuses it: packed qkv weight, causal, one
    ``past [2, B, N, P, H]`` cache per layer carrying heads on axis 2."""
    width = HEADS * HEAD
    nodes = [op("Attention", ["x", "W", "B", "", "past_0"], ["o", "present_0"], domain=MS,
                num_heads=HEADS, unidirectional=1), op("MatMul", ["o", "Wo"], "y")]
    inputs = [X, io("past_0", 2, "batch", HEADS, "past_sequence_length", HEAD)]
    outputs = [Y, io("present_0", 2, "batch", HEADS, "total_sequence_length", HEAD)]
    inits = [weight("W", HIDDEN, 3 * width), weight("B", 3 * width), weight("Wo", width, HIDDEN)]
    past = RNG.standard_normal((2, BATCH, HEADS, PAST, HEAD)).astype(np.float32)
    case = Case(model(nodes, inputs, outputs, inits, opset=17), {"x": x_feed(), "past_0": past},
                caches=["past_0"], presents=["present_0"], cache_axis=2)
    pruned, units = prune_exactly(case, "rewrite")
    assert attribute(pruned, "Attention", "num_heads") == [units.size]
    assert initializer(pruned, "W").shape == (HIDDEN, 3 * units.size * HEAD)

# ------------------------------------------------------ com.microsoft GroupQueryAttention
def gqa_feeds(seq: int = SEQ) -> dict[str, np.ndarray]:
    """A prompt continuing a cache of PAST positions, as onnxruntime-genai feeds it."""
    total = PAST + seq
    return {"input_ids": RNG.integers(0, VOCAB, (BATCH, seq)), "past_key": cache_feed(KV_HEADS),
            "past_value": cache_feed(KV_HEADS),
            "seqlens_k": np.full(BATCH, total - 1, np.int32),
            "total_sequence_length": np.array(total, np.int32)}


def gqa_case(query: list[str], nodes: list, inits: list, rotary: bool = False,
             extra_inputs: tuple = (), extra_feeds: dict | None = None,
             **attrs) -> Case:
    """onnxruntime-genai's layout: token ids, then GroupQueryAttention with caches,
    seqlens_k and the total length, rotary inside the kernel (``do_rotary``) or before it."""
    caches, presents = cache_io(KV_HEADS)
    inputs = [IDS, *caches, io("seqlens_k", "batch", dtype=INT32),
              io("total_sequence_length", dtype=INT32), *extra_inputs]
    gqa_inputs = [*query, "past_key", "past_value", "seqlens_k", "total_sequence_length"]
    if rotary:
        gqa_inputs += ["cos_cache", "sin_cache"]
        inits = [*inits, *rotary_caches(HEAD // 2)]
        attrs["do_rotary"] = 1
    nodes = [op("Gather", ["embed", "input_ids"], "x"), *nodes,
             op("GroupQueryAttention", gqa_inputs, ["o", "present_key", "present_value"],
                domain=MS, num_heads=HEADS, kv_num_heads=KV_HEADS, **attrs),
             op("MatMul", ["o", "Wo"], "y")]
    inits = [*inits, weight("Wo", HEADS * HEAD, HIDDEN), weight("embed", VOCAB, HIDDEN)]
    return Case(model(nodes, inputs, [Y, *presents], inits, opset=17),
                gqa_feeds() | (extra_feeds or {}), rep=HEADS // KV_HEADS,
                caches=["past_key", "past_value"], presents=["present_key", "present_value"],
                ignore=["n_x"])


def assert_gqa_counts(pruned: onnx.ModelProto, units: np.ndarray) -> None:
    kv = attribute(pruned, "GroupQueryAttention", "kv_num_heads")
    heads = attribute(pruned, "GroupQueryAttention", "num_heads")
    assert kv == [units.size] and heads == [units.size * HEADS // KV_HEADS]
    assert heads[0] % kv[0] == 0


@pytest.mark.parametrize(("rotary", "sink"), [(False, False), (True, False), (False, True)])
def test_group_query_attention_loses_kv_heads_with_their_query_groups(rotary: bool,
                                                                        sink: bool) -> None:
    """Separate q/k/v; with ``head_sink`` (gpt-oss: one softmax sink logit per query
    head, input 11) the sinks of the removed query heads go with them (they were left
    whole: onnxruntime refused the pruned model)."""
    nodes, inits = projections({"q": HEADS * HEAD, "k": KV_HEADS * HEAD, "v": KV_HEADS * HEAD})
    case = gqa_case(["q", "k", "v"], nodes, [*inits, weight("sink", HEADS)], rotary=rotary)
    if sink:
        gqa = next(n for n in case.proto.graph.node if n.op_type == "GroupQueryAttention")
        gqa.input.extend([""] * (11 - len(gqa.input)) + ["sink"])
    pruned, units = prune_exactly(case, "rewrite")
    assert_gqa_counts(pruned, units)
    assert initializer(pruned, "Wk").shape == (HIDDEN, units.size * HEAD)
    if sink:
        sinks = initializer(case.proto, "sink").reshape(KV_HEADS, -1)
        assert initializer(pruned, "sink").tolist() == sinks[units].reshape(-1).tolist()


@pytest.mark.parametrize("rotary", [False, True])
def test_group_query_attention_packed_qkv_loses_three_sections(rotary: bool) -> None:
    """The builder's packed QKV MatMul: one weight, sections q | k | v."""
    width = (HEADS + 2 * KV_HEADS) * HEAD
    nodes, inits = projections({"qkv": width})
    case = gqa_case(["qkv", "", ""], nodes, inits, rotary=rotary)
    pruned, units = prune_exactly(case, "rewrite")
    assert_gqa_counts(pruned, units)
    assert initializer(pruned, "Wqkv").shape == (HIDDEN, width * units.size // KV_HEADS)


# ---------------------------------------------------------- com.microsoft RotaryEmbedding
@pytest.mark.parametrize("attrs", ["num_heads", "none", "partial"])
def test_ms_rotary_embedding_before_group_query_attention(attrs: str) -> None:
    """q and k rotated by their own RotaryEmbedding (position ids, cos/sin caches), then
    GroupQueryAttention; with ``num_heads`` the node is patched, without it the head
    size is twice the cache width; ``partial`` rotates half of each head (Phi's
    ``rotary_embedding_dim``)."""
    nodes, inits = projections({"q": HEADS * HEAD, "k": KV_HEADS * HEAD, "v": KV_HEADS * HEAD})
    rotary = HEAD // 2 if attrs == "partial" else HEAD
    for name, heads in (("q", HEADS), ("k", KV_HEADS)):
        given = {"num_heads": heads} if attrs != "none" else {}
        if attrs == "partial":
            given["rotary_embedding_dim"] = rotary
        nodes.append(op("RotaryEmbedding", [name, "position_ids", "cos_cache", "sin_cache"],
                        f"{name}_rot", domain=MS, **given))
    positions = np.arange(PAST, PAST + SEQ, dtype=np.int64)[None].repeat(BATCH, 0)
    case = gqa_case(["q_rot", "k_rot", "v"], nodes, [*inits, *rotary_caches(rotary // 2)],
                    extra_inputs=(io("position_ids", "batch", "sequence_length", dtype=INT64),),
                    extra_feeds={"position_ids": positions})
    pruned, units = prune_exactly(case, "rewrite")
    assert_gqa_counts(pruned, units)
    if attrs != "none":
        assert attribute(pruned, "RotaryEmbedding", "num_heads") == [
            units.size * HEADS // KV_HEADS, units.size]


# ----------------------------------------------- ONNX Attention and RotaryEmbedding (23)
def decoder_case(nodes: list, inits: list, cached: bool, attention_inputs: list[str],
                 rotary: int = HEAD, **attrs) -> Case:
    """Token ids, ``nodes`` (projections and rotary), ONNX Attention, output projection;
    with a cache the Attention reads ``past_*`` and writes ``present_*``."""
    inputs = [IDS, io("position_ids", "batch", "sequence_length", dtype=INT64)]
    outputs, present, past = [Y], [], PAST if cached else 0
    feeds = {"input_ids": RNG.integers(0, VOCAB, (BATCH, SEQ)),
             "position_ids": np.arange(past, past + SEQ, dtype=np.int64)[None]}
    if cached:
        caches, presents = cache_io(KV_HEADS)
        inputs, outputs = inputs + caches, outputs + presents
        attention_inputs = [*attention_inputs, "", "past_key", "past_value"]
        present = ["present_key", "present_value"]
        feeds |= {"past_key": cache_feed(KV_HEADS), "past_value": cache_feed(KV_HEADS)}
    nodes = [op("Gather", ["embed", "input_ids"], "x"), *nodes,
             op("Attention", attention_inputs, ["o", *present], **attrs)]
    out = "o"
    if "q_num_heads" not in attrs:  # 4-D [B, N, S, H]: back to [B, S, N * H]
        nodes += [op("Transpose", ["o"], "o_t", perm=[0, 2, 1, 3]),
                  op("Reshape", ["o_t", "merge_shape"], "o_m")]
        inits = [*inits, ints("merge_shape", [0, 0, HEADS * HEAD])]
        out = "o_m"
    nodes.append(op("MatMul", [out, "Wo"], "y"))
    inits = [*inits, *rotary_caches(rotary // 2), weight("Wo", HEADS * HEAD, HIDDEN),
             weight("embed", VOCAB, HIDDEN)]
    return Case(model(nodes, inputs, outputs, inits), feeds, rep=HEADS // KV_HEADS,
                caches=["past_key", "past_value"], presents=present, ignore=["n_x"])


def assert_onnx_counts(pruned: onnx.ModelProto, units: np.ndarray, three_d: bool) -> None:
    heads = units.size * HEADS // KV_HEADS
    if three_d:
        assert attribute(pruned, "Attention", "q_num_heads") == [heads]
        assert attribute(pruned, "Attention", "kv_num_heads") == [units.size]
        assert attribute(pruned, "RotaryEmbedding", "num_heads") == [heads, units.size]


@pytest.mark.parametrize(("cached", "rotary"), [(False, HEAD), (True, HEAD), (True, HEAD // 2)])
def test_onnx_attention_3d_with_rotary_loses_kv_groups(cached: bool, rotary: int) -> None:
    """3-D q/k/v with ``q_num_heads``/``kv_num_heads`` (GQA-style), each of q and k
    rotated by a 3-D RotaryEmbedding carrying its ``num_heads`` (and a partial
    ``rotary_embedding_dim``)."""
    nodes, inits = projections({"q": HEADS * HEAD, "k": KV_HEADS * HEAD, "v": KV_HEADS * HEAD})
    partial = {"rotary_embedding_dim": rotary} if rotary < HEAD else {}
    for name, heads in (("q", HEADS), ("k", KV_HEADS)):
        nodes.append(op("RotaryEmbedding", [name, "cos_cache", "sin_cache", "position_ids"],
                        f"{name}_rot", num_heads=heads, **partial))
    case = decoder_case(nodes, inits, cached, ["q_rot", "k_rot", "v"], rotary=rotary,
                        q_num_heads=HEADS, kv_num_heads=KV_HEADS)
    pruned, units = prune_exactly(case, "rewrite" if cached else "keep")
    assert_onnx_counts(pruned, units, three_d=True)



def test_onnx_attention_per_head_mask_loses_the_removed_heads_rows() -> None:
    """A constant additive ``attn_mask [1, Nq, S, T]`` (a position bias per query head)
    is sliced with its heads."""
    nodes, inits = projections({"q": HEADS * HEAD, "k": KV_HEADS * HEAD, "v": KV_HEADS * HEAD})
    nodes += [op("Attention", ["q", "k", "v", "mask"], "o", q_num_heads=HEADS,
                 kv_num_heads=KV_HEADS), op("MatMul", ["o", "Wo"], "y")]
    inits += [weight("mask", 1, HEADS, SEQ, SEQ), weight("Wo", HEADS * HEAD, HIDDEN)]
    static = [io("x", BATCH, SEQ, HIDDEN)], [io("y", BATCH, SEQ, HIDDEN)]
    case = Case(model(nodes, *static, inits), {"x": x_feed()}, rep=HEADS // KV_HEADS)
    pruned, units = prune_exactly(case)
    mask = initializer(case.proto, "mask").reshape(KV_HEADS, -1, SEQ, SEQ)[units]
    np.testing.assert_array_equal(initializer(pruned, "mask"), mask.reshape(1, -1, SEQ, SEQ))

@pytest.mark.parametrize("cached", [False, True])
def test_onnx_attention_4d_qwen3_block_loses_kv_groups(cached: bool) -> None:
    """Qwen3's block in opset-23 ops: projections reshaped to ``[B, S, N, H]``, a per-head
    RMSNormalization on q and k (its scale spans the head dim, never pruned), transposed
    to ``[B, N, S, H]``, a 4-D RotaryEmbedding, Attention with fewer kv heads, back to
    ``[B, S, N * H]``; the Reshape targets are patched."""
    widths = {"q": HEADS, "k": KV_HEADS, "v": KV_HEADS}
    nodes, inits = projections({n: h * HEAD for n, h in widths.items()})
    for name, heads in widths.items():
        nodes.append(op("Reshape", [name, f"{name}_shape"], f"{name}_4"))
        inits.append(ints(f"{name}_shape", [0, 0, heads, HEAD]))
        source = f"{name}_4"
        if name != "v":
            nodes.append(op("RMSNormalization", [source, f"{name}_norm"], f"{name}_n",
                            axis=-1, epsilon=1e-6))
            inits.append(weight(f"{name}_norm", HEAD))
            source = f"{name}_n"
        nodes.append(op("Transpose", [source], f"{name}_t", perm=[0, 2, 1, 3]))
        if name != "v":
            nodes.append(op("RotaryEmbedding", [f"{name}_t", "cos_cache", "sin_cache",
                                                "position_ids"], f"{name}_r"))
    case = decoder_case(nodes, inits, cached, ["q_r", "k_r", "v_t"])
    pruned, units = prune_exactly(case, "rewrite" if cached else "keep")
    targets = {n.output[0]: initializer(pruned, n.input[1]).tolist()
               for n in pruned.graph.node if n.op_type == "Reshape"}
    heads = units.size * HEADS // KV_HEADS
    assert targets == {"q_4": [0, 0, heads, HEAD], "k_4": [0, 0, units.size, HEAD],
                       "v_4": [0, 0, units.size, HEAD], "o_m": [0, 0, heads * HEAD]}
    assert initializer(pruned, "q_norm").shape == (HEAD,)


# --------------------------------------------------------- RMSNormalization (opset 23)
def test_rms_normalization_over_pruned_channels_renormalizes_exactly() -> None:
    """Pruning the normalized axis (a transformer's hidden width) changes the mean of
    squares from ``/C`` to ``/(C - k)``: the pruned model equals the original with the
    removed channels zeroed, its scale times ``sqrt((C - k) / C)`` and its epsilon times
    ``(C - k) / C``, which is exactly that renormalization."""
    width, epsilon = 32, 1e-5
    nodes = [op("MatMul", ["x", "W1"], "h"),
             op("RMSNormalization", ["h", "scale"], "n", axis=-1, epsilon=epsilon),
             op("MatMul", ["n", "W2"], "y")]
    inits = [weight("W1", HIDDEN, width), weight("scale", width), weight("W2", width, HIDDEN)]
    proto = model(nodes, [X], [Y], inits)
    feeds = {"x": x_feed()}
    pruned = ir.to_proto(spa_opt.optimize(proto, "couple,group,l1,prune", ratio=0.5,
                                          verify=1)[0])
    kept = kept_rows(initializer(proto, "W2"), initializer(pruned, "W2"))
    assert 0 < kept.size < width
    assert initializer(pruned, "scale").shape == (kept.size,)
    fraction = kept.size / width
    reference = onnx.ModelProto()
    reference.CopyFrom(proto)
    w1 = initializer(proto, "W1").copy()
    w1[:, np.setdiff1d(np.arange(width), kept)] = 0
    changed = {"W1": w1, "scale": initializer(proto, "scale") * np.float32(np.sqrt(fraction))}
    for tensor in reference.graph.initializer:
        if tensor.name in changed:
            tensor.CopyFrom(numpy_helper.from_array(changed[tensor.name], tensor.name))
    norm = next(n for n in reference.graph.node if n.op_type == "RMSNormalization")
    del norm.attribute[:]
    norm.attribute.extend([helper.make_attribute("axis", -1),
                           helper.make_attribute("epsilon", epsilon * fraction)])
    np.testing.assert_allclose(run(pruned, feeds)["y"], run(reference, feeds)["y"],
                               atol=1e-5)


# ------------------------------------------------------------ com.microsoft BiasSplitGelu
def bias_split_gelu_graph(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """``x @ W1``, BiasSplitGelu, ``@ W2`` in numpy: onnxruntime has no CPU kernel."""
    from scipy.special import erf

    h = x @ initializer(proto, "W1") + initializer(proto, "bias")
    half = h.shape[-1] // 2
    gate = h[..., half:]
    return (h[..., :half] * gate * 0.5 * (1 + erf(gate / np.sqrt(2)))) @ initializer(proto, "W2")


def test_bias_split_gelu_loses_channel_j_with_j_plus_d() -> None:
    """Stable Diffusion's GEGLU as the optimizer fuses it: ``[B, HW, 2D]`` into
    BiasSplitGelu; output channel ``j`` is made of input ``j`` and ``j + D``."""
    half = 16
    nodes = [op("MatMul", ["x", "W1"], "h"),
             op("BiasSplitGelu", ["h", "bias"], "g", domain=MS),
             op("MatMul", ["g", "W2"], "y")]
    inits = [weight("W1", HIDDEN, 2 * half), weight("bias", 2 * half), weight("W2", half, 8)]
    proto = model(nodes, [X], [io("y", "batch", "sequence_length", 8)], inits, opset=17)
    # verify=0: without a CPU kernel neither model runs in onnxruntime
    pruned = ir.to_proto(spa_opt.optimize(proto, "couple,group,l1,prune", ratio=0.5)[0])
    kept = kept_rows(initializer(proto, "W2"), initializer(pruned, "W2"))
    assert 0 < kept.size < half
    columns = kept_rows(initializer(proto, "W1").T, initializer(pruned, "W1").T)
    assert columns.tolist() == [*kept.tolist(), *(kept + half).tolist()]
    bias = initializer(proto, "bias")
    assert initializer(pruned, "bias").tolist() == bias[columns].tolist()
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(proto)
    w2 = initializer(proto, "W2").copy()
    w2[np.setdiff1d(np.arange(half), kept)] = 0
    target = next(t for t in zeroed.graph.initializer if t.name == "W2")
    target.CopyFrom(numpy_helper.from_array(w2, "W2"))
    x = x_feed().astype(np.float64)
    np.testing.assert_allclose(bias_split_gelu_graph(pruned, x),
                               bias_split_gelu_graph(zeroed, x), atol=1e-5)


def test_onnx_attention_of_mixed_ranks_pins() -> None:
    """A 3-D query with 4-D key and value (onnxruntime refuses it): the 3-D rule would
    scale ``kv_num_heads`` under a key it never sliced, so the heads stay, with a reason."""
    from spa_opt.passes.couple import couple_model
    from spa_opt.passes.coupling.groups import build_groups

    names = ["past_key_cross", "past_value_cross"]
    nodes = [op("MatMul", ["x", "Wq"], "q"),
             op("Attention", ["q", *names], "o", q_num_heads=HEADS, kv_num_heads=KV_HEADS),
             op("MatMul", ["o", "Wo"], "y")]
    graph = helper.make_graph(
        nodes, "mixed", [io("x", 1, SEQ, HIDDEN), *(io(n, 1, KV_HEADS, 5, HEAD) for n in names)],
        [io("y", 1, SEQ, HIDDEN)], [weight("Wq", HIDDEN, HEADS * HEAD),
                                    weight("Wo", HEADS * HEAD, HIDDEN)],
        value_info=[io("o", 1, SEQ, HEADS * HEAD)])
    proto = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 23)])
    mixed = ir.from_proto(proto)
    heads = [g for g in build_groups(couple_model(mixed, io="rewrite"), mixed.graph)
             if any(m.name == "Wq" and m.axis == 1 for m in g.members)]
    assert len(heads) == 1 and not heads[0].prunable
    assert "differ in rank" in " ".join(str(r) for r in heads[0].reasons)
