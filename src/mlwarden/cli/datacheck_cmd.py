"""``mlwarden data check DATA`` and ``mlwarden data manifest … --check REPORT.json``.

``data check`` always exits 0 when the report was produced: its results are numbers, and what rate is too high
is the registry gates' decision, not this command's. Exit 2 (one line on stderr) for a missing or corrupt file,
an unknown column or a wrong argument. ``data manifest --check`` fills the manifest's ``pii_scan`` field with the
report's summary before signing (:mod:`mlwarden.datacheck.attach`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlwarden.cli.output import emit_report
from mlwarden.core.errors import UsageError

EXIT_OK = 0


def _data_actions(sub: Any) -> Any:
    """The ``data`` command's sub-command action (``data`` itself is declared in ``provenance_cmd``)."""
    data = sub.choices.get("data")
    if data is None:
        raise RuntimeError("datacheck_cmd must be registered after provenance_cmd (it extends `data`)")
    return next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))


def add_parser(sub: Any) -> None:
    """Add ``data check`` and ``data manifest --check`` to the ``data`` command."""
    from mlwarden.datacheck.model import CHECKS

    actions = _data_actions(sub)
    check = actions.add_parser(
        "check",
        help="check a dataset: label errors, duplicates, outliers, class balance, personal data, backdoors",
        description="Stream DATA (CSV, Parquet, JSON Lines, NPY/NPZ, or a folder of images with one sub-folder "
        "per class) and report numbers with confidence intervals. See docs/data-checks.md.",
    )
    check.add_argument("data", metavar="DATA", help="data file or image folder")
    check.add_argument("--label", metavar="COL", help="the label column (NPZ: the label array)")
    check.add_argument("--sensitive", metavar="COL", help="a sensitive attribute: rates are broken down by group")
    check.add_argument("--format", "-f", choices=("text", "json", "html"), default="text")
    check.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")
    check.add_argument("--model", metavar="MODEL", help="model trained on DATA (image folders: backdoor check)")
    check.add_argument("--no-dynamic", action="store_true",
                       help="load --model after the static scan only (default: also sandboxed)")  # fmt: skip
    check.add_argument("--checks", nargs="+", metavar="ID", choices=sorted(CHECKS), help="checks to run")
    check.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    check.add_argument("--chunk-rows", type=int, default=50_000, metavar="N", help="rows per streamed chunk")
    check.add_argument("--folds", type=int, default=5, metavar="K", help="cross-validation folds (default 5)")
    check.add_argument("--max-model-rows", type=int, default=200_000, metavar="N",
                       help="rows sampled for the model-based checks (default 200000)")  # fmt: skip
    check.add_argument("--near-tolerance", type=float, default=0.05, metavar="SD",
                       help="near-duplicate bin width in standard deviations (default 0.05)")  # fmt: skip
    check.add_argument("--pii-engine", choices=("builtin", "presidio"), default="builtin",
                       help="personal-data engine: the guard's detectors (default) or Presidio "
                       "(pip install 'mlwarden[presidio]'; much slower)")  # fmt: skip
    check.add_argument("--presidio-spacy-model", metavar="NAME",
                       help="with --pii-engine presidio: an installed spaCy model for names and places "
                       "(default: none, pattern recognizers only)")  # fmt: skip
    check.set_defaults(run=_check)

    manifest = actions.choices["manifest"]
    manifest.add_argument("--check", metavar="REPORT", help="data-check JSON report to record in the manifest")


def _check(args: argparse.Namespace) -> int:
    from mlwarden.datacheck import DEFAULT_CHECKS, CheckOptions, check_dataset
    from mlwarden.datacheck.render import render

    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise UsageError(f"--output: folder {Path(args.output).resolve().parent} does not exist")
    checks = tuple(args.checks) if args.checks else DEFAULT_CHECKS + (("backdoor",) if args.model else ())
    options = CheckOptions(
        label=args.label,
        sensitive=args.sensitive,
        checks=checks,
        seed=args.seed,
        chunk_rows=args.chunk_rows,
        folds=args.folds,
        max_model_rows=args.max_model_rows,
        near_tolerance=args.near_tolerance,
        model=args.model,
        dynamic=not args.no_dynamic,
        pii_engine=args.pii_engine,
        presidio_spacy_model=args.presidio_spacy_model,
    )
    report = check_dataset(args.data, options)
    text = render(report, args.format)
    emit_report(text, args.output, f"{args.format} data-check report")
    for result in report.checks:
        if result.status == "error":
            print(f"mlwarden: error: check {result.id} could not run: {result.reason}", file=sys.stderr)
    return EXIT_OK
