"""Failures and timeouts are rows, not crashes; ``--retry-failed`` decides whether a re-run tries them again.

The timeout is planted with a batch function that sleeps on files named ``slow*`` and otherwise runs the real
:func:`mlwarden.bulk.worker.scan_batch`: the run must cancel that task, split its batch, record the slow file as
``timeout`` and its batch-mate as ``done``. Checked on the process pool (SQLite and PostgreSQL) and on Ray.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from mlwarden.bulk import BulkOptions, ResultStore, run_bulk
from mlwarden.bulk.backends import RayBackend
from mlwarden.bulk.sources import WorkItem
from mlwarden.bulk.worker import CacheSettings, scan_batch
from mlwarden.core.policy import Policy
from tests.bulk.helpers import make_folder


def slow_task(
    items: list[WorkItem], policy: Policy, modes: tuple[str, ...], cache: CacheSettings | None = None
) -> list[dict[str, Any]]:
    """The real batch scan, except that a file named ``slow*`` hangs."""
    if any(Path(i.source).name.startswith("slow") for i in items):
        time.sleep(60)
    return scan_batch(items, policy, modes, cache)


def _plant(root: Path) -> tuple[Path, Path, Path]:
    make_folder(root, 3)
    slow = root / "slow.pkl"
    slow.write_bytes(b"\x80\x04K\x01.")
    dangling = root / "gone.pkl"
    dangling.symlink_to(root / "does-not-exist")
    corrupt = root / "corrupt.pkl"
    corrupt.write_bytes(b"\x80\x04\x95\xff\xff\xff\xff")  # a truncated pickle: scanned, with a finding
    return slow, dangling, corrupt


def _check(rows: list[dict[str, Any]], slow: Path, dangling: Path, corrupt: Path) -> None:
    by = {r["source"]: r for r in rows}
    assert len(rows) == 6
    assert (by[str(slow)]["status"], by[str(slow)]["verdict"]) == ("timeout", "error")
    assert "no result within" in by[str(slow)]["error"]
    assert (by[str(dangling)]["status"], by[str(dangling)]["verdict"]) == ("failed", "error")
    assert by[str(dangling)]["error"]
    assert by[str(corrupt)]["status"] == "done"
    assert by[str(corrupt)]["rule_ids"]
    assert sum(r["status"] == "done" for r in rows) == 4


def test_failures_and_timeouts_are_rows(store: ResultStore, tmp_path: Path) -> None:
    slow, dangling, corrupt = _plant(tmp_path / "m")
    options = BulkOptions(backend="process", workers=2, batch_size=2, timeout=1.0, grace=0.5)
    started = time.monotonic()
    stats = run_bulk([str(tmp_path / "m")], store, options=options, task=slow_task)
    assert time.monotonic() - started < 20
    assert stats.counts == {"done": 4, "failed": 1, "timeout": 1}
    _check(store.rows(), slow, dangling, corrupt)

    again = run_bulk([str(tmp_path / "m")], store, options=options, task=slow_task)
    assert (again.dispatched, again.skipped) == (0, 6)  # failures are not retried unless asked
    dangling.unlink()
    dangling.write_bytes(b"\x80\x04K\x02.")
    retry = BulkOptions(backend="process", workers=2, batch_size=2, timeout=1.0, grace=0.5, retry_failed=True)
    third = run_bulk([str(tmp_path / "m")], store, options=retry)
    assert third.dispatched == 2
    assert third.counts["done"] == 2
    rows = store.rows()
    assert len(rows) == 6
    assert all(r["status"] == "done" for r in rows)


def test_timeout_on_ray(ray_backend: Any, tmp_path: Path) -> None:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    slow, dangling, corrupt = _plant(tmp_path / "m")
    store = ResultStore.open(str(tmp_path / "r.db"))
    backend = RayBackend(workers=2, task=slow_task)  # reuses the session's Ray
    options = BulkOptions(workers=2, batch_size=1, timeout=1.0, grace=4.0)  # grace: a killed worker's replacement
    stats = run_bulk([str(tmp_path / "m")], store, options=options, backend=backend)
    assert stats.counts == {"done": 4, "failed": 1, "timeout": 1}
    _check(store.rows(), slow, dangling, corrupt)
    store.dispose()
