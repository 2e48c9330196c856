"""Where batches run: Ray tasks (local Ray or a cluster by address), or a local process pool.

Both expose the same four calls to the runner: ``submit`` a batch, ``wait`` for some to finish, ``cancel`` one that
overran its time, ``close``. A batch is a list of :class:`~mlwarden.bulk.sources.WorkItem`; its result is a list of
rows, or the exception that killed the task (the runner turns that into rows).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mlwarden.bulk.sources import WorkItem
from mlwarden.bulk.store import BulkError
from mlwarden.bulk.worker import CacheSettings, scan_batch
from mlwarden.core.policy import Policy

Rows = list[dict[str, Any]]
Task = Callable[[list[WorkItem], Policy, tuple[str, ...], CacheSettings | None], Rows]
Outcome = tuple[Any, "Rows | BaseException"]


class Backend(Protocol):
    """What the runner needs of an execution engine."""

    name: str
    capacity: int  # batches to keep in flight (one per worker CPU: a batch starts when it is submitted)
    grace: float  # seconds added to every deadline: a fresh worker's start-up (imports) is not the artifact's fault

    def submit(
        self, batch: list[WorkItem], policy: Policy, modes: tuple[str, ...], cache: CacheSettings | None = None
    ) -> Any:
        """Start ``batch`` (``cache``: where its remote objects are downloaded for dynamic analysis); a handle."""

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Outcome]:
        """Every finished handle (at least one unless ``timeout`` seconds pass first) with its rows or exception."""

    def cancel(self, handle: Any) -> list[Any]:
        """Stop ``handle``; return the other in-flight handles the cancellation also lost (to resubmit)."""

    def close(self) -> None:
        """Release the workers."""


class RayBackend:
    """Ray tasks: ``ray.init(address)`` for a cluster, else a local Ray with ``workers`` CPUs.

    Each task runs in a Ray worker process, which keeps its imports (the scanners, the frameworks) between tasks.
    A task that overruns is cancelled with ``force=True``: Ray kills that worker process and starts a fresh one.
    When Ray is already initialised (a notebook, a test session) it is used as is and left running.
    """

    name = "ray"
    grace = 15.0  # a replacement Ray worker (after a cancel) starts a Python and imports mlwarden's scanners

    def __init__(self, workers: int, address: str | None = None, task: Task | None = None) -> None:
        """Connect to (or start) Ray.

        Raises:
            BulkError: Ray is not installed or the cluster cannot be reached.
        """
        try:
            import ray
        except ImportError:
            raise BulkError("Ray is not installed: pip install 'mlwarden[bulk]', or use --backend process") from None
        self._ray = ray
        self._owned = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            try:
                if address:
                    ray.init(address=address, **options)
                else:
                    ray.init(num_cpus=workers, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise BulkError(f"--ray {address or 'local'}: {exc}") from None
            self._owned = True
        cpus = int(ray.cluster_resources().get("CPU", workers))
        self.capacity = max(1, cpus if address else min(workers, cpus))
        self._remote = ray.remote(num_cpus=1, max_retries=0)(task or scan_batch)

    def submit(
        self, batch: list[WorkItem], policy: Policy, modes: tuple[str, ...], cache: CacheSettings | None = None
    ) -> Any:
        """Start one Ray task for ``batch``."""
        return self._remote.remote(batch, policy, modes, cache)

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Outcome]:
        """``ray.wait`` for the first, then collect every other one already finished."""
        ready, _ = self._ray.wait(list(handles), num_returns=1, timeout=max(0.0, timeout))
        if ready:
            ready, _ = self._ray.wait(list(handles), num_returns=len(handles), timeout=0)
        out: list[Outcome] = []
        for ref in ready:
            try:
                out.append((ref, self._ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError...: rows, not a crash
                out.append((ref, exc))
        return out

    def cancel(self, handle: Any) -> list[Any]:
        """Kill the task's worker process (Ray replaces it)."""
        try:
            self._ray.cancel(handle, force=True)
        except Exception:  # noqa: BLE001, S110 - already finished or gone: nothing left to stop
            pass
        return []

    def close(self) -> None:
        """Shut Ray down if this backend started it."""
        if self._owned:
            self._ray.shutdown()


class ProcessBackend:
    """A local :class:`~concurrent.futures.ProcessPoolExecutor`: no cluster, no Ray start-up cost.

    A running future cannot be cancelled, so an overrun kills the whole pool and starts a new one; the other
    batches it was running are returned to the runner to be submitted again (they were not recorded).
    """

    name = "process"
    grace = 2.0  # a replacement pool forks from this process, which has the scanners imported already

    def __init__(self, workers: int, task: Task | None = None) -> None:
        """Start a pool of ``workers`` processes."""
        self.capacity = max(1, workers)
        self._task: Task = task or scan_batch
        self._pool = cf.ProcessPoolExecutor(max_workers=self.capacity)
        self._live: set[cf.Future[Rows]] = set()

    def submit(
        self, batch: list[WorkItem], policy: Policy, modes: tuple[str, ...], cache: CacheSettings | None = None
    ) -> Any:
        """Submit ``batch`` (a broken pool is replaced first)."""
        try:
            future = self._pool.submit(self._task, batch, policy, modes, cache)
        except cf.process.BrokenProcessPool:
            self._restart()
            future = self._pool.submit(self._task, batch, policy, modes, cache)
        self._live.add(future)
        return future

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Outcome]:
        """``concurrent.futures.wait`` for the first completed."""
        done, _ = cf.wait(list(handles), timeout=max(0.0, timeout), return_when=cf.FIRST_COMPLETED)
        out: list[Outcome] = []
        for future in done:
            self._live.discard(future)
            exc = future.exception()
            out.append((future, exc if exc is not None else future.result()))
        return out

    def cancel(self, handle: Any) -> list[Any]:
        """Kill every worker process and start a new pool; the other in-flight handles are lost."""
        lost = [f for f in self._live if f is not handle and not f.done()]
        self._live.clear()
        self._restart()
        return lost

    def _restart(self) -> None:
        for process in list(getattr(self._pool, "_processes", {}).values()):
            process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = cf.ProcessPoolExecutor(max_workers=self.capacity)

    def close(self) -> None:
        """Stop the pool (killing a worker still busy)."""
        for process in list(getattr(self._pool, "_processes", {}).values()):
            if process.is_alive() and self._live:
                process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_backend(name: str, workers: int, address: str | None = None, task: Task | None = None) -> Backend:
    """``ray`` (the default; ``address`` for a cluster) or ``process``.

    Raises:
        BulkError: unknown backend, or Ray unavailable.
    """
    if name == "ray":
        return RayBackend(workers, address, task)
    if name == "process":
        if address:
            raise BulkError("--ray ADDRESS needs --backend ray")
        return ProcessBackend(workers, task)
    raise BulkError(f"unknown backend {name!r} (expected ray or process)")
