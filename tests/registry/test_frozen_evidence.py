"""Gate evidence is frozen at approval (security review 2027-01, item 1, high).

Reported: a submitter attached a new ``baseline`` to an approved, deployed version and the guard enforced it after
a restart; a baseline with an empty model digest was accepted and picked up when an alias moved; a junk signature
attached later blocked deploys. Now: approval records the digests of the evidence it approved, deploy and the
guard use exactly that, evidence for other bytes (or naming none) is refused at attach time, and nothing can be
attached once a version is approved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from mlwarden.registry.db import Database
from mlwarden.registry.errors import BadInput, GateRefused, InvalidTransition
from mlwarden.registry.models import AttachmentRow, VersionRow, utcnow
from mlwarden.registry.states import State
from mlwarden.registry.values import AttachmentKind

from .helpers import ALICE, BOB, CAROL, STATIC, VIC, World, make_keys, sign, world


@pytest.fixture
def w(database: Database, tmp_path: Path) -> Iterator[World]:
    with world(database.url, tmp_path) as built:
        yield built


def _report(w: World, digest: str | None, name: str = "tests.json") -> Path:
    path = w.root / name
    doc: dict[str, object] = {"passed": 10}
    if digest is not None:
        doc["model_digest"] = digest
    path.write_text(json.dumps(doc))
    return path


def _inject(w: World, ref: str, kind: AttachmentKind, source: Path) -> int:
    """What an older registry (or a direct database write) let in: an attachment row added after approval."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    info = w.registry.resolve(VIC, ref)
    with w.registry.database.transaction() as session:
        version = session.scalar(
            select(VersionRow).where(VersionRow.number == info.version, VersionRow.digest == info.digest)
        )
        assert version is not None
        row = AttachmentRow(
            version_id=version.id,
            kind=kind.value,
            filename=source.name,
            digest=digest,
            size=source.stat().st_size,
            created_by=ALICE.username,
            created_at=utcnow(),
            details={},
        )
        session.add(row)
        session.flush()
        return row.id


def test_approval_records_the_digests_of_the_evidence_it_approved(w: World) -> None:
    v = w.approved()
    assert v.evidence is not None
    assert {(e.id, e.kind, e.digest) for e in v.evidence} == {(a.id, a.kind, a.digest) for a in v.attachments}
    approval = next(e for e in reversed(list(w.registry.audit().entries())) if e.action == "approve")
    assert approval.allowed
    assert {item["id"] for item in approval.details["evidence"]} == {a.id for a in v.attachments}
    signature = v.latest(AttachmentKind.SIGNATURE)
    assert signature is not None
    assert approval.digests[f"signature#{signature.id}"] == f"sha256:{signature.digest}"


@pytest.mark.parametrize("state", ["approved", "deployed", "quarantined", "rolled_back"])
def test_nothing_can_be_attached_once_approved(w: World, state: str) -> None:
    w.approved(seed=0)
    if state in ("deployed", "rolled_back"):
        w.registry.deploy(CAROL, "fraud:1", "production")
    if state == "rolled_back":
        w.approved(seed=1)
        w.registry.deploy(CAROL, "fraud:2", "production")
        w.registry.rollback(CAROL, "fraud", "production")  # back to 1: fraud:2 rolled back
        ref = "fraud:2"
    else:
        ref = "fraud:1"
    if state == "quarantined":
        w.registry.quarantine(CAROL, ref, "review")
    info = w.registry.resolve(VIC, ref)
    assert info.state.value == state
    with pytest.raises(InvalidTransition, match="frozen when it was approved"):
        w.registry.attach(ALICE, ref, "test_report", _report(w, info.digest))
    assert w.registry.resolve(VIC, ref).attachments == info.attachments
    refused = list(w.registry.audit().entries())[-1]
    assert (refused.action, refused.allowed) == ("attach", False)


def test_a_junk_signature_attached_after_approval_changes_nothing(w: World) -> None:
    v = w.approved()
    rogue = make_keys(w.root / "rogue", "rogue")
    path, _ = w.model(seed=0)
    junk = sign(path, rogue, w.root / "rogue.sig")
    with pytest.raises(InvalidTransition):
        w.registry.attach(ALICE, v.ref, "signature", junk)
    _inject(w, v.ref, AttachmentKind.SIGNATURE, junk)  # as if an older registry had let it in
    approved = v.latest(AttachmentKind.SIGNATURE)
    assert approved is not None
    assert w.registry.resolve(VIC, v.ref).latest(AttachmentKind.SIGNATURE) == approved
    assert w.registry.deploy(CAROL, v.ref, "production").state is State.DEPLOYED


def test_rewritten_approved_evidence_fails_closed(w: World) -> None:
    v = w.approved()
    signature = v.latest(AttachmentKind.SIGNATURE)
    assert signature is not None
    with w.registry.database.transaction() as session:
        session.execute(update(AttachmentRow).where(AttachmentRow.id == signature.id).values(digest="0" * 64))
    assert w.registry.resolve(VIC, v.ref).latest(AttachmentKind.SIGNATURE) is None
    with pytest.raises(GateRefused) as caught:
        w.registry.deploy(CAROL, v.ref, "production")
    assert "signature_required" in {c.rule for c in caught.value.failed}


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"format": "mlwarden.guard-baseline/1", "model_digest": ""}, "names no model digest"),
        ({"format": "mlwarden.guard-baseline/1"}, "names no model digest"),
        ({"format": "mlwarden.guard-baseline/1", "model_digest": "sha256:" + "ab" * 32}, "about another model"),
    ],
)
def test_a_baseline_for_other_bytes_or_none_is_refused(w: World, doc: dict[str, object], words: str) -> None:
    v = w.register()
    path = w.root / "baseline.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(BadInput, match=words):
        w.registry.attach(ALICE, v.ref, "baseline", path)
    assert w.registry.resolve(VIC, v.ref).latest(AttachmentKind.BASELINE) is None


@pytest.mark.parametrize("kind", ["test_report", "scan_report"])
def test_reports_must_name_this_versions_digest(w: World, kind: str) -> None:
    v = w.register()
    with pytest.raises(BadInput, match="names no model digest"):
        w.registry.attach(ALICE, v.ref, kind, _report(w, None))
    with pytest.raises(BadInput, match="about another model"):
        w.registry.attach(ALICE, v.ref, kind, _report(w, "sha256:" + "cd" * 32))
    assert w.registry.attach(ALICE, v.ref, kind, _report(w, v.digest)).latest(AttachmentKind(kind)) is not None


def test_a_signature_over_other_bytes_is_refused_at_attach(w: World) -> None:
    v = w.register(signature=None)
    other, _ = w.model(seed=5)
    with pytest.raises(BadInput, match="signs other bytes"):
        w.registry.attach(ALICE, v.ref, "signature", sign(other, w.keys, w.root / "other.sig"))


def test_release_is_a_new_approval_that_keeps_the_frozen_evidence(w: World) -> None:
    v = w.approved()
    w.registry.deploy(CAROL, v.ref, "production")
    w.registry.quarantine(CAROL, v.ref, "review")
    injected = _inject(w, v.ref, AttachmentKind.TEST_REPORT, _report(w, v.digest))
    w.registry.scan(ALICE, v.ref, modes=STATIC)  # the registry's own later scan may join the evidence
    released = w.registry.release(BOB, v.ref)
    assert released.evidence is not None
    frozen = {e.id for e in released.evidence}
    assert injected not in frozen
    assert {e.id for e in v.evidence or ()} < frozen


def test_a_baseline_attached_after_deploy_never_reaches_the_guard(db_url: str, tmp_path: Path) -> None:
    """The reported attack, end to end: deploy with a baseline, replace it, restart the guard."""
    from mlwarden.serve.calibration import capture
    from mlwarden.serve.deployment import prepare
    from mlwarden.serve.policy import GuardPolicy
    from mlwarden.serve.servable import load_servable
    from tests.serve.world import opened_world, tabular_data, train_sklearn

    with opened_world(db_url, tmp_path) as serve_world:
        registry, people = serve_world.registry, serve_world.principals
        model = train_sklearn(tmp_path / "fraud.joblib", seed=1)
        ref = serve_world.release("fraud", model)
        approved = registry.resolve(people["root"], ref).latest(AttachmentKind.BASELINE)
        assert approved is not None
        # the attacker's baseline: tiny reference data, so every real input would look out of range
        loose = capture(load_servable(model, dynamic=False), tabular_data(150, 7, shift=50.0)[0], model_digest="")
        evil = tmp_path / "evil.baseline.json"
        evil.write_text(loose.to_json(), encoding="utf-8")
        with pytest.raises((InvalidTransition, BadInput)):
            registry.attach(people["alice"], ref, "baseline", evil)
        digest = registry.resolve(people["root"], ref).digest
        bound = tmp_path / "bound.baseline.json"
        bound.write_text(json.dumps({**json.loads(loose.to_json()), "model_digest": digest}))
        with pytest.raises(InvalidTransition, match="frozen"):
            registry.attach(people["alice"], ref, "baseline", bound)
        _inject_row(registry, ref, bound)  # as if an older registry had let it in
        deployment = prepare(registry, people["dave"], "fraud@production", GuardPolicy())  # a restarted guard
        stored = json.loads(registry.attachment_path(people["root"], ref, approved.id).read_bytes())
        assert deployment.baseline is not None
        assert deployment.baseline.ood_threshold == stored["ood_threshold"]
        assert deployment.baseline.n_reference == stored["n_reference"] != 150


def _inject_row(registry: object, ref: str, source: Path) -> None:
    from mlwarden.registry.service import Registry

    assert isinstance(registry, Registry)
    name, number = ref.split(":")
    with registry.database.transaction() as session:
        version = session.scalar(select(VersionRow).where(VersionRow.number == int(number)))
        assert version is not None
        assert version.model.name == name
        session.add(
            AttachmentRow(
                version_id=version.id,
                kind="baseline",
                filename=source.name,
                digest=hashlib.sha256(source.read_bytes()).hexdigest(),
                size=source.stat().st_size,
                created_by="alice",
                created_at=utcnow(),
                details={},
            )
        )
