"""``mlwarden audit``: verify the tamper-evident audit log, sign checkpoints, list entries, prove inclusion.

Exit codes of ``verify`` and ``prove``: 0 verified; 1 tampered (every problem is printed); 2 error (no database,
no key, bad arguments). Keys default to ``<mlwarden home>/keys/audit.key`` (private, 0600) and ``audit.pub``;
``checkpoint`` creates them on first use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.core.errors import UsageError

if TYPE_CHECKING:
    from mlwarden.registry.audit import AuditLog

EXIT_OK, EXIT_TAMPERED = 0, 1


def _default_key(name: str) -> Path:
    from mlwarden.registry.db import home

    return home() / "keys" / name


def add_parser(sub: Any) -> None:
    """Add ``audit verify|checkpoint|log|prove`` to the top-level subparsers ``sub``."""
    audit = sub.add_parser(
        "audit",
        help="verify, sign and read the tamper-evident audit log",
        description="The registry's audit log is an RFC 6962 Merkle tree with signed checkpoints.",
    )
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=type(audit))
    audit.set_defaults(run=_no_action)

    def db_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--db", metavar="URL", help="database URL (default: $MLWARDEN_DB_URL or the SQLite file)")

    verify = actions.add_parser(
        "verify",
        help="recompute the tree offline and check every checkpoint",
        description="Recompute every leaf from the stored columns, the Merkle tree and every signed checkpoint. "
        "Exit 0: intact; 1: tampered (each problem printed); 2: error.",
    )
    db_option(verify)
    verify.add_argument("--public-key", metavar="PEM", help="checkpoint public key (default: <home>/keys/audit.pub)")
    verify.add_argument("--quick", action="store_true", help="trust the stored leaf hashes (cannot name edited rows)")
    verify.add_argument("--jobs", "-j", type=int, metavar="N", help="worker processes for big logs (default: cores)")
    verify.add_argument("--format", "-f", choices=("text", "json"), default="text")
    verify.add_argument(
        "--against", metavar="FILE|URL", help="also check consistency with a checkpoint saved elsewhere (a witness)"
    )
    verify.add_argument(
        "--max-unsigned",
        type=int,
        metavar="N",
        help="fail when more than N entries are unsigned (default: $MLWARDEN_AUDIT_MAX_UNSIGNED or 1000); "
        "a log with entries and no checkpoint always fails",
    )
    verify.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds for an http(s) witness")
    verify.set_defaults(run=_verify)

    publish = actions.add_parser(
        "publish",
        help="write the latest signed checkpoint outside the registry (a witness)",
        description="Write the latest signed checkpoint to FILE (atomically) or POST it to an http(s) URL, "
        "where the registry's own administrators cannot rewrite it; verify later with --against.",
    )
    publish.add_argument("--to", required=True, metavar="FILE|URL")
    publish.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds for an http(s) witness")
    db_option(publish)
    publish.set_defaults(run=_publish)
    checkpoint = actions.add_parser(
        "checkpoint",
        help="sign the current tree head",
        description="Sign the current tree head (creating the key pair on first use) and print the checkpoint.",
    )
    db_option(checkpoint)
    checkpoint.add_argument("--key", metavar="PEM", help="private key (default: <home>/keys/audit.key)")
    checkpoint.set_defaults(run=_checkpoint)

    log = actions.add_parser("log", help="list the newest entries", description="List the newest audit entries.")
    db_option(log)
    log.add_argument("--limit", "-n", type=int, default=20, metavar="N", help="how many (default 20; 0: all)")
    log.add_argument("--format", "-f", choices=("text", "json"), default="text")
    log.set_defaults(run=_log)

    prove = actions.add_parser(
        "prove",
        help="print and check an inclusion proof of one entry",
        description="Print the inclusion proof of entry SEQ against the latest checkpoint and verify it "
        "(exit 0: proven; 1: the proof fails; 2: error).",
    )
    prove.add_argument("seq", type=int, metavar="SEQ")
    db_option(prove)
    prove.add_argument("--public-key", metavar="PEM", help="checkpoint public key (default: <home>/keys/audit.pub)")
    prove.set_defaults(run=_prove)


def _no_action(_args: argparse.Namespace) -> int:
    raise UsageError("mlwarden audit: choose an action: verify, checkpoint, log or prove")


def _open(args: argparse.Namespace, signer: Any = None) -> AuditLog:
    from mlwarden.registry.audit import AuditLog
    from mlwarden.registry.db import open_database

    return AuditLog(open_database(args.db, upgrade=False), signer)


def _verify(args: argparse.Namespace) -> int:
    from mlwarden.registry.audit import load_public_key

    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    from mlwarden.registry.audit.witness import check_against, load_witness, max_unsigned, tail_problems

    public_key = load_public_key(args.public_key or _default_key("audit.pub"))
    bound = max_unsigned(args.max_unsigned)
    if bound < 0:
        raise UsageError("--max-unsigned must be 0 or more")
    witness = load_witness(args.against, timeout=args.timeout) if args.against else None
    log = _open(args)
    try:
        report = log.verify(public_key, full=not args.quick, jobs=args.jobs)
        extra = tail_problems(report, bound)
        if witness is not None:
            extra.extend(check_against(log, witness, public_key))
    finally:
        log.database.dispose()
    if extra:
        report = dataclasses.replace(report, problems=(*report.problems, *extra))
    if args.format == "json":
        doc = {
            "ok": report.ok,
            "size": report.size,
            "root": report.root.hex(),
            "checkpoints": report.checkpoints,
            "verified_checkpoints": report.good_checkpoints,
            "signed_size": report.signed_size,
            "unsigned_tail": list(report.unsigned_tail) if report.unsigned_tail else None,
            "full": report.full,
            "problems": [
                {"kind": p.kind, "message": p.message, "seq": p.seq, "tree_size": p.tree_size} for p in report.problems
            ],
        }
        print(json.dumps(doc, indent=2))
    else:
        for problem in report.problems:
            print(f"{problem.kind}: {problem.message}")
        print(report.summary())
        if report.unsigned_tail and report.ok:
            print("note: run `mlwarden audit checkpoint` to sign the unsigned entries", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_TAMPERED


def _publish(args: argparse.Namespace) -> int:
    from mlwarden.registry.audit import AuditError
    from mlwarden.registry.audit.witness import publish

    log = _open(args)
    try:
        checkpoint = log.latest_checkpoint()
    finally:
        log.database.dispose()
    if checkpoint is None:
        raise AuditError("no checkpoint to publish: run `mlwarden audit checkpoint` first")
    publish(checkpoint, args.to, timeout=args.timeout)
    print(f"published checkpoint of size {checkpoint.tree_size} to {args.to}")
    return EXIT_OK


def _checkpoint(args: argparse.Namespace) -> int:
    from mlwarden.registry.audit import CheckpointSigner

    key = Path(args.key) if args.key else _default_key("audit.key")
    if key.exists():
        signer = CheckpointSigner.load(key)
    else:
        signer = CheckpointSigner.generate(key)
        print(f"mlwarden: created audit key {key} and {key.with_suffix('.pub')}", file=sys.stderr)
    log = _open(args, signer)
    try:
        checkpoint = log.checkpoint()
    finally:
        log.database.dispose()
    sys.stdout.write(checkpoint.to_text())
    return EXIT_OK


def _log(args: argparse.Namespace) -> int:
    from mlwarden.report import clean

    if args.limit < 0:
        raise UsageError("--limit must be 0 or more")
    log = _open(args)
    try:
        size = log.size()
        start = 0 if args.limit == 0 else max(0, size - args.limit)
        records = list(log.entries(start, size))
    finally:
        log.database.dispose()
    if args.format == "json":
        print(json.dumps([r.as_json() for r in records], indent=2, ensure_ascii=False))
        return EXIT_OK
    for r in records:
        verdict = "allowed" if r.allowed else "REFUSED"
        states = f" {r.from_state or '-'} -> {r.to_state or '-'}" if (r.from_state or r.to_state) else ""
        reason = f" ({r.reason})" if r.reason else ""
        line = (
            f"{r.seq:>8} {r.timestamp:%Y-%m-%d %H:%M:%S} {verdict:<7} {r.actor} {r.action} {r.subject}{states}{reason}"
        )
        print(clean(line))
    return EXIT_OK


def _prove(args: argparse.Namespace) -> int:
    from mlwarden.registry.audit import AuditError, ProofError, load_public_key
    from mlwarden.registry.audit.merkle import verify_inclusion
    from mlwarden.registry.audit.replay import leaf_from_row

    public_key = load_public_key(args.public_key or _default_key("audit.pub"))
    log = _open(args)
    try:
        checkpoint = log.latest_checkpoint()
        if checkpoint is None:
            raise AuditError("no checkpoint to prove against: run `mlwarden audit checkpoint` first")
        if not 0 <= args.seq < checkpoint.tree_size:
            raise UsageError(f"entry {args.seq} is not covered by the latest checkpoint (size {checkpoint.tree_size})")
        record = next(log.entries(args.seq, args.seq + 1), None)
        if record is None:
            print(f"entry {args.seq}: missing from the log although checkpoint {checkpoint.tree_size} covers it")
            return EXIT_TAMPERED
        proof = log.inclusion_proof(args.seq, checkpoint.tree_size)
    finally:
        log.database.dispose()
    leaf = leaf_from_row((record.seq, record.timestamp, *_columns(record)))
    print(f"entry {record.seq}: leaf {leaf.hex()}")
    print(f"checkpoint: size {checkpoint.tree_size}, root {checkpoint.root_hash.hex()}, key {checkpoint.key_id}")
    for index, node in enumerate(proof):
        print(f"  proof[{index}] {node.hex()}")
    if not checkpoint.signature_valid(public_key):
        print("FAILED: the checkpoint's signature does not verify with the given public key")
        return EXIT_TAMPERED
    try:
        verify_inclusion(record.seq, checkpoint.tree_size, leaf, proof, checkpoint.root_hash)
    except ProofError as exc:
        print(f"FAILED: {exc}")
        return EXIT_TAMPERED
    print(f"verified: entry {record.seq} is included in the signed tree of size {checkpoint.tree_size}")
    return EXIT_OK


def _columns(record: Any) -> tuple[Any, ...]:
    return (
        record.actor,
        record.action,
        record.subject,
        record.allowed,
        record.reason,
        record.from_state,
        record.to_state,
        record.digests_json,
        record.details_json,
    )
