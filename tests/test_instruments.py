"""Tests of the pass manager, its instruments, and composition with onnx_ir's pass machinery."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_ir.passes.common import TopologicalSortPass

import spa_opt  # noqa: F401  (registers passes)
from spa_opt.errors import InputError, PassError, VerificationError
from spa_opt.ir import set_constant
from spa_opt.passes import (
    DeadCodeEliminationPass,
    FoldConstantsPass,
    Instrument,
    PassManager,
    PassRecord,
    PipelineContext,
    SpaPass,
    TopoSortPass,
)
from spa_opt.passes._infra.instruments import (
    PrintIRAfterInstrument,
    ProgressInstrument,
    StatsInstrument,
    TimingInstrument,
    VerifyEachInstrument,
)


def make_model() -> ir.Model:
    """x -> MatMul(w) -> Add(Constant) -> Relu -> y, plus a dead Sigmoid; nodes out of order."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.ones(3, np.float32), "bias_value")
    nodes = [
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
        helper.make_node("Add", ["xw", "bias"], ["h"], name="add"),
        helper.make_node("Constant", [], ["bias"], name="bias_const", value=bias),
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
        helper.make_node("Sigmoid", ["xw"], ["dead"], name="dead_sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=10)
    return ir.from_proto(proto)


def sorted_model() -> ir.Model:
    model = make_model()
    TopologicalSortPass()(model)
    return model


def node_names(model: ir.Model) -> list[str]:
    return [node.name for node in model.graph]


class LogPass(SpaPass):
    """Append its name to a shared log and count; modified as told."""

    def __init__(self, name: str, log: list, modified: bool = False, stats: int = 1) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.modified = modified
        self.stats_count = stats

    def run(self, model, context):
        self.log.append(("run", self.name))
        for _ in range(self.stats_count):
            self.count("calls")
        if self.stats_count:
            self.count("weight", 0.5)
        return ir.passes.PassResult(model, self.modified)


class RecordingInstrument(Instrument):
    """Log every hook call with its arguments."""

    def __init__(self, tag: str, log: list) -> None:
        self.tag = tag
        self.log = log
        self.records: list[PassRecord] = []

    def before_run(self, model: ir.Model, passes: Sequence[SpaPass]) -> None:
        self.log.append((self.tag, "before_run", tuple(p.name for p in passes)))

    def before_pass(self, pass_: SpaPass, model: ir.Model) -> None:
        self.log.append((self.tag, "before_pass", pass_.name))

    def after_pass(self, pass_: SpaPass, model: ir.Model, record: PassRecord) -> None:
        self.records.append(record)
        self.log.append((self.tag, "after_pass", pass_.name, record.modified))

    def after_run(self, model: ir.Model, records: Sequence[PassRecord]) -> None:
        self.log.append((self.tag, "after_run", tuple(r.name for r in records)))


# --------------------------------------------------------------------------- the manager


def test_pass_manager_runs_passes_in_order_and_records_them() -> None:
    log: list = []
    passes = [LogPass("first", log), LogPass("second", log, modified=True, stats=3),
              LogPass("third", log, stats=0)]
    manager = PassManager(passes)
    model = make_model()
    result = manager(model)
    assert log == [("run", "first"), ("run", "second"), ("run", "third")]
    assert result.model is model and result.modified is True
    assert [r.name for r in manager.records] == ["first", "second", "third"]
    assert [r.modified for r in manager.records] == [False, True, False]
    assert all(isinstance(r.seconds, float) and r.seconds >= 0 for r in manager.records)
    assert [r.stats for r in manager.records] == [
        {"calls": 1, "weight": 0.5}, {"calls": 3, "weight": 0.5}, {}]
    assert manager.records[1].to_dict() == {
        "name": "second", "seconds": manager.records[1].seconds, "modified": True,
        "stats": {"calls": 3, "weight": 0.5}}


def test_pass_manager_unmodified_when_no_pass_modifies() -> None:
    manager = PassManager([LogPass("a", []), LogPass("b", [])])
    assert manager(make_model()).modified is False


def test_records_are_snapshots_and_reset_each_run() -> None:
    log: list = []
    again = LogPass("again", log)
    manager = PassManager([again, again])
    model = make_model()
    manager(model)
    assert [r.stats for r in manager.records] == [{"calls": 1, "weight": 0.5}] * 2
    manager.records[0].stats["calls"] = 99
    assert again.stats["calls"] == 1  # a record holds a copy
    manager(model)
    assert len(manager.records) == 2
    assert manager.records[0].stats == {"calls": 1, "weight": 0.5}


def test_empty_pass_manager_calls_run_hooks() -> None:
    log: list = []
    manager = PassManager([], [RecordingInstrument("A", log)])
    assert manager(make_model()).modified is False
    assert log == [("A", "before_run", ()), ("A", "after_run", ())]


def test_instrument_hooks_are_called_in_order() -> None:
    log: list = []
    first, second = RecordingInstrument("A", log), RecordingInstrument("B", log)
    manager = PassManager([LogPass("p1", log, modified=True), LogPass("p2", log)],
                          [first, second])
    manager(make_model())
    assert log == [
        ("A", "before_run", ("p1", "p2")),
        ("B", "before_run", ("p1", "p2")),
        ("A", "before_pass", "p1"),
        ("B", "before_pass", "p1"),
        ("run", "p1"),
        ("A", "after_pass", "p1", True),
        ("B", "after_pass", "p1", True),
        ("A", "before_pass", "p2"),
        ("B", "before_pass", "p2"),
        ("run", "p2"),
        ("A", "after_pass", "p2", False),
        ("B", "after_pass", "p2", False),
        ("A", "after_run", ("p1", "p2")),
        ("B", "after_run", ("p1", "p2")),
    ]
    assert first.records == manager.records == second.records
    assert all(a is b for a, b in zip(first.records, manager.records, strict=True))


def test_default_instrument_hooks_do_nothing() -> None:
    manager = PassManager([LogPass("p", [])], [Instrument()])
    assert manager(make_model()).modified is False


def test_an_exception_in_a_pass_propagates_and_stops_the_run() -> None:
    log: list = []

    class Boom(SpaPass):
        """Fail."""

        name = "boom"

        def run(self, model, context):
            raise RuntimeError("boom")

    manager = PassManager([LogPass("p1", log), Boom(), LogPass("p3", log)],
                          [RecordingInstrument("A", log)])
    with pytest.raises(PassError, match="pass 'boom' failed: RuntimeError: boom") as caught:
        manager(make_model())
    assert caught.value.pass_name == "boom"
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert ("run", "p3") not in log
    assert ("A", "after_run", ("p1",)) not in log
    assert [r.name for r in manager.records] == ["p1"]


# --------------------------------------------------------------------------- instruments


def run_real_pipeline(instruments, model: ir.Model | None = None
                      ) -> tuple[ir.Model, PassManager]:
    model = make_model() if model is None else model
    manager = PassManager([FoldConstantsPass(), DeadCodeEliminationPass(), TopoSortPass()],
                          instruments)
    manager(model)
    return model, manager


def test_timing_instrument_writes_a_table_to_its_stream(capsys) -> None:
    stream = io.StringIO()
    _, manager = run_real_pipeline([TimingInstrument(stream)])
    text = stream.getvalue()
    assert text.startswith("===-- spa-opt pass timing --===\n")
    rows = [line.split() for line in text.splitlines()[2:]]
    assert [row[2] for row in rows] == ["fold-constants", "dce", "topo-sort", "total"]
    assert rows[-1][1] == "100.0%"
    for row, record in zip(rows, manager.records, strict=False):
        assert float(row[0]) == pytest.approx(record.seconds, abs=1e-4)
    assert capsys.readouterr().err == ""


def test_timing_instrument_defaults_to_stderr(capsys) -> None:
    run_real_pipeline([TimingInstrument()])
    assert "total" in capsys.readouterr().err


def test_stats_instrument_writes_counters_to_its_stream(capsys) -> None:
    stream = io.StringIO()
    log: list = []
    manager = PassManager([DeadCodeEliminationPass(), LogPass("counting", log, stats=2),
                           LogPass("silent", log, stats=0)], [StatsInstrument(stream)])
    manager(make_model())
    lines = stream.getvalue().splitlines()
    assert lines[0] == "===-- spa-opt statistics --==="
    assert "  dce: nodes-removed = 1" in lines
    assert "  counting: calls = 2" in lines
    assert "  counting: weight = 0.5" in lines
    assert "  silent: (no counters)" in lines
    assert capsys.readouterr().err == ""


def test_print_ir_after_named_pass(capsys) -> None:
    stream = io.StringIO()
    run_real_pipeline([PrintIRAfterInstrument(["dce"], stream)])
    text = stream.getvalue()
    assert re.findall(r"^; \*\*\* IR dump after (\S+) \*\*\*$", text, re.M) == ["dce"]
    assert "MatMul" in text and "dead_sigmoid" not in text  # printed after DCE
    assert capsys.readouterr().err == ""


def test_print_ir_after_all() -> None:
    stream = io.StringIO()
    run_real_pipeline([PrintIRAfterInstrument(["all"], stream)])
    headers = re.findall(r"^; \*\*\* IR dump after (\S+) \*\*\*$", stream.getvalue(), re.M)
    assert headers == ["fold-constants", "dce", "topo-sort"]


def test_print_ir_after_a_pass_not_in_the_pipeline_prints_nothing() -> None:
    stream = io.StringIO()
    run_real_pipeline([PrintIRAfterInstrument(["check"], stream)])
    assert stream.getvalue() == ""


class BreakMatMulPass(SpaPass):
    """Give the MatMul weight a first dimension that no longer matches its input."""

    name = "test-break-matmul"

    def __init__(self, report_modified: bool = True) -> None:
        super().__init__()
        self.report_modified = report_modified

    def run(self, model, context):
        set_constant(model.graph.initializers["w"], np.zeros((7, 3), np.float32))
        return ir.passes.PassResult(model, self.report_modified)


def test_verify_each_names_the_pass_that_broke_the_model() -> None:
    log: list = []
    manager = PassManager([DeadCodeEliminationPass(), BreakMatMulPass(), LogPass("later", log)],
                          [VerifyEachInstrument()])
    with pytest.raises(VerificationError, match="after pass 'test-break-matmul'"):
        manager(sorted_model())
    assert log == []  # stopped before the next pass


def test_verify_each_skips_passes_that_report_no_change() -> None:
    manager = PassManager([BreakMatMulPass(report_modified=False)], [VerifyEachInstrument()])
    manager(sorted_model())  # by contract only modified models are checked


def test_verify_each_accepts_a_sound_pipeline() -> None:
    run_real_pipeline([VerifyEachInstrument()], sorted_model())


def test_progress_instrument_disabled_writes_nothing(capsys) -> None:
    run_real_pipeline([ProgressInstrument(False)])
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_instrument_follows_the_terminal(capsys) -> None:
    assert ProgressInstrument().enabled is False  # capsys' stderr is not a terminal
    run_real_pipeline([ProgressInstrument()])
    assert capsys.readouterr().err == ""


def test_progress_instrument_enabled_draws_on_stderr(capsys) -> None:
    instrument = ProgressInstrument(True)
    run_real_pipeline([instrument])
    assert "pass" in capsys.readouterr().err
    assert instrument._bar is None  # closed after the run


# --------------------------------------------------------------------------- composition


def test_pass_manager_nests_in_onnx_ir_sequential() -> None:
    model = make_model()
    inner = PassManager([FoldConstantsPass(), DeadCodeEliminationPass()],
                        [TimingInstrument(io.StringIO())])
    result = ir.passes.Sequential(TopologicalSortPass(), inner, TopologicalSortPass())(model)
    assert result.model is model and result.modified
    assert [r.name for r in inner.records] == ["fold-constants", "dce"]
    assert "dead_sigmoid" not in node_names(model)
    assert node_names(model) == ["matmul", "add", "relu"]
    assert "bias" in model.graph.initializers  # the Constant became an initializer
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_spa_passes_compose_in_onnx_ir_pass_manager() -> None:
    model = make_model()
    dce = DeadCodeEliminationPass()
    manager = ir.passes.PassManager(
        [TopoSortPass(), FoldConstantsPass(), dce, TopologicalSortPass()], steps=2)
    result = manager(model)
    assert result.model is model and result.modified
    assert node_names(model) == ["matmul", "add", "relu"]
    assert dce.stats == {"nodes-removed": 0, "initializers-removed": 0}  # second step
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_spa_pass_alone_is_an_onnx_ir_in_place_pass() -> None:
    model = sorted_model()
    dce = DeadCodeEliminationPass()
    assert isinstance(dce, ir.passes.InPlacePass)
    result = dce(model)
    assert result.model is model and result.modified
    assert dce.stats == {"nodes-removed": 1, "initializers-removed": 0}
    assert isinstance(PipelineContext.of(model), PipelineContext)


def test_modifying_pass_invalidates_analyses_and_preserving_pass_keeps_them() -> None:
    model = sorted_model()
    context = PipelineContext.of(model)
    context.analyses.groups = "stale"
    TopoSortPass()(model)  # preserves analyses
    assert context.analyses.filled() == {"groups": "stale"}
    DeadCodeEliminationPass()(model)  # modifies the graph
    assert context.analyses.filled() == {}



def test_deliberate_errors_keep_their_type_and_words_and_name_the_pass() -> None:
    class Refuse(SpaPass):
        """Raise a deliberate InputError."""

        name = "test-refuse"

        def run(self, model, context):
            raise InputError("this input cannot be used")

    with pytest.raises(InputError, match=r"^this input cannot be used$") as refused:
        PassManager([TopoSortPass(), Refuse()])(make_model())
    assert refused.value.pass_name == "test-refuse"
