"""Lifecycle transitions: approve, deploy (alias), quarantine, release, rollback, retire.

Gates can be slow (they re-hash the stored bytes and verify signatures), so they are evaluated on a snapshot
read *before* the write transaction, not while holding the database's write lock. The transaction then re-reads
the version under a row lock and refuses with :class:`Conflict` if its state or evidence changed in between,
so a gate's verdict always applies to what is committed. Stored bytes cannot change under a gate: blobs are
content-addressed and the digest check re-hashes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlwarden.registry._core import (
    WRITE_RETRIES,
    Attempt,
    Core,
    attempt,
    digest_ref,
    evidence_record,
    frozen_evidence,
    model_row,
    other_alias_count,
    version_info,
    version_row,
    view_path,
)
from mlwarden.registry.errors import BadInput, Conflict, GateRefused, InvalidTransition, NotFound, PermissionDenied
from mlwarden.registry.gates import Evidence, GateCheck, GateResult, evaluate_approve, evaluate_deploy, evaluate_serving
from mlwarden.registry.models import AliasEventRow, AliasRow, VersionRow, utcnow
from mlwarden.registry.roles import Permission, Principal
from mlwarden.registry.states import TRANSITIONS, Action, State, check_transition
from mlwarden.registry.values import VersionInfo, check_name, check_text, parse_ref

#: Retirement hook: runs inside the retiring transaction with the version as it was; returns facts to audit.
RetireHook = Callable[[Session, VersionInfo], Mapping[str, Any]]
_ROLLBACK_TARGETS = frozenset({State.APPROVED, State.DEPLOYED})


def approve(core: Core, actor: Principal, ref: str, comment: str) -> VersionInfo:
    """``scanned -> approved`` through the approve gate; the submitter may never approve."""
    with attempt(core, actor, Action.APPROVE, f"model:{ref}", Permission.APPROVE) as act:
        check_text("comment", comment, multiline=True)
        info = _start(core, act, ref, Action.APPROVE)
        _separation_of_duties(actor, info, "approve")
        check_transition(Action.APPROVE, info.state, info.ref)
        _require(act, evaluate_approve(core.gates, _evidence(core, info)), info)
        with core.database.transaction() as session:
            row = _fresh(session, info)
            _set_state(row, State.APPROVED)
            _freeze(act, row, info)
            core.audit.append(session, act.event(allowed=True, comment=comment))
            return version_info(session, row)


def deploy(core: Core, actor: Principal, ref: str, alias: str) -> VersionInfo:
    """Point ``alias`` at the version through the deploy gate; the version it pointed at goes back to approved."""
    with attempt(core, actor, Action.DEPLOY, f"model:{ref}", Permission.DEPLOY) as act:
        check_name("alias", alias)
        act.details["alias"] = alias
        info = _start(core, act, ref, Action.DEPLOY)
        check_transition(Action.DEPLOY, info.state, info.ref)
        _require(act, evaluate_deploy(core.gates, _evidence(core, info), alias), info)
        for attempt_number in range(WRITE_RETRIES):
            try:
                with core.database.transaction() as session:
                    row = _fresh(session, info)
                    previous = _point(session, core, act, row, alias, "deploy")
                    act.details["previous"] = previous
                    core.audit.append(session, act.event(allowed=True))
                    return version_info(session, row)
            except IntegrityError:  # another deployer created the same alias first: its row exists now
                if attempt_number == WRITE_RETRIES - 1:
                    raise Conflict(f"alias {info.model}@{alias} is being changed concurrently; try again") from None
        raise AssertionError("unreachable")


def quarantine(core: Core, actor: Principal, ref: str, reason: str) -> VersionInfo:
    """Quarantine a version: nothing may deploy it; its aliases stay until a rollback moves them."""
    with attempt(core, actor, Action.QUARANTINE, f"model:{ref}", Permission.QUARANTINE) as act:
        if not reason.strip():
            raise BadInput("a quarantine needs a reason (it is recorded in the audit log)")
        check_text("reason", reason, multiline=True)
        act.details["reason"] = reason
        info = _start(core, act, ref, Action.QUARANTINE)
        check_transition(Action.QUARANTINE, info.state, info.ref)
        with core.database.transaction() as session:
            row = _fresh(session, info)
            _set_state(row, State.QUARANTINED)
            core.audit.append(session, act.event(allowed=True, reason=reason))
            return version_info(session, row)


def release(core: Core, actor: Principal, ref: str, comment: str) -> VersionInfo:
    """``quarantined -> approved`` (``deployed`` when an alias still points at it), re-gated; not by its submitter."""
    with attempt(core, actor, Action.RELEASE, f"model:{ref}", Permission.RELEASE) as act:
        check_text("comment", comment, multiline=True)
        info = _start(core, act, ref, Action.RELEASE)
        _separation_of_duties(actor, info, "release")
        check_transition(Action.RELEASE, info.state, info.ref)
        evidence = _evidence(core, info)
        checks = list(evaluate_approve(core.gates, evidence).checks)
        for alias in info.aliases:
            checks.extend(evaluate_deploy(core.gates, evidence, alias).checks)
        target = State.DEPLOYED if info.aliases else State.APPROVED
        act.to_state = target.value
        _require(act, GateResult("release", tuple(checks)), info)
        with core.database.transaction() as session:
            row = _fresh(session, info)
            _set_state(row, target)
            _freeze(act, row, info)
            core.audit.append(session, act.event(allowed=True, comment=comment))
            return version_info(session, row)


def rollback(core: Core, actor: Principal, name: str, alias: str) -> VersionInfo:
    """Move ``alias`` back to the newest earlier version it pointed at that is still approved or deployed."""
    with attempt(core, actor, Action.ROLLBACK, f"alias:{name}@{alias}", Permission.ROLLBACK) as act:
        check_name("model", name)
        check_name("alias", alias)
        with core.database.reading() as session:
            current = version_info(session, version_row(session, parse_ref(f"{name}@{alias}")))
            target_row = _rollback_target(session, name, alias, current)
            target = version_info(session, target_row)
        act.from_state = current.state.value
        act.to_state = TRANSITIONS[Action.ROLLBACK].target.value
        act.digests = {"from": current.digest, "to": target.digest}
        act.details = {"from": current.ref, "to": target.ref}
        check_transition(Action.ROLLBACK, current.state, current.ref)
        _require(act, evaluate_deploy(core.gates, _evidence(core, target), alias), target)
        with core.database.transaction() as session:
            current_row, target_row = _fresh(session, current), _fresh(session, target)
            alias_row = _alias(session, current_row.model_id, alias)
            if alias_row is None or alias_row.version_id != current_row.id:
                raise Conflict(f"alias {name}@{alias} moved while the rollback was checked; try again")
            _point(session, core, act, target_row, alias, "rollback")
            if current_row.state == State.DEPLOYED.value and not other_alias_count(session, current_row.id, -1):
                _set_state(current_row, State.ROLLED_BACK)
            act.to_state = current_row.state
            core.audit.append(session, act.event(allowed=True))
            return version_info(session, target_row)


def rollback_target(core: Core, actor: Principal, name: str, alias: str) -> VersionInfo:
    """The version :func:`rollback` would move ``alias`` to now (read-only; a server keeps it warm)."""
    with attempt(core, actor, "read", f"alias:{name}@{alias}", Permission.READ, read_only=True):
        check_name("model", name)
        check_name("alias", alias)
        with core.database.reading() as session:
            current = version_info(session, version_row(session, parse_ref(f"{name}@{alias}")))
            return version_info(session, _rollback_target(session, name, alias, current))


def verify_copy(core: Core, actor: Principal, ref: str, copy: Path, signature_required: bool) -> GateResult:
    """Check a private copy of ``ref``'s bytes (digest, and signature by a deploy-trusted key); audited."""
    with attempt(core, actor, "serve.verify", f"model:{ref}", Permission.READ) as act:
        with core.database.reading() as session:
            info = version_info(session, version_row(session, ref))
        act.resolved(f"model:{info.ref}")
        act.from_state = act.to_state = info.state.value
        paths = {a.id: core.blobs.path(a.digest) for a in info.attachments}
        result = evaluate_serving(
            core.gates, Evidence(info, copy, paths, utcnow()), signature_required=signature_required
        )
        act.details["checks"] = [_check_dict(c) for c in result.checks]
        act.digests = {"artifact": info.digest}
        if not result.passed:
            raise GateRefused(result.gate, info.ref, result.failed)
        core.audit.append_now(act.event(allowed=True))
        return result


def retire(core: Core, actor: Principal, ref: str, reason: str, hook: RetireHook | None) -> VersionInfo:
    """Mark a version retired (final), detach its aliases, and run ``hook`` in the same transaction."""
    with attempt(core, actor, Action.RETIRE, f"model:{ref}", Permission.RETIRE) as act:
        check_text("reason", reason, multiline=True)
        act.details["reason"] = reason
        info = _start(core, act, ref, Action.RETIRE)
        check_transition(Action.RETIRE, info.state, info.ref)
        with core.database.transaction() as session:
            row = _fresh(session, info)
            for alias_row in session.scalars(select(AliasRow).where(AliasRow.version_id == row.id)):
                session.add(
                    AliasEventRow(
                        alias_id=alias_row.id,
                        version_id=None,
                        previous_version_id=row.id,
                        action="retire",
                        actor=actor.username,
                        at=utcnow(),
                    )
                )
                alias_row.version_id, alias_row.updated_at, alias_row.updated_by = None, utcnow(), actor.username
            act.details["aliases"] = list(info.aliases)
            if hook is not None:
                act.details.update(hook(session, info))
            _set_state(row, State.RETIRED)
            core.audit.append(session, act.event(allowed=True))
            session.flush()
            return version_info(session, row)


def _start(core: Core, act: Attempt, ref: str, action: Action) -> VersionInfo:
    """Read the version and fill the attempt's facts (so a refusal is audited with them)."""
    with core.database.reading() as session:
        info = version_info(session, version_row(session, ref))
    act.resolved(f"model:{info.ref}")  # an alias may resolve outside the token's scope
    act.from_state = info.state.value
    act.to_state = TRANSITIONS[action].target.value
    act.digests = {"artifact": info.digest}
    return info


def _separation_of_duties(actor: Principal, info: VersionInfo, verb: str) -> None:
    if info.submitted_by == actor.username:
        raise PermissionDenied(
            f"separation of duties: {actor.username} submitted {info.ref} and may not {verb} it (even as admin)",
            permission=verb,
        )


def _evidence(core: Core, info: VersionInfo) -> Evidence:
    from mlwarden.registry._suppress import version_suppressions  # it imports this module

    paths = {a.id: core.blobs.path(a.digest) for a in info.attachments}
    with core.database.reading() as session:
        suppressions = tuple(version_suppressions(session, info))
    return Evidence(info, view_path(core, info), paths, utcnow(), suppressions=suppressions)


def _require(act: Attempt, result: GateResult, info: VersionInfo) -> None:
    act.details["checks"] = [_check_dict(c) for c in result.checks]
    if not result.passed:
        raise GateRefused(result.gate, info.ref, result.failed)


def _check_dict(check: GateCheck) -> dict[str, Any]:
    return {"rule": check.rule, "passed": check.passed, "detail": check.detail}


def _fresh(session: Session, info: VersionInfo) -> VersionRow:
    """Re-read the version under a row lock; refuse if it changed since the gate looked at it."""
    row = version_row(session, info.ref, lock=True)
    seen = [(a.id, a.digest) for a in info.attachments]
    if (
        row.state != info.state.value
        or [(a.id, a.digest) for a in row.attachments] != seen
        or frozen_evidence(row.evidence) != info.evidence
    ):
        raise Conflict(f"{info.ref} changed while it was being checked (now {row.state}); try again")
    return row


def _freeze(act: Attempt, row: VersionRow, info: VersionInfo) -> None:
    """Record on the version, and in the audit event, exactly the evidence this approval looked at.

    Deploy, rollback, release and the serving guard then use these attachments (and only while their bytes
    still have these digests); anything attached later needs a new approval.
    """
    row.evidence = evidence_record(info)
    act.details["evidence"] = row.evidence
    for item in row.evidence:
        act.digests.setdefault(f"{item['kind']}#{item['id']}", digest_ref(item["digest"]))


def _set_state(row: VersionRow, state: State) -> None:
    row.state, row.state_changed_at = state.value, utcnow()


def _alias(session: Session, model_id: int, alias: str) -> AliasRow | None:
    query = select(AliasRow).where(AliasRow.model_id == model_id, AliasRow.name == alias).with_for_update()
    return session.scalar(query)


def _point(session: Session, core: Core, act: Attempt, row: VersionRow, alias: str, action: str) -> str | None:
    """Point ``alias`` at ``row`` (deployed); the version it left goes back to approved if nothing else aliases it.

    Returns the reference of the version the alias pointed at before, if any.
    """
    now = utcnow()
    alias_row = _alias(session, row.model_id, alias)
    if alias_row is None:
        alias_row = AliasRow(
            model_id=row.model_id, name=alias, version_id=row.id, updated_at=now, updated_by=act.actor.username
        )
        session.add(alias_row)
        session.flush()
        previous_id = None
    else:
        previous_id = alias_row.version_id
        alias_row.version_id, alias_row.updated_at, alias_row.updated_by = row.id, now, act.actor.username
    session.add(
        AliasEventRow(
            alias_id=alias_row.id,
            version_id=row.id,
            previous_version_id=previous_id,
            action=action,
            actor=act.actor.username,
            at=now,
        )
    )
    _set_state(row, State.DEPLOYED)
    session.flush()
    if previous_id is None or previous_id == row.id:
        return None
    previous = session.get(VersionRow, previous_id, with_for_update=True)
    if previous is None:
        return None
    if (
        action == "deploy"
        and previous.state == State.DEPLOYED.value
        and not other_alias_count(session, previous.id, -1)
    ):
        _set_state(previous, State.APPROVED)
    return f"{previous.model.name}:{previous.number}"


def _rollback_target(session: Session, name: str, alias: str, current: VersionInfo) -> VersionRow:
    """The newest version the alias pointed at before ``current`` that is still approved or deployed."""
    model = model_row(session, name)
    alias_row = _alias(session, model.id, alias)
    if alias_row is None:
        raise NotFound(f"model {name!r} has no alias {alias!r}")
    history = session.scalars(
        select(AliasEventRow).where(AliasEventRow.alias_id == alias_row.id).order_by(AliasEventRow.id.desc())
    )
    seen: set[int] = set()
    for event in history:
        for version_id in (event.version_id, event.previous_version_id):
            if version_id is None or version_id in seen or version_id == alias_row.version_id:
                continue
            seen.add(version_id)
            candidate = session.get(VersionRow, version_id)
            if candidate is not None and State(candidate.state) in _ROLLBACK_TARGETS:
                return candidate
    raise InvalidTransition(
        f"cannot roll back {name}@{alias} from {current.ref}: no earlier version it pointed at is still approved"
    )
