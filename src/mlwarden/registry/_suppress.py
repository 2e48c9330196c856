"""Reviewed suppressions in the registry: accept one rule's findings on one version's bytes, until a date.

The registry's counterpart of the suppressions file (``mlwarden/core/suppressions.py``), with the registry's
guarantees: only an approver or admin may suppress, never on a version they submitted (separation of duties, as
for approval), every suppression and every refusal is in the audit log, and a suppression names the version's
digest, so it can only ever apply to exactly the bytes that were reviewed. The approve gate reads them
(:func:`version_suppressions`) and says in its evidence which findings it ignored and why.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlwarden.core.suppressions import Suppression, SuppressionError, new_suppression
from mlwarden.registry._core import Core, attempt, version_info, version_row
from mlwarden.registry._lifecycle import _separation_of_duties
from mlwarden.registry.errors import BadInput, Conflict, InvalidTransition
from mlwarden.registry.models import SuppressionRow, utcnow
from mlwarden.registry.roles import Permission, Principal
from mlwarden.registry.states import State
from mlwarden.registry.values import VersionInfo, check_text

#: The action name in the audit log.
ACTION = "suppress"


def suppress(core: Core, actor: Principal, ref: str, rule_id: str, reason: str, expires: str | date) -> Suppression:
    """Record a reviewed suppression of ``rule_id`` on ``ref``'s bytes (approver or admin, not its submitter)."""
    from mlwarden.scan.suppressions import known_rules

    with attempt(core, actor, ACTION, f"model:{ref}", Permission.SUPPRESS) as act:
        check_text("reason", reason, multiline=True)
        act.details = {"rule": rule_id, "reason": reason, "expires": str(expires)}
        with core.database.reading() as session:
            info = version_info(session, version_row(session, ref))
        act.resolved(f"model:{info.ref}")
        act.from_state = act.to_state = info.state.value
        act.digests = {"artifact": info.digest}
        _separation_of_duties(actor, info, "suppress findings on")
        if info.state is State.RETIRED:
            raise InvalidTransition(f"{info.ref} is retired: nothing to suppress")
        try:
            entry = new_suppression(
                rule_id,
                reason=reason,
                reviewer=actor.username,
                expires=expires,
                digest=info.digest,
                known_rules=known_rules(),
                on=utcnow().date(),
            )
        except SuppressionError as exc:
            raise BadInput(str(exc)) from None
        act.details = {"rule": entry.rule_id, "reason": entry.reason, "expires": entry.expires.isoformat()}
        with core.database.transaction() as session:
            row = version_row(session, info.ref, lock=True)
            if row.digest != info.digest:
                raise Conflict(f"{info.ref} changed while the suppression was checked; try again")
            stored = SuppressionRow(
                version_id=row.id,
                rule_id=entry.rule_id,
                digest=info.digest,
                reason=entry.reason,
                reviewer=actor.username,
                created_at=utcnow(),
                expires=entry.expires,
            )
            session.add(stored)
            session.flush()
            act.details["suppression"] = stored.id
            core.audit.append(session, act.event(allowed=True))
            return _value(stored)


def list_suppressions(core: Core, actor: Principal, ref: str) -> list[Suppression]:
    """Every suppression recorded on ``ref``, oldest first, expired ones included."""
    with attempt(core, actor, "read", f"model:{ref}", Permission.READ, read_only=True) as act:
        with core.database.reading() as session:
            info = version_info(session, version_row(session, ref))
            act.resolved(f"model:{info.ref}")
            return version_suppressions(session, info)


def version_suppressions(session: Session, info: VersionInfo) -> list[Suppression]:
    """The suppressions recorded on ``info`` for its digest, oldest first (what the approve gate considers)."""
    model = version_row(session, info.ref)
    rows = session.scalars(
        select(SuppressionRow)
        .where(SuppressionRow.version_id == model.id, SuppressionRow.digest == info.digest)
        .order_by(SuppressionRow.id)
    )
    return [_value(r) for r in rows]


def _value(row: SuppressionRow) -> Suppression:
    return Suppression(
        rule_id=row.rule_id,
        reason=row.reason,
        reviewer=row.reviewer,
        expires=row.expires,
        digest=row.digest.removeprefix("sha256:"),
        source=f"registry#{row.id}",
    )
