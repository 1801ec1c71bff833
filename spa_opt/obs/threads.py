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

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    workers = max(1, min(jobs, len(small)))
    with blas_threads(1):
        found = map(function, [items[i] for i in small]) if workers == 1 or _inside_pool() \
            else _pool(workers).map(function, [items[i] for i in small])
        for index, result in zip(small, found, strict=True):
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


def pipelined(produce: Callable[[T], R], items: Iterable[T],
              consume: Callable[[T, R], Any]) -> None:
    """``consume(item, produce(item))`` for each item in order, double-buffered.

    The next item's ``produce`` runs on a thread of its own while this item's
    ``consume`` runs, so at most two products are alive. Items are drawn from ``items``
    on the calling thread. What either raises stops the loop and is raised here (once
    the product in flight, if any, is done). The streaming Hessian passes produce a
    batch's stage activations in onnxruntime and consume them in the accumulators, whose
    im2col gathers and float64 additions keep only one core busy.
    """
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spa-produce") as runner:
        def start() -> tuple[T, Future[R]] | None:
            item = next(iterator, _END)
            return None if item is _END else (item, runner.submit(produce, item))

        pending = start()
        while pending is not None:
            item, product = pending[0], pending[1].result()
            pending = start()
            consume(item, product)
            del product


_END: Any = object()

_local = threading.local()


def _mark_worker() -> None:
    _local.in_pool = True


def _inside_pool() -> bool:
    """Whether this thread is one of :func:`_pool`'s (a nested call runs its tasks inline)."""
    return getattr(_local, "in_pool", False)


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` threads, kept for the process.

    The streaming Hessian pass calls :func:`run_tasks` once per calibration batch and
    stage (2,176 times on ResNet-50), and a fresh pool's thread starts and joins each
    time took 1.7 s of its run.
    """
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spa-task",
                              initializer=_mark_worker)


@functools.cache
def _controller() -> ThreadpoolController:
    """The BLAS libraries of this process, found once (see the module docstring)."""
    import scipy.linalg  # noqa: F401  (its BLAS and numpy's are the ones to control)

    return ThreadpoolController()


@functools.cache
def _blas_libraries() -> tuple[Any, ...]:
    return tuple(lib for lib in _controller().lib_controllers if lib.user_api == "blas")


_counts: dict[int, int | None] = {}
"""The thread count each BLAS library was last set to here (by ``id`` of its controller)."""


def _set_counts(counts: Sequence[int | None]) -> None:
    for lib, count in zip(_blas_libraries(), counts, strict=True):
        if count is not None and _counts.get(id(lib)) != count:
            lib.set_num_threads(count)
            _counts[id(lib)] = count


@contextlib.contextmanager
def blas_threads(limit: int) -> Iterator[None]:
    """A context in which BLAS runs on ``limit`` threads, the previous counts restored after.

    Sets the counts through the libraries threadpoolctl found, without its ``limit``
    (which reads every library's whole state on each entry), and remembers what it set:
    every ctypes call gives up the GIL, and taking it back behind the busy worker threads
    made even the reads cost 0.25 ms each, 1.4 s of ResNet-50's Hessian phase. A count
    already right is left alone. BLAS thread counts are process-wide, so these contexts
    are entered from one thread at a time (the caller of :func:`run_tasks`). A count
    changed behind this module's back after its first use (threadpoolctl in an API
    caller's code) is not seen: the context restores the count it remembers.
    """
    libraries = _blas_libraries()
    before = [_counts.setdefault(id(lib), lib.get_num_threads()) for lib in libraries]
    _set_counts([limit] * len(libraries))
    try:
        yield
    finally:
        _set_counts(before)


def single_blas() -> AbstractContextManager[Any]:
    """A context in which BLAS runs on one thread (for work parallel across layers)."""
    return blas_threads(1)
