"""Pruned KV-cache decoders still generate: 8 greedy steps, the cache fed back each step.

For optimum's Llama, Qwen2 and GPT-2 exports (``golden_models/deploy/``), with the IO
kept and with ``--io rewrite``:

- every step's logits, computed from the cache, equal the logits of one run over the
  whole sequence with an empty cache: the pruned cache path is coherent;
- with ``rewrite`` the cache inputs and outputs lose heads and the report lists each;
  with ``keep`` the interface is exactly the original's;
- the reference: kv heads (with their query heads) and MLP units zeroed in the original
  are what l1 removes through the rewritten cache, and the pruned model's first step
  matches the zeroed original within 1e-5. (``dead`` cannot do this: a head is never
  provably zero while its cache input, a graph input, may hold anything.)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import spa_opt
from spa_opt.ir import load_model
from spa_opt.ir.repair import repair_model
from spa_opt.ir.tensors import constant_array
from spa_opt.ort import session_from_model
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes.group import groups_of
from tests.dead_units import KEEP_ROLES
from tests.decode_loop import decode, full_sequence_logits
from tests.test_prune_golden import signature, source

DECODERS = ["deploy/llama_kv.optimum", "deploy/qwen2_kv.optimum", "deploy/gpt2_kv.optimum"]
PROMPT = np.array([[3, 17, 42, 5]], dtype=np.int64)
STEPS = 8


@pytest.mark.parametrize("io", ["keep", "rewrite"])
@pytest.mark.parametrize("key", DECODERS)
def test_a_pruned_decoder_generates_from_its_cache(key: str, io: str) -> None:
    original = onnx.load_from_string(source(key))
    model, report = spa_opt.optimize(original, "fold-constants,couple,group,l1,prune",
                                     ratio=0.3, io=io)
    data = report.to_dict()
    assert data["channels"]["removed"] > 0
    proto = ir.to_proto(model)
    if io == "keep":
        assert data["io"] is None
        assert signature(proto) == signature(onnx.load_from_string(source(key)))
    else:
        changed = data["io"]["changed"]
        cache = [c for c in changed if c["name"].startswith(("past", "present"))]
        assert cache and len(cache) == len(changed)  # only the cache changes
        assert all(c["after"][1] < c["before"][1] for c in cache)  # fewer kv heads
    session = session_from_model(model)
    tokens, per_step = decode(model, session, PROMPT, STEPS)
    assert tokens.shape == (1, PROMPT.shape[1] + STEPS)
    full = full_sequence_logits(model, session, tokens[:, :-1])
    for step, logits in enumerate(per_step):
        position = PROMPT.shape[1] - 1 + step
        np.testing.assert_allclose(logits, full[:, position], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("key", ["deploy/llama_kv.optimum", "deploy/qwen2_kv.optimum"])
def test_the_first_step_equals_a_reference_with_the_removed_units_zeroed(key: str) -> None:
    """Half the units of every lossless group (kv heads with their query heads, MLP
    units) are zeroed in the original; l1 at ratio 0.5 must remove exactly those through
    the rewritten cache (the embedding, whose group normalizes, is ignored), and the
    pruned model's first step must be the zeroed original's."""
    model = load_model(onnx.load_from_string(source(key)))
    repair_model(model)
    context = PipelineContext(io="rewrite").attach(model)
    groups = groups_of(model, context)
    normalized = {(id(v), a) for _, v, a in context.analyses.couplings.normalizers}
    zeroed = {}
    for group in groups:
        if not group.prunable or any((id(m.value), m.axis) in normalized for m in group.members):
            continue
        units = np.arange(0, group.units, 2)  # every other unit: half of them
        zeroed[group.id] = units
        for member in group.weights:
            if set(member.roles) & KEEP_ROLES or not member.roles:
                continue
            data = np.array(constant_array(member.value))
            index = [slice(None)] * data.ndim
            index[member.axis] = member.index_map.take(units)
            data[tuple(index)] = 0
            member.value.const_value = ir.tensor(data, name=member.value.name)
    assert any(g.units == 2 for g in groups if g.id in zeroed)  # the kv-head groups
    reference = ir.serde.serialize_model(model)
    pruned, report = spa_opt.optimize(reference, "couple,group,l1,prune", ratio=0.5,
                                      io="rewrite", ignore=["*embed_tokens*"])
    removed = {g["group"]: g["units_removed"] for g in report.to_dict()["prune"]["groups"]}
    assert removed == {gid: units.tolist() for gid, units in zeroed.items()}
    original = load_model(reference)
    want = decode(original, session_from_model(original), PROMPT, 1)[1][0]
    got = decode(pruned, session_from_model(pruned), PROMPT, 1)[1][0]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("io", ["keep", "rewrite"])
def test_the_4bit_decoder_loses_whole_blocks_exactly(io: str) -> None:
    """MatMulNBits' K goes in whole quantization blocks (kv-head groups, MLP blocks and
    the residual width of ``llama_kv.nbits``): with the removed units' scales zeroed at
    every consumer along K (and the residual kept, it is normalized), the original's
    first step is the pruned model's; and the pruned model decodes from its cache."""
    key = "deploy/llama_kv.nbits"
    pruned, report = spa_opt.optimize(onnx.load_from_string(source(key)),
                                      "fold-constants,couple,group,l1,prune", ratio=0.5, io=io,
                                      ignore=["*embed_tokens*"])
    removed = {g["group"]: g["units_removed"] for g in report.to_dict()["prune"]["groups"]}
    assert removed and sum(map(len, removed.values())) >= (4 if io == "rewrite" else 2)
    reference = load_model(onnx.load_from_string(source(key)))
    repair_model(reference)
    context = PipelineContext(io=io).attach(reference)
    from spa_opt.passes.fold_constants import FoldConstantsPass

    FoldConstantsPass()(reference)
    for group in groups_of(reference, context):
        if group.id not in removed:
            continue
        units = np.array(removed[group.id])
        scales = [m for m in group.weights if m.roles == ("param",) and m.axis == 1]
        assert scales, group.id
        for member in scales:  # MatMulNBits scales [N, blocks]: a block's scale to zero
            data = np.array(constant_array(member.value))
            data[:, member.index_map.take(units)] = 0
            member.value.const_value = ir.tensor(data, name=member.value.name)
    want = decode(reference, session_from_model(reference), PROMPT, 1)[1][0]
    session = session_from_model(pruned)
    got = decode(pruned, session, PROMPT, 1)[1][0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    tokens, per_step = decode(pruned, session, PROMPT, STEPS)
    full = full_sequence_logits(pruned, session, tokens[:, :-1])
    for step, logits in enumerate(per_step):
        np.testing.assert_allclose(logits, full[:, PROMPT.shape[1] - 1 + step],
                                   atol=1e-4, rtol=1e-4)
