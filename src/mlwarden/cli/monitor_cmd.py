"""``mlwarden monitor report`` (the guard's monitor history) and ``mlwarden monitor drift`` (two datasets)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """Register ``mlwarden monitor``."""
    monitor = sub.add_parser("monitor", help="reports of the guard's monitoring history")
    actions = monitor.add_subparsers(
        dest="monitor_command", metavar="ACTION", parser_class=type(monitor), required=True
    )
    report = actions.add_parser("report", help="write one self-contained HTML file with plots")
    report.add_argument("--history", required=True, metavar="DIR", help="the guard's --history-dir")
    report.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write")
    report.add_argument("--title", help="page title")
    report.set_defaults(run=run_report)
    drift = actions.add_parser(
        "drift",
        help="compare a reference dataset with a current one (KS, PSI, chi-squared, MMD per feature)",
        description="Batch drift between two tables (CSV, Parquet, JSON Lines, NPY) with the guard's drift tests. "
        "Exit 0: no drift; 1: drift; 2: bad input.",
    )
    drift.add_argument("reference", metavar="REFERENCE", help="the reference table (e.g. the training data)")
    drift.add_argument("current", metavar="CURRENT", help="the current table (e.g. last week's inputs)")
    drift.add_argument("--format", "-f", choices=("text", "json", "html"), default="text")
    drift.add_argument("-o", "--output", metavar="FILE", help="write the report here instead of stdout")
    drift.add_argument("--columns", nargs="+", metavar="COL", help="only these columns (default: all)")
    drift.add_argument("--alpha", type=float, default=0.05, help="significance per test family (default 0.05)")
    drift.add_argument("--correction", choices=("bonferroni", "bh", "none"), default="bonferroni")
    drift.add_argument("--tests", nargs="+", choices=("ks", "psi", "chi2", "mmd"), default=["ks", "psi", "chi2", "mmd"])
    drift.add_argument("--psi-threshold", type=float, default=0.25)
    drift.add_argument("--seed", type=int, default=0, help="seed of MMD's subsample and permutations")
    drift.add_argument("--max-rows", type=int, default=10_000_000, help="refuse larger tables (default 10,000,000)")
    drift.set_defaults(run=run_drift)


def run_report(args: argparse.Namespace) -> int:
    """Write the report."""
    from mlwarden.monitor.report import write_report

    path = write_report(args.history, args.output, title=args.title)
    print(f"monitor report written to {path}")
    return 0


def run_drift(args: argparse.Namespace) -> int:
    """Compare the two tables; exit 1 when drift is found."""
    import importlib
    import os
    import threading

    # Before numpy loads: OpenBLAS would start a thread per core that spins (~0.1 s of CPU at import alone) for
    # matrix products of at most 1,000 x 1,000 (MMD); the parallelism here is per feature and in pyarrow's reader.
    # An explicit setting in the environment wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from mlwarden.core.errors import UsageError
    from mlwarden.core.files import write_atomically
    from mlwarden.monitor.tables import read_table

    # The drift modules import while pyarrow reads the tables without the interpreter lock: both overlap.
    warm = threading.Thread(target=importlib.import_module, args=("mlwarden.monitor.batch_render",), daemon=True)
    warm.start()
    reference = read_table(args.reference, max_rows=args.max_rows, columns=args.columns)
    current = read_table(args.current, max_rows=args.max_rows, columns=args.columns)
    warm.join()
    from mlwarden.monitor.batch import compare
    from mlwarden.monitor.batch_render import render
    from mlwarden.monitor.drift import DriftConfig

    config = DriftConfig(
        alpha=args.alpha,
        correction=args.correction,
        tests=tuple(args.tests),
        psi_moderate=min(0.1, args.psi_threshold),
        psi_threshold=args.psi_threshold,
        seed=args.seed,
    )
    report = compare(reference, current, config)
    text = render(report, args.format)
    if args.output:
        try:
            write_atomically(args.output, text)
        except OSError as exc:
            raise UsageError(f"--output: cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"drift report written to {args.output}: {'drift' if report.drifted else 'no drift'}")
    else:
        print(text, end="")
    return 1 if report.drifted else 0
