"""The pipeline context: typed analysis slots invalidated by what they derive from."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import spa_opt
from spa_opt.passes import PipelineContext, Targets, build_pipeline
from spa_opt.passes._infra.context import Analyses
from tests.conftest import GOLDEN

RESNET = GOLDEN / "resnet_tiny.onnx"


def _full() -> Analyses:
    analyses = Analyses()
    analyses.update(couplings="c", groups=["g"], scores={"g1": 1}, criterion="l1",
                    dead={"g1": 0}, selection={"g1": 2}, plan="p", reconstructed={"w": 3},
                    growth={"g1": 4})
    return analyses


def test_update_sets_slots_computed_together() -> None:
    analyses = _full()
    assert list(analyses.filled()) == ["couplings", "groups", "scores", "criterion", "dead",
                                       "selection", "plan", "reconstructed", "growth"]


def test_new_couplings_clear_every_derived_slot() -> None:
    analyses = _full()
    analyses.couplings = "new"
    assert analyses.filled() == {"couplings": "new"}


def test_new_scores_clear_the_selection_and_what_was_built_on_it() -> None:
    analyses = _full()
    analyses.update(scores={"g1": 5}, criterion="l2")
    assert analyses.filled() == {"couplings": "c", "groups": ["g"], "scores": {"g1": 5},
                                 "criterion": "l2", "dead": {"g1": 0}}


def test_a_new_selection_clears_reconstructed_weights_but_keeps_its_inputs() -> None:
    analyses = _full()
    analyses.update(selection={"g1": 1}, plan="q")
    assert analyses.reconstructed is None and analyses.growth is None
    assert analyses.scores == {"g1": 1} and analyses.dead == {"g1": 0}


def test_unknown_slots_are_refused() -> None:
    with pytest.raises(AttributeError, match="no analysis slot"):
        Analyses().update(selections={})
    with pytest.raises(AttributeError):
        Analyses().scorez = {}


def _prune(pipeline: str) -> tuple[ir.Model, PipelineContext]:
    model = spa_opt.load_model(RESNET)
    context = PipelineContext(targets=Targets(target_flops=0.6)).attach(model)
    for pass_ in build_pipeline(pipeline):
        pass_(model)
    return model, context


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}


def test_couple_after_obspa_drops_its_selection_and_reconstructed_weights() -> None:
    """``couple,group,obspa,couple,prune``: prune plans afresh and writes no stale weights.

    With obspa's results gone, prune falls back to the default criterion, so the result
    must be exactly ``couple,group,l1,prune``'s.
    """
    stale, context = _prune("couple,group,obspa<hessian=noise;samples=4>,couple,prune")
    assert context.report["prune"]["groups"], "something must have been pruned"
    assert context.analyses.reconstructed is None
    fresh, _ = _prune("couple,group,l1,prune")
    got, want = _weights(stale), _weights(fresh)
    assert got.keys() == want.keys()
    for name, array in want.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_obspa_then_prune_does_write_the_reconstructed_weights() -> None:
    """The control of the test above: without the second couple, obspa's weights land."""
    reconstructed, _ = _prune("couple,group,obspa<hessian=noise;samples=4>,prune")
    plain, _ = _prune("couple,group,l1,prune")
    got, want = _weights(reconstructed), _weights(plain)
    assert any(got[n].shape != want[n].shape or not np.array_equal(got[n], want[n])
               for n in want if n in got)


@pytest.mark.parametrize("keyword, value, words", [
    ("ratio", 1.5, "ratio must be in [0, 1], got 1.5"),
    ("target_flops", -0.1, "target_flops must be in [0, 1], got -0.1"),
    ("round_to", 0, "round_to must be at least 1 or 'auto', got 0"),
    ("scope", "planet", "scope must be 'local' or 'global', got 'planet'"),
])
def test_api_errors_name_the_keyword_the_caller_used(keyword, value, words) -> None:
    from spa_opt.errors import OptionError

    with pytest.raises(OptionError) as caught:
        spa_opt.optimize(str(RESNET), "dce", **{keyword: value})
    assert str(caught.value) == words
    assert caught.value.as_flag() == "--" + words.replace("_", "-", 1) \
        if keyword != "round_to" else "--round-to must be at least 1, got 0"


def test_an_ignore_pattern_matching_nothing_is_named_as_used() -> None:
    from spa_opt.errors import OptionError

    with pytest.raises(OptionError, match=r"^ignore 'nothing\*' matches no node name$"):
        spa_opt.optimize(str(RESNET), "dce", ignore=["nothing*"])
