"""What the two commands share: one-line usage errors and the side files' writes.

``spa-opt`` (:mod:`spa_opt.cli`) and ``spa-opt report`` (:mod:`spa_opt.cli_report`)
both refuse bad arguments with one line and exit code 2, and both write their files
the same way: checked before any work, staged beside their destination under a
temporary name, then renamed into place, so a failure never leaves half a file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NoReturn

from spa_opt.errors import InputError

Content = str | Callable[[BinaryIO], None]
"""A side file's content: its text (UTF-8), or a function writing its bytes to a stream."""


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing usage and exiting: main() prints the one line."""
        raise InputError(message)


def check_side_file(path: str, models: set[Path], what: str = "report") -> None:
    """A side file (``what``: report, page, plan...) must be writable and not a model file."""
    target = Path(path).resolve()
    if not target.parent.is_dir():
        raise InputError(f"cannot write {what} '{path}': no such folder")
    if target.is_dir():
        raise InputError(f"cannot write {what} '{path}': it is a folder")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {what} '{path}': its folder is not writable")
    if target in models:
        raise InputError(f"refused to write {what} '{path}': it is a model file")


def check_distinct(outputs: dict[str, str], inputs: dict[str, str]) -> None:
    """No two outputs share a path, and no output overwrites an input.

    Both map a flag (``--report``) to its path; the first clash is named.
    """
    seen: dict[Path, str] = {Path(path).resolve(): flag for flag, path in inputs.items()}
    for flag, path in outputs.items():
        resolved = Path(path).resolve()
        if resolved in seen:
            other = seen[resolved]
            role = "reads" if other in inputs else "also writes"
            raise InputError(f"refused to write '{path}' ({flag}): {other} {role} it")
        seen[resolved] = flag


def stage(path: Path, content: Content, what: str = "report") -> Path:
    """Write ``content`` beside ``path`` under a temporary name; the caller renames it.

    The temporary name keeps ``path``'s suffix (``np.load`` and friends look at it).
    """
    try:
        handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix,
                                           dir=path.parent.resolve())
    except OSError as error:  # the user's environment: permissions, a full disk
        raise InputError(f"cannot write {what} '{path}': {error.strerror or error}") from None
    try:
        if isinstance(content, str):
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(content)
        else:
            with os.fdopen(handle, "wb") as binary:
                content(binary)
    except OSError as error:
        Path(staging).unlink(missing_ok=True)
        raise InputError(f"cannot write {what} '{path}': {error.strerror or error}") from None
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return Path(staging)
