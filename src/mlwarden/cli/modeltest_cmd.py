"""``mlwarden model test MODEL --data TEST``: adversarial robustness, privacy, backdoor and fairness tests.

Exit codes: 0 when the report was written — its results are numbers, and what is acceptable is the registry
gates' decision; a test that could not run is in the report with ``status: error`` and named on stderr.
1 when the analysis refused the model (as ``scan`` exits 1 on failing findings): nothing was loaded, and the
reason is on stderr. 2 (one line on stderr) for a missing or unreadable file, an unknown column, a wrong argument
or a model that is not a classifier mlwarden can test. See ``docs/model-tests.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlwarden.cli.output import emit_report
from mlwarden.core.errors import UnsafeModelError, UsageError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _model_actions(sub: Any) -> Any:
    """The ``model`` command's sub-command action (created here unless another module declared ``model``)."""
    model = sub.choices.get("model")
    if model is None:
        model = sub.add_parser("model", help="test a model before approval (robustness, privacy, fairness)")
        model.set_defaults(run=lambda _args: model.print_help(sys.stderr) or EXIT_USAGE)
        return model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", parser_class=type(model))
    return next(a for a in model._actions if isinstance(a, argparse._SubParsersAction))


def _param(text: str) -> tuple[str, str, Any]:
    """``TEST.KEY=VALUE``; the value is read as JSON (numbers, lists, ``true``) or else kept as text."""
    key, sep, raw = text.partition("=")
    test, dot, name = key.partition(".")
    if not sep or not dot or not test or not name:
        raise argparse.ArgumentTypeError(f"expected TEST.KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return test, name, value


def add_parser(sub: Any) -> None:
    """Add ``model test``."""
    from mlwarden.modeltest.model import TESTS

    test = _model_actions(sub).add_parser(
        "test",
        help="test a model: adversarial robustness, membership/attribute inference, inversion, backdoors, fairness",
        description="Scan and load MODEL only through the safe loader, then run the model tests on the labelled "
        "data TEST (CSV, Parquet, JSON Lines, NPY/NPZ, or a folder of images with one sub-folder per class). "
        "Exit 0: report written; 1: the analysis refused the model (nothing was loaded); 2: bad input. "
        "See docs/model-tests.md.",
    )
    test.add_argument("model", metavar="MODEL", help="model file or folder")
    test.add_argument("--data", required=True, metavar="TEST", help="labelled test data (not used in training)")
    test.add_argument("--train", metavar="TRAIN", help="training data (membership and attribute inference)")
    test.add_argument("--label", metavar="COL", help="the label column (NPZ: the label array)")
    test.add_argument("--sensitive", metavar="COL", help="a sensitive attribute (fairness, attribute inference)")
    test.add_argument("--tests", nargs="+", metavar="ID", choices=list(TESTS), help="tests to run (default: all)")
    test.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    test.add_argument("--max-rows", type=int, default=1000, metavar="N", help="test rows per test (default 1000)")
    test.add_argument(
        "--eps", type=float, nargs="+", metavar="F", help="robustness budgets, fractions of the input range"
    )
    test.add_argument("--format", "-f", choices=("text", "json", "html"), default="text")
    test.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")
    test.add_argument("--no-dynamic", action="store_true", help="scan the model statically only before loading it")
    test.add_argument("--policy", metavar="FILE", help="TOML policy for the scan that gates loading")
    test.add_argument("--param", type=_param, action="append", default=[], metavar="TEST.KEY=VALUE",
                      help="a test parameter, e.g. robustness.max_iter=40 (repeatable)")  # fmt: skip
    test.set_defaults(run=_test)


def _options(args: argparse.Namespace) -> Any:
    from mlwarden.modeltest.model import TESTS, ModelTestOptions

    overrides: dict[str, dict[str, Any]] = {}
    for test, key, value in args.param:
        overrides.setdefault(test, {})[key] = value
    defaults = ModelTestOptions()
    return ModelTestOptions(
        tests=tuple(dict.fromkeys(args.tests)) if args.tests else tuple(TESTS),
        seed=args.seed,
        label=args.label,
        sensitive=args.sensitive,
        max_rows=args.max_rows,
        eps=tuple(args.eps) if args.eps else defaults.eps,
        overrides=overrides,
    )


def _test(args: argparse.Namespace) -> int:
    from mlwarden.core.policy import load_policy
    from mlwarden.modeltest.render import render
    from mlwarden.modeltest.run import run_model_tests

    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise UsageError(f"--output: folder {Path(args.output).resolve().parent} does not exist")
    options = _options(args)
    policy = load_policy(args.policy) if args.policy else None
    try:
        report = run_model_tests(args.model, args.data, options, train=args.train, policy=policy,
                                 dynamic=not args.no_dynamic)  # fmt: skip
    except UnsafeModelError as exc:
        print(f"mlwarden: refused: {exc} (the model was not loaded)", file=sys.stderr)
        for finding in exc.findings[:5]:
            print(f"  {finding.rule_id} {finding.severity}: {finding.title}", file=sys.stderr)
        return EXIT_REFUSED
    text = render(report, args.format)
    emit_report(text, args.output, f"{args.format} model-test report")
    for result in report.tests:
        if result.status == "error":
            print(f"mlwarden: error: test {result.id} could not run: {result.reason}", file=sys.stderr)
    return EXIT_OK
