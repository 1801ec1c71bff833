"""Exceptions that decide how a failure reaches the user.

The CLI maps :class:`InputError` to exit code 2 with a one-line message: the user
gave something we cannot use (a missing file, a non-ONNX file, an unsafe external
data path, an unknown pass or option). Everything else is our fault and exits 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpaOptError(Exception):
    """Base class of every error spa-opt raises on purpose."""


class InputError(SpaOptError):
    """The user's input (file, pipeline text, option) cannot be used as given."""


class OptionError(InputError):
    """A bad value for one option, named the way the caller spelled it.

    The Python API says the keyword (``target_flops must be in [0, 1]``); the CLI shows
    the same error with the flag (``--target-flops must be in [0, 1]``), so neither
    kind of user reads the other's vocabulary.
    """

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option} {problem}")
        self.option = option
        self.problem = problem

    def as_flag(self) -> str:
        """The message with the option written as its command-line flag."""
        return f"--{self.option.replace('_', '-')} {self.problem}"


class VerificationError(SpaOptError):
    """A pass left the model invalid; the message names the pass."""


class PassError(Exception):
    """A pass failed with an unexpected exception: a bug, reported with the pass's name.

    The pass manager wraps every exception that is not a :class:`SpaOptError` in this
    (as onnx_ir's ``PassError`` does), so "internal error" always says where; the
    original exception is its ``__cause__``. Deliberate errors (:class:`InputError`,
    :class:`VerificationError`) pass through unchanged, with ``pass_name`` set.
    """

    def __init__(self, pass_name: str, error: BaseException) -> None:
        detail = " ".join(str(error).split()) or type(error).__name__
        super().__init__(f"pass '{pass_name}' failed: {type(error).__name__}: {detail}")
        self.pass_name = pass_name


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string.

    Every "unknown name" message (passes, options, flags) ends with this, so a typo
    costs one look at the message.
    """
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
