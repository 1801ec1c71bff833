"""The properties random architectures must keep, as plain functions (issue 16).

Why plain functions: the hypothesis tests (``tests/fuzz/test_random_architectures.py``)
and the long run (``bench/random_architectures.py``) judge a graph the same way, so a
bench failure is reproduced by the test and the other way round. Each check raises
``AssertionError`` with what went wrong; anything else it raises is spa-opt's bug too.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from spa_opt.ir.shapes import temporary_shapes
from spa_opt.ort import quiet_session_options
from tests.fuzz.architectures import random_input

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
"""Largest output change ``dead`` may cause (its removals are lossless)."""
SECONDS = 5.0
"""Wall time ``couple,group`` may take on any generated graph (the worst take ~1 s)."""


def evaluation_bound(model: ir.Model) -> int:
    """``N + sum(rank(v) * degree(v))``: the rule evaluations the solver's docstring allows.

    Each value can gain at most ``rank`` tracked axes and each gain re-queues its
    producer and consumers, on top of the first visit of every node.
    """
    graph = model.graph
    bound = len(graph)
    with temporary_shapes(model):
        values = {id(v): v for node in graph for v in (*node.inputs, *node.outputs)
                  if v is not None}
        for value in values.values():
            rank = len(value.shape) if value.shape is not None else 0
            degree = len(value.consumers()) + (value.producer() is not None)
            bound += rank * degree
    return bound


def check_coupling(proto: onnx.ModelProto) -> dict[str, int]:
    """``couple,group`` terminates within the documented bound and :data:`SECONDS`."""
    from spa_opt.passes.couple import couple_model
    from spa_opt.passes.coupling.groups import build_groups

    model = ir.from_proto(proto)
    start = time.perf_counter()
    coupling = couple_model(model)
    build_groups(coupling, model.graph)
    seconds = time.perf_counter() - start
    bound = evaluation_bound(model)
    evaluations = coupling.stats["evaluations"]
    assert evaluations <= bound, f"{evaluations} rule evaluations > bound {bound}"
    assert seconds <= SECONDS, f"couple,group took {seconds:.1f} s"
    return {"evaluations": evaluations, "bound": bound}


def _signature(proto: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """Names and ranks of the graph's inputs and outputs."""
    return [(kind, v.name, len(v.type.tensor_type.shape.dim))
            for kind, values in (("input", proto.graph.input), ("output", proto.graph.output))
            for v in values]


def check_prune(proto: onnx.ModelProto, ratio: float, scope: str = "local") -> int:
    """``couple,group,l1,prune`` at ``ratio``: a checked model that runs with the same IO.

    Returns the number of channels removed.
    """
    import spa_opt

    model, report = spa_opt.optimize(proto, "couple,group,l1,prune", ratio=ratio, verify=1,
                                     scope=scope)  # type: ignore[arg-type]
    result = ir.serde.serialize_model(model)
    onnx.checker.check_model(result, full_check=True)
    assert _signature(result) == _signature(proto), (
        f"IO changed: {_signature(proto)} -> {_signature(result)}")
    session = ort.InferenceSession(result.SerializeToString(), quiet_session_options(),
                                   providers=["CPUExecutionProvider"])
    outputs = session.run(None, random_input(proto))
    reference = ort.InferenceSession(proto.SerializeToString(), quiet_session_options(),
                                     providers=["CPUExecutionProvider"]).run(
                                         None, random_input(proto))
    for got, want in zip(outputs, reference, strict=True):
        assert got.shape == want.shape, f"output shape {want.shape} -> {got.shape}"
    return int(report.to_dict()["channels"]["removed"])


def check_dead(proto: onnx.ModelProto, seed: int = 0, groups: int = 2) -> int:
    """Zero units of up to ``groups`` groups: ``dead`` finds the confirmed ones, losslessly.

    The killer and the onnxruntime oracle are ``bench/dead_oracle.py``'s (the one the
    golden models are checked with). Returns the number of confirmed cases.
    """
    import spa_opt
    from spa_opt.passes import PipelineContext
    from spa_opt.verify import random_inputs

    dead_oracle = _dead_oracle()
    model, _ = spa_opt.optimize(proto, dead_oracle.PIPELINE)
    found = dead_oracle.candidates(PipelineContext.of(model).analyses.groups)
    rng = np.random.default_rng(seed)
    if len(found) > groups:
        found = [found[i] for i in sorted(rng.choice(len(found), groups, replace=False))]
    feeds = random_inputs(model, dead_oracle.FEEDS, seed=seed + 1)
    confirmed = 0
    for group in found:
        case = dead_oracle.check_group(model, group, feeds, rng)
        where = f"{group.id} ({case.primary}) units {case.units}"
        assert case.error is None, f"{where}: {case.error}"
        assert case.err is not None and case.err <= TOLERANCE, f"{where}: err {case.err}"
        assert not (case.confirmed and not case.found), f"{where}: dead missed the units"
        assert not case.failed, f"{where}: params -{case.params_drop} < zeroed {case.zeroed}"
        confirmed += case.confirmed
    return confirmed


def _dead_oracle():  # -> the module bench/dead_oracle.py
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import dead_oracle

    return dead_oracle


def check_print_ir(proto: onnx.ModelProto, ratio: float = 0.3) -> None:
    """``spa-opt --print-ir-after all`` exits 0 with one dump per pass and no traceback."""
    from spa_opt.cli import main

    passes = ["couple", "group", "l1", "prune"]
    with tempfile.TemporaryDirectory() as folder:
        source, target = os.path.join(folder, "in.onnx"), os.path.join(folder, "out.onnx")
        onnx.save(proto, source)
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["-p", ",".join(passes), "--ratio", str(ratio), "--no-progress",
                         "--print-ir-after", "all", source, target])
        text = err.getvalue()
        assert code == 0, f"exit {code}: {text[-2000:]}"
        assert "Traceback" not in text, text[-2000:]
        headers = re.findall(r"^; \*\*\* IR dump after (\S+) \*\*\*$", text, re.M)
        assert headers == passes, headers
        onnx.checker.check_model(onnx.load(target), full_check=True)
