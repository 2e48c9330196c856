"""``mlwarden registry test``: model tests (and data checks of the training data) on a version's stored copy.

The registry runs the tests on its own copy of the version — re-hashed against the registered digest first —
never on a file the caller names, and attaches the reports with ``source: registry``: the only model tests and
data checks the approve gates count (``docs/registry.md``). With ``--train`` the training data is data-checked
first and must be the data of a dataset manifest attached to the version (or one file of it), so a wrong
training set stops the command before the slower model tests run. Reports are signed with ``--private-key``, by
default the registry's key (``<home>/keys/registry.key``, as for retirement certificates).

Exit codes: 0 the reports were attached and every test ran; 1 attached, but a test or check could not run
(``status: error``: the gates fail it); 2 nothing attached (bad input, refused, wrong data).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlwarden.modeltest.model import ModelTestOptions, ModelTestReport
    from mlwarden.registry._assess import AssessInput, AssessReport
    from mlwarden.registry.roles import Principal
    from mlwarden.registry.service import Registry

#: The headline numbers printed per test or check: id -> (label, path into its metrics).
_HEADLINES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "membership": (("max AUC", ("max_auc",)),),
    "fairness": (
        ("demographic parity diff", ("demographic_parity_difference",)),
        ("equalized odds diff", ("equalized_odds_difference",)),
    ),
    "backdoor_probe": (("max anomaly index", ("max_anomaly_index",)),),
    "attribute_inference": (("advantage", ("advantage",)),),
    "label_issues": (("issue rate", ("issues", "rate")),),
}


def add_parser(actions: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``registry test`` to the ``registry`` subcommands ``actions`` (``command`` adds the common options)."""
    test = command(
        actions, "test", _test, "run model tests (and data checks with --train) on a stored version; attach the reports"
    )
    test.add_argument("ref", metavar="REF", help="NAME:VERSION or NAME@ALIAS (received or scanned)")
    test.add_argument("--data", required=True, metavar="TEST", help="held-out test data (CSV, Parquet, ... folder)")
    test.add_argument(
        "--train", metavar="TRAIN", help="training data: used by the privacy tests and data-checked (attached manifest)"
    )
    test.add_argument("--label", metavar="COL", help="label column")
    test.add_argument("--sensitive", metavar="COL", help="sensitive-attribute column (fairness, attribute inference)")
    test.add_argument("--tests", nargs="+", metavar="TEST", help="test ids to run (default: every test)")
    test.add_argument("--seed", type=int, default=0, metavar="N", help="one seed for every sampled choice")
    test.add_argument("--max-rows", type=int, default=1000, metavar="N", help="test rows per test (seeded sample)")
    test.add_argument("--eps", type=float, nargs="+", metavar="E", help="robustness budgets, fractions of the range")
    test.add_argument(
        "--private-key", metavar="KEY", help="sign the reports with KEY (default: <home>/keys/registry.key)"
    )
    test.add_argument(
        "--no-dynamic", action="store_true", help="load the model without the dynamic sandbox check (static only)"
    )


def _options(args: argparse.Namespace) -> ModelTestOptions:
    from mlwarden.modeltest.model import TESTS, ModelTestOptions

    options = ModelTestOptions(
        tests=tuple(args.tests) if args.tests else tuple(TESTS),
        seed=args.seed,
        label=args.label,
        sensitive=args.sensitive,
        max_rows=args.max_rows,
    )
    return dataclasses.replace(options, eps=tuple(args.eps)) if args.eps else options


def _model_tests() -> Callable[..., ModelTestReport]:
    """``mlwarden.modeltest.run.run_model_tests``, imported when needed (tests replace this function)."""
    from mlwarden.modeltest.run import run_model_tests

    return run_model_tests


def _test(args: argparse.Namespace) -> int:
    from mlwarden.cli.registry_cmd import EXIT_OK, EXIT_REFUSED, _session
    from mlwarden.registry.values import AttachmentKind

    options = _options(args)  # a wrong test name or budget fails before the registry is opened
    produced: list[dict[str, Any]] = []

    def model_step(given: AssessInput) -> AssessReport:
        from mlwarden.registry._assess import AssessReport

        report = _model_tests()(
            given.artifact,
            Path(args.data),
            options,
            train=Path(args.train) if args.train else None,
            policy=given.policy,
            dynamic=not args.no_dynamic,
        )
        content = report.to_json().encode("utf-8")
        produced.append(json.loads(content))
        return AssessReport(AttachmentKind.MODEL_TEST, content)

    def data_step(given: AssessInput) -> AssessReport:
        from mlwarden.datacheck import CheckOptions, check_dataset
        from mlwarden.registry._assess import AssessReport

        report = check_dataset(
            Path(args.train), CheckOptions(label=args.label, sensitive=args.sensitive, seed=args.seed)
        )
        content = report.to_json().encode("utf-8")
        produced.append(json.loads(content))
        return AssessReport(AttachmentKind.DATA_CHECK, content)

    def run(registry: Registry, who: Principal) -> int:
        from mlwarden.registry.retire import registry_key

        key = Path(args.private_key) if args.private_key else registry_key(registry.home)
        steps = [data_step, model_step] if args.train else [model_step]
        info = registry.test(who, args.ref, steps, signing_key=key)
        failed = 0
        for attachment in info.attachments[-len(steps) :]:
            signed = "signed" if "signature" in attachment.details else "unsigned"
            print(f"{info.ref}: {attachment.kind} #{attachment.id} sha256:{attachment.digest} ({signed})")
        for doc in produced:
            for entry in doc.get("tests", doc.get("checks", [])):
                failed += entry.get("status") == "error"
                print(f"  {entry.get('id'):<20} {entry.get('status'):<8} {_headline(entry)}")
        print(f"{info.ref}: state {info.state}")
        return EXIT_REFUSED if failed else EXIT_OK

    return _session(args, run)


def _headline(entry: dict[str, Any]) -> str:
    if entry.get("status") != "ok":
        return str(entry.get("reason", ""))
    parts = []
    for label, path in _HEADLINES.get(str(entry.get("id")), ()):
        value: Any = entry.get("metrics", {})
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            parts.append(f"{label} {value:.4g}")
    if entry.get("id") == "pii":
        matches = entry.get("metrics", {}).get("matches", {})
        parts.append(", ".join(f"{n} {k}" for k, n in matches.items() if n) or "no personal data found")
    return "; ".join(parts)
