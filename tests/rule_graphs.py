"""Small graph builders and group lookups for the operator-rule tests (test_rules.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from spa_opt.passes.couple import couple_model
from spa_opt.passes.coupling.groups import Group, Member, build_groups
from spa_opt.passes.coupling.solver import Coupling
from tests.conftest import make_model

_RNG = np.random.default_rng(0)


def w(name: str, *shape: int) -> onnx.TensorProto:
    """A float weight initializer of ``shape`` with random values."""
    return numpy_helper.from_array(_RNG.standard_normal(shape).astype(np.float32), name)


def i64(name: str, values: Sequence[int] | int) -> onnx.TensorProto:
    """An int64 constant initializer (a scalar when ``values`` is an int)."""
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def f32(name: str, values) -> onnx.TensorProto:
    """A float constant initializer with the given values."""
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def vi(name: str, *shape: int, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A graph input or output description with a static shape."""
    return helper.make_tensor_value_info(name, dtype, list(shape))


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] | str, **attrs) -> onnx.NodeProto:
    """A node named after its first output."""
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    domain = attrs.pop("domain", "")
    return helper.make_node(op, list(inputs), outputs, name=f"n_{outputs[0]}", domain=domain,
                            **attrs)


def build(nodes, inputs, outputs, inits=(), opset: int = 17, check: bool = True,
          value_info=()) -> ir.Model:
    """An onnx_ir model from protos (checked with full shape inference unless ``check``)."""
    if check and not value_info:
        proto = make_model(nodes, inputs, outputs, inits, opset=opset)
    else:
        graph = helper.make_graph(nodes, "test", inputs, outputs, list(inits),
                                  value_info=list(value_info))
        proto = helper.make_model(graph, ir_version=10, opset_imports=[
            helper.make_opsetid("", opset), helper.make_opsetid("custom", 1)])
    return ir.from_proto(proto)


def analyse(model: ir.Model, heads: str = "whole") -> tuple[Coupling, list[Group]]:
    """Couple and group ``model``."""
    coupling = couple_model(model, heads=heads)
    return coupling, build_groups(coupling, model.graph)


def groups_of(nodes, inputs, outputs, inits=(), opset: int = 17, heads: str = "whole",
              check: bool = True, value_info=()) -> list[Group]:
    """Build, couple and group in one go."""
    return analyse(build(nodes, inputs, outputs, inits, opset, check, value_info), heads)[1]


def find(groups: list[Group], name: str, axis: int, at: int | None = None) -> Group:
    """The one group with ``name:axis`` among its members (holding position ``at``)."""
    found = [
        g for g in groups for m in g.members
        if m.name == name and m.axis == axis
        and (at is None or at in m.index_map.positions.reshape(-1).tolist())
    ]
    assert len(found) == 1, f"{name}:{axis}@{at} is in {len(found)} groups: {summaries(groups)}"
    return found[0]


def member(group: Group, name: str, axis: int) -> Member:
    """The member ``name:axis`` of ``group``."""
    for m in group.members:
        if m.name == name and m.axis == axis:
            return m
    raise AssertionError(f"{name}:{axis} is not a member of {group.summary()}")


def pos(group: Group, name: str, axis: int) -> list[list[int]]:
    """Index-map positions of ``name:axis`` in ``group``, as nested lists."""
    return member(group, name, axis).index_map.positions.tolist()


def names(group: Group) -> set[str]:
    """``name:axis`` of every member."""
    return {f"{m.name}:{m.axis}" for m in group.members}


def tracked(groups: list[Group], name: str) -> set[int]:
    """Axes of ``name`` that are members of any group."""
    return {m.axis for g in groups for m in g.members if m.name == name}


def reasons(group: Group) -> str:
    """Every pin reason of the group, joined."""
    return " | ".join(str(r) for r in group.reasons)


def summaries(groups: list[Group]) -> list[dict]:
    """Group summaries without their ids (ids depend on order)."""
    result = []
    for group in groups:
        summary = group.summary()
        summary.pop("id")
        result.append(summary)
    return result



def rms_norm(prefix: str, x: str, weight: str, out: str) -> list[onnx.NodeProto]:
    """RMSNorm over the last axis as exporters write it (initializers ``two``/``eps``/``last``)."""
    p = prefix
    return [
        node("Pow", [x, "two"], f"{p}_sq"),
        node("ReduceMean", [f"{p}_sq", "last"], f"{p}_ms", keepdims=1),
        node("Add", [f"{p}_ms", "eps"], f"{p}_mse"),
        node("Sqrt", [f"{p}_mse"], f"{p}_rt"),
        node("Reciprocal", [f"{p}_rt"], f"{p}_inv"),
        node("Mul", [x, f"{p}_inv"], f"{p}_nrm"),
        node("Mul", [f"{p}_nrm", weight], out),
    ]


def norm_constants() -> list[onnx.TensorProto]:
    """The constants :func:`rms_norm` uses."""
    return [f32("two", 2.0), f32("eps", 1e-6), i64("last", [-1])]


def qwen3_attention(heads: int = 4, kv_heads: int = 2, dim: int = 2, seq: int = 3,
                    hidden: int = 8, qk_norm: bool = True) -> tuple[list, list, list, list]:
    """A Qwen3-style attention block: GQA, per-head RMSNorm on q and k, output projection.

    Returns ``(nodes, inputs, outputs, initializers)`` with nodes in topological order.
    """
    rep = heads // kv_heads
    nodes = []
    for name in ("q", "k", "v"):
        nodes += [
            node("MatMul", ["x", f"W{name}"], f"{name}_p"),
            node("Reshape", [f"{name}_p", f"{name}_shape"], f"{name}_4"),
        ]
        normed = f"{name}_4"
        if qk_norm and name != "v":
            normed = f"{name}_n"
            nodes += rms_norm(f"{name}norm", f"{name}_4", f"g{name}", normed)
        nodes.append(node("Transpose", [normed], f"{name}_t", perm=[0, 2, 1, 3]))
        if name != "q":  # repeat_kv: [b, kv, s, d] -> [b, kv, rep, s, d] -> [b, h, s, d]
            nodes += [
                node("Unsqueeze", [f"{name}_t", "axis2"], f"{name}_u"),
                node("Expand", [f"{name}_u", "rep_shape"], f"{name}_e"),
                node("Reshape", [f"{name}_e", "heads_shape"], f"{name}_r"),
            ]
    nodes += [
        node("Transpose", ["k_r"], "k_T", perm=[0, 1, 3, 2]),
        node("MatMul", ["q_t", "k_T"], "scores"),
        node("Softmax", ["scores"], "probs", axis=-1),
        node("MatMul", ["probs", "v_r"], "ctx"),
        node("Transpose", ["ctx"], "ctx_t", perm=[0, 2, 1, 3]),
        node("Reshape", ["ctx_t", "merge_shape"], "ctx_m"),
        node("MatMul", ["ctx_m", "Wo"], "o"),
        node("Add", ["o", "x"], "y"),
    ]
    inits = [
        w("Wq", hidden, heads * dim), w("Wk", hidden, kv_heads * dim),
        w("Wv", hidden, kv_heads * dim), w("Wo", heads * dim, hidden),
        i64("q_shape", [1, seq, heads, dim]), i64("k_shape", [1, seq, kv_heads, dim]),
        i64("v_shape", [1, seq, kv_heads, dim]), i64("axis2", [2]),
        i64("rep_shape", [1, kv_heads, rep, seq, dim]), i64("heads_shape", [1, heads, seq, dim]),
        i64("merge_shape", [1, seq, heads * dim]),
    ]
    if qk_norm:
        inits += [w("gq", dim), w("gk", dim), *norm_constants()]
    return nodes, [vi("x", 1, seq, hidden)], [vi("y", 1, seq, hidden)], inits


def conv_chain(middle, middle_out: str, inits=(), channels: int = 8, consumed: int | None = None,
               x_shape=(1, 3, 4, 4), y_shape=(1, 2, 4, 4), opset: int = 17, check: bool = True,
               inputs=(), outputs=(), value_info=(), heads: str = "whole") -> list[Group]:
    """Groups of ``x -> Conv(W1) -> h -> middle -> middle_out -> Conv(W2) -> y``.

    ``W1`` has ``channels`` output channels, ``W2`` consumes ``consumed`` (default the same).
    """
    nodes = [node("Conv", ["x", "W1"], "h"), *middle, node("Conv", [middle_out, "W2"], "y")]
    weights = [w("W1", channels, x_shape[1], 1, 1), w("W2", y_shape[1], consumed or channels, 1, 1)]
    return groups_of(nodes, [vi("x", *x_shape), *inputs], [vi("y", *y_shape), *outputs],
                     [*weights, *inits], opset=opset, heads=heads, check=check,
                     value_info=value_info)


def shuffled(nodes: list[onnx.NodeProto], seed: int) -> list[onnx.NodeProto]:
    """``nodes`` in another topological order: Kahn's algorithm with random tie-breaking."""
    rng = np.random.default_rng(seed)
    produced_by = {out: i for i, n in enumerate(nodes) for out in n.output}
    needs = [{produced_by[x] for x in n.input if x in produced_by} for n in nodes]
    done: set[int] = set()
    order = []
    while len(order) < len(nodes):
        ready = [i for i in range(len(nodes)) if i not in done and needs[i] <= done]
        pick = ready[int(rng.integers(len(ready)))]
        done.add(pick)
        order.append(nodes[pick])
    return order


def structure(groups: list[Group]) -> list[tuple]:
    """Each group as order-independent facts: members with their units' position sets.

    Leaves out the group's id, its primary member and the block read from it, which
    follow graph order.
    """
    result = []
    for group in groups:
        members = []
        for m in group.members:
            units = sorted(tuple(sorted(row)) for row in m.index_map.positions.tolist())
            members.append((m.name, m.axis, m.kind, m.roles, tuple(units)))
        pinned = sorted(
            tuple(sorted(group.primary.index_map.positions[u].tolist()))
            for u in np.flatnonzero(group.pinned)
        )
        result.append((group.units, group.prunable, tuple(sorted(group.why_not())),
                       tuple(sorted(members)), tuple(pinned),
                       tuple(sorted((p.node, p.kind, p.detail) for p in group.patches))))
    return sorted(result)


def col(n: int, start: int = 0, step: int = 1) -> list[list[int]]:
    """Positions of ``n`` one-position units: ``[[start], [start + step], ...]``."""
    return [[start + k * step] for k in range(n)]


def blocks(units: int, block: int) -> list[list[int]]:
    """Contiguous blocks: ``[[0..block-1], [block..2*block-1], ...]``."""
    return [list(range(u * block, (u + 1) * block)) for u in range(units)]


def assert_free(group: Group, units: int, block: int = 1) -> None:
    """The group has ``units`` units of ``block`` positions, none pinned."""
    assert (group.units, group.block) == (units, block), group.summary()
    assert group.prunable and not group.pinned.any(), group.summary()


def head_split(heads_mode: str):
    """``[1,5,6] -> [1,5,2,3]`` (2 heads of 3) -> transposes -> merged back -> MatMul."""
    return groups_of(
        [node("MatMul", ["x", "Wq"], "q"), node("Reshape", ["q", "s4"], "q4"),
         node("Transpose", ["q4"], "qt", perm=[0, 2, 1, 3]),
         node("Transpose", ["qt"], "qb", perm=[0, 2, 1, 3]),
         node("Reshape", ["qb", "s3"], "q3"), node("MatMul", ["q3", "Wo"], "y")],
        [vi("x", 1, 5, 8)], [vi("y", 1, 5, 4)],
        [w("Wq", 8, 6), i64("s4", [1, 5, 2, 3]), i64("s3", [1, 5, 6]), w("Wo", 6, 4)],
        heads=heads_mode,
    )


def torchscript_heads(head_entry: list, inits: list, check: bool = True, value_info=()):
    """``q [2,6]`` reshaped to ``[b, H, 3]`` by a target built from ``Shape`` and constants."""
    nodes = [
        node("MatMul", ["x", "W1"], "q"), node("Shape", ["q"], "sh"),
        node("Gather", ["sh", "zero"], "b"), node("Unsqueeze", ["b", "ax0"], "b1"),
        *head_entry,
        node("Concat", ["b1", "H", "D"], "target", axis=0), node("Reshape", ["q", "target"], "q3"),
        node("Relu", ["q3"], "r"),
        node("Concat", ["b1", "minus1"], "merge", axis=0), node("Reshape", ["r", "merge"], "q2"),
        node("MatMul", ["q2", "W2"], "y"),
    ]
    inits = [w("W1", 8, 6), w("W2", 6, 4), i64("zero", 0), i64("ax0", [0]), i64("D", [3]),
             i64("minus1", [-1]), *inits]
    return groups_of(nodes, [vi("x", 2, 8)], [vi("y", 2, 4)], inits, check=check,
                     value_info=value_info)


def attention_groups(heads_mode: str = "whole", qk_norm: bool = True, order_seed=None):
    """Model, coupling and groups of :func:`qwen3_attention` (nodes shuffled by a seed)."""
    nodes, inputs, outputs, inits = qwen3_attention(qk_norm=qk_norm)
    if order_seed is not None:
        nodes = shuffled(nodes, order_seed)
    model = build(nodes, inputs, outputs, inits, opset=18)
    return model, *analyse(model, heads_mode)


def summaries_by_members(groups) -> dict:
    """``summary()`` of every group without its id, keyed by its set of member axes."""
    result = {}
    for group in groups:
        summary = group.summary()
        del summary["id"]
        summary["members"] = sorted(summary["members"])
        result[frozenset(names(group))] = summary
    return result
