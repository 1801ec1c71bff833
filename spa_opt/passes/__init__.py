"""spa-opt passes: one per module, registered by name, composable with onnx_ir passes.

Build pipelines from text with :func:`build_pipeline`, or use the pass classes
directly (``from spa_opt.passes import CouplePass``). Every public name is imported on
first use (PEP 562): importing this package loads no pass, so a run pays only for the
passes its pipeline names (``fold-constants`` brings onnxscript, ``obspa`` and
``precrop`` scipy) and ``spa-opt --help`` pays for none. The pass classes exported here
are the ones of :data:`~spa_opt.passes._infra.registry.PASS_TABLE`, so a new pass is
listed once, in that table (type checkers see the names through ``__getattr__``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from spa_opt.passes._infra.registry import PASS_TABLE

_INFRA: dict[str, str] = {
    "Instrument": "spa_opt.passes._infra.manager",
    "NoOptions": "spa_opt.passes._infra.base",
    "OptionInfo": "spa_opt.passes._infra.base",
    "PassManager": "spa_opt.passes._infra.manager",
    "PassRecord": "spa_opt.passes._infra.manager",
    "PassSpec": "spa_opt.passes._infra.pipeline",
    "PipelineContext": "spa_opt.passes._infra.context",
    "SpaPass": "spa_opt.passes._infra.base",
    "Targets": "spa_opt.passes._infra.context",
    "all_passes": "spa_opt.passes._infra.registry",
    "build_pipeline": "spa_opt.passes._infra.pipeline",
    "check_model": "spa_opt.passes.check",
    "format_pipeline": "spa_opt.passes._infra.pipeline",
    "get_pass": "spa_opt.passes._infra.registry",
    "option": "spa_opt.passes._infra.base",
    "parse_pipeline": "spa_opt.passes._infra.pipeline",
    "pass_names": "spa_opt.passes._infra.registry",
    "register": "spa_opt.passes._infra.registry",
}
"""Public names that are not pass classes -> the module that defines them."""

_LAZY: dict[str, str] = {**_INFRA, **{cls: module for module, cls in PASS_TABLE.values()}}
"""Every public name -> its module: the infrastructure and each pass class."""

__all__ = sorted(_LAZY)  # derived from the table, not kept by hand


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, imported yet or not, and the submodules loaded so far.

    Not the helpers this module imports for itself (``importlib``, ``PASS_TABLE``).
    """
    loaded = {name for name, value in globals().items()
              if isinstance(value, ModuleType) and value.__name__.startswith(f"{__name__}.")}
    return sorted({*__all__, *loaded})
