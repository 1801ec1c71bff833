"""Exceptions that decide how a failure reaches the user.

The CLI maps :class:`InputError` to exit code 2 with a one-line message: the user
gave something we cannot use (a missing file, a non-ONNX file, an unsafe external
data path, an unknown pass or option). Everything else is our fault and exits 1.
"""

from __future__ import annotations


class SpaOptError(Exception):
    """Base class of every error spa-opt raises on purpose."""


class InputError(SpaOptError):
    """The user's input (file, pipeline text, option) cannot be used as given."""


class VerificationError(SpaOptError):
    """A pass left the model invalid; the message names the pass."""
