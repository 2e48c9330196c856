"""Resumability: interrupt a bulk run, run it again: every artifact exactly once, nothing scanned twice.

Two interruptions: an exception injected after K committed results (in-process, on SQLite and PostgreSQL), and a
real ``SIGKILL`` of the ``mlwarden bulk scan`` process once K results are in the database.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlwarden.bulk import BulkOptions, ResultStore, run_bulk
from tests.bulk.helpers import make_folder

N, K = 24, 7


class _CrashError(Exception):
    pass


def _crash_after(k: int) -> Any:
    seen: list[str] = []

    def on_row(row: dict[str, Any]) -> None:
        seen.append(row["source"])
        if len(seen) == k:
            raise _CrashError

    return on_row


def test_interrupted_run_resumes_without_rescanning(store: ResultStore, tmp_path: Path) -> None:
    files = make_folder(tmp_path / "models", N)
    options = BulkOptions(backend="process", workers=2, batch_size=2)
    with pytest.raises(_CrashError):
        run_bulk([str(tmp_path / "models")], store, options=options, on_row=_crash_after(K))
    first = store.rows()
    assert len(first) == K  # each result was committed on its own: exactly the K seen before the crash
    assert store.run_rows()[0]["state"] == "interrupted"

    stats = run_bulk([str(tmp_path / "models")], store, options=options)
    assert stats.skipped == K
    assert stats.dispatched == N - K  # only the missing ones went to a worker
    rows = store.rows()
    assert sorted(r["source"] for r in rows) == [str(f) for f in files]  # every artifact exactly once
    assert all(r["status"] == "done" and r["verdict"] == "pass" for r in rows)
    by_run = {r["source"]: r["run_id"] for r in rows}
    assert {s for s, run in by_run.items() if run == stats.run_id - 1} == {r["source"] for r in first}
    assert [r["state"] for r in store.run_rows()] == ["interrupted", "finished"]

    third = run_bulk([str(tmp_path / "models")], store, options=options)
    assert (third.dispatched, third.skipped) == (0, N)


def test_changed_file_is_scanned_again_as_a_new_row(store: ResultStore, tmp_path: Path) -> None:
    files = make_folder(tmp_path / "m", 3)
    options = BulkOptions(backend="process", workers=1)
    run_bulk([str(tmp_path / "m")], store, options=options)
    before = {r["source"]: r["digest"] for r in store.rows()}
    files[0].write_bytes(files[0].read_bytes() + b"")  # same bytes, new mtime: re-hashed, same row
    os.utime(files[0], ns=(1, 1))
    files[1].write_bytes(b"\x80\x04K\x07.")  # new bytes: a second row for the same source
    stats = run_bulk([str(tmp_path / "m")], store, options=options)
    assert (stats.dispatched, stats.skipped) == (2, 1)
    rows = store.rows()
    assert len(rows) == 4
    assert sorted(r["digest"] for r in rows if r["source"] == str(files[0])) == [before[str(files[0])]]
    assert len({r["digest"] for r in rows if r["source"] == str(files[1])}) == 2


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM bulk_results").fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def test_sigkill_mid_run_then_resume(tmp_path: Path) -> None:
    total = 400
    files = make_folder(tmp_path / "models", total)
    db = tmp_path / "r.db"
    cmd = [sys.executable, "-m", "mlwarden.cli.main", "bulk", "scan", str(tmp_path / "models"), "--results", str(db)]
    cmd += ["--backend", "process", "--workers", "1", "--batch-size", "1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while _count(db) < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the scan finished before it could be killed"
    kept = _count(db)
    assert 20 <= kept < total

    store = ResultStore.open(str(db))
    try:
        stats = run_bulk([str(tmp_path / "models")], store, options=BulkOptions(backend="process", workers=2))
        rows = store.rows()
    finally:
        store.dispose()
    assert stats.skipped == kept
    assert stats.dispatched == total - kept
    assert sorted(r["source"] for r in rows) == [str(f) for f in files]  # nothing lost, nothing twice
