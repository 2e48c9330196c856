"""The ``mlwarden`` command line.

Exit codes (stable, relied on by CI users): 0 nothing at or above the failing severity; 1 findings at or
above it; 2 usage error, invalid policy, or a file that could not be scanned at all. No traceback ever
reaches the user: errors are one line on stderr (set ``MLWARDEN_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlwarden._version import __version__
from mlwarden.core.errors import MlwardenError, UsageError
from mlwarden.core.findings import Severity

if TYPE_CHECKING:
    from mlwarden.core.suppressions import Suppression

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
#: Modules under ``mlwarden.cli`` that add commands: each has ``add_parser(sub)``, which registers its
#: subcommands with ``set_defaults(run=function)``; keep their top-level imports light (start-up time).
COMMAND_MODULES = (
    "profile_cmd",
    "sign_cmd",
    "provenance_cmd",
    "registry_cmd",
    "retire_cmd",
    "audit_cmd",
    "api_cmd",
    "serve_cmd",
    "baseline_cmd",
    "monitor_cmd",
    "forensics_cmd",
    "suppress_cmd",
    "datacheck_cmd",  # extends `data` (declared by provenance_cmd) with `check`
    "modeltest_cmd",  # `model test`
    "bulk_cmd",  # `bulk scan|report` (docs/bulk.md)
)
FORMATS = ("text", "json", "sarif", "html")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every error path shares one exit code and format."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _severity(text: str) -> Severity:
    try:
        return Severity.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(prog="mlwarden", description="Secure machine-learning models across their lifecycle.")
    parser.add_argument("--version", action="version", version=f"mlwarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    scan = sub.add_parser(
        "scan",
        help="scan model files and folders without loading them",
        description="Scan model files and folders (recursively). Exit 0: clean at the failing "
        "severity; 1: findings at or above it; 2: usage error or unscannable file.",
    )
    scan.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="files or directories to scan, or URLs (https://, s3://, hf://ORG/NAME[@REV], fsspec; docs/remote.md)",
    )
    scan.add_argument("--format", "-f", choices=FORMATS, default="text", help="report format (default: text)")
    scan.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")
    scan.add_argument(
        "--fail-on",
        type=_severity,
        metavar="SEVERITY",
        help="lowest severity that fails the scan: info, low, medium, high, critical "
        "(default: the policy's, medium unless changed)",
    )
    mode = scan.add_mutually_exclusive_group()
    mode.add_argument(
        "--static-only", action="store_true", help="static analysis only: nothing runs (default: static + dynamic)"
    )
    mode.add_argument("--dynamic", action="store_true", help="dynamic analysis only (sandboxed phases, no static scan)")
    scan.add_argument("--jobs", "-j", type=_positive, metavar="N", help="parallel worker processes (default: cores)")
    scan.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="URLs with --dynamic: private download cache (default: $XDG_CACHE_HOME/mlwarden/remote; docs/remote.md)",
    )
    scan.add_argument(
        "--cache-max-bytes", type=_positive, metavar="N", help="URLs with --dynamic: size bound of the download cache"
    )
    scan.add_argument("--policy", metavar="FILE", help="TOML policy file (see docs/policy.md)")
    accepted = scan.add_mutually_exclusive_group()
    accepted.add_argument(
        "--suppressions",
        metavar="FILE",
        help="reviewed suppressions TOML (default: mlwarden-suppressions.toml here, if present; docs/suppressions.md)",
    )
    accepted.add_argument("--no-suppressions", action="store_true", help="ignore every suppressions file")
    scan.add_argument("--verbose", "-v", action="store_true", help="list clean files and remediation text")
    scan.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    rules = sub.add_parser("rules", help="list every rule with its ID, severity and CWE")
    rules.add_argument("--format", "-f", choices=("text", "json"), default="text")
    for name in COMMAND_MODULES:
        importlib.import_module(f"mlwarden.cli.{name}").add_parser(sub)
    return parser


def _cmd_scan(args: argparse.Namespace) -> int:
    from mlwarden.core.policy import load_policy
    from mlwarden.report import render
    from mlwarden.scan.engine import expand_targets, scan_paths
    from mlwarden.scan.remote import is_remote

    if args.static_only:
        modes: tuple[str, ...] = ("static",)
    elif args.dynamic:
        modes = ("dynamic",)
    else:
        modes = ("static", "dynamic")
    if args.output:
        parent = Path(args.output).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"--output: folder {parent} does not exist")
    policy = load_policy(args.policy)
    if args.fail_on is not None:
        policy = policy.with_fail_on(args.fail_on)
    cache = None
    if any(is_remote(p) for p in args.paths):  # docs/remote.md: remote models are analysed statically, in place
        if args.dynamic:  # static in place, plus dynamic on a copy downloaded once into the private cache
            from mlwarden.scan.remote_cache import DEFAULT_MAX_BYTES, RemoteCache

            cache = RemoteCache(args.cache_dir, args.cache_max_bytes or DEFAULT_MAX_BYTES)
            modes = ("static", "dynamic")
            note = f"mlwarden: note: remote URLs are downloaded into {cache.directory} for dynamic analysis"
            print(note, file=sys.stderr)
        else:
            if not args.static_only:
                print(
                    "mlwarden: note: remote URLs given: static analysis only for this run (--dynamic downloads them)",
                    file=sys.stderr,
                )
            modes = ("static",)
    files = expand_targets(args.paths)
    suppressions = _suppressions(args)
    show_progress = not args.no_progress and sys.stderr.isatty() and len(files) > 1
    if show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
        ) as bar:
            task = bar.add_task("scan", total=len(files))
            report = scan_paths(
                files,
                policy,
                jobs=args.jobs,
                progress=lambda _r: bar.advance(task),
                modes=modes,
                suppressions=suppressions,
                cache=cache,
            )
    else:
        report = scan_paths(files, policy, jobs=args.jobs, modes=modes, suppressions=suppressions, cache=cache)
    to_terminal = not args.output and sys.stdout.isatty()
    text = render(report, args.format, color=to_terminal and args.format == "text", verbose=args.verbose)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--output: cannot write {args.output}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    for error in report.errors:
        print(f"mlwarden: error: {error.error}", file=sys.stderr)
    if args.output or args.format != "text":  # the text report on stdout has them already
        for warning in report.suppression_warnings:
            print(f"mlwarden: warning: {warning}", file=sys.stderr)
    return report.exit_code()


def _suppressions(args: argparse.Namespace) -> tuple[Suppression, ...]:
    """``--suppressions FILE``, else ``mlwarden-suppressions.toml`` in the current directory if it exists."""
    from mlwarden.core.suppressions import DEFAULT_FILE, load_suppressions

    if args.no_suppressions:
        return ()
    if args.suppressions:
        return load_suppressions(args.suppressions)
    return load_suppressions(DEFAULT_FILE) if Path(DEFAULT_FILE).is_file() else ()


def _cmd_rules(args: argparse.Namespace) -> int:
    import json

    from mlwarden.core.findings import catalogue
    from mlwarden.scan.static.base import load_all_handlers

    load_all_handlers()
    import mlwarden.scan.context  # noqa: F401 - declares the generic rules

    rules = sorted(catalogue().values(), key=lambda r: r.id)
    if args.format == "json":
        print(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "title": r.title,
                        "severity": str(r.severity),
                        "cwe": r.cwe,
                        "description": r.description,
                        "remediation": r.remediation,
                    }
                    for r in rules
                ],
                indent=2,
            )
        )
    else:
        for r in rules:
            cwe = f"CWE-{r.cwe}" if r.cwe else "-"
            print(f"{r.id:<13} {str(r.severity):<9} {cwe:<8} {r.title}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (the console script passes it to ``sys.exit``)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command == "scan":
            return _cmd_scan(args)
        if args.command == "rules":
            return _cmd_rules(args)
        if getattr(args, "run", None) is not None:
            return int(args.run(args))
        if args.command == "profile":
            from mlwarden.cli import profile_cmd

            return profile_cmd.run(args)
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    except MlwardenError as exc:
        print(f"mlwarden: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mlwarden: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:
        if os.environ.get("MLWARDEN_DEBUG"):
            raise
        print(
            f"mlwarden: internal error: {type(exc).__name__}: {exc} (set MLWARDEN_DEBUG=1 for details)", file=sys.stderr
        )
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
