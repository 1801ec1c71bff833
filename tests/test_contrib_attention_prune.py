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
    query heads per kv head; ``caches``/``presents`` carry kv heads on axis 1; the nodes
    ``ignore`` names (an embedding, whose hidden width would go too) are not pruned.
    """

    proto: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    out_proj: str = "Wo"
    head: int = HEAD
    rep: int = 1
    caches: list[str] = field(default_factory=list)
    presents: list[str] = field(default_factory=list)
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
    feeds = {k: v[:, units] if k in case.caches else v for k, v in case.feeds.items()}
    got = run(pruned, feeds)
    for name, value in want.items():
        expected = value[:, units] if name in case.presents else value
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


def cache_io(prefix: str, heads: int) -> tuple[list, list]:
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
        inputs_, outputs_ = cache_io("", HEADS)
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
    caches, presents = cache_io("", KV_HEADS)
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


@pytest.mark.parametrize("rotary", [False, True])
def test_group_query_attention_loses_kv_heads_with_their_query_groups(rotary: bool) -> None:
    nodes, inits = projections({"q": HEADS * HEAD, "k": KV_HEADS * HEAD, "v": KV_HEADS * HEAD})
    case = gqa_case(["q", "k", "v"], nodes, inits, rotary=rotary)
    pruned, units = prune_exactly(case, "rewrite")
    assert_gqa_counts(pruned, units)
    assert initializer(pruned, "Wk").shape == (HIDDEN, units.size * HEAD)


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
@pytest.mark.parametrize("num_heads", [True, False])
def test_ms_rotary_embedding_before_group_query_attention(num_heads: bool) -> None:
    """q and k rotated by their own RotaryEmbedding (position ids, cos/sin caches), then
    GroupQueryAttention; with ``num_heads`` the node is patched, without it the head
    size is twice the cache width."""
    nodes, inits = projections({"q": HEADS * HEAD, "k": KV_HEADS * HEAD, "v": KV_HEADS * HEAD})
    for name, heads in (("q", HEADS), ("k", KV_HEADS)):
        attrs = {"num_heads": heads} if num_heads else {}
        nodes.append(op("RotaryEmbedding", [name, "position_ids", "cos_cache", "sin_cache"],
                        f"{name}_rot", domain=MS, **attrs))
    positions = np.arange(PAST, PAST + SEQ, dtype=np.int64)[None].repeat(BATCH, 0)
    case = gqa_case(["q_rot", "k_rot", "v"], nodes, [*inits, *rotary_caches(HEAD // 2)],
                    extra_inputs=(io("position_ids", "batch", "sequence_length", dtype=INT64),),
                    extra_feeds={"position_ids": positions})
    pruned, units = prune_exactly(case, "rewrite")
    assert_gqa_counts(pruned, units)
    if num_heads:
        assert attribute(pruned, "RotaryEmbedding", "num_heads") == [
            units.size * HEADS // KV_HEADS, units.size]
