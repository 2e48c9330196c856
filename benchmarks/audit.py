"""Audit log speed: appends per second and the time to verify a million entries, against the issue's targets.

Targets (issue 5): >= 10,000 appends/s on SQLite; verifying 1,000,000 entries <= 10 s.

Measured on a temporary SQLite file (and on PostgreSQL when ``$MLWARDEN_TEST_POSTGRES_URL`` is set):

* **per-transaction appends**: ``AuditLog.append_now`` — one event, one committed transaction each (what a registry
  action costs: BEGIN IMMEDIATE, read the last seq, insert, commit);
* **batched appends**: ``AuditLog.append_many`` — many events in one transaction, one multi-row insert;
* **verify**: ``AuditLog.verify`` of a log of ``--entries`` events with a checkpoint every 1,000 (the default):
  full (every leaf recomputed from its columns) in one process and with the default worker processes, and quick
  (stored leaf hashes). The log is built with batched appends; building it is not part of the verify figure.

Writes ``bench-out/audit.json``. Not a test: it never fails on a target, it reports the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mlwarden.registry.audit import AuditEvent, AuditLog, CheckpointSigner
from mlwarden.registry.db import Database, open_database

OUT = Path(__file__).resolve().parent.parent / "bench-out"
APPEND_TARGET = 10_000.0  # appends per second
VERIFY_TARGET = 10.0  # seconds for 1,000,000 entries
DIGEST = "sha256:" + "5e" * 32


def event(i: int) -> AuditEvent:
    """A realistic entry: a lifecycle transition with a digest and a few details."""
    return AuditEvent(
        actor=f"user{i % 17}",
        action=("register", "approve", "deploy", "token.issue")[i % 4],
        subject=f"model:fraud:{i}",
        allowed=i % 11 != 0,
        reason="" if i % 11 else "gate approve: dynamic scan has a HIGH finding",
        from_state="scanned",
        to_state="approved",
        digests={"model": DIGEST},
        details={"version": i, "policy": "default", "request_id": f"{i:08x}"},
    )


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_appends(database: Database, signer: CheckpointSigner, single: int, batched: int) -> dict[str, float]:
    log = AuditLog(database, signer)
    base = log.size()

    def per_transaction() -> None:
        for i in range(single):
            log.append_now(event(base + i))

    def batch(size: int) -> Callable[[], None]:
        def run() -> None:
            start = log.size()
            for chunk in range(0, batched, size):
                with database.transaction() as session:
                    log.append_many(session, [event(start + chunk + i) for i in range(size)])

        return run

    one = timed(per_transaction)
    result = {"per_transaction": single / one}
    for size in (100, 1000, 10_000):
        result[f"batched_{size}"] = batched / timed(batch(size))
    return result


def bench_verify(database: Database, signer: CheckpointSigner, entries: int) -> dict[str, float]:
    log = AuditLog(database, signer)
    build = timed(lambda: fill(database, log, entries))
    public = signer.public_key
    report = log.verify(public, jobs=1)
    if not report.ok or report.size != entries:
        raise SystemExit(f"the benchmark log does not verify: {report.summary()}")
    return {
        "entries": entries,
        "build_s": build,
        "full_1_process_s": timed(lambda: log.verify(public, jobs=1)),
        "full_default_jobs_s": timed(lambda: log.verify(public)),
        "quick_1_process_s": timed(lambda: log.verify(public, full=False, jobs=1)),
        "checkpoints": report.checkpoints,
    }


def fill(database: Database, log: AuditLog, entries: int) -> None:
    start = log.size()
    while start < entries:
        size = min(10_000, entries - start)
        with database.transaction() as session:
            log.append_many(session, [event(start + i) for i in range(size)])
        start += size


def postgres_database(base: str) -> tuple[str, Callable[[], None]]:
    name = f"mlw_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(base).set(database=name).render_as_string(hide_password=False), drop


def run_backend(label: str, url: str, key: Path, args: argparse.Namespace, entries: int) -> dict[str, Any]:
    signer = CheckpointSigner.load(key)
    results: dict[str, Any] = {}
    database = open_database(url)
    try:
        results["appends_per_s"] = bench_appends(database, signer, args.single, args.batched)
    finally:
        database.dispose()
    fresh = url if label != "sqlite" else url.replace("append.db", "verify.db")
    database = open_database(fresh) if fresh != url else open_database(url)
    try:
        if fresh == url:
            with database.transaction() as session:
                session.execute(text("DELETE FROM audit_checkpoints"))
                session.execute(text("DELETE FROM audit_entries"))
        results["verify"] = bench_verify(database, signer, entries)
    finally:
        database.dispose()
    return results


def report(label: str, results: dict[str, Any]) -> None:
    appends, verify = results["appends_per_s"], results["verify"]
    print(f"\n--- {label} ---")
    print(f"{'mode':<28}{'appends/s':>12}{'vs 10,000/s':>14}")
    for mode, rate in appends.items():
        print(f"{mode:<28}{rate:>12,.0f}{rate / APPEND_TARGET:>13.2f}x")
    n = verify["entries"]
    scale = 1_000_000 / n
    print(f"verify {n:,} entries ({verify['checkpoints']} checkpoints; built in {verify['build_s']:.1f} s)")
    print(f"{'mode':<28}{'seconds':>12}{'per 1M':>10}{'target/actual':>15}")
    for mode in ("full_1_process_s", "full_default_jobs_s", "quick_1_process_s"):
        seconds = verify[mode]
        print(f"{mode:<28}{seconds:>12.2f}{seconds * scale:>10.2f}{VERIFY_TARGET / (seconds * scale):>14.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="log size for the verify figure (SQLite)")
    parser.add_argument("--pg-entries", type=int, default=200_000, help="log size for the verify figure (PostgreSQL)")
    parser.add_argument("--single", type=int, default=3_000, help="per-transaction appends to time")
    parser.add_argument("--batched", type=int, default=50_000, help="batched appends to time per batch size")
    args = parser.parse_args()
    print(f"=== audit log — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f} ===")  # fmt: skip
    out: dict[str, Any] = {"targets": {"appends_per_s": APPEND_TARGET, "verify_1m_s": VERIFY_TARGET}}
    with tempfile.TemporaryDirectory(prefix="mlwarden-audit-bench-") as tmp:
        key = Path(tmp) / "audit.key"
        CheckpointSigner.generate(key)
        out["sqlite"] = run_backend("sqlite", f"sqlite:///{tmp}/append.db", key, args, args.entries)
        report("SQLite (WAL, synchronous=NORMAL)", out["sqlite"])
        pg = os.environ.get("MLWARDEN_TEST_POSTGRES_URL")
        if pg:
            url, drop = postgres_database(pg)
            try:
                out["postgresql"] = run_backend("postgresql", url, key, args, args.pg_entries)
            finally:
                drop()
            report("PostgreSQL", out["postgresql"])
        else:
            print("\n(PostgreSQL skipped: set MLWARDEN_TEST_POSTGRES_URL)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "audit.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {OUT / 'audit.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
