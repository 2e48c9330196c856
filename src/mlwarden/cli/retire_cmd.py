"""``mlwarden retire`` and ``mlwarden archive``: end a version's life, and read what it left behind.

``retire REF --mode archive|delete`` (admin) detaches aliases, revokes the version's scoped tokens, archives
(sealed to a custodian's X25519 key) or deletes the bytes only it references, checks they are gone, and writes a
signed retirement certificate; all of it audited. The certificate is signed with the registry's key
(``<home>/keys/registry.key``, ECDSA P-256, created on first use; its public half is ``registry.pub``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlwarden.cli.registry_cmd import _session, add_token_options

EXIT_OK, EXIT_BAD = 0, 1


def add_parser(sub: Any) -> None:
    """Add ``retire`` and ``archive keygen|extract|certificate`` to the top-level subparsers ``sub``."""
    retire = sub.add_parser(
        "retire",
        help="retire a version for good: archive or delete its bytes, issue a signed certificate (admin)",
        description="Retire REF: detach its aliases, revoke its scoped tokens, archive (encrypted) or delete the "
        "bytes only it references, verify they are gone, and write a signed retirement certificate.",
    )
    retire.add_argument("ref", metavar="REF", help="NAME:VERSION or NAME@ALIAS")
    retire.add_argument("--mode", required=True, choices=("archive", "delete"))
    retire.add_argument("--archive-dir", metavar="DIR", help="where the encrypted archive goes (archive mode)")
    retire.add_argument("--recipient", metavar="PUB", help="custodian's X25519 public key (archive mode)")
    retire.add_argument("--reason", default="", metavar="TEXT")
    retire.add_argument("--signing-key", metavar="KEY", help="certificate key (default: <home>/keys/registry.key)")
    retire.add_argument("--certificate-dir", metavar="DIR", help="default: <home>/certificates")
    for option, meta, text in (
        ("--db", "URL", "database URL (default: $MLWARDEN_DB_URL or SQLite in the home)"),
        ("--home", "DIR", "mlwarden home (default: $MLWARDEN_HOME)"),
        ("--gates", "FILE", "gates TOML file"),
    ):
        retire.add_argument(option, metavar=meta, help=text)
    add_token_options(retire)
    retire.set_defaults(run=_retire)

    archive = sub.add_parser("archive", help="custodian keys, and opening retirement archives and certificates")
    actions = archive.add_subparsers(
        dest="archive_command", metavar="ACTION", parser_class=type(archive), required=True
    )
    keygen = actions.add_parser("keygen", help="create a custodian X25519 key pair")
    keygen.add_argument("--private-key", required=True, metavar="KEY")
    keygen.add_argument("--public-key", required=True, metavar="PUB")
    keygen.set_defaults(run=_keygen)
    extract = actions.add_parser("extract", help="decrypt and unpack an archive (every chunk authenticated)")
    extract.add_argument("archive", metavar="ARCHIVE")
    extract.add_argument("--private-key", required=True, metavar="KEY")
    extract.add_argument("--output", "-o", required=True, metavar="DIR")
    extract.set_defaults(run=_extract)
    certificate = actions.add_parser("certificate", help="verify a retirement certificate and print it")
    certificate.add_argument("certificate", metavar="CERT")
    certificate.add_argument("--public-key", required=True, metavar="PUB", help="the registry's public key")
    certificate.set_defaults(run=_certificate)


def _retire(args: argparse.Namespace) -> int:
    from mlwarden.registry.db import home
    from mlwarden.registry.retire import describe, registry_key, retire_version

    base = Path(args.home) if args.home else home()

    def action(registry: Any, principal: Any) -> int:
        retirement = retire_version(
            registry,
            principal,
            args.ref,
            mode=args.mode,
            signing_key=Path(args.signing_key) if args.signing_key else registry_key(base),
            certificate_dir=Path(args.certificate_dir) if args.certificate_dir else base / "certificates",
            archive_dir=Path(args.archive_dir) if args.archive_dir else None,
            recipient=Path(args.recipient) if args.recipient else None,
            reason=args.reason,
        )
        print(describe(retirement))
        return EXIT_OK

    return _session(args, action)


def _keygen(args: argparse.Namespace) -> int:
    from mlwarden.integrity.archive import generate_recipient

    key = generate_recipient(Path(args.private_key), Path(args.public_key))
    print(f"custodian key {key}: private {args.private_key} (keep it off the registry host), public {args.public_key}")
    return EXIT_OK


def _extract(args: argparse.Namespace) -> int:
    from mlwarden.integrity.archive import extract_archive, load_identity

    written = extract_archive(Path(args.archive), load_identity(Path(args.private_key)), Path(args.output))
    for path in written:
        print(path)
    return EXIT_OK


def _certificate(args: argparse.Namespace) -> int:
    import json

    from mlwarden.integrity.errors import VerificationError
    from mlwarden.registry.retire import read_certificate

    try:
        statement = read_certificate(Path(args.certificate), Path(args.public_key))
    except VerificationError as exc:
        for problem in exc.problems or (str(exc),):
            print(f"mlwarden: {problem}", file=sys.stderr)
        return EXIT_BAD
    print(json.dumps(statement["predicate"], indent=2, sort_keys=True))
    return EXIT_OK
