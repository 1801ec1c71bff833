"""The threads executor's ``keep``: each result handed over as it arrives, once.

obspa's reconstruction stores every layer's new weight through ``keep`` (spilled past
the memory budget) so the float64 results of all layers are never held together: on a
1.1B decoder they were 8.8 GiB at once. These tests pin the contract the pass relies
on: ``keep`` gets the right index with the right result, what it returns is listed in
item order, and a wide task's result is handed over before the next wide task starts.
The pool ``run_tasks`` keeps for the process is reused, and a nested call runs inline;
``pipelined`` makes the next product while this one is used, and raises what either raises.
"""

from __future__ import annotations

import threading

import pytest

from spa_opt.obs.executor import ThreadExecutor
from spa_opt.obs.threads import BIG_WIDTH, pipelined, run_tasks


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


def test_run_tasks_called_from_its_own_pool_runs_inline() -> None:
    """The pool is kept for the process: a task that calls ``run_tasks`` again runs the
    inner tasks on its own thread instead of waiting for the pool's busy threads, and a
    second call runs on the same threads."""
    def outer(item: int) -> tuple[int, list[threading.Thread]]:
        return item, run_tasks(lambda _: threading.current_thread(), [0, 1, 2], [8] * 3,
                               jobs=2)

    threads: set[threading.Thread] = set()
    for items in ([10, 20], [30, 40, 50]):
        found = run_tasks(outer, items, [8] * len(items), jobs=2)
        assert [item for item, _ in found] == items
        for _, inner in found:
            assert len(set(inner)) == 1 and inner[0].name.startswith("spa-task")
            threads.update(inner)
    assert len(threads) <= 2


def test_pipelined_overlaps_the_next_product_with_this_consumption() -> None:
    """Items in order, each consumed with its own product; item i + 1's product is made
    while item i is consumed (the consumer waits for it to start), never two ahead."""
    events: list[str] = []
    started = {i: threading.Event() for i in range(4)}

    def produce(item: int) -> int:
        events.append(f"make {item}")
        started[item].set()
        return item * 10

    def consume(item: int, product: int) -> None:
        assert product == item * 10
        if item + 1 in started:  # the next one is under way before this one is done
            assert started[item + 1].wait(5)
        assert not (item + 2 in started and started[item + 2].is_set())
        events.append(f"use {item}")

    pipelined(produce, range(4), consume)
    assert [e for e in events if e.startswith("use")] == [f"use {i}" for i in range(4)]
    assert events.index("make 1") < events.index("use 0")


def test_pipelined_raises_what_either_side_raises() -> None:
    def bad_product(item: int) -> int:
        if item == 2:
            raise ValueError("product 2")
        return item

    used: list[int] = []
    with pytest.raises(ValueError, match="product 2"):
        pipelined(bad_product, range(5), lambda item, _: used.append(item))
    assert used == [0, 1]

    def bad_use(item: int, _: int) -> None:
        raise KeyError(item)

    with pytest.raises(KeyError):
        pipelined(lambda item: item, range(5), bad_use)
