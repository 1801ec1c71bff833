"""Arrays obspa keeps between stages, in memory up to a budget, memory-mapped past it.

Two kinds of array outlive a stage: the activations later stages read (one array per
value and calibration batch) and the dampened Hessians the selection and the
reconstruction need after every stage has passed. Both go into a :class:`SpillStore`:
while the arrays held in memory stay under ``budget`` bytes they stay there; an array
that would cross it is written to a ``.npy`` file in a scratch folder and read back
memory-mapped. Memory-mapped pages are file-backed, so the kernel can drop them under
pressure instead of swapping, and the process's anonymous memory stays at one stage's
working set whatever the model's size.

The scratch folder is made on the first spill (beside the output when the caller knows
where that is, else in the system's temporary folder) and removed by :meth:`close`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Hashable
from pathlib import Path

import numpy as np

DEFAULT_BUDGET_MB = 256
"""Memory obspa may hold across stages before it spills (``memory`` option).

Spilling changes no result (the arrays read back are the ones written) and little time:
the files are written with plain writes and read back memory-mapped, mostly from the page
cache. On the 1.1B decoder 256 MB (with 64 MB stage batches) took peak RSS from 0.72x to
0.40x the model's size, with no loss of speed (docs/benchmarks.md); 1024 MB was the
default before."""


_WRITE_BYTES = 16 << 20
"""Bytes of rows made contiguous per write when a spilled array is not C-ordered."""


def _write_rows(path: Path, array: np.ndarray) -> None:
    """``array`` as a C-ordered ``.npy`` file, a block of rows per write when it is not.

    The file reads back C-ordered whatever ``array``'s layout (a Fortran-ordered weight,
    a Hessian that is a corner of a larger sum), as a memory map of it used to make it,
    without a whole contiguous copy.
    """
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
              "shape": array.shape}
    with path.open("wb") as file:
        np.lib.format.write_array_header_2_0(file, header)
        if array.flags.c_contiguous:  # 0-d arrays too
            file.write(memoryview(array).cast("B"))
            return
        row_bytes = max(array.nbytes // max(array.shape[0], 1), 1)
        step = max(1, _WRITE_BYTES // row_bytes)
        for start in range(0, array.shape[0], step):
            block = np.ascontiguousarray(array[start:start + step])
            file.write(memoryview(block).cast("B"))


class SpillStore:
    """``key -> array`` held in memory up to ``budget`` bytes, on disk past it."""

    def __init__(self, budget: int, folder: str | os.PathLike | None = None,
                 label: str = "obspa") -> None:
        self.budget = budget
        self.base = Path(folder) if folder else None
        self.label = label
        self._memory: dict[Hashable, np.ndarray] = {}
        self._disk: dict[Hashable, Path] = {}
        self._folder: Path | None = None
        self.held = 0
        """Bytes held in memory now."""
        self.spilled = 0
        """Bytes written to disk so far."""
        self.peak = 0
        """Most bytes held in memory at once."""

    def _scratch(self) -> Path:
        if self._folder is None:
            base = self.base if self.base is not None and self.base.is_dir() else None
            self._folder = Path(tempfile.mkdtemp(prefix=f".{self.label}-spill-", dir=base))
        return self._folder

    def put(self, key: Hashable, array: np.ndarray) -> None:
        """Keep ``array`` (not copied when it stays in memory) under ``key``."""
        self.drop(key)
        if self.held + array.nbytes <= self.budget:
            self._memory[key] = array
            self.held += array.nbytes
            self.peak = max(self.peak, self.held)
            return
        path = self._scratch() / f"{len(self._disk) + len(self._memory)}-{abs(hash(key))}.npy"
        # Plain writes, not a writable memory map: filling a fresh map faults in every
        # page and its flush waits for the disk (0.4-0.5 s for a 254 MB Hessian against
        # 0.06 s on a quiet disk; the copy into the maps was 33 of a 1.1B decoder's 555
        # s in a profile); the pages stay in the page cache for the reads either way.
        _write_rows(path, array)
        self._disk[key] = path
        self.spilled += array.nbytes

    def get(self, key: Hashable) -> np.ndarray:
        """The array under ``key`` (read-only and memory-mapped when it was spilled).

        A spilled array is mapped afresh on every call, so its pages leave the process
        (and its RSS) when the caller drops it, instead of staying mapped until the end.
        """
        if key in self._memory:
            return self._memory[key]
        return np.load(self._disk[key], mmap_mode="r")

    def __contains__(self, key: Hashable) -> bool:
        return key in self._memory or key in self._disk

    def drop(self, key: Hashable) -> None:
        """Forget ``key`` and free its memory or file."""
        array = self._memory.pop(key, None)
        if array is not None:
            self.held -= array.nbytes
        path = self._disk.pop(key, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Forget everything and remove the scratch folder."""
        self._memory.clear()
        self._disk.clear()
        self.held = 0
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> SpillStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
