"""Start-up stays cheap: what the CLI and a pipeline import, and the pass table.

Timings are measured by ``bench/startup.py``; these tests check module sets, which do
not depend on how busy the machine is. Each check runs in a fresh interpreter, since
this one has imported everything already.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

import spa_opt.passes
from spa_opt.passes import SpaPass
from spa_opt.passes._infra import registry

#: Never needed to parse arguments, print the version or the help.
HEAVY = ("onnx_ir", "onnxscript", "scipy", "onnxruntime", "sympy", "torch")


def modules_after(code: str) -> tuple[set[str], str]:
    """The modules loaded once ``code`` ran in a fresh interpreter, and its stdout."""
    probe = (f"{code}\nimport json, sys\n"
             "print('\\nMODULES ' + json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    out, _, modules = done.stdout.rpartition("\nMODULES ")
    return set(json.loads(modules)), out


def heavy_in(modules: set[str]) -> list[str]:
    """The heavy packages (or their submodules) among ``modules``."""
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_importing_the_cli_imports_nothing_heavy():
    modules, _ = modules_after("import spa_opt.cli")
    assert heavy_in(modules) == []
    assert not any(m.startswith("spa_opt.passes.") for m in modules)


def test_version_imports_nothing_heavy():
    modules, out = modules_after("from spa_opt.cli import main\nmain(['--version'])")
    assert out.startswith("spa-opt ")
    assert heavy_in(modules) == []


def test_help_works_and_imports_nothing_heavy():
    modules, out = modules_after(
        "from spa_opt.cli import main\nassert main(['--help']) == 0")
    assert "--list-passes" in out and "usage: spa-opt" in out
    assert heavy_in(modules) == []


def test_console_script_help_works():
    done = subprocess.run([sys.executable, "-c",
                           "import sys; from spa_opt.cli import main; sys.exit(main())",
                           "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--print-pipeline" in done.stdout


def test_an_l1_pipeline_imports_only_its_passes():
    modules, _ = modules_after(
        "from spa_opt.passes import build_pipeline\n"
        "build_pipeline('couple,group,l1,prune')")
    for absent in ("onnxscript", "torch", "spa_opt.passes.obspa",
                   "spa_opt.passes.fold_constants", "spa_opt.passes.precrop"):
        assert absent not in modules, absent
    assert "spa_opt.passes.couple" in modules


def test_get_pass_imports_only_that_pass():
    modules, out = modules_after(
        "from spa_opt.passes import get_pass\nprint(get_pass('dce').__name__)")
    assert out.strip() == "DeadCodeEliminationPass"
    assert not {"spa_opt.passes.couple", "spa_opt.passes.obspa"} & modules


def test_unknown_print_ir_after_pass_imports_no_pass():
    modules, out = modules_after(
        "from spa_opt.errors import InputError\n"
        "from spa_opt.cli import build_parser, _instruments\n"
        "args = build_parser().parse_args(['--print-ir-after', 'prunne'])\n"
        "try:\n"
        "    _instruments(args)\n"
        "except InputError as error:\n"
        "    print(error)\n")
    assert "did you mean 'prune'" in out
    assert not {module for module, _ in registry.PASS_TABLE.values()} & modules


def import_every_pass_module() -> None:
    for info in pkgutil.walk_packages(spa_opt.passes.__path__, "spa_opt.passes."):
        importlib.import_module(info.name)


def test_pass_table_is_what_register_recorded():
    import_every_pass_module()
    recorded = {name: (cls.__module__, cls.__qualname__)
                for name, cls in registry._PASSES.items()
                if cls.__module__.startswith("spa_opt.")}
    assert recorded == registry.PASS_TABLE


def test_all_is_derived_from_the_table_and_resolves():
    names = set(spa_opt.passes.__all__)
    assert {cls for _, cls in registry.PASS_TABLE.values()} <= names
    assert "PrecropPass" in names
    assert {"PipelineContext", "build_pipeline", "all_passes", "register", "SpaPass",
            "PassManager", "check_model"} <= names
    for name in names:
        assert getattr(spa_opt.passes, name) is not None
    assert set(dir(spa_opt.passes)) >= names
    with pytest.raises(AttributeError):
        spa_opt.passes.NoSuchPass  # noqa: B018


def test_register_checks_the_table():
    class Misplaced(SpaPass):
        """A library-looking pass under a table name, from the wrong module."""

        name = "couple"

    with pytest.raises(ValueError, match="taken"):
        registry.register(Misplaced)

    class Unlisted(SpaPass):
        """A pass inside spa_opt that the table does not list."""

        name = "not-in-the-table"

    Unlisted.__module__ = "spa_opt.passes.unlisted"
    with pytest.raises(ValueError, match="missing from"):
        registry.register(Unlisted)
    assert "not-in-the-table" not in registry._PASSES
