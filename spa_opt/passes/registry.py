"""Pass registry: short names to pass classes, with did-you-mean errors."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import TypeVar

from spa_opt.errors import InputError
from spa_opt.passes.base import SpaPass

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


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def get_pass(name: str) -> type[SpaPass]:
    """The pass class registered as ``name``."""
    try:
        return _PASSES[name]
    except KeyError:
        raise InputError(f"unknown pass '{name}'{did_you_mean(name, _PASSES)}") from None


def all_passes() -> dict[str, type[SpaPass]]:
    """Every registered pass, by name, in name order."""
    return dict(sorted(_PASSES.items()))
