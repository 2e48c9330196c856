"""Shared machinery of the registry service: the parts every action uses, kept out of the public module.

* :func:`attempt` wraps one action: the role check comes first, and any refusal raised inside the block (role,
  separation of duties, state, gate, bad input, not found) is appended to the audit log with ``allowed=False`` in
  a transaction of its own, after the action's transaction rolled back.
* Row lookups by reference, and the conversion of rows into the frozen values callers see.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mlwarden.core.errors import MlwardenError
from mlwarden.integrity.hashing import FileDigest
from mlwarden.registry.db import DatabaseError
from mlwarden.registry.errors import GateRefused, NotFound, PermissionDenied, scrub_paths
from mlwarden.registry.models import AliasRow, ModelRow, TokenRow, UserRow, VersionRow
from mlwarden.registry.roles import Permission, Principal, Role
from mlwarden.registry.states import State
from mlwarden.registry.values import (
    AttachmentInfo,
    AttachmentKind,
    EvidenceRef,
    Ref,
    TokenInfo,
    UserInfo,
    VersionInfo,
    parse_ref,
)

if TYPE_CHECKING:
    from mlwarden.core.policy import Policy
    from mlwarden.registry._refusals import RefusalCounter
    from mlwarden.registry.audit import AuditEvent, AuditLog
    from mlwarden.registry.blobs import BlobStore
    from mlwarden.registry.db import Database
    from mlwarden.registry.gates import Gates

#: How many times a write is retried when a concurrent writer took the same version number or name.
WRITE_RETRIES = 5


@dataclass
class Core:
    """Everything an action needs: database, blob store, audit log, gates, scan policy and where views go."""

    database: Database
    blobs: BlobStore
    audit: AuditLog
    gates: Gates
    policy: Policy
    views: Path
    max_artifact_bytes: int | None = None
    refusals: RefusalCounter | None = None


@dataclass
class Attempt:
    """What an action is about, filled in as it learns more, so a refusal is audited with the same facts."""

    actor: Principal
    action: str
    subject: str
    from_state: str | None = None
    to_state: str | None = None
    digests: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def resolved(self, subject: str) -> None:
        """Make ``subject`` (the resolved ``model:NAME:N``) the attempt's subject and check the token scope again.

        Every place that learns which version an action is really about calls this: ``attempt`` only saw the
        reference as given, and an alias (``fraud@production``) is only known to lie inside a scope once resolved.

        Raises:
            PermissionDenied: the resolved version lies outside the caller's token scope.
        """
        self.subject = subject
        self.actor.require_scope(subject, self.action)

    def event(self, *, allowed: bool, reason: str = "", **details: Any) -> AuditEvent:
        """The audit event for this attempt."""
        from mlwarden.registry.audit import AuditEvent

        return AuditEvent(
            actor=self.actor.username,
            action=self.action,
            subject=self.subject,
            allowed=allowed,
            reason=reason,
            from_state=self.from_state,
            to_state=self.to_state,
            digests=dict(self.digests),
            details={**self.details, **details},
        )


@contextlib.contextmanager
def attempt(
    core: Core, actor: Principal, action: str, subject: str, permission: Permission, *, read_only: bool = False
) -> Iterator[Attempt]:
    """Check the role and the token scope, run the block, and audit a refusal (then re-raise it).

    This is the one place a token scope is enforced: every action enters here with its subject, and the block
    calls :meth:`Attempt.resolved` when a reference resolves to a version.

    Database failures are not audited (the database is what failed) and propagate as they are. For reads
    (``read_only``) only a denied permission is audited: a lookup of a missing version is no refusal, and
    auditing it would let any reader fill the log.
    """
    current = Attempt(actor, action, subject)
    try:
        actor.require(permission, action)
        actor.require_scope(subject, action)
        yield current
    except DatabaseError:
        raise
    except MlwardenError as exc:
        if read_only and not isinstance(exc, PermissionDenied):
            raise
        details: dict[str, Any] = {"error": type(exc).__name__}
        if isinstance(exc, GateRefused):
            details["failed"] = [{"rule": c.rule, "detail": c.detail} for c in exc.failed]
        if isinstance(exc, PermissionDenied):
            details["roles_needed"] = list(exc.roles_needed)
        with contextlib.suppress(MlwardenError):  # the refusal itself must reach the caller even if this fails
            # server paths (staged blobs, uploads) never reach the log every viewer reads
            core.audit.append_now(current.event(allowed=False, reason=scrub_paths(str(exc)), **details))
        raise


def model_row(session: Session, name: str) -> ModelRow:
    """The model called ``name``, or :class:`NotFound`."""
    row = session.scalar(select(ModelRow).where(ModelRow.name == name))
    if row is None:
        raise NotFound(f"no model named {name!r}")
    return row


def version_row(session: Session, ref: Ref | str, *, lock: bool = False) -> VersionRow:
    """The version ``ref`` names (``fraud:3`` or ``fraud@production``), row-locked when ``lock``.

    Raises:
        NotFound: no such model, version or alias, or the alias points at nothing.
    """
    ref = parse_ref(ref)
    model = model_row(session, ref.model)
    if ref.version is not None:
        query = select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.number == ref.version)
        missing = f"model {ref.model!r} has no version {ref.version}"
    else:
        alias = session.scalar(select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.name == ref.alias))
        if alias is None:
            raise NotFound(f"model {ref.model!r} has no alias {ref.alias!r}")
        if alias.version_id is None:
            raise NotFound(f"alias {ref} points at no version (its version was retired)")
        query = select(VersionRow).where(VersionRow.id == alias.version_id)
        missing = f"alias {ref} points at a missing version"
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise NotFound(missing)
    return row


def alias_names(session: Session, version_id: int) -> tuple[str, ...]:
    """Aliases pointing at the version, sorted."""
    return tuple(sorted(session.scalars(select(AliasRow.name).where(AliasRow.version_id == version_id))))


def other_alias_count(session: Session, version_id: int, except_alias: int) -> int:
    """How many aliases other than ``except_alias`` point at the version."""
    query = select(func.count()).where(AliasRow.version_id == version_id, AliasRow.id != except_alias)
    return int(session.scalar(query.select_from(AliasRow)) or 0)


def version_info(session: Session, row: VersionRow) -> VersionInfo:
    """The frozen view of a version row."""
    return VersionInfo(
        model=row.model.name,
        version=row.number,
        state=State(row.state),
        digest=row.digest,
        submitted_by=row.submitted_by,
        created_at=row.created_at,
        aliases=alias_names(session, row.id),
        files=tuple(
            FileDigest(path=f.path, digest=f.digest, size=f.size)
            for f in sorted(row.files, key=lambda f: tuple(f.path.split("/")))
        ),
        attachments=tuple(
            AttachmentInfo(
                id=a.id,
                kind=AttachmentKind(a.kind),
                filename=a.filename,
                digest=a.digest,
                size=a.size,
                created_by=a.created_by,
                created_at=a.created_at,
                details=dict(a.details or {}),
            )
            for a in row.attachments
        ),
        artifact_name=row.artifact_name,
        is_file=row.is_file,
        framework=row.framework,
        description=row.description,
        state_changed_at=row.state_changed_at,
        evidence=frozen_evidence(row.evidence),
    )


def frozen_evidence(recorded: list[dict[str, Any]] | None) -> tuple[EvidenceRef, ...] | None:
    """The evidence an approval recorded, as values (None: never approved); malformed entries are dropped."""
    if recorded is None:
        return None
    refs: list[EvidenceRef] = []
    for item in recorded:
        try:
            refs.append(EvidenceRef(int(item["id"]), AttachmentKind(item["kind"]), str(item["digest"])))
        except (KeyError, TypeError, ValueError):
            continue  # fail closed: an entry that cannot be read freezes nothing, so that evidence is missing
    return tuple(refs)


def evidence_record(info: VersionInfo) -> list[dict[str, Any]]:
    """What an approval of ``info`` freezes, with the digest of each attachment's bytes.

    A first approval freezes every attachment. A release (a re-approval) keeps what the last approval froze and
    adds only the registry's own later scans: nothing a user attached after an approval ever becomes evidence.
    """
    from mlwarden.registry.gates import REGISTRY_SCAN

    frozen = None if info.evidence is None else {e.id for e in info.evidence}
    return [
        {"id": a.id, "kind": a.kind.value, "digest": a.digest}
        for a in info.attachments
        if frozen is None or a.id in frozen or a.details.get("source") == REGISTRY_SCAN
    ]


def user_info(row: UserRow) -> UserInfo:
    """The frozen view of a user row."""
    return UserInfo(row.username, frozenset(Role(r) for r in row.roles), row.disabled, row.created_at, row.created_by)


def token_info(row: TokenRow) -> TokenInfo:
    """The frozen view of a token row (never its hash)."""
    return TokenInfo(
        id=row.id,
        username=row.user.username,
        name=row.name,
        prefix=f"mlw_{row.lookup}",
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        scope=row.scope,
    )


def view_path(core: Core, info: VersionInfo) -> Path:
    """Lay out (or reuse) the version's stored copy under its original name; returns the file or folder."""
    return core.blobs.materialize(
        info.files, core.views / info.model / str(info.version), info.artifact_name, is_file=info.is_file
    )


def referenced(core: Core, digest: str) -> bool:
    """Whether any version file or attachment row points at the blob ``digest`` (hex)."""
    from mlwarden.registry.models import AttachmentRow, VersionFileRow

    with core.database.reading() as session:
        for column in (VersionFileRow.digest, AttachmentRow.digest):
            if session.scalar(select(column).where(column == digest).limit(1)) is not None:
                return True
    return False


def digest_ref(hex_digest: str) -> str:
    """``sha256:<hex>`` (the form audit events and version digests use)."""
    return hex_digest if hex_digest.startswith("sha256:") else f"sha256:{hex_digest}"
