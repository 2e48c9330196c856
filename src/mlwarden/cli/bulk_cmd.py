"""``mlwarden bulk scan|report``: scan many artifacts into a resumable results store (``docs/bulk.md``).

``scan`` exits 0 when every artifact was scanned and passed, 1 when one fails the policy, 2 when one could not be
scanned (failed or timed out; they are rows in the store, see ``bulk report``). Bad input is one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlwarden.core.errors import UsageError


def add_parser(sub: Any) -> None:
    """Add ``bulk`` and its actions to the top-level subparsers ``sub``."""
    bulk = sub.add_parser(
        "bulk",
        help="scan many artifacts on Ray (or a process pool) into a resumable results database",
        description="Bulk scanning with a results store: one row per artifact and digest; re-runs skip what is done.",
    )
    actions = bulk.add_subparsers(dest="bulk_command", metavar="ACTION", parser_class=type(bulk), required=True)
    scan = actions.add_parser(
        "scan",
        help="scan SOURCEs (folders, files, @list files, URLs/prefixes) into --results",
        description="Scan every artifact of the SOURCEs; a re-run only dispatches what the store does not have done.",
    )
    scan.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="folder, file, @LISTFILE, remote URL/prefix, or a Hub listing (hf://ORG, hf://?search=QUERY&...)",
    )
    scan.add_argument("--results", required=True, metavar="DB", help="SQLite file or SQLAlchemy URL (postgresql+...)")
    scan.add_argument("--ray", metavar="ADDRESS", help="Ray cluster address (default: start a local Ray)")
    scan.add_argument("--backend", choices=("ray", "process"), default="ray", help="execution engine (default ray)")
    scan.add_argument("--workers", type=int, default=2, metavar="N", help="local workers (default 2)")
    scan.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per artifact (default 120)")
    scan.add_argument("--batch-size", type=int, metavar="N", help="artifacts per task (default 8 static, 16 dynamic)")
    scan.add_argument("--retry-failed", action="store_true", help="also re-dispatch failed and timed-out artifacts")
    scan.add_argument("--policy", metavar="FILE", help="TOML policy file (see docs/policy.md)")
    scan.add_argument(
        "--max-repos", type=int, default=1000, metavar="N", help="repositories per Hub listing source (default 1000)"
    )
    scan.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="URLs with --dynamic: each worker's download cache (default: $XDG_CACHE_HOME/mlwarden/remote there)",
    )
    scan.add_argument(
        "--cache-max-bytes", type=int, metavar="N", help="URLs with --dynamic: size bound of the download cache"
    )
    mode = scan.add_mutually_exclusive_group()
    mode.add_argument("--dynamic", action="store_true", help="also run the sandboxed dynamic analysis")
    mode.add_argument("--dynamic-only", action="store_true", help="dynamic analysis only")
    scan.add_argument("--quiet", "-q", action="store_true", help="no per-artifact progress lines")
    scan.set_defaults(run=_scan)

    report = actions.add_parser("report", help="summarise a results store", description="Summarise a results store.")
    report.add_argument("--results", required=True, metavar="DB", help="SQLite file or SQLAlchemy URL")
    report.add_argument("--format", "-f", choices=("text", "json"), default="text")
    report.add_argument("--slowest", type=int, default=10, metavar="N", help="how many of the slowest to list")
    report.set_defaults(run=_report)


def _scan(args: argparse.Namespace) -> int:
    from mlwarden.bulk import BulkOptions, ResultStore, run_bulk
    from mlwarden.bulk.worker import CacheSettings
    from mlwarden.core.policy import load_policy
    from mlwarden.report import clean

    if args.workers < 1 or args.timeout <= 0 or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError("--workers and --batch-size must be >= 1, --timeout > 0")
    if args.max_repos < 1 or (args.cache_max_bytes is not None and args.cache_max_bytes < 1):
        raise UsageError("--max-repos and --cache-max-bytes must be >= 1")
    modes: tuple[str, ...] = (
        ("dynamic",) if args.dynamic_only else ("static", "dynamic") if args.dynamic else ("static",)
    )
    options = BulkOptions(
        modes=modes,
        workers=args.workers,
        backend=args.backend,
        address=args.ray,
        timeout=args.timeout,
        batch_size=args.batch_size,
        retry_failed=args.retry_failed,
        max_repos=args.max_repos,
        cache=CacheSettings(args.cache_dir, args.cache_max_bytes),
    )
    policy = load_policy(args.policy)
    store = ResultStore.open(args.results)

    def progress(row: dict[str, Any]) -> None:
        if not args.quiet:
            print(f"{row['status']:<7} {row['verdict']:<5} {row['seconds']:8.3f}s {clean(row['source'])}", flush=True)

    def note(text: str) -> None:
        print(f"mlwarden: note: {clean(text)}", file=sys.stderr, flush=True)

    try:
        stats = run_bulk(args.sources, store, policy, options, on_row=progress, on_note=note)
        rows = store.rows()
    finally:
        store.dispose()
    counts = stats.counts
    print(
        f"run {stats.run_id}: {stats.planned} to scan, {stats.skipped} already in the store, "
        f"{counts['done']} done, {counts['failed']} failed, {counts['timeout']} timed out in {stats.seconds:.1f} s",
        file=sys.stderr,
    )
    if any(r["status"] != "done" for r in rows):
        return 2
    return 1 if any(r["verdict"] == "fail" for r in rows) else 0


def _report(args: argparse.Namespace) -> int:
    from mlwarden.bulk import ResultStore
    from mlwarden.bulk.summary import render, summarize

    if "://" not in args.results and not Path(args.results).is_file():
        raise UsageError(f"--results: no such results database: {args.results}")
    store = ResultStore.open(args.results)
    try:
        sys.stdout.write(render(summarize(store, slowest=args.slowest), args.format))
    finally:
        store.dispose()
    return 0
