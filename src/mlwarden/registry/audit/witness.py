"""Checkpoints kept outside the registry's control (witnesses), and the bound on what is left unsigned.

Whoever can write the database can delete every checkpoint and rewrite old rows with fresh leaf hashes: the log
then verifies against itself. Two things close that gap:

* :func:`publish` writes the latest signed checkpoint somewhere the registry does not control — a file on
  another system or an HTTP(S) endpoint (``mlwarden audit publish --to FILE|URL``);
* :func:`check_against` compares the log with such a saved checkpoint (``mlwarden audit verify --against``):
  its signature must verify, the log must still hold that many entries, and the root recomputed over the
  first ``tree_size`` entries must equal the witnessed one.

:func:`tail_problems` makes ``verify`` fail when the log has entries but no checkpoint, or when more than a
configured number of entries are unsigned (``--max-unsigned``, ``$MLWARDEN_AUDIT_MAX_UNSIGNED``).
"""

from __future__ import annotations

import base64
import os
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mlwarden.core.files import write_atomically
from mlwarden.registry.audit.checkpoint import ORIGIN, Checkpoint
from mlwarden.registry.audit.errors import AuditError
from mlwarden.registry.audit.verify import Problem, VerificationReport

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from mlwarden.registry.audit.log import AuditLog

__all__ = ["MAX_UNSIGNED_ENV", "check_against", "load_witness", "parse_checkpoint", "publish", "tail_problems"]

#: Environment variable bounding the unsigned tail ``audit verify`` accepts.
MAX_UNSIGNED_ENV = "MLWARDEN_AUDIT_MAX_UNSIGNED"
#: Default bound: one automatic checkpoint interval.
DEFAULT_MAX_UNSIGNED = 1000
#: Seconds an HTTP(S) witness may take.
DEFAULT_TIMEOUT = 10.0
#: Largest witness document read.
MAX_WITNESS_BYTES = 64 * 1024


def parse_checkpoint(text: str) -> Checkpoint:
    """Read the text :meth:`Checkpoint.to_text` writes (the last checkpoint in ``text`` when there are several).

    Raises:
        AuditError: not a checkpoint.
    """
    lines = [line.rstrip("\r") for line in text.splitlines()]
    starts = [i for i, line in enumerate(lines) if line == ORIGIN]
    if not starts:
        raise AuditError(f"not an mlwarden audit checkpoint (no {ORIGIN!r} line)")
    block = lines[starts[-1] : starts[-1] + 7]
    try:
        _, size, root, moment, key, blank, signed = block
        dash, signer, signature = signed.split(" ")
        if blank or dash != "\u2014" or signer != key:
            raise ValueError("malformed signature line")
        timestamp = datetime.fromisoformat(moment.removesuffix("Z")).replace(tzinfo=UTC)
        return Checkpoint(int(size), base64.b64decode(root, validate=True), timestamp, key, base64.b64decode(signature))
    except ValueError as exc:
        raise AuditError(f"malformed audit checkpoint: {exc}") from None


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def load_witness(source: str, *, timeout: float = DEFAULT_TIMEOUT) -> Checkpoint:
    """The checkpoint saved at ``source`` (a file, or an http(s) URL read with ``timeout``)."""
    try:
        if _is_url(source):
            with urllib.request.urlopen(source, timeout=timeout) as response:  # noqa: S310 - http(s) only
                data = response.read(MAX_WITNESS_BYTES + 1)
        else:
            data = Path(source).read_bytes()[: MAX_WITNESS_BYTES + 1]
    except OSError as exc:
        why = getattr(exc, "reason", None) or exc
        raise AuditError(f"cannot read the witness checkpoint {source}: {why}") from None
    if len(data) > MAX_WITNESS_BYTES:
        raise AuditError(f"the witness {source} is larger than {MAX_WITNESS_BYTES} bytes")
    return parse_checkpoint(data.decode("utf-8", "replace"))


def check_against(log: AuditLog, witness: Checkpoint, public_key: Ed25519PublicKey) -> list[Problem]:
    """Problems between the log and a checkpoint saved elsewhere (none: consistent)."""
    if not witness.signature_valid(public_key):
        return [Problem("bad-witness", "the saved checkpoint's signature does not verify with the public key")]
    size = log.size()
    if size < witness.tree_size:
        message = f"the log holds {size} entries; a checkpoint saved elsewhere covers {witness.tree_size}"
        return [Problem("truncated", message, tree_size=witness.tree_size)]
    if witness.tree_size == 0:
        return []
    try:
        root = log._tree(witness.tree_size).root(witness.tree_size)
    except AuditError as exc:
        return [Problem("gap", str(exc), tree_size=witness.tree_size)]
    if root != witness.root_hash:
        message = (
            f"the first {witness.tree_size} entries no longer hash to the root a checkpoint saved elsewhere signed "
            f"at {witness.timestamp:%Y-%m-%d %H:%M:%S} UTC: history was rewritten"
        )
        return [Problem("witness-mismatch", message, tree_size=witness.tree_size)]
    return []


def max_unsigned(value: int | None = None) -> int:
    """The configured bound (``value``, else ``$MLWARDEN_AUDIT_MAX_UNSIGNED``, else 1000)."""
    if value is not None:
        return value
    raw = os.environ.get(MAX_UNSIGNED_ENV, "").strip()
    try:
        return int(raw) if raw else DEFAULT_MAX_UNSIGNED
    except ValueError:
        raise AuditError(f"${MAX_UNSIGNED_ENV} must be a whole number, not {raw!r}") from None


def tail_problems(report: VerificationReport, bound: int) -> list[Problem]:
    """``unsigned``: entries but no checkpoint at all, or more than ``bound`` entries after the last good one."""
    if report.size and not report.checkpoints:
        message = f"{report.size} entries and no checkpoint: nothing signed vouches for any of them"
        return [Problem("unsigned", message)]
    tail = report.size - report.signed_size
    if tail > bound:
        return [Problem("unsigned", f"{tail} entries after the last verified checkpoint (bound {bound})")]
    return []


def publish(checkpoint: Checkpoint, destination: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Write ``checkpoint`` to a file (atomically replaced) or POST it to an http(s) URL."""
    text = checkpoint.to_text().encode("utf-8")
    if _is_url(destination):
        request = urllib.request.Request(  # noqa: S310 - http(s) only
            destination, data=text, method="POST", headers={"Content-Type": "text/plain; charset=utf-8"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                response.read(1024)
        except OSError as exc:
            raise AuditError(f"cannot publish to {destination}: {getattr(exc, 'reason', None) or exc}") from None
        return
    target = Path(destination)
    try:
        write_atomically(target, text, 0o644)  # a checkpoint is public: anyone may verify against it
    except OSError as exc:
        raise AuditError(f"cannot publish to {destination}: {exc.strerror or exc}") from None
