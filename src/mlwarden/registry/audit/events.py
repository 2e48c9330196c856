"""What is recorded: :class:`AuditEvent` (what the caller says happened) and :class:`AuditRecord` (as logged).

The Merkle leaf of a record is ``H(0x00 || entry_bytes)``, where ``entry_bytes`` is canonical JSON of *every* field:
keys sorted, no spaces, UTF-8, no NaN, timestamp as RFC 3339 UTC with microseconds. ``digests`` and ``details`` are
stored in the database as their canonical JSON text (not re-encoded by a driver), so verification hashes exactly the
bytes that were hashed at append time; any edit of any column, even a semantically equal reformatting, changes the leaf.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring  # the C escaper json itself uses
from typing import Any

from mlwarden.registry.audit.errors import AuditError

#: Version of the entry encoding, part of every entry (so a future encoding cannot be confused with this one).
ENTRY_VERSION = 1
#: Longest value of each text column, in characters (the table's column sizes).
LIMITS = {"actor": 255, "action": 64, "subject": 512, "from_state": 64, "to_state": 64}
#: Default cap on the canonical JSON of ``details`` plus ``digests`` and ``reason``, in bytes.
DEFAULT_MAX_DETAILS_BYTES = 64 * 1024
_DIGEST = re.compile(r"[a-z0-9-]+:[0-9a-f]{32,128}")


@dataclass(frozen=True)
class AuditEvent:
    """Something that happened or was refused: who did what to which subject, and why.

    Attributes:
        actor: user name, or ``"system:<component>"``.
        action: e.g. ``"register"``, ``"approve"``, ``"deploy"``, ``"token.issue"``, ``"guard.block"``.
        subject: e.g. ``"model:fraud:3"``, ``"user:alice"``, ``"alias:fraud@production"``.
        allowed: False when the action was refused (refusals are recorded too).
        reason: why it was refused, or free text.
        from_state: lifecycle state before, if the action is a transition.
        to_state: lifecycle state after (or the one that was refused).
        digests: name -> ``"sha256:<hex>"`` of the artifacts involved.
        details: any other JSON-able facts.
    """

    actor: str
    action: str
    subject: str
    allowed: bool
    reason: str = ""
    from_state: str | None = None
    to_state: str | None = None
    digests: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    """One logged entry: the event plus its place in the log (``seq``, 0-based), time and leaf hash."""

    seq: int
    timestamp: datetime
    actor: str
    action: str
    subject: str
    allowed: bool
    reason: str
    from_state: str | None
    to_state: str | None
    digests_json: str
    details_json: str
    leaf_hash: bytes

    @property
    def digests(self) -> dict[str, str]:
        """The digests, decoded."""
        return dict(json.loads(self.digests_json))

    @property
    def details(self) -> dict[str, Any]:
        """The details, decoded."""
        return dict(json.loads(self.details_json))

    @property
    def event(self) -> AuditEvent:
        """The event as appended."""
        return AuditEvent(
            self.actor,
            self.action,
            self.subject,
            self.allowed,
            self.reason,
            self.from_state,
            self.to_state,
            self.digests,
            self.details,
        )

    def entry_bytes(self) -> bytes:
        """The canonical bytes that the Merkle leaf hashes."""
        return entry_bytes(
            self.seq,
            format_timestamp(self.timestamp),
            self.actor,
            self.action,
            self.subject,
            self.allowed,
            self.reason,
            self.from_state,
            self.to_state,
            self.digests_json,
            self.details_json,
        )

    def as_json(self) -> dict[str, Any]:
        """A JSON-able view (for ``mlwarden audit log --format json``)."""
        return {
            "seq": self.seq,
            "timestamp": format_timestamp(self.timestamp),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "allowed": self.allowed,
            "reason": self.reason,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "digests": self.digests,
            "details": self.details,
            "leaf_hash": self.leaf_hash.hex(),
        }


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, non-ASCII kept, NaN and infinities refused."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds; a naive datetime is taken as UTC (SQLite stores them without a zone)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def _text(value: str | None) -> str:
    return "null" if value is None else str(encode_basestring(value))


def entry_bytes(
    seq: int,
    timestamp: str,
    actor: str,
    action: str,
    subject: str,
    allowed: bool,
    reason: str,
    from_state: str | None,
    to_state: str | None,
    digests_json: str,
    details_json: str,
) -> bytes:
    """Canonical JSON of one entry, assembled directly (it equals :func:`canonical_json` of the same dict).

    Assembling the string instead of building a dict and sorting its keys makes verification of a million entries
    about three times faster; a property test checks the two forms agree.
    """
    return (
        f'{{"action":{_text(action)},"actor":{_text(actor)},"allowed":{"true" if allowed else "false"},'
        f'"details":{details_json},"digests":{digests_json},"from_state":{_text(from_state)},'
        f'"reason":{_text(reason)},"seq":{seq},"subject":{_text(subject)},"timestamp":{_text(timestamp)},'
        f'"to_state":{_text(to_state)},"v":{ENTRY_VERSION}}}'
    ).encode()


def normalise(event: AuditEvent, max_details_bytes: int = DEFAULT_MAX_DETAILS_BYTES) -> tuple[str, str]:
    """Validate ``event`` and return its ``(digests_json, details_json)``.

    Raises:
        AuditError: a field is too long, has a NUL or an unpaired surrogate, a digest is not ``algo:hex``,
            ``details`` is not JSON-able (or has NaN), or the whole is over ``max_details_bytes``.
    """
    if not isinstance(event, AuditEvent):
        raise AuditError(f"expected an AuditEvent, got {type(event).__name__}")
    if not isinstance(event.allowed, bool):
        raise AuditError("AuditEvent.allowed must be True or False")
    for name, limit in LIMITS.items():
        value = getattr(event, name)
        if value is None and name in ("from_state", "to_state"):
            continue
        if not isinstance(value, str) or not value:
            raise AuditError(f"AuditEvent.{name} must be a non-empty string")
        if len(value) > limit:
            raise AuditError(f"AuditEvent.{name} is {len(value)} characters long (at most {limit})")
    for key, value in event.digests.items():
        if not isinstance(key, str) or not isinstance(value, str) or not _DIGEST.fullmatch(value):
            raise AuditError(f"digest {key!r}: {value!r} is not 'algorithm:lowercase-hex' (e.g. 'sha256:ab12...')")
    try:
        digests_json = canonical_json(dict(event.digests))
        details_json = canonical_json(dict(event.details))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"AuditEvent.details is not plain JSON: {exc}") from None
    texts = (event.actor, event.action, event.subject, event.reason, event.from_state or "", event.to_state or "")
    size = 0
    for text in (*texts, digests_json, details_json):
        if "\x00" in text:
            raise AuditError("audit event text must not contain NUL characters")
        try:
            size += len(text.encode())
        except UnicodeEncodeError:
            raise AuditError("audit event text has an unpaired surrogate (not valid Unicode)") from None
    if size > max_details_bytes:
        raise AuditError(f"audit event is {size} bytes of text (at most {max_details_bytes}; raise max_details_bytes)")
    return digests_json, details_json


def now() -> datetime:
    """The current time in UTC, to the microsecond (what both SQLite and PostgreSQL keep)."""
    return datetime.now(UTC)
