"""Tests of the ``spa-opt`` command line, in-process and as the installed executable.

Every exit-code case runs twice: through ``spa_opt.cli.main`` in this process and
through the real console script in a subprocess (stderr is a pipe there, so it
also proves no traceback and no progress bar reaches a user). The subprocess runs
are started together by one module fixture, so they cost one interpreter start-up
each in parallel rather than in sequence.

Passes that must misbehave on purpose live in ``misbehaving_passes``: a module
fixture registers them while this module's tests run, and a ``sitecustomize.py``
on the subprocesses' ``PYTHONPATH`` registers them in the executable too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_cli_in
from misbehaving_passes import SITECUSTOMIZE, registered
from onnx import TensorProto, external_data_helper, helper, numpy_helper

import spa_opt
from spa_opt.passes import all_passes, format_pipeline, parse_pipeline

ROOT = Path(__file__).resolve().parent.parent
RESNET_TINY = ROOT / "golden_models" / "resnet_tiny.onnx"
LIGHT = Path(onnx.__path__[0]) / "backend" / "test" / "data" / "light"
SQUEEZENET = LIGHT / "light_squeezenet.onnx"

_BESIDE_PYTHON = Path(sys.executable).parent / "spa-opt"
SPA_OPT = str(_BESIDE_PYTHON) if _BESIDE_PYTHON.exists() else shutil.which("spa-opt")

@pytest.fixture(scope="module", autouse=True)
def _plugin_passes():
    """Register the misbehaving passes for this module's tests only."""
    with registered():
        yield


# --------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder below ``folder`` (hidden included) with bytes and mtime."""
    return {
        str(entry.relative_to(folder)): (
            entry.read_bytes() if entry.is_file() else b"<dir>",
            entry.stat().st_mtime_ns,
        )
        for entry in sorted(folder.rglob("*"))
    }


def assert_untouched_except(before: dict, after: dict, new: set[str] = frozenset()) -> None:
    """Files present before are byte- and mtime-identical; only ``new`` names appeared."""
    for name, (data, mtime) in before.items():
        assert name in after, f"{name} disappeared"
        assert after[name][0] == data, f"{name} changed"
        assert after[name][1] == mtime, f"{name} has a new mtime"
    assert set(after) - set(before) == set(new)


def ort_outputs(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def random_feed(path: Path) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for value in session.get_inputs():
        dims = [d if isinstance(d, int) else 1 for d in value.shape]
        feed[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1 and text.endswith("\n"), f"expected one line, got {text!r}"
    return lines[0]


def write_plugin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def run_executable(folder: Path, argv: list[str], plugin: Path | None = None
                   ) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if plugin is not None:
        paths = [str(plugin), str(Path(__file__).parent), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return subprocess.run([SPA_OPT, *argv], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, check=False)


def assert_no_progress_bar(stderr: str) -> None:
    assert "\r" not in stderr
    assert "it/s" not in stderr and "pass/s" not in stderr


# --------------------------------------------------------------------------- case builders


def with_input(folder: Path) -> None:
    shutil.copy2(RESNET_TINY, folder / "in.onnx")


def _write_outside_reference(folder: Path) -> None:
    """``model/in.onnx`` whose weight lives in ``../weights.bin`` (outside its folder)."""
    weights = np.arange(6, dtype=np.float32)
    (folder / "weights.bin").write_bytes(weights.tobytes())
    tensor = numpy_helper.from_array(weights, "w")
    external_data_helper.set_external_data(tensor, "../weights.bin", offset=0,
                                           length=weights.nbytes)
    tensor.ClearField("raw_data")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")], "outside",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    (folder / "model").mkdir()
    (folder / "model" / "in.onnx").write_bytes(model.SerializeToString())


def _setup(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        for step in steps:
            step(folder)
    return run


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def _mkdir(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).mkdir()


@dataclass(frozen=True)
class Case:
    """One run of the CLI: how to prepare its folder, its argv, what it must print."""

    setup: Callable[[Path], None]
    argv: tuple[str, ...]
    code: int
    message: str = ""
    plugin: bool = False
    executable: bool = True
    """Also run through the real executable (each run costs a second of start-up)."""


_DCE = ("-p", "dce")
_IO = ("in.onnx", "out.onnx")

#: Bad input: exit 2, one line on stderr, nothing written.
INPUT_ERRORS: dict[str, Case] = {
    "missing-input": Case(_setup(), (*_DCE, "missing.onnx", "out.onnx"), 2, "missing.onnx"),
    "directory-input": Case(_mkdir("folder.onnx"), (*_DCE, "folder.onnx", "out.onnx"), 2,
                            "folder.onnx"),
    "random-bytes": Case(_write("in.onnx", np.random.default_rng(0).bytes(4096)), (*_DCE, *_IO),
                         2, "not an ONNX model"),
    "empty-file": Case(_write("in.onnx", b""), (*_DCE, *_IO), 2, "not an ONNX model"),
    "text-file": Case(_write("in.onnx", b"hello, this is not a model\n"), (*_DCE, *_IO), 2,
                      "not an ONNX model", executable=False),
    "truncated-model": Case(_write("in.onnx", RESNET_TINY.read_bytes()[:5000]), (*_DCE, *_IO),
                            2, "not an ONNX model", executable=False),
    "no-pipeline": Case(with_input, _IO, 2, "no pipeline", executable=False),
    "unknown-pass": Case(with_input, ("-p", "fold-constant,dce", *_IO), 2,
                         "did you mean 'fold-constants'"),
    "unknown-option": Case(with_input, ("-p", "fold-constants<input-size=3>", *_IO), 2,
                           "has no option 'input-size'"),
    "bad-option-value": Case(with_input, ("-p", "fold-constants<input-size-limit=lots>", *_IO),
                             2, "input-size-limit"),
    "bad-pipeline-syntax": Case(with_input, ("-p", "dce<", *_IO), 2, "unclosed",
                                executable=False),
    "ratio-1.5": Case(with_input, (*_DCE, "--ratio", "1.5", *_IO), 2, "--ratio"),
    "round-to-0": Case(with_input, (*_DCE, "--round-to", "0", *_IO), 2, "--round-to"),
    "unknown-flag": Case(with_input, (*_DCE, "--no-such-flag", *_IO), 2, "--no-such-flag",
                         executable=False),
    "missing-output": Case(with_input, (*_DCE, "in.onnx"), 2, "output"),
    "output-is-input": Case(with_input, (*_DCE, "in.onnx", "./in.onnx"), 2, "input model"),
    "output-folder-missing": Case(with_input, (*_DCE, "in.onnx", "nowhere/out.onnx"), 2,
                                  "nowhere"),
    "output-is-a-folder": Case(_setup(with_input, _mkdir("out.onnx")), (*_DCE, *_IO), 2,
                               "out.onnx", executable=False),
    "ignore-matches-nothing": Case(with_input, (*_DCE, "--ignore", "no.such.layer*", *_IO), 2,
                                   "no.such.layer*"),
    "print-ir-after-unknown": Case(with_input, (*_DCE, "--print-ir-after", "dcee", *_IO), 2,
                                   "did you mean 'dce'"),
    "external-data-outside": Case(_write_outside_reference,
                                  (*_DCE, "model/in.onnx", "out.onnx"), 2, "outside"),
    "report-folder-missing": Case(with_input, (*_DCE, "--report", "nowhere/r.json", *_IO), 2,
                                  "nowhere", executable=False),
    # The report must never overwrite the input or the output model, nor fail after the
    # output was written (see the bug notes in the tests below).
    "report-is-input": Case(with_input, (*_DCE, "--report", "in.onnx", *_IO), 2, "in.onnx",
                            executable=False),
    "report-is-output": Case(with_input, (*_DCE, "--report", "out.onnx", *_IO), 2, "out.onnx",
                             executable=False),
    "report-is-a-folder": Case(_setup(with_input, _mkdir("r.json")),
                               (*_DCE, "--report", "r.json", *_IO), 2, "r.json", executable=False),
}

#: Our fault: exit 1, one line naming an internal error (the traceback only with --debug).
INTERNAL_ERRORS: dict[str, Case] = {
    "pass-raises": Case(with_input, ("-p", "dce,test-explode", *_IO), 1,
                        "test-explode went off", plugin=True),
    "verify-each-broken-pass": Case(
        with_input, ("-p", "dce,test-break-conv-out,dce", "--verify-each", *_IO), 1,
        "after pass 'test-break-conv-out'", plugin=True),
}

#: Further executable runs, checked by dedicated tests below.
OTHER_RUNS: dict[str, Case] = {
    "fold-dce-check": Case(with_input, ("-p", "fold-constants,dce,check", *_IO), 0),
    "instrumented": Case(
        with_input,
        ("-p", "fold-constants,dce,check", "--time-passes", "--stats", "--verify-each",
         "--print-ir-after", "dce", "--verify", "2", "--report", "r.json", *_IO), 0),
    "version": Case(_setup(), ("--version",), 0),
    "print-pipeline": Case(_setup(), ("-p", "fold-constants,dce", "--print-pipeline"), 0),
    "pass-raises-debug": Case(with_input, ("--debug", "-p", "test-explode", *_IO), 1,
                              plugin=True),
}

ALL_CASES = {**INPUT_ERRORS, **INTERNAL_ERRORS, **OTHER_RUNS}
FAILURES = [*INPUT_ERRORS, *INTERNAL_ERRORS]
EXECUTABLE_FAILURES = [name for name in FAILURES if ALL_CASES[name].executable]


@dataclass
class ExecutableRun:
    folder: Path
    before: dict
    after: dict
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def executable_runs(tmp_path_factory) -> dict[str, ExecutableRun]:
    """Run every case through the real executable, all at once."""
    assert SPA_OPT, "the spa-opt console script is not installed"
    base = tmp_path_factory.mktemp("exe")
    plugin = write_plugin(base / "plugin")
    prepared = {}
    names = [name for name, case in ALL_CASES.items() if case.executable]
    for name in names:
        case = ALL_CASES[name]
        folder = base / name
        folder.mkdir()
        case.setup(folder)
        prepared[name] = (folder, snapshot(folder))

    def launch(name: str) -> ExecutableRun:
        folder, before = prepared[name]
        case = ALL_CASES[name]
        result = run_executable(folder, list(case.argv), plugin if case.plugin else None)
        return ExecutableRun(folder, before, snapshot(folder), result)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(names, pool.map(launch, names), strict=True))


# --------------------------------------------------------------------------- exit codes


def _check_failure(case: Case, code: int, stderr: str) -> None:
    assert code == case.code, stderr
    assert "Traceback" not in stderr
    line = one_line(stderr)
    prefix = "spa-opt: error: " if case.code == 2 else "spa-opt: internal error: "
    assert line.startswith(prefix), line
    assert case.message in line


@pytest.mark.parametrize("name", FAILURES)
def test_failure_in_process(name: str, tmp_path: Path, capsys) -> None:
    case = ALL_CASES[name]
    case.setup(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_cli_in(capsys, tmp_path, list(case.argv))
    _check_failure(case, code, err)
    assert out == ""
    assert_untouched_except(before, snapshot(tmp_path))


@pytest.mark.parametrize("name", EXECUTABLE_FAILURES)
def test_failure_executable(name: str, executable_runs) -> None:
    run = executable_runs[name]
    _check_failure(ALL_CASES[name], run.result.returncode, run.result.stderr)
    assert run.result.stdout == ""
    assert_no_progress_bar(run.result.stderr)
    assert_untouched_except(run.before, run.after)


def test_internal_error_with_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", "dce,test-explode", "--debug", *_IO])
    assert code == 1
    assert "Traceback" in err and "RuntimeError: test-explode went off" in err
    assert err.splitlines()[-1].startswith(
        "spa-opt: internal error: pass 'test-explode' failed: RuntimeError: test-explode went off")
    assert_untouched_except(before, snapshot(tmp_path))


def test_internal_error_with_debug_executable(executable_runs) -> None:
    run = executable_runs["pass-raises-debug"]
    stderr = run.result.stderr
    assert run.result.returncode == 1
    assert "Traceback" in stderr and "RuntimeError: test-explode went off" in stderr
    assert "internal error" in stderr.splitlines()[-1]
    assert_untouched_except(run.before, run.after)


def test_abbreviated_flags_are_refused(tmp_path: Path, capsys) -> None:
    """Abbreviations like ``--deb`` would bypass main()'s own --debug check: refuse them."""
    with_input(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, ["--deb", "-p", "test-explode", *_IO])
    assert code == 2
    assert "unrecognized arguments: --deb" in err
    assert "Traceback" not in err


def test_input_error_names_the_unknown_option_suggestion(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path,
                                  ["-p", "fold-constants<input-size=3>", *_IO])
    assert code == 2
    assert "did you mean 'input-size-limit'" in err


def test_verify_each_catches_a_conv_fed_too_few_channels(tmp_path: Path, capsys) -> None:
    """A Conv whose weight wants more input channels than it gets is invalid.

    ``check``'s docstring promises to catch exactly this ("a Conv whose weight no
    longer matches its input"), but onnx's strict shape inference does not compare
    a Conv's input channels with ``W.shape[1] * group``, so the run exits 0 and
    writes a model that onnxruntime refuses to run.
    """
    with_input(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli_in(
        capsys, tmp_path, ["-p", "test-break-conv-in", "--verify-each", *_IO])
    assert code == 1, f"broken model accepted (exit {code}); stderr: {err!r}"
    assert "after pass 'test-break-conv-in'" in one_line(err)
    assert_untouched_except(before, snapshot(tmp_path))


def test_verify_each_passes_a_sound_pipeline(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    code, _, err = run_cli_in(
        capsys, tmp_path, ["-p", "fold-constants,dce,topo-sort", "--verify-each", *_IO])
    assert code == 0, err
    assert err == ""


def test_without_verify_each_the_broken_pass_goes_unnoticed_by_design(tmp_path: Path,
                                                                      capsys) -> None:
    """Checking after each pass is opt-in; ``check`` at the end catches it too."""
    with_input(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", "test-break-conv-out,check", *_IO])
    assert code == 1
    assert "invalid" in one_line(err)
    assert not (tmp_path / "out.onnx").exists()


# --------------------------------------------------------------------------- success


def _check_fold_dce_check_output(folder: Path) -> None:
    out = folder / "out.onnx"
    onnx.checker.check_model(str(out), full_check=True)
    feed = random_feed(folder / "in.onnx")
    expected = ort_outputs(folder / "in.onnx", feed)
    actual = ort_outputs(out, feed)
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_success_in_process(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_cli_in(capsys, tmp_path, ["-p", "fold-constants,dce,check", *_IO])
    assert (code, out, err) == (0, "", "")
    assert_untouched_except(before, snapshot(tmp_path), {"out.onnx"})
    _check_fold_dce_check_output(tmp_path)


def test_success_executable(executable_runs) -> None:
    run = executable_runs["fold-dce-check"]
    assert run.result.returncode == 0, run.result.stderr
    assert run.result.stdout == "" and run.result.stderr == ""
    assert_untouched_except(run.before, run.after, {"out.onnx"})
    _check_fold_dce_check_output(run.folder)


def test_success_on_a_light_model_zoo_graph(tmp_path: Path, capsys) -> None:
    shutil.copy2(SQUEEZENET, tmp_path / "in.onnx")
    before = snapshot(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", "fold-constants,dce,check", *_IO])
    assert code == 0, err
    assert_untouched_except(before, snapshot(tmp_path), {"out.onnx"})
    _check_fold_dce_check_output(tmp_path)


def test_instrumented_executable_run(executable_runs) -> None:
    run = executable_runs["instrumented"]
    stderr = run.result.stderr
    assert run.result.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert_no_progress_bar(stderr)
    assert "===-- spa-opt pass timing --===" in stderr
    assert "===-- spa-opt statistics --===" in stderr
    assert "; *** IR dump after dce ***" in stderr
    assert re.search(r"^verify: 2 random inputs, (.*, )?max abs err \S+, rel err \S+$", stderr,
                     re.M)
    assert_untouched_except(run.before, run.after, {"out.onnx", "r.json"})
    assert json.loads((run.folder / "r.json").read_text())["verify"]["inputs"] == 2


def test_version(executable_runs, capsys, tmp_path: Path) -> None:
    code, out, err = run_cli_in(capsys, tmp_path, ["--version"])
    assert (code, out, err) == (0, f"spa-opt {spa_opt.__version__}\n", "")
    run = executable_runs["version"]
    assert run.result.returncode == 0
    assert run.result.stdout == out and run.result.stderr == ""


def test_list_passes_shows_every_pass_with_option_types_and_defaults(tmp_path, capsys) -> None:
    code, out, err = run_cli_in(capsys, tmp_path, ["--list-passes"])
    assert code == 0 and err == ""
    lines = out.splitlines()
    for name, pass_cls in all_passes().items():
        assert f"{name}: {pass_cls.summary()}" in lines
        for key, info in pass_cls.option_infos().items():
            assert any(line.strip().startswith(
                f"{key}: {info.type_name} = {info.format(info.default)}  -- ") for line in lines)
    assert "    input-size-limit: int = 8192  -- " in out
    assert "    initializer-inputs: bool = true  -- " in out
    assert "    data-prop: bool = true  -- " in out
    for name in ("check", "dce", "fold-constants", "shape-infer", "topo-sort", "test-explode"):
        assert any(line.startswith(f"{name}: ") for line in lines)


PIPELINES = [
    "dce",
    "fold-constants,dce,check",
    " fold-constants< input-size-limit = 12 ; initializer-inputs=no >,shape-infer<data-prop=0>",
    "topo-sort,dce,topo-sort",
]


@pytest.mark.parametrize("text", PIPELINES)
@pytest.mark.parametrize("with_files", [False, True], ids=["bare", "with-files"])
def test_print_pipeline_is_canonical_and_round_trips(text, with_files, tmp_path, capsys) -> None:
    files = []
    if with_files:
        with_input(tmp_path)
        files = list(_IO)
    before = snapshot(tmp_path)
    code, out, err = run_cli_in(capsys, tmp_path, ["-p", text, "--print-pipeline", *files])
    assert code == 0 and err == ""
    printed = one_line(out)
    assert printed == format_pipeline(parse_pipeline(text))
    assert format_pipeline(parse_pipeline(printed)) == printed
    assert_untouched_except(before, snapshot(tmp_path))


def test_print_pipeline_executable(executable_runs) -> None:
    run = executable_runs["print-pipeline"]
    assert run.result.returncode == 0 and run.result.stderr == ""
    printed = one_line(run.result.stdout)
    assert printed.startswith("fold-constants<input-size-limit=8192;")
    assert printed == format_pipeline(parse_pipeline("fold-constants,dce"))


def test_time_passes_prints_every_pass_and_a_total(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    pipeline = ["fold-constants", "dce", "topo-sort", "dce", "check"]
    code, out, err = run_cli_in(
        capsys, tmp_path, ["-p", ",".join(pipeline), "--time-passes", *_IO])
    assert code == 0 and out == ""
    rows = [line.split() for line in err.splitlines()
            if re.match(r"^\s+\d+\.\d+\s+\d+\.\d%\s+\S+\s*$", line)]
    assert [row[2] for row in rows] == [*pipeline, "total"]
    assert rows[-1][1] == "100.0%"
    assert abs(sum(float(row[0]) for row in rows[:-1]) - float(rows[-1][0])) < 1e-3


def test_stats_prints_counters(tmp_path: Path, capsys) -> None:
    shutil.copy2(SQUEEZENET, tmp_path / "in.onnx")
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", "fold-constants,dce,check",
                                                     "--stats", *_IO])
    assert code == 0, err
    lifted = re.search(r"^\s+fold-constants: constant-of-shape-lifted = (\d+)$", err, re.M)
    assert lifted and int(lifted.group(1)) > 0
    assert re.search(r"^\s+dce: nodes-removed = \d+$", err, re.M)
    assert re.search(r"^\s+check: \(no counters\)$", err, re.M)


def test_print_ir_after_one_pass(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", "fold-constants,dce",
                                                     "--print-ir-after", "dce", *_IO])
    assert code == 0
    headers = re.findall(r"^; \*\*\* IR dump after (\S+) \*\*\*$", err, re.M)
    assert headers == ["dce"]
    assert "stem.conv" in err  # the dump shows the graph


def test_print_ir_after_all(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", "fold-constants,dce,topo-sort",
                                                     "--print-ir-after", "all", *_IO])
    assert code == 0
    headers = re.findall(r"^; \*\*\* IR dump after (\S+) \*\*\*$", err, re.M)
    assert headers == ["fold-constants", "dce", "topo-sort"]


def test_external_data_writes_a_data_file_that_loads(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", "fold-constants,dce",
                                                     "--external-data", *_IO])
    assert code == 0, err
    assert_untouched_except(before, snapshot(tmp_path), {"out.onnx", "out.onnx.data"})
    skeleton = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    locations = {
        entry.value
        for tensor in skeleton.graph.initializer
        if tensor.data_location == TensorProto.EXTERNAL
        for entry in tensor.external_data if entry.key == "location"
    }
    assert locations == {"out.onnx.data"}
    assert (tmp_path / "out.onnx.data").stat().st_size > 0
    full = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(full, full_check=True)
    feed = random_feed(tmp_path / "in.onnx")
    for want, got in zip(ort_outputs(tmp_path / "in.onnx", feed),
                         ort_outputs(tmp_path / "out.onnx", feed), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_verify_prints_one_verify_line(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    code, out, err = run_cli_in(capsys, tmp_path, ["-p", "fold-constants,dce",
                                                       "--verify", "3", *_IO])
    assert code == 0 and out == ""
    match = re.fullmatch(r"verify: 3 random inputs, (?:.*, )?max abs err (\S+), rel err (\S+)",
                         one_line(err))
    assert match
    assert float(match.group(1)) < 1e-4 and float(match.group(2)) < 1e-4


def test_verify_zero_is_refused(tmp_path: Path, capsys) -> None:
    with_input(tmp_path)
    code, _, err = run_cli_in(capsys, tmp_path, ["-p", "dce", "--verify", "0", *_IO])
    assert code == 2
    assert "--verify" in one_line(err)
    assert not (tmp_path / "out.onnx").exists()


def test_no_progress_bar_when_stderr_is_not_a_terminal(executable_runs) -> None:
    for name, run in executable_runs.items():
        assert "\r" not in run.result.stderr, name
        assert "it/s" not in run.result.stderr and "pass/s" not in run.result.stderr, name
