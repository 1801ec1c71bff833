"""Random architectures keep every property of the passes (issue 16, property-based).

Why: hand-written rule tests cover the patterns one at a time; these compose them at
random (``tests/fuzz/architectures.py``) and check what must hold on any valid graph:

1. ``couple,group`` terminates within the solver's documented bound
   (``N + sum(rank(v) * degree(v))`` rule evaluations) and a few seconds;
2. ``dead`` on randomly zeroed units is lossless (1e-5) and finds every unit the
   onnxruntime oracle of ``bench/dead_oracle.py`` confirms dead;
3. ``couple,group,l1,prune`` at a random ratio gives a model that passes the full
   checker and runs in onnxruntime with the same input and output names and ranks;
4. ``spa-opt --print-ir-after all`` exits 0 and dumps after every pass;
5. the worst graphs the generator makes (deep chains, a wide Concat tree, many-way
   residual joins) meet the bound and finish in a few seconds (hang protection).

Every run is deterministic (``derandomize``, no example database). The default
budgets keep the module near 60 s on 2 cores; the ``slow`` variants (CI's ``-m slow``
step) try many more graphs. Shrunk counterexamples live as explicit regression tests
in ``test_regressions_random.py``; the long run is ``bench/random_architectures.py``.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.fuzz import random_checks
from tests.fuzz.architectures import Architecture, architectures, validate, worst_graphs


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    print_blob=True)


RATIOS = st.floats(0.05, 0.95).map(lambda r: round(r, 2))
SLOW = 3
"""How many times more examples the ``slow`` variants try."""


def _valid(arch: Architecture) -> None:
    note(repr(arch))
    validate(arch.proto)  # an invalid graph is the generator's bug: it fails here


def _coupling(arch: Architecture) -> None:
    _valid(arch)
    random_checks.check_coupling(arch.proto)


def _dead(arch: Architecture, seed: int) -> None:
    _valid(arch)
    random_checks.check_dead(arch.proto, seed)


def _prune(arch: Architecture, ratio: float, scope: str) -> None:
    _valid(arch)
    random_checks.check_prune(arch.proto, ratio, scope)


def _print_ir(arch: Architecture, ratio: float) -> None:
    _valid(arch)
    random_checks.check_print_ir(arch.proto, ratio)


@_settings(250)
@given(architectures())
def test_couple_group_terminates_within_the_bound(arch: Architecture) -> None:
    _coupling(arch)


@_settings(100)
@given(architectures(), st.integers(0, 2**16))
def test_dead_is_lossless_and_finds_the_zeroed_units(arch: Architecture, seed: int) -> None:
    _dead(arch, seed)


@_settings(120)
@given(architectures(), RATIOS, st.sampled_from(["local", "global"]))
def test_l1_prune_gives_a_valid_model_with_the_same_io(arch: Architecture, ratio: float,
                                                        scope: str) -> None:
    _prune(arch, ratio, scope)


@_settings(60)
@given(architectures(max_blocks=4), RATIOS)
def test_print_ir_after_all_never_fails(arch: Architecture, ratio: float) -> None:
    _print_ir(arch, ratio)


WORST = worst_graphs()


@pytest.mark.parametrize("name", sorted(WORST))
def test_the_worst_graphs_meet_the_bound_in_seconds(name: str) -> None:
    arch = WORST[name]
    assert arch.nodes >= 200, f"{name} has only {arch.nodes} nodes"
    validate(arch.proto)
    random_checks.check_coupling(arch.proto)
    start = time.perf_counter()
    random_checks.check_prune(arch.proto, 0.5)
    seconds = time.perf_counter() - start
    assert seconds < 4 * random_checks.SECONDS, f"{name}: l1,prune took {seconds:.1f} s"


@pytest.mark.slow
@_settings(250 * SLOW)
@given(architectures(max_blocks=10))
def test_slow_couple_group_terminates_within_the_bound(arch: Architecture) -> None:
    _coupling(arch)


@pytest.mark.slow
@_settings(100 * SLOW)
@given(architectures(max_blocks=10), st.integers(0, 2**16))
def test_slow_dead_is_lossless_and_finds_the_zeroed_units(arch: Architecture,
                                                           seed: int) -> None:
    _dead(arch, seed)


@pytest.mark.slow
@_settings(120 * SLOW)
@given(architectures(max_blocks=10), RATIOS, st.sampled_from(["local", "global"]))
def test_slow_l1_prune_gives_a_valid_model_with_the_same_io(arch: Architecture, ratio: float,
                                                             scope: str) -> None:
    _prune(arch, ratio, scope)


@pytest.mark.slow
@_settings(60 * SLOW)
@given(architectures(max_blocks=10), RATIOS)
def test_slow_print_ir_after_all_never_fails(arch: Architecture, ratio: float) -> None:
    _print_ir(arch, ratio)
