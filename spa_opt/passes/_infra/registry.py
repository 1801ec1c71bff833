"""Pass registry: short names to pass classes, with did-you-mean errors."""

from __future__ import annotations

import re
from typing import TypeVar

from spa_opt.errors import InputError, did_you_mean
from spa_opt.passes._infra.base import SpaPass

_PASSES: dict[str, type[SpaPass]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

P = TypeVar("P", bound=type[SpaPass])


def register(cls: P) -> P:
    """Class decorator: make a pass available under its ``name``."""
    if not _NAME.match(cls.name):
        raise ValueError(f"pass name {cls.name!r} of {cls.__name__} is not kebab-case")
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"pass name {cls.name!r} is taken by {existing.__name__}")
    _PASSES[cls.name] = cls
    return cls


def get_pass(name: str) -> type[SpaPass]:
    """The pass class registered as ``name``."""
    try:
        return _PASSES[name]
    except KeyError:
        raise InputError(f"unknown pass '{name}'{did_you_mean(name, _PASSES)}") from None


def all_passes() -> dict[str, type[SpaPass]]:
    """Every registered pass, by name, in name order."""
    return dict(sorted(_PASSES.items()))
