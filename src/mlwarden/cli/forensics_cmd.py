"""``mlwarden forensics verify|show``: check and read the signed bundles a guard playbook wrote."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(sub: Any) -> None:
    """Register ``mlwarden forensics``."""
    forensics = sub.add_parser("forensics", help="verify and read forensics bundles")
    actions = forensics.add_subparsers(
        dest="forensics_command", metavar="ACTION", parser_class=type(forensics), required=True
    )
    verify = actions.add_parser("verify", help="check the signature and every member of a bundle")
    verify.add_argument("bundle", metavar="BUNDLE")
    verify.add_argument("--key", required=True, metavar="PUB", help="the guard's public key (PEM)")
    verify.set_defaults(run=run_verify)
    show = actions.add_parser("show", help="print a bundle's manifest and alerts")
    show.add_argument("bundle", metavar="BUNDLE")
    show.set_defaults(run=run_show)


def run_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the bundle verifies, 1 (with the reason) when it does not."""
    from mlwarden.integrity.keys import load_public_key
    from mlwarden.monitor.forensics import ForensicsError, verify_bundle

    key = load_public_key(args.key)
    try:
        result = verify_bundle(args.bundle, key)
    except ForensicsError as exc:
        print(f"mlwarden: forensics bundle does NOT verify: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"OK: {len(result.members)} member(s) signed for {result.predicate.get('model')} "
        f"at {result.predicate.get('created_at')}"
    )
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    """Print the manifest and the alerts (unverified: run verify first)."""
    from mlwarden.monitor.forensics import read_members

    members = read_members(args.bundle)
    manifest = json.loads(members.get("manifest.json", b"{}"))
    alerts = json.loads(members.get("alerts.json", b"[]"))
    json.dump({"manifest": manifest, "alerts": alerts, "members": sorted(members)}, sys.stdout, indent=2)
    print()
    return EXIT_OK
