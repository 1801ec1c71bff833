"""What every benchmark prints the same way: aligned tables, the machine line, reasons."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import subprocess
from collections.abc import Container, Sequence
from pathlib import Path


def format_table(lines: Sequence[Sequence[str]], left: Container[int]) -> str:
    """Align ``lines`` (header first) in columns; columns in ``left`` are left-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for index, line in enumerate(lines):
        cells = [
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def machine() -> str:
    """One line describing the interpreter, libraries (torch when installed) and machine."""
    import onnx
    import onnx_ir

    parts = [
        f"python {platform.python_version()}",
        f"onnx {onnx.__version__}",
        f"onnx-ir {onnx_ir.__version__}",
    ]
    if importlib.util.find_spec("torch") is not None:
        import torch

        parts.append(f"torch {torch.__version__}")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts += [
        f"{platform.system()} {platform.machine()}",
        f"{os.cpu_count()} CPUs",
        f"{memory:.0f} GiB RAM",
    ]
    return ", ".join(parts)


def generalize(text: str, numbers: bool = False) -> str:
    """A pin reason with backticked names (and numbers) replaced, to count alike ones."""
    text = re.sub(r"`[^`]*`", "<name>", text)
    return re.sub(r"\b\d+\b", "<n>", text) if numbers else text


def revision(root: Path, *paths: str) -> str:
    """The git commit measured, and whether ``paths`` in the working tree differ from it."""
    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--", *paths)
    return commit + (" + uncommitted changes" if dirty else " (clean)")
