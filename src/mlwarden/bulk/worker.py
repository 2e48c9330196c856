"""What runs on a worker: scan a batch of items and return one plain row (a dict) per item.

Rows are plain data so they cross process and machine boundaries (Ray, a process pool) unchanged. The worker
computes the digest itself: the coordinator never reads the artifacts. A batch of local files in dynamic mode goes
through :func:`mlwarden.scan.engine.scan_paths`, whose warm pool imports each framework once per batch. A remote
object in dynamic mode goes through :func:`mlwarden.scan.engine.scan_remote`, exactly as ``mlwarden scan URL
--dynamic``: static analysis in place, then the copy downloaded once into the worker's private
:class:`~mlwarden.scan.remote_cache.RemoteCache` runs in the sandbox.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.bulk.sources import WorkItem
from mlwarden.core.policy import Policy
from mlwarden.report.jsonfmt import file_dict
from mlwarden.scan.result import FileResult
from mlwarden.scan.suppressions import file_digest

if TYPE_CHECKING:
    from mlwarden.scan.remote_cache import RemoteCache


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Where a worker downloads remote models for dynamic analysis (built on the worker, so ``None`` is its default).

    Attributes:
        directory: the cache folder on the worker's machine; ``None``: ``$XDG_CACHE_HOME/mlwarden/remote`` there.
        max_bytes: bound on all cached copies together (``None``: the cache's default, 20 GiB).
    """

    directory: str | None = None
    max_bytes: int | None = None

    def cache(self) -> RemoteCache:
        """The :class:`~mlwarden.scan.remote_cache.RemoteCache` these settings name."""
        from mlwarden.scan.remote_cache import DEFAULT_MAX_BYTES, RemoteCache

        return RemoteCache(self.directory, self.max_bytes or DEFAULT_MAX_BYTES)


def verdict(result: FileResult, policy: Policy) -> str:
    """``error`` (not scanned), ``fail`` (an unsuppressed finding at or above ``fail_on``) or ``pass``."""
    if result.error is not None:
        return "error"
    failing = any(f.severity >= policy.fail_on and f.suppressed is None for f in result.findings)
    return "fail" if failing else "pass"


def row_of(item: WorkItem, result: FileResult, digest: str | None, policy: Policy) -> dict[str, Any]:
    """The ``bulk_results`` values for one scanned item."""
    worst = result.max_severity
    plain = json.loads(json.dumps(file_dict(result), default=str).encode("utf-8", "replace").decode("utf-8"))
    return {
        "source": item.source,
        "digest": digest or "",
        "kind": "remote" if item.remote else "local",
        "size": result.size if result.size is not None else item.size,
        "mtime_ns": item.mtime_ns,
        "status": "failed" if result.error is not None else "done",
        "verdict": verdict(result, policy),
        "max_severity": None if worst is None else str(worst),
        "rule_ids": sorted({f.rule_id for f in result.findings}),
        "formats": sorted({fmt for _chain, fmt in result.formats}),
        "seconds": round(result.duration, 6),
        "error": result.error,
        "result": plain,
    }


def error_row(item: WorkItem, status: str, error: str, seconds: float = 0.0) -> dict[str, Any]:
    """A ``failed`` or ``timeout`` row: the item was not (fully) scanned, and the store says why."""
    return {
        "source": item.source,
        "digest": "",
        "kind": "remote" if item.remote else "local",
        "size": item.size,
        "mtime_ns": item.mtime_ns,
        "status": status,
        "verdict": "error",
        "max_severity": None,
        "rule_ids": [],
        "formats": [],
        "seconds": round(seconds, 6),
        "error": error,
        "result": None,
    }


def _remote(item: WorkItem, policy: Policy, modes: tuple[str, ...], cache: CacheSettings | None) -> dict[str, Any]:
    """Scan one remote object; with ``dynamic`` in ``modes`` its cached copy runs in the sandbox.

    The digest stays the store's pin (what planning compares to skip it next time); the copy's own sha256 is in the
    result's provenance (``remote.cached_sha256``). A download that fails or does not fit the cache is a failed row.
    """
    from mlwarden.scan.engine import scan_remote
    from mlwarden.scan.remote import resolve

    found = resolve(item.source)
    if len(found) != 1:
        return error_row(item, "failed", f"{item.source}: resolves to {len(found)} objects, expected 1")
    remote_cache = (cache or CacheSettings()).cache() if "dynamic" in modes else None
    result = scan_remote(found[0], policy, modes, remote_cache)
    prov = result.remote
    digest = None if prov is None else (prov.sha256 or prov.etag or prov.version_id or prov.read_digest)
    return row_of(item, result, digest, policy)


def _local_dynamic(items: list[WorkItem], policy: Policy, modes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Dynamic batch: one scan_paths call (warm pool per framework when the batch has 3+ files)."""
    from mlwarden.scan.engine import scan_file, scan_paths

    present = [i for i in items if os.path.isfile(i.source)]
    digests = {i.source: file_digest(i.source) for i in present}
    report = scan_paths([i.source for i in present], policy, jobs=1, modes=modes)
    by_path = {r.path: r for r in report.files}
    out = []
    for item in items:
        result = by_path.get(item.source) or scan_file(Path(item.source), policy, ("static",))
        out.append(row_of(item, result, digests.get(item.source), policy))
    return out


def scan_batch(
    items: list[WorkItem], policy: Policy, modes: tuple[str, ...], cache: CacheSettings | None = None
) -> list[dict[str, Any]]:
    """Scan every item of the batch; one row each, never an exception for bad content or a vanished file.

    Args:
        items: the batch.
        policy: the scan policy.
        modes: ``static`` and/or ``dynamic``.
        cache: where remote objects are downloaded for dynamic analysis (``None``: the worker's default cache).
    """
    from mlwarden.scan.engine import scan_file

    local = [i for i in items if not i.remote and i.error is None]
    rows: dict[str, dict[str, Any]] = {i.source: error_row(i, "failed", i.error) for i in items if i.error}
    if "dynamic" in modes and local:
        started = time.monotonic()
        try:
            for row in _local_dynamic(local, policy, modes):
                rows[row["source"]] = row
        except Exception as exc:  # noqa: BLE001 - e.g. SandboxUnavailable: every item of the batch is a failed row
            for item in local:
                rows[item.source] = error_row(
                    item, "failed", f"{type(exc).__name__}: {exc}", time.monotonic() - started
                )
    for item in items:
        if item.source in rows:
            continue
        started = time.monotonic()
        try:
            if item.remote:
                rows[item.source] = _remote(item, policy, modes, cache)
            else:
                digest = file_digest(item.source)
                rows[item.source] = row_of(item, scan_file(Path(item.source), policy, modes), digest, policy)
        except Exception as exc:  # noqa: BLE001 - a worker failure is a row, never a crashed run
            rows[item.source] = error_row(item, "failed", f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    return [rows[i.source] for i in items]
