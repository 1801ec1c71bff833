"""Golden models: groups match their expectation files, and dead units prove the maps.

Every committed golden model (handmade, PyTorch dynamo and TorchScript exports, Keras
through tf2onnx) and the model-zoo graphs inside the onnx package.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json

import numpy as np
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import ShapeInferencePass

from spa_opt.ir import load_model
from spa_opt.ir.repair import repair_model
from spa_opt.passes.couple import couple_model
from spa_opt.passes.coupling.groups import Group, build_groups
from spa_opt.passes.coupling.solver import Coupling
from spa_opt.passes.fold_constants import FoldConstantsPass
from spa_opt.verify import random_inputs
from tests.conftest import GOLDEN, heavy_slow
from tests.dead_units import (
    alternate,
    check_dead_units,
    expose,
    exposed_names,
    randomize_weights,
    run,
)

_spec = importlib.util.spec_from_file_location(
    "update_expected", GOLDEN / "scripts" / "update_expected.py"
)
update_expected = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_expected)

MODELS = update_expected.golden_models()
BIG = {"light/densenet121", "light/inception_v2", "light/resnet50", "light/vgg19",
       "light/bvlc_alexnet", "light/zfnet512"}
"""Zoo graphs whose full-size runs are slow: the dead-unit test samples fewer groups."""


@functools.cache
def analysed(key: str) -> tuple[ir.Model, Coupling, list[Group]]:
    model = load_model(MODELS[key])
    repair_model(model)  # as every run does on load (jax2onnx's stale value_info)
    FoldConstantsPass()(model)
    if key.startswith("light/"):
        randomize_weights(model)
    coupling = couple_model(model)
    ShapeInferencePass(strict_mode=False)(model)  # shapes for the broadcast excuse
    return model, coupling, build_groups(coupling, model.graph)


@pytest.mark.parametrize("key", heavy_slow(sorted(MODELS)))
def test_groups_match_the_expectation_file(key: str) -> None:
    expected_path = update_expected.EXPECTED / f"{key}.json"
    expected = expected_path.read_text()
    _, _, groups = analysed(key)
    # Coverage and counts come from the same groups; compare the groups themselves.
    got = json.loads(expected)
    got["groups"] = [g.summary() for g in groups]
    actual = json.dumps(got, indent=1) + "\n"
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), str(expected_path), "now", n=2
        ))
        pytest.fail(f"groups of {key} changed (update_expected.py rewrites them):\n{diff[:6000]}")


@pytest.mark.parametrize("key", heavy_slow(alternate(sorted(MODELS), half=1)))
def test_dead_units_appear_exactly_where_the_index_maps_say(key: str) -> None:
    """Every model, the deployment graphs too. Quantized graphs need no exception: a
    killed unit of a static QDQ or QOperator tensor holds its zero point (a per-tensor
    scale is a constant, so no other code moves); dynamically quantized codes are
    compared as real values within one quantization step (tests/dead_units.py says
    why); the reference and the killed run expose the same values, since onnxruntime
    fuses QDQ pairs into integer kernels only where no intermediate is an output."""
    model, coupling, groups = analysed(key)
    prunable = [g for g in groups if g.prunable]
    assert prunable, f"{key}: no prunable group"
    if key in BIG:
        prunable = prunable[:: max(1, len(prunable) // 3)][:3]
    feeds = random_inputs(model, 2, seed=1)
    reference = run(expose(ir.serde.serialize_model(model), exposed_names(prunable), model),
                    feeds)
    rng = np.random.default_rng(0)
    problems = []
    for group in prunable:
        free = np.flatnonzero(~group.pinned)
        units = np.sort(rng.choice(free, size=min(2, max(1, free.size - 1)), replace=False))
        found = check_dead_units(model, coupling, group, units, feeds, reference)
        problems.extend(f"{group.id} ({group.primary.name}): {p}" for p in found)
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize(
    "key",
    ["torch/vit.dynamo", "torch/gpt2.dynamo", "torch/llama.torchscript", "torch/qwen3.dynamo"],
)
def test_head_dimension_mode_passes_the_dead_unit_test(key: str) -> None:
    """``couple<heads=dim>``: units are one head-dimension position across heads."""
    model = load_model(MODELS[key])
    repair_model(model)  # as every run does on load (jax2onnx's stale value_info)
    FoldConstantsPass()(model)
    coupling = couple_model(model, heads="dim")
    ShapeInferencePass(strict_mode=False)(model)
    groups = [g for g in build_groups(coupling, model.graph) if g.prunable]
    whole = [g for g in analysed(key)[2] if g.prunable]
    assert len(groups) > len(whole)  # q/k and v/o separate; units per head dimension
    assert any(g.units > u.units for g in groups for u in whole if u.block > 1)
    feeds = random_inputs(model, 2, seed=1)
    names = sorted({m.name for g in groups for m in g.members if m.kind in ("value", "output")})
    reference = run(expose(ir.serde.serialize_model(model), names), feeds)
    problems = []
    for group in groups:
        problems += check_dead_units(model, coupling, group, np.array([0, 1]), feeds, reference)
    assert not problems, "\n".join(problems[:20])
