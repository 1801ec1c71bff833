"""Where obspa's independent tasks run: local threads, or the workers of a Ray cluster.

A task is a plain function of one picklable payload of arrays (an
:class:`~spa_opt.obs.order.OrderTask`, a :class:`~spa_opt.obs.linalg.ReconstructTask`, a
:class:`~spa_opt.obs.hessian.ShardTask`), and the function is a module-level one of
:mod:`spa_opt.obs`, so a worker needs numpy, scipy and (for Hessian shards)
onnxruntime, nothing of the pass machinery. An executor maps such a function over the
payloads and gives the results back in order:

- :class:`ThreadExecutor` (``threads``, the default): :func:`~.threads.run_tasks` on
  this machine's cores;
- :class:`RayExecutor` (``ray``, ``ray://HOST:PORT``, or ``ray`` with ``RAY_ADDRESS``
  set): one Ray task per payload. The payload is ``ray.put`` once into the object
  store; its numpy arrays are stored as out-of-band buffers that a worker on the same
  node reads in place (no pickled copy), and a worker on another node fetches once.
  At most ``2 x`` the cluster's CPUs are in flight, so the driver holds a bounded
  number of payloads: obspa gathers a task's Hessians when it is submitted, not
  before.

The results of both agree to rounding: the same function runs on the same arrays; only
BLAS's thread count may differ (each Ray task runs BLAS on one thread, as the threads
executor does for all but the widest layers). ``tests/test_executor_ray.py`` checks a
pruned model against the threads result within 1e-6.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from spa_opt.obs.threads import cores, run_tasks, single_blas

T = TypeVar("T")
R = TypeVar("R")


class ExecutorError(RuntimeError):
    """The executor cannot be used (not installed, the cluster is unreachable)."""


def payload_bytes(payload: Any) -> int:
    """Bytes of the numpy arrays in a payload (what crosses the network per task)."""
    if isinstance(payload, np.ndarray):
        return int(payload.nbytes)
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        return sum(payload_bytes(getattr(payload, f.name)) for f in dataclasses.fields(payload))
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(item) for item in payload)
    if isinstance(payload, dict):
        return sum(payload_bytes(item) for item in payload.values())
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    return 0


@dataclasses.dataclass
class Traffic:
    """What one executor shipped: tasks, payload bytes out, result bytes back."""

    tasks: int = 0
    sent: int = 0
    received: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, float]:
        """For the report."""
        return {"tasks": self.tasks, "sent_mb": self.sent / 2**20,
                "received_mb": self.received / 2**20, "largest_task_mb": self.largest / 2**20}


class Executor:
    """Maps a function over payloads (see the module docstring)."""

    name = "executor"

    def __init__(self) -> None:
        self.traffic = Traffic()

    def map(self, function: Callable[..., R], items: Sequence[Any], sizes: Sequence[int],
            done: Callable[[], None] | None = None,
            prepare: Callable[[Any], T] | None = None, shared: Any = None,
            keep: Callable[[int, R], Any] | None = None) -> list[Any]:
        """``[function(prepare(item)) for item in items]``, in parallel.

        Args:
            function: A module-level function of one payload (it travels by name).
            items: What the payloads are made from.
            sizes: Each item's width (columns of its largest layer), for scheduling.
            done: Called after each task (a progress bar's update).
            prepare: Makes an item's payload, on this machine, just before it runs.
            shared: When given, a second argument of every call, shipped once (a
                stage's program for all its shards).
            keep: Called with each result's index and the result as it arrives (in
                any order); what it returns is listed instead, so large results (a
                reconstructed weight per layer) are stored one at a time, never all
                held at once.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadExecutor(Executor):
    """This machine's cores (:func:`~.threads.run_tasks`)."""

    name = "threads"

    def __init__(self, jobs: int = 0) -> None:
        super().__init__()
        self.jobs = jobs

    @property
    def workers(self) -> int:
        """Threads in use."""
        return cores(self.jobs)

    def map(self, function: Callable[..., R], items: Sequence[Any], sizes: Sequence[int],
            done: Callable[[], None] | None = None,
            prepare: Callable[[Any], T] | None = None, shared: Any = None,
            keep: Callable[[int, R], Any] | None = None) -> list[Any]:
        """See :meth:`Executor.map`."""
        self.traffic.tasks += len(items)
        extra = () if shared is None else (shared,)
        if prepare is None:
            return run_tasks(lambda item: function(item, *extra), items, sizes, self.jobs, done,
                             keep)
        return run_tasks(lambda item: function(prepare(item), *extra), items, sizes,
                         self.jobs, done, keep)


def _in_worker(function: Callable[..., Any], payload: Any, *shared: Any) -> Any:
    """A Ray task's body: the function on its payload, BLAS on the task's one CPU."""
    with single_blas():
        return function(payload, *shared)


class RayExecutor(Executor):
    """The CPUs of a Ray cluster: local (started here) or an existing one."""

    name = "ray"

    def __init__(self, address: str | None = None, jobs: int = 0) -> None:
        super().__init__()
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install 'spa-opt[distributed]'"
                                ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "configure_logging": False}
            if address:
                options["address"] = address
            elif not os.environ.get("RAY_ADDRESS"):
                options["num_cpus"] = cores(jobs)  # a local cluster of this machine
            try:
                with warnings.catch_warnings():  # Ray Client warns before it raises
                    warnings.simplefilter("ignore")
                    ray.init(**options)
            except Exception as error:  # Ray raises ConnectionError, RuntimeError, ...
                reason = str(error).strip().splitlines()[0] if str(error).strip() else \
                    type(error).__name__
                where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
                raise ExecutorError(f"cannot start or join the Ray cluster at {where}: "
                                    f"{reason}") from None
            self._started = True
        self._remote = ray.remote(num_cpus=1, max_retries=1)(_in_worker)

    @property
    def workers(self) -> int:
        """CPUs of the cluster."""
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def map(self, function: Callable[..., R], items: Sequence[Any], sizes: Sequence[int],
            done: Callable[[], None] | None = None,
            prepare: Callable[[Any], T] | None = None, shared: Any = None,
            keep: Callable[[int, R], Any] | None = None) -> list[Any]:
        """See :meth:`Executor.map`; results come back as they finish, kept in order."""
        ray = self._ray
        window = 2 * self.workers
        results: list[Any] = [None] * len(items)
        pending: dict[Any, int] = {}
        next_item = 0
        function_ref = ray.put(function)
        extra: tuple[Any, ...] = ()
        if shared is not None:
            extra = (ray.put(shared),)
            size = payload_bytes(shared)
            self.traffic.sent += size
            self.traffic.largest = max(self.traffic.largest, size)
        while next_item < len(items) or pending:
            while next_item < len(items) and len(pending) < window:
                payload = prepare(items[next_item]) if prepare is not None else items[next_item]
                size = payload_bytes(payload)
                self.traffic.tasks += 1
                self.traffic.sent += size
                self.traffic.largest = max(self.traffic.largest, size)
                pending[self._remote.remote(function_ref, ray.put(payload), *extra)] = next_item
                del payload
                next_item += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index = pending.pop(ref)
                result = ray.get(ref)
                self.traffic.received += payload_bytes(result)
                results[index] = result if keep is None else keep(index, result)
                del result
                if done is not None:
                    done()
        return results

    def close(self) -> None:
        """Shut down the local cluster this executor started (joined ones stay up)."""
        if self._started:
            self._ray.shutdown()
            self._started = False


def check_executor(spec: str) -> str:
    """``spec`` normalised, or :class:`ExecutorError` when it names no executor.

    Only the text is checked (a CLI can refuse a typo before loading a model); whether
    Ray is installed and the cluster answers is found when the executor starts.
    """
    spec = (spec or "threads").strip()
    if spec in ("threads", "ray"):
        return spec
    if spec.startswith("ray://"):
        host, _, port = spec[len("ray://"):].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ExecutorError(f"bad Ray address `{spec}`: expected ray://HOST:PORT")
        return spec
    raise ExecutorError(f"unknown executor `{spec}`: expected threads, ray or ray://HOST:PORT")


def executor_for(spec: str, jobs: int = 0) -> Executor:
    """The executor named by ``spec``: ``threads``, ``ray``, or ``ray://HOST:PORT``.

    ``ray`` joins the cluster in ``RAY_ADDRESS`` when it is set, else starts a local one
    on ``jobs`` CPUs (0: all); ``ray://HOST:PORT`` joins that cluster through Ray Client.
    Raises :class:`ExecutorError` for anything else, or when Ray is missing or the
    cluster does not answer.
    """
    spec = check_executor(spec)
    if spec == "threads":
        return ThreadExecutor(jobs)
    return RayExecutor(None if spec == "ray" else spec, jobs)
