"""Shrunk counterexamples of the random architectures (issue 16), as explicit graphs.

Why: a hypothesis failure is only reproducible while the strategy draws the same way;
these small graphs keep the bug fixed whatever the generator becomes. The unit tests of
each fix sit beside the code they test (``tests/test_prune_patches.py`` for the strided
Slice); here is the shape the generator found it in.
"""

from __future__ import annotations

from onnx import numpy_helper

import spa_opt
from tests.conftest import make_model
from tests.fuzz.random_checks import check_dead, check_prune
from tests.rule_graphs import i64, node, vi, w


def strided_head(zero_rows: list[int]):
    """``Gemm(x) -> Concat with x -> Slice(-6:-3:2) -> Gemm``: the Slice skips the Gemm's rows.

    Seed 11 of ``bench/random_architectures.py`` before the fix: ``dead`` found the
    zeroed rows of the first Gemm, which the strided Slice never reads, but ``prune``
    skipped every group a strided Slice touched, so nothing was removed.
    """
    first = w("W1", 12, 4)
    data = numpy_helper.to_array(first).copy()
    data[zero_rows] = 0
    nodes = [node("Gemm", ["x", "W1"], "h", transB=1),
             node("Concat", ["h", "x", "x"], "c", axis=1),
             node("Slice", ["c", "st", "en", "ax", "stp"], "s"),
             node("Gemm", ["s", "W2"], "y", transB=1)]
    inits = [numpy_helper.from_array(data, "W1"), i64("st", [-6]), i64("en", [-3]),
             i64("ax", [1]), i64("stp", [2]), w("W2", 3, 2)]
    return make_model(nodes, [vi("x", 2, 4)], [vi("y", 2, 3)], inits, opset=14)


def test_dead_rows_behind_a_strided_slice_are_removed() -> None:
    proto = strided_head([1, 11])
    _, report = spa_opt.optimize(proto, "couple,group,dead,prune", verify=2)
    data = report.to_dict()
    assert data["prune"]["skipped"] == []
    assert data["params"]["before"] - data["params"]["after"] >= 2 * 4
    assert data["verify"]["max_abs_err"] <= 1e-5


def test_the_strided_head_keeps_every_property() -> None:
    proto = strided_head([])
    check_dead(proto, seed=11)
    for ratio in (0.25, 0.5, 0.9):
        assert check_prune(proto, ratio) > 0


def test_an_unevenly_spaced_survivor_set_goes_through_a_gather() -> None:
    """Conv rows 0..8, Slice step 3 picks 0, 3, 6; dead row 1 goes: 0, 2, 5 need a Gather."""
    first = numpy_helper.to_array(w("W1", 9, 3, 1, 1)).copy()
    first[1] = 0
    nodes = [node("Conv", ["x", "W1"], "h"),
             node("Slice", ["h", "st", "en", "ax", "stp"], "s"),
             node("Conv", ["s", "W2"], "y")]
    inits = [numpy_helper.from_array(first, "W1"), i64("st", [0]), i64("en", [9]),
             i64("ax", [1]), i64("stp", [3]), w("W2", 2, 3, 1, 1)]
    proto = make_model(nodes, [vi("x", 1, 3, 4, 4)], [vi("y", 1, 2, 4, 4)], inits)
    model, report = spa_opt.optimize(proto, "couple,group,dead,prune", verify=2)
    data = report.to_dict()
    assert data["channels"]["removed"] == 1 and data["verify"]["max_abs_err"] <= 1e-5
    assert [n.op_type for n in model.graph] == ["Conv", "Gather", "Slice", "Conv"]
    assert check_prune(proto, 0.5) > 0


def test_unread_split_part_of_a_residual_stream_is_not_dead() -> None:
    """Seed 779 of ``bench/random_architectures.py``, shrunk.

    ``h = x @ W1`` (6 channels), ``r = h + h @ W2``, ``a, b = Split(r, [4, 2])``; only
    ``a`` is an output (``b`` feeds a Relu nobody reads). ``dead`` calls channels 4, 5
    dead because no node reading them "lets them leave the group": ``h @ W2`` writes
    into the same residual group. But the MatMul contracts them: rows 4, 5 of ``W2``
    feed every output column, ``a`` included, so removing them moves ``a`` (by 4.6).
    """
    nodes = [node("MatMul", ["x", "W1"], "h"), node("MatMul", ["h", "W2"], "m"),
             node("Add", ["h", "m"], "r"),
             node("Split", ["r", "sp"], ["a", "b"], axis=-1), node("Relu", ["b"], "unused")]
    inits = [w("W1", 4, 6), w("W2", 6, 6), i64("sp", [4, 2])]
    proto = make_model(nodes, [vi("x", 1, 3, 4)], [vi("a", 1, 3, 4)], inits)
    _, report = spa_opt.optimize(proto, "couple,group,dead,prune", verify=2)
    data = report.to_dict()
    assert data["verify"]["max_abs_err"] <= 1e-5, data["dead"]
