"""``mlwarden suppress add|list|check``: keep the reviewed suppressions file (``docs/suppressions.md``).

``add`` validates strictly (the rule must exist in ``mlwarden rules``, a digest is 64 hex digits, the expiry a
future ISO date, reason and reviewer non-empty) and appends one entry, keeping what reviewers wrote in the file.
``check`` is for CI: exit 1 when an entry expired, names an unknown rule or (given the paths a pipeline scans)
matches no finding, so stale acceptances are cleaned up rather than forgotten. Errors are one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mlwarden.core.suppressions import DEFAULT_FILE

EXIT_OK, EXIT_PROBLEMS = 0, 1


def add_parser(sub: Any) -> None:
    """Add ``suppress`` and its actions to the top-level subparsers ``sub``."""
    suppress = sub.add_parser(
        "suppress",
        help="accept reviewed findings without switching their rule off",
        description="Manage the reviewed suppressions file (default: ./mlwarden-suppressions.toml).",
    )
    actions = suppress.add_subparsers(
        dest="suppress_command", metavar="ACTION", parser_class=type(suppress), required=True
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--file", default=DEFAULT_FILE, metavar="FILE", help=f"suppressions file (default: {DEFAULT_FILE})"
    )

    add = actions.add_parser(
        "add", parents=[common], help="append a reviewed suppression", description="Append a reviewed suppression."
    )
    add.add_argument("rule", metavar="RULE", help="rule ID, as listed by `mlwarden rules`")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--digest", metavar="SHA256", help="SHA-256 (64 hex digits) of the reviewed top-level file")
    target.add_argument("--path", metavar="GLOB", help="glob matched against the scanned path (** crosses folders)")
    add.add_argument("--reason", required=True, metavar="TEXT", help="why the finding is acceptable")
    add.add_argument("--reviewer", required=True, metavar="NAME", help="who reviewed it")
    add.add_argument("--expires", required=True, metavar="DATE", help="ISO date (YYYY-MM-DD) in the future")
    add.set_defaults(run=_add)

    listing = actions.add_parser("list", parents=[common], help="list the suppressions and whether they still apply")
    listing.add_argument("--format", "-f", choices=("text", "json"), default="text")
    listing.set_defaults(run=_list)

    check = actions.add_parser(
        "check",
        parents=[common],
        help="report expired, unknown-rule or never-matching entries (exit 1 if any)",
        description="Report entries that expired or name an unknown rule; with PATHs, also scan them (static only) "
        "and report entries that match no finding. Exit 0: all fine; 1: problems; 2: error.",
    )
    check.add_argument("paths", nargs="*", metavar="PATH", help="what your pipeline scans")
    check.add_argument("--policy", metavar="FILE", help="TOML policy file for the scan (see docs/policy.md)")
    check.set_defaults(run=_check)


def _add(args: argparse.Namespace) -> int:
    from mlwarden.core.suppressions import new_suppression
    from mlwarden.core.suppressions_edit import append_suppression
    from mlwarden.scan.suppressions import known_rules

    entry = new_suppression(
        args.rule,
        reason=args.reason,
        reviewer=args.reviewer,
        expires=args.expires,
        digest=args.digest,
        path=args.path,
        known_rules=known_rules(),
    )
    stored = append_suppression(args.file, entry)
    print(f"suppressed {stored.rule_id} on {stored.target} until {stored.expires.isoformat()} ({stored.source})")
    return EXIT_OK


def _load(path: str) -> Any:
    from pathlib import Path

    from mlwarden.core.errors import UsageError
    from mlwarden.core.suppressions import load_suppressions

    if not Path(path).exists():
        raise UsageError(f"no suppressions file {path} (create one with `mlwarden suppress add`)")
    return load_suppressions(path)


def _list(args: argparse.Namespace) -> int:
    from mlwarden.core.suppressions import today
    from mlwarden.report import clean
    from mlwarden.report.jsonfmt import suppression_dict

    entries = _load(args.file)
    now = today()
    if args.format == "json":
        rows = [{**suppression_dict(s), "expired": s.expired(now)} for s in entries]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not entries:
        print(f"{args.file}: no suppressions")
    for s in entries:
        state = "EXPIRED" if s.expired(now) else "active"
        print(f"{s.source}  {s.rule_id}  {clean(s.target)}  by {clean(s.reviewer)}  expires {s.expires}  {state}")
        print(f"    {clean(s.reason)}")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from mlwarden.core.suppressions import today
    from mlwarden.scan.suppressions import known_rules

    entries = _load(args.file)
    known = known_rules()
    now = today()
    problems = [
        f"{s.source}: unknown rule {s.rule_id} (see `mlwarden rules`)" for s in entries if s.rule_id not in known
    ]
    if args.paths:
        from mlwarden.core.policy import load_policy
        from mlwarden.scan.engine import scan_paths

        report = scan_paths(args.paths, load_policy(args.policy), modes=("static",), suppressions=entries)
        problems += [w for u in report.suppressions if u.suppression.rule_id in known and (w := u.warning())]
        for error in report.errors:
            print(f"mlwarden: error: {error.error}", file=sys.stderr)
    else:
        problems += [
            f"suppression {s.describe()} expired on {s.expires.isoformat()}: no longer applies"
            for s in entries
            if s.expired(now)
        ]
    for line in problems:
        print(f"problem: {line}")
    checked = (
        "checked against a static scan" if args.paths else "not scanned: give PATHs to find entries matching nothing"
    )
    print(f"{args.file}: {len(entries)} suppression(s), {len(problems)} problem(s) ({checked})")
    return EXIT_PROBLEMS if problems else EXIT_OK
