"""``mlwarden baseline capture|show``: the guard's baseline, captured on reference data and attached to a version.

``capture`` loads the stored version through the safe loader (static analysis; ``--dynamic`` adds the sandbox),
profiles the reference data, calibrates the thresholds, writes the JSON and attaches it to the version as kind
``baseline`` (the approve gate's ``baseline_required`` rule then lets the version through).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlwarden.core.errors import UsageError


def add_parser(sub: Any) -> None:
    """Register ``mlwarden baseline``."""
    from mlwarden.cli.registry_cmd import add_token_options

    baseline = sub.add_parser("baseline", help="capture the guard's baseline of a version on reference data")
    actions = baseline.add_subparsers(
        dest="baseline_command", metavar="ACTION", parser_class=type(baseline), required=True
    )
    capture = actions.add_parser("capture", help="profile reference data, calibrate thresholds, attach the result")
    capture.add_argument("ref", metavar="REF", help="NAME:VERSION (or NAME@ALIAS)")
    capture.add_argument("--reference", required=True, metavar="FILE", help=".npy, .csv (with header) or .jsonl")
    capture.add_argument("--out", metavar="FILE", help="where the JSON goes (default: REF.baseline.json)")
    capture.add_argument("--detectors", default="squeeze,noise", help="adversarial detectors (default: squeeze,noise)")
    capture.add_argument("--fpr", type=float, default=0.01, help="their false-positive rate (default: 0.01)")
    capture.add_argument("--ood-quantile", type=float, default=0.999, help="OOD threshold quantile (default: 0.999)")
    capture.add_argument("--no-attach", action="store_true", help="only write the file")
    capture.add_argument("--dynamic", action="store_true", help="also run the sandboxed dynamic analysis on load")
    capture.add_argument("--db", metavar="URL", help="database URL (default: $MLWARDEN_DB_URL or the home's)")
    capture.add_argument("--home", metavar="DIR", help="mlwarden home (default: $MLWARDEN_HOME)")
    capture.add_argument("--gates", metavar="FILE", help="gates TOML file")
    add_token_options(capture)
    capture.set_defaults(run=run_capture)
    show = actions.add_parser("show", help="summarise a baseline file")
    show.add_argument("path", metavar="FILE")
    show.set_defaults(run=run_show)


def run_capture(args: argparse.Namespace) -> int:
    """Capture and (unless ``--no-attach``) attach."""
    from mlwarden.cli.registry_cmd import caller, open_registry
    from mlwarden.serve.calibration import AdversarialSettings, capture, read_reference
    from mlwarden.serve.servable import load_servable

    detectors = tuple(d.strip() for d in args.detectors.split(",") if d.strip())
    try:
        settings = AdversarialSettings(detectors=detectors, fpr=args.fpr)
    except ValueError as exc:
        raise UsageError(f"--detectors/--fpr: {exc}") from None
    data, names = read_reference(args.reference)
    registry = open_registry(args)
    try:
        who = caller(registry, args)
        info = registry.resolve(who, args.ref)
        servable = load_servable(registry.artifact_path(who, info.ref), dynamic=args.dynamic)
        baseline = capture(
            servable,
            data,
            feature_names=names,
            adversarial=settings,
            ood_quantile=args.ood_quantile,
            model_digest=info.digest,
        )
        out = Path(args.out or f"{info.ref.replace(':', '-')}.baseline.json")
        out.write_text(baseline.to_json(), encoding="utf-8")
        print(f"baseline of {info.ref} on {baseline.n_reference} reference row(s) written to {out}")
        if not args.no_attach:
            registry.attach(who, info.ref, "baseline", out)
            print(f"attached to {info.ref} as 'baseline'")
    finally:
        registry.close()
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print the summary of a baseline file."""
    from mlwarden.serve.calibration import GuardBaseline

    try:
        baseline = GuardBaseline.from_json(Path(args.path).read_bytes())
    except OSError as exc:
        raise UsageError(f"{args.path}: {exc.strerror or exc}") from None
    summary = {
        "model_digest": baseline.model_digest,
        "input_kind": baseline.input_kind,
        "n_reference": baseline.n_reference,
        "features": list(baseline.feature_names or ()),
        "ood_threshold": baseline.ood_threshold,
        "ood_quantile": baseline.ood_quantile,
        "adversarial_thresholds": dict(baseline.adversarial_thresholds),
        "confidence_mean": baseline.confidence_mean,
        "confidence_std": baseline.confidence_std,
        "label_counts": dict(baseline.label_counts),
        "created_at": baseline.created_at,
    }
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0
