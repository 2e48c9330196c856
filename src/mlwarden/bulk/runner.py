"""The coordinator: plan against the store, keep the workers busy, write every result as it arrives.

Resumability comes from three rules: (1) before dispatching, every item the store already has ``done`` (same
size and mtime for a file, same pin for a remote object) is skipped; (2) each result is committed in its own
transaction as soon as its batch returns, so killing the coordinator loses at most the batches in flight; (3) a
re-run dispatches only what is missing (and, with ``retry_failed``, what failed or timed out).

Time limits are per artifact: a batch of ``n`` gets ``grace + n * timeout`` seconds from its submission (the runner
keeps exactly as many batches in flight as there are workers, so a batch starts when it is submitted). A batch that
overruns or whose task dies is split and its items are dispatched one by one; an item that overruns alone
becomes a ``timeout`` row, one whose task dies alone a ``failed`` row.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mlwarden.bulk.backends import Backend, Rows, Task, make_backend
from mlwarden.bulk.hub import DEFAULT_MAX_REPOS
from mlwarden.bulk.sources import WorkItem, already_done, expand_sources
from mlwarden.bulk.store import ResultStore
from mlwarden.bulk.worker import CacheSettings, error_row
from mlwarden.core.policy import Policy

OnRow = Callable[[dict[str, Any]], None]
OnNote = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BulkOptions:
    """How a bulk run scans.

    Attributes:
        modes: ``("static",)``, ``("dynamic",)`` or both.
        workers: worker processes (local Ray CPUs, or the pool size).
        backend: ``ray`` or ``process``.
        address: a Ray cluster address (``ray://host:10001`` or ``auto``); ``None`` starts a local Ray.
        timeout: seconds allowed per artifact.
        batch_size: artifacts per task (default 8 static, 16 dynamic: the warm pool's import is paid per batch).
        retry_failed: also dispatch items whose newest row is ``failed`` or ``timeout``.
        grace: seconds added to each batch's deadline for a worker's start-up (``None``: the backend's default).
        max_repos: bound on the repositories one Hub listing source (``hf://ORG``, ``hf://?search=``) expands to.
        cache: where workers download remote objects for dynamic analysis (``None``: each worker's default cache).
    """

    modes: tuple[str, ...] = ("static",)
    workers: int = 2
    backend: str = "ray"
    address: str | None = None
    timeout: float = 120.0
    batch_size: int | None = None
    retry_failed: bool = False
    grace: float | None = None
    max_repos: int = DEFAULT_MAX_REPOS
    cache: CacheSettings | None = None

    def batch(self) -> int:
        """The effective batch size."""
        if self.batch_size is not None:
            return max(1, self.batch_size)
        return 16 if "dynamic" in self.modes else 8


@dataclass
class RunStats:
    """What one run did (the same numbers as its ``bulk_runs`` row)."""

    run_id: int
    planned: int = 0
    skipped: int = 0
    dispatched: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"done": 0, "failed": 0, "timeout": 0})
    seconds: float = 0.0


@dataclass
class _Flight:
    batch: list[WorkItem]
    deadline: float


def plan(items: Iterable[WorkItem], store: ResultStore, *, retry_failed: bool) -> tuple[list[WorkItem], int]:
    """The items to dispatch, and how many the store made unnecessary."""
    known = store.known()
    todo: list[WorkItem] = []
    skipped = 0
    for item in items:
        if already_done(item, known.get(item.source), retry_failed=retry_failed):
            skipped += 1
        else:
            todo.append(item)
    return todo, skipped


def run_bulk(
    sources: list[str],
    store: ResultStore,
    policy: Policy | None = None,
    options: BulkOptions | None = None,
    *,
    backend: Backend | None = None,
    task: Task | None = None,
    on_row: OnRow | None = None,
    on_note: OnNote | None = None,
) -> RunStats:
    """Scan every artifact of ``sources`` into ``store``; see the module docstring for the guarantees.

    Args:
        sources: folders, files, ``@list`` files, URLs and prefixes.
        store: the results store.
        policy: the scan policy (default policy if ``None``).
        options: modes, workers, backend, timeouts.
        backend: an already started backend (tests share one); else one is made from ``options`` and closed.
        task: the function run per batch (default :func:`mlwarden.bulk.worker.scan_batch`).
        on_row: called with every row after it is committed.
        on_note: called with notes while planning (a Hub listing cut at ``options.max_repos``).

    Raises:
        BulkError: bad sources (or a Hub listing that fails), or a backend that cannot start. An exception from
            ``on_row`` (or a KeyboardInterrupt) stops the run: it is marked ``interrupted`` and what was committed
            stays.
    """
    options = options or BulkOptions()
    policy = policy or Policy()
    started = time.monotonic()
    items = expand_sources(sources, max_repos=options.max_repos, on_note=on_note)
    todo, skipped = plan(items, store, retry_failed=options.retry_failed)
    owned = backend is None
    engine = backend or make_backend(options.backend, options.workers, options.address, task)
    run_id = store.begin_run(sources, options.modes, engine.name, options.workers)
    store.plan(run_id, len(todo), skipped)
    stats = RunStats(run_id, planned=len(todo), skipped=skipped)
    loop = _Loop(engine, store, policy, options, stats, on_row)
    state = "interrupted"
    try:
        loop.run(todo)
        state = "finished"
    finally:
        loop.abandon()
        store.finish_run(run_id, state)
        if owned:
            engine.close()
        stats.seconds = time.monotonic() - started
    return stats


class _Loop:
    """Keeps ``capacity`` batches in flight and turns every outcome into committed rows."""

    def __init__(
        self,
        backend: Backend,
        store: ResultStore,
        policy: Policy,
        options: BulkOptions,
        stats: RunStats,
        on_row: OnRow | None,
    ) -> None:
        self.backend, self.store, self.policy, self.options = backend, store, policy, options
        self.stats, self.on_row = stats, on_row
        self.queue: deque[list[WorkItem]] = deque()
        self.flights: dict[Any, _Flight] = {}

    def run(self, todo: list[WorkItem]) -> None:
        size = self.options.batch()
        self.queue.extend(todo[i : i + size] for i in range(0, len(todo), size))
        while self.queue or self.flights:
            self._fill()
            now = time.monotonic()
            soonest = min(f.deadline for f in self.flights.values())
            for handle, outcome in self.backend.wait(list(self.flights), soonest - now):
                flight = self.flights.pop(handle, None)
                if flight is not None:
                    self._settle(flight, outcome)
            self._expire(time.monotonic())

    def _fill(self) -> None:
        while self.queue and len(self.flights) < self.backend.capacity:
            batch = self.queue.popleft()
            self.store.dispatched(self.stats.run_id, len(batch))
            self.stats.dispatched += len(batch)
            handle = self.backend.submit(batch, self.policy, self.options.modes, self.options.cache)
            grace = self.backend.grace if self.options.grace is None else self.options.grace
            self.flights[handle] = _Flight(batch, time.monotonic() + grace + self.options.timeout * len(batch))

    def _settle(self, flight: _Flight, outcome: Rows | BaseException) -> None:
        if isinstance(outcome, BaseException):
            if len(flight.batch) > 1:
                self.queue.extendleft([i] for i in reversed(flight.batch))
                return
            outcome = [error_row(flight.batch[0], "failed", f"worker died: {type(outcome).__name__}: {outcome}")]
        for row in outcome:
            self._commit(row)

    def _expire(self, now: float) -> None:
        for handle, flight in list(self.flights.items()):
            if flight.deadline > now or handle not in self.flights:
                continue
            del self.flights[handle]
            for lost in self.backend.cancel(handle):  # the process pool loses its other batches: run them again
                other = self.flights.pop(lost, None)
                if other is not None:
                    self.queue.appendleft(other.batch)
            if len(flight.batch) > 1:
                self.queue.extendleft([i] for i in reversed(flight.batch))
            else:
                limit = self.options.timeout
                self._commit(error_row(flight.batch[0], "timeout", f"no result within {limit:g} s", limit))

    def _commit(self, row: dict[str, Any]) -> None:
        self.store.record(row, self.stats.run_id)
        self.stats.counts[row["status"]] += 1
        if self.on_row is not None:
            self.on_row(row)

    def abandon(self) -> None:
        """Cancel whatever is still in flight (after an interruption); its items stay missing from the store."""
        for handle in list(self.flights):
            self.backend.cancel(handle)
        self.flights.clear()
