"""Where the cores go: many small layers in parallel, or one big layer with threaded BLAS.

Layers are independent given their Hessians, so the natural parallelism is one task per
layer (or group) on a thread pool; numpy and LAPACK release the GIL. Multithreaded
BLAS inside each task then only oversubscribes the cores, and OpenBLAS's threads make
small products tens of times slower (measured: a 145 x 1024 float32 ``X Xᵀ`` takes
0.5 ms on one thread and 32 ms on two, on a 2-core machine). So small tasks run on
``jobs`` threads with BLAS limited to one thread each, and tasks above ``BIG_WIDTH``
columns run one at a time with BLAS on all ``jobs`` threads.

BLAS threads are limited with threadpoolctl, the one dependency here beyond the standard
library: it is tiny and pure Python, and the only portable way to reach OpenBLAS's, MKL's
and BLIS's thread counts at run time. Its ``threadpool_limits`` finds the BLAS libraries
anew on every call (it reads the process's memory map: 2.7 ms inside a spa-opt run with
onnxruntime loaded), and the streaming Hessian pass enters it twice per calibration batch
and stage, 12 of ResNet-50's 65 s; one :class:`~threadpoolctl.ThreadpoolController`,
made on first use (numpy's and scipy's BLAS are loaded by then), sets the limits in
0.01 ms.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from threadpoolctl import ThreadpoolController

T = TypeVar("T")
R = TypeVar("R")

BIG_WIDTH = 1536
"""Columns from which one layer's linear algebra is worth BLAS threads of its own."""


def cores(jobs: int) -> int:
    """``jobs``, or every core this process may use when 0."""
    if jobs:
        return jobs
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_tasks(function: Callable[[T], R], items: Sequence[T], sizes: Sequence[int], jobs: int,
              done: Callable[[], None] | None = None,
              keep: Callable[[int, R], Any] | None = None) -> list[Any]:
    """``[function(item) for item in items]``, small items in parallel, big ones threaded.

    Args:
        function: The task.
        items: Its inputs.
        sizes: Each item's width (columns of its largest layer).
        jobs: Threads to use (0: all cores).
        done: Called after each task (a progress bar's update).
        keep: Called with each result's index and the result as it arrives; what it
            returns is listed instead. A caller whose results are large (a reconstructed
            weight per layer) stores or spills each one here, so the results of all
            tasks are never held at once.
    """
    jobs = cores(jobs)
    if keep is None:
        def keep(index: int, result: R) -> Any:
            return result
    results: list[Any] = [None] * len(items)
    small = [i for i, size in enumerate(sizes) if size < BIG_WIDTH]
    big = [i for i, size in enumerate(sizes) if size >= BIG_WIDTH]
    workers = max(1, min(jobs, len(small) or 1))
    with blas_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
        for index, result in zip(small, pool.map(function, [items[i] for i in small]),
                                 strict=True):
            results[index] = keep(index, result)
            del result
            if done is not None:
                done()
    with blas_threads(jobs):
        for index in big:
            results[index] = keep(index, function(items[index]))
            if done is not None:
                done()
    return results


@functools.cache
def _controller() -> ThreadpoolController:
    """The BLAS libraries of this process, found once (see the module docstring)."""
    import scipy.linalg  # noqa: F401  (its BLAS and numpy's are the ones to control)

    return ThreadpoolController()


def blas_threads(limit: int) -> AbstractContextManager[Any]:
    """A context in which BLAS runs on at most ``limit`` threads."""
    return _controller().limit(limits=limit, user_api="blas")


def single_blas() -> AbstractContextManager[Any]:
    """A context in which BLAS runs on one thread (for work parallel across layers)."""
    return blas_threads(1)
