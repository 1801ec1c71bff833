"""The solver on stacked blocks: groups per block stay constant, work stays linear.

Timing is measured in ``bench/analysis.py``; here the structure and the documented
bound on rule evaluations are asserted, which no slowdown can pass silently.
"""

from __future__ import annotations

import importlib.util

import onnx_ir as ir
import pytest

from spa_opt.ir.shapes import temporary_shapes
from spa_opt.passes.couple import couple_model
from spa_opt.passes.coupling.groups import build_groups
from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("bench_models", ROOT / "bench" / "models.py")
bench_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_models)


def evaluation_bound(model: ir.Model) -> int:
    """``N + sum(rank(v) * degree(v))``, the bound documented in the solver."""
    graph = model.graph
    bound = len(graph)
    with temporary_shapes(model):
        values = {
            id(v): v for node in graph for v in (*node.inputs, *node.outputs) if v is not None
        }
        for value in values.values():
            rank = len(value.shape) if value.shape is not None else 0
            degree = len(value.consumers()) + (value.producer() is not None)
            bound += rank * degree
    return bound


@pytest.mark.parametrize("blocks", [1, 8, 40])
def test_stacked_transformer_groups_grow_by_two_per_block(blocks: int) -> None:
    model = ir.from_proto(bench_models.stacked_transformer(blocks))
    coupling = couple_model(model)
    groups = build_groups(coupling, model.graph)
    assert len(groups) == 2 * blocks + 2
    assert sum(g.prunable for g in groups) == 2 * blocks + 1
    assert coupling.stats["evaluations"] <= evaluation_bound(model)
    assert coupling.stats["evaluations"] <= 3 * len(model.graph)


def test_qwen3_block_groups_by_key_value_head() -> None:
    model = ir.from_proto(bench_models.qwen3_block(layers=2))
    coupling = couple_model(model)
    groups = build_groups(coupling, model.graph)
    attention = [g for g in groups if g.prunable and g.block > 1]
    assert len(attention) == 2
    for group in attention:
        assert group.units == 2  # key-value heads; each takes its query heads along
        blocks = sorted({m.index_map.block for m in group.weights if "out" in m.roles})
        assert blocks == [16, 32]  # k/v projection rows per kv head, q rows per kv group
    assert coupling.stats["evaluations"] <= evaluation_bound(model)
