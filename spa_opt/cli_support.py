"""What the two commands share: one-line usage errors and the report files' writes.

``spa-opt`` (:mod:`spa_opt.cli`) and ``spa-opt report`` (:mod:`spa_opt.cli_report`)
both refuse bad arguments with one line and exit code 2, and both write report files
the same way: checked before any work, staged beside their destination under a
temporary name, then renamed into place, so a failure never leaves half a file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from spa_opt.errors import InputError


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise instead of printing usage and exiting: main() prints the one line."""
        raise InputError(message)


def check_side_file(path: str, models: set[Path]) -> None:
    """A report file must be writable and must not be one of the model files."""
    report = Path(path).resolve()
    if not report.parent.is_dir():
        raise InputError(f"cannot write report '{path}': no such folder")
    if report.is_dir():
        raise InputError(f"cannot write report '{path}': it is a folder")
    if not os.access(report.parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write report '{path}': its folder is not writable")
    if report in models:
        raise InputError(f"refused to write report '{path}': it is a model file")


def stage_text(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path`` under a temporary name; the caller renames it."""
    try:
        handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent.resolve())
    except OSError as error:  # the user's environment: permissions, a full disk
        raise InputError(f"cannot write report '{path}': {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
    except OSError as error:
        Path(staging).unlink(missing_ok=True)
        raise InputError(f"cannot write report '{path}': {error.strerror or error}") from None
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return Path(staging)
