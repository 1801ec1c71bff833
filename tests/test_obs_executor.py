"""The threads executor's ``keep``: each result handed over as it arrives, once.

obspa's reconstruction stores every layer's new weight through ``keep`` (spilled past
the memory budget) so the float64 results of all layers are never held together: on a
1.1B decoder they were 8.8 GiB at once. These tests pin the contract the pass relies
on: ``keep`` gets the right index with the right result, what it returns is listed in
item order, and a wide task's result is handed over before the next wide task starts.
"""

from __future__ import annotations

import threading

from spa_opt.obs.executor import ThreadExecutor
from spa_opt.obs.threads import BIG_WIDTH, run_tasks


def test_keep_replaces_each_result_in_item_order() -> None:
    items = list(range(9))
    sizes = [BIG_WIDTH if i % 3 == 0 else 8 for i in items]  # big and small mixed
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def keep(index: int, result: int) -> str:
        with lock:
            seen.append((index, result))
        return f"kept {result}"

    got = ThreadExecutor(2).map(lambda x: x * x, items, sizes, keep=keep)
    assert got == [f"kept {i * i}" for i in items]
    assert sorted(seen) == [(i, i * i) for i in items]


def test_wide_results_are_handed_over_before_the_next_wide_task() -> None:
    events: list[str] = []

    def task(item: int) -> int:
        events.append(f"run {item}")
        return item

    def keep(index: int, result: int) -> None:
        events.append(f"keep {index}")

    run_tasks(task, [0, 1, 2], [BIG_WIDTH] * 3, jobs=2, keep=keep)
    assert events == ["run 0", "keep 0", "run 1", "keep 1", "run 2", "keep 2"]


def test_without_keep_results_are_listed_as_they_are() -> None:
    assert ThreadExecutor(1).map(lambda x: -x, [1, 2, 3], [1, 1, BIG_WIDTH]) == [-1, -2, -3]


def test_small_tasks_run_with_one_blas_thread_big_ones_with_all() -> None:
    """The limits ``run_tasks`` sets (through one cached controller) are the ones BLAS
    sees inside each task, and the process's own setting comes back afterwards."""
    from threadpoolctl import threadpool_info

    def blas_threads(_: int) -> int:
        return max(info["num_threads"] for info in threadpool_info()
                   if info["user_api"] == "blas")

    before = blas_threads(0)
    got = run_tasks(blas_threads, [0, 1], [8, BIG_WIDTH], jobs=2)
    assert got == [1, 2]
    assert blas_threads(0) == before
