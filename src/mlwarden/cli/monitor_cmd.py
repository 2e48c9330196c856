"""``mlwarden monitor report``: the HTML report of a guard's monitor history."""

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


def run_report(args: argparse.Namespace) -> int:
    """Write the report."""
    from mlwarden.monitor.report import write_report

    path = write_report(args.history, args.output, title=args.title)
    print(f"monitor report written to {path}")
    return 0
