"""Bulk scanning: many artifacts, scanned by Ray tasks (or a process pool) into a resumable results store.

``mlwarden bulk scan SOURCE... --results DB`` and ``mlwarden bulk report --results DB``; see ``docs/bulk.md``.
The verdicts are those of a local scan: every worker calls the same :func:`mlwarden.scan.engine.scan_file`.
"""

from __future__ import annotations

from mlwarden.bulk.runner import BulkOptions, RunStats, run_bulk
from mlwarden.bulk.sources import WorkItem, expand_sources
from mlwarden.bulk.store import BulkError, ResultStore
from mlwarden.bulk.summary import summarize

__all__ = ["BulkError", "BulkOptions", "ResultStore", "RunStats", "WorkItem", "expand_sources", "run_bulk", "summarize"]
