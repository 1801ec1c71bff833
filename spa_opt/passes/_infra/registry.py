"""Pass registry: short names to pass classes, with did-you-mean errors.

The library's passes are listed in :data:`PASS_TABLE` (name -> module and class), so
that looking a pass up imports only its module: ``get_pass("couple")`` does not pay for
onnxscript (``fold-constants``), scipy (``obspa``, ``precrop``) or any other pass a run
does not use. :func:`register` stays the one way a class becomes a pass, and checks a
library class against the table, so the table cannot silently disagree with the code
(``tests/test_startup.py`` imports every pass module and compares). Passes defined
outside spa-opt register at import time as before and need no table entry.

This module imports nothing heavy (no onnx_ir), so the CLI can read pass names for
error messages before it loads anything.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, TypeVar

from spa_opt.errors import InputError, did_you_mean

if TYPE_CHECKING:
    from spa_opt.passes._infra.base import SpaPass

PASS_TABLE: dict[str, tuple[str, str]] = {
    "bn-scale": ("spa_opt.passes.criteria.bn_scale", "BatchNormScaleCriterion"),
    "check": ("spa_opt.passes.check", "CheckPass"),
    "couple": ("spa_opt.passes.couple", "CouplePass"),
    "crop": ("spa_opt.passes.criteria.crop", "CropCriterion"),
    "dce": ("spa_opt.passes.dce", "DeadCodeEliminationPass"),
    "dead": ("spa_opt.passes.dead", "DeadPass"),
    "fold-constants": ("spa_opt.passes.fold_constants", "FoldConstantsPass"),
    "fpgm": ("spa_opt.passes.criteria.fpgm", "FpgmCriterion"),
    "grasp": ("spa_opt.passes.criteria.grasp", "GraspCriterion"),
    "group": ("spa_opt.passes.group", "GroupPass"),
    "l1": ("spa_opt.passes.criteria.l1", "L1Criterion"),
    "l2": ("spa_opt.passes.criteria.l2", "L2Criterion"),
    "lamp": ("spa_opt.passes.criteria.lamp", "LampCriterion"),
    "obspa": ("spa_opt.passes.obspa", "ObspaPass"),
    "precrop": ("spa_opt.passes.precrop", "PrecropPass"),
    "prune": ("spa_opt.passes.prune", "PrunePass"),
    "random": ("spa_opt.passes.criteria.random", "RandomCriterion"),
    "sensitivity": ("spa_opt.passes.sensitivity", "SensitivityPass"),
    "shape-infer": ("spa_opt.passes.shape_infer", "ShapeInferPass"),
    "snip": ("spa_opt.passes.criteria.snip", "SnipCriterion"),
    "synflow": ("spa_opt.passes.criteria.synflow", "SynFlowCriterion"),
    "synthesize": ("spa_opt.passes.synthesize", "SynthesizePass"),
    "taylor": ("spa_opt.passes.criteria.taylor", "TaylorCriterion"),
    "topo-sort": ("spa_opt.passes.topo_sort", "TopoSortPass"),
}
"""Every library pass: name -> (module that defines it, class name)."""

_PASSES: dict[str, type[SpaPass]] = {}
"""The passes registered so far (library passes whose module was imported, and others)."""

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

P = TypeVar("P", bound="type[SpaPass]")


def register(cls: P) -> P:
    """Class decorator: make a pass available under its ``name``.

    Raises:
        ValueError: the name is not kebab-case, is taken by another class (registered
            or listed in :data:`PASS_TABLE`), or a library class is missing from the
            table (add it there, or ``get_pass`` could not find it without an import).
    """
    if not _NAME.match(cls.name):
        raise ValueError(f"pass name {cls.name!r} of {cls.__name__} is not kebab-case")
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"pass name {cls.name!r} is taken by {existing.__name__}")
    listed = PASS_TABLE.get(cls.name)
    where = (cls.__module__, cls.__qualname__)
    if listed is not None and listed != where:
        raise ValueError(f"pass name {cls.name!r} is taken by {'.'.join(listed)} "
                         f"(spa_opt.passes._infra.registry.PASS_TABLE), not "
                         f"{'.'.join(where)}")
    if listed is None and cls.__module__.startswith("spa_opt."):
        raise ValueError(f"library pass {cls.name!r} ({'.'.join(where)}) is missing from "
                         "spa_opt.passes._infra.registry.PASS_TABLE")
    _PASSES[cls.name] = cls
    return cls


def pass_names() -> list[str]:
    """Every pass name known (the table's and any registered since), imports nothing."""
    return sorted({*PASS_TABLE, *_PASSES})


def get_pass(name: str) -> type[SpaPass]:
    """The pass class registered as ``name``, importing its module on first use.

    Raises:
        InputError: no pass has that name (with a did-you-mean suggestion).
    """
    found = _PASSES.get(name)
    if found is not None:
        return found
    listed = PASS_TABLE.get(name)
    if listed is None:
        raise InputError(f"unknown pass '{name}'{did_you_mean(name, pass_names())}")
    importlib.import_module(listed[0])
    try:
        return _PASSES[name]
    except KeyError:  # a table entry whose module registers nothing: a bug, not input
        raise RuntimeError(f"module {listed[0]} did not register pass {name!r}") from None


def all_passes() -> dict[str, type[SpaPass]]:
    """Every pass, by name, in name order; imports every library pass module.

    Only ``--list-passes`` and tools that show every pass need this; to check or
    suggest a name, :func:`pass_names` is enough and imports nothing.
    """
    return {name: get_pass(name) for name in pass_names()}
