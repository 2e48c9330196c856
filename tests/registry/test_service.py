"""The registry service end to end on SQLite and PostgreSQL: lifecycle, evidence, aliases, refusals, audit."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mlwarden.core.errors import LimitExceeded
from mlwarden.integrity.errors import ModelPathError
from mlwarden.integrity.hashing import hash_model
from mlwarden.registry import _lifecycle
from mlwarden.registry.db import Database, DatabaseError
from mlwarden.registry.errors import (
    BadInput,
    Conflict,
    GateRefused,
    InvalidTransition,
    NotFound,
    PermissionDenied,
)
from mlwarden.registry.models import AliasEventRow, VersionRow, utcnow
from mlwarden.registry.roles import Principal, Role
from mlwarden.registry.service import Registry
from mlwarden.registry.states import State
from mlwarden.registry.values import AttachmentKind

from .helpers import (
    ALICE,
    BOB,
    CAROL,
    STATIC,
    VIC,
    World,
    blob_files,
    folder_model,
    make_keys,
    sign,
    staging_leftovers,
    world,
)


@pytest.fixture
def w(database: Database, tmp_path: Path) -> Iterator[World]:
    with world(database.url, tmp_path) as built:
        yield built


def events(w: World) -> list[tuple[str, str, bool]]:
    return [(e.action, e.subject, e.allowed) for e in w.registry.audit().entries()]


def test_lifecycle_received_to_rolled_back(w: World) -> None:
    r = w.registry
    v1 = w.register()
    assert (v1.ref, v1.state, v1.submitted_by) == ("fraud:1", State.RECEIVED, "alice")
    assert r.scan(ALICE, "fraud:1", modes=STATIC).state is State.SCANNED
    assert r.approve(BOB, "fraud:1", comment="looks fine").state is State.APPROVED
    deployed = r.deploy(CAROL, "fraud:1", "production")
    assert (deployed.state, deployed.aliases) == (State.DEPLOYED, ("production",))

    w.approved(seed=1)
    v2 = r.deploy(CAROL, "fraud:2", "production")
    assert v2.aliases == ("production",)
    assert r.resolve(VIC, "fraud:1").state is State.APPROVED  # displaced: back to approved
    assert r.resolve(VIC, "fraud@production").version == 2

    back = r.rollback(CAROL, "fraud", "production")
    assert (back.ref, back.state) == ("fraud:1", State.DEPLOYED)
    assert r.resolve(VIC, "fraud:2").state is State.ROLLED_BACK
    assert r.resolve(VIC, "fraud@production").version == 1

    actions = [a for a, _, ok in events(w) if ok and not a.startswith("user")]
    assert actions == ["register", "scan", "approve", "deploy", "register", "scan", "approve", "deploy", "rollback"]
    rollback = list(r.audit().entries())[-1]
    assert (rollback.from_state, rollback.to_state) == ("deployed", "rolled_back")
    assert rollback.details["from"] == "fraud:2"
    assert rollback.details["to"] == "fraud:1"
    with r.database.reading() as session:
        history = session.scalars(select(AliasEventRow.action).order_by(AliasEventRow.id)).all()
    assert history == ["deploy", "deploy", "rollback"]


def test_register_stores_bytes_content_addressed_with_bom(w: World) -> None:
    path, signature = w.model()
    info = w.registry.register(ALICE, "fraud", path, signature=signature, dataset_manifests=[w.manifest])
    assert info.digest == f"sha256:{hash_model(path).digest}"
    assert [f.path for f in info.files] == ["model.pt"]
    kinds = [a.kind for a in info.attachments]
    assert kinds == [AttachmentKind.SIGNATURE, AttachmentKind.DATASET_MANIFEST, AttachmentKind.BOM]
    blob = w.root / "home" / "blobs" / "sha256" / info.files[0].digest[:2] / info.files[0].digest[2:]
    assert blob.read_bytes() == path.read_bytes()
    assert not blob.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    bom_info = info.latest(AttachmentKind.BOM)
    assert bom_info is not None
    bom = json.loads(w.registry.attachment_path(VIC, info.ref, bom_info.id).read_text())
    assert bom["specVersion"] == "1.6"
    hashes = json.dumps(bom["metadata"]["component"])
    assert info.files[0].digest in hashes
    assert info.framework == "torch"


def test_register_folder_model_and_artifact_view(w: World) -> None:
    model = folder_model(w.root / "folder-model")
    info = w.registry.register(ALICE, "folder", model)
    assert info.digest == f"sha256:{hash_model(model).digest}"
    assert not info.is_file
    assert info.artifact_name == "folder-model"
    view = w.registry.artifact_path(VIC, "folder:1")
    assert view.name == "folder-model"
    assert sorted(p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file()) == [
        "config.json",
        "weights/model.pt",
    ]
    assert hash_model(view).digest == hash_model(model).digest


def test_versions_number_up_per_model(w: World) -> None:
    assert [w.register("a", seed=s).version for s in range(3)] == [1, 2, 3]
    assert w.register("b").version == 1
    assert [v.version for v in w.registry.versions(VIC, "a")] == [1, 2, 3]
    models = {m.name: m for m in w.registry.list_models(VIC)}
    assert (models["a"].versions, models["a"].latest, models["b"].versions) == (3, 3, 1)


def test_failure_mid_register_leaves_no_row_and_no_blob(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    home = w.root / "home"
    before = blob_files(home)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk full while writing the audit log")

    monkeypatch.setattr(w.registry.audit(), "append", broken)
    path, signature = w.model(seed=7)
    with pytest.raises(RuntimeError, match="disk full"):
        w.registry.register(ALICE, "fraud", path, signature=signature, dataset_manifests=[w.manifest])
    with w.registry.database.reading() as session:
        assert session.scalar(select(func.count()).select_from(VersionRow)) == 0
    assert blob_files(home) == before
    assert staging_leftovers(home) == []


def test_failure_in_bom_leaves_nothing(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlwarden.integrity.bom as bom

    def broken(**_kwargs: object) -> str:
        raise bom.UsageError("cyclonedx broke")

    monkeypatch.setattr(bom, "build_bom", broken)
    with pytest.raises(bom.UsageError):
        w.register()
    assert blob_files(w.root / "home") == []
    assert staging_leftovers(w.root / "home") == []
    refused = list(w.registry.audit().entries())[-1]
    assert (refused.action, refused.allowed) == ("register", False)
    assert "cyclonedx broke" in refused.reason


@pytest.mark.parametrize(
    ("make_input", "error", "words"),
    [
        (lambda w: {"name": "bad/name"}, BadInput, "invalid model name"),
        (lambda w: {"model_path": w.root / "missing.pt"}, ModelPathError, "no such file"),
        (lambda w: {"signature": w.root / "nope.sig"}, BadInput, "no such file"),
        (lambda w: {"dataset_manifests": [w.root / "junk.json"]}, BadInput, "not a valid dataset manifest"),
        (lambda w: {"signature": w.root / "junk.json"}, BadInput, "not a valid signature"),
    ],
)
def test_register_refuses_bad_input(w: World, make_input, error: type[Exception], words: str) -> None:  # type: ignore[no-untyped-def]
    (w.root / "junk.json").write_text("{ not json")
    path, signature = w.model()
    kwargs = {"name": "fraud", "model_path": path, "signature": signature, **make_input(w)}
    name, model_path = kwargs.pop("name"), kwargs.pop("model_path")
    with pytest.raises(error, match=words):
        w.registry.register(ALICE, name, model_path, **kwargs)
    assert blob_files(w.root / "home") == []
    assert events(w)[-1][2] is False


def test_register_respects_size_limit(w: World) -> None:
    limited = w.reopen(gates=w.registry.gates, max_artifact_bytes=100)
    try:
        path, _ = w.model()
        with pytest.raises(LimitExceeded, match="max_artifact_bytes"):
            limited.register(ALICE, "big", path)
    finally:
        limited.close()


def test_separation_of_duties_even_for_admin(w: World) -> None:
    ada = Principal("ada", frozenset({Role.ADMIN}))
    path, signature = w.model()
    v = w.registry.register(ada, "fraud", path, signature=signature, dataset_manifests=[w.manifest])
    w.registry.scan(ada, v.ref, modes=STATIC)
    with pytest.raises(PermissionDenied, match="separation of duties: ada submitted fraud:1"):
        w.registry.approve(ada, v.ref)
    refused = list(w.registry.audit().entries())[-1]
    assert (refused.actor, refused.action, refused.allowed) == ("ada", "approve", False)
    assert "separation of duties" in refused.reason
    assert w.registry.approve(BOB, v.ref).state is State.APPROVED


def _call(w: World, action: str, who: Principal) -> object:
    r = w.registry
    path, signature = w.model(seed=3)
    report = w.root / "tests.json"  # evidence is attached before approval, bound to the version's digest
    report.write_text(json.dumps({"model_digest": r.resolve(VIC, "fraud:4").digest, "passed": 10}))
    calls = {
        "register": lambda: r.register(who, "other", path),
        "attach": lambda: r.attach(who, "fraud:4", "test_report", report),
        "scan": lambda: r.scan(who, "fraud:1", modes=STATIC),
        "approve": lambda: r.approve(who, "fraud:4"),
        "release": lambda: r.release(who, "fraud:3"),
        "deploy": lambda: r.deploy(who, "fraud:1", "staging"),
        "quarantine": lambda: r.quarantine(who, "fraud:1", "suspicious"),
        "rollback": lambda: r.rollback(who, "fraud", "production"),
        "create_user": lambda: r.create_user(who, "newbie", ["viewer"]),
        "issue_token": lambda: r.issue_token(who, "vic"),
        "retire": lambda: r.retire(who, "fraud:1", reason="end of life"),
        "read": lambda: r.resolve(who, "fraud:1"),
    }
    return calls[action]()


ALLOWED = {
    "register": {Role.SUBMITTER, Role.ADMIN},
    "attach": {Role.SUBMITTER, Role.ADMIN},
    "scan": {Role.SUBMITTER, Role.ADMIN},
    "approve": {Role.APPROVER, Role.ADMIN},
    "release": {Role.APPROVER, Role.ADMIN},
    "deploy": {Role.DEPLOYER, Role.ADMIN},
    "quarantine": {Role.DEPLOYER, Role.ADMIN},
    "rollback": {Role.DEPLOYER, Role.ADMIN},
    "create_user": {Role.ADMIN},
    "issue_token": {Role.ADMIN},
    "retire": {Role.ADMIN},
    "read": set(Role),
}


@pytest.fixture
def staged(w: World) -> World:
    """fraud:1 approved (was in production), fraud:2 in production, fraud:3 quarantined, fraud:4 scanned."""
    for seed in (0, 1):
        w.approved(seed=seed)
        w.registry.deploy(CAROL, f"fraud:{seed + 1}", "production")
    w.approved(seed=2)
    w.registry.quarantine(CAROL, "fraud:3", "under review")
    w.registry.scan(ALICE, w.register(seed=3).ref, modes=STATIC)
    return w


#: Allowed actions run in this order, so each finds its version in a state where it succeeds.
ORDER = (
    "read", "attach", "scan", "register", "approve", "release", "deploy", "rollback", "quarantine",
    "create_user", "issue_token", "retire",
)  # fmt: skip


@pytest.mark.parametrize("role", list(Role))
def test_every_role_permission_edge(staged: World, role: Role) -> None:
    who = Principal(f"user-{role.value}", frozenset({role}))
    assert set(ORDER) == set(ALLOWED)
    for action in ORDER:
        size = staged.registry.audit().size()
        if role in ALLOWED[action]:
            _call(staged, action, who)  # must not raise
            continue
        with pytest.raises(PermissionDenied, match="needs role") as caught:
            _call(staged, action, who)
        assert set(caught.value.roles_needed) == {r.value for r in ALLOWED[action]}, action
        refused = list(staged.registry.audit().entries())[size:]
        assert [(e.actor, e.allowed) for e in refused] == [(who.username, False)], action


def test_role_is_checked_before_state(w: World) -> None:
    w.register()  # received: approving it would also be an invalid transition
    with pytest.raises(PermissionDenied):
        w.registry.approve(CAROL, "fraud:1")


@pytest.mark.parametrize(
    ("action", "words"),
    [
        (lambda w: w.registry.approve(BOB, "fraud:1"), "cannot approve fraud:1: it is received"),
        (lambda w: w.registry.deploy(CAROL, "fraud:1", "production"), "cannot deploy fraud:1: it is received"),
        (lambda w: w.registry.release(BOB, "fraud:1"), "cannot release fraud:1: it is received"),
    ],
)
def test_invalid_transitions_are_refused_and_audited(w: World, action, words: str) -> None:  # type: ignore[no-untyped-def]
    w.register()
    with pytest.raises(InvalidTransition, match=words):
        action(w)
    refused = list(w.registry.audit().entries())[-1]
    assert refused.allowed is False
    assert refused.from_state == "received"


def test_quarantine_then_release_back_to_deployed(w: World) -> None:
    w.approved()
    w.registry.deploy(CAROL, "fraud:1", "production")
    with pytest.raises(BadInput, match="needs a reason"):
        w.registry.quarantine(CAROL, "fraud:1", "  ")
    q = w.registry.quarantine(CAROL, "fraud:1", "drift alert #12")
    assert (q.state, q.aliases) == (State.QUARANTINED, ("production",))
    with pytest.raises(InvalidTransition, match="quarantined"):
        w.registry.deploy(CAROL, "fraud:1", "staging")
    with pytest.raises(PermissionDenied, match="separation of duties"):
        w.registry.release(Principal("alice", frozenset({Role.ADMIN})), "fraud:1")
    released = w.registry.release(BOB, "fraud:1", comment="false alarm")
    assert released.state is State.DEPLOYED


def test_release_of_unaliased_version_goes_to_approved(w: World) -> None:
    w.approved()
    w.registry.quarantine(CAROL, "fraud:1", "bad data suspected")
    assert w.registry.release(BOB, "fraud:1").state is State.APPROVED


def test_rollback_skips_quarantined_and_retired_versions(w: World) -> None:
    admin = w.registry.authenticate(w.admin_token)
    for seed in range(4):
        w.approved(seed=seed)
        w.registry.deploy(CAROL, f"fraud:{seed + 1}", "production")
    w.registry.quarantine(CAROL, "fraud:3", "bad")
    w.registry.retire(admin, "fraud:2", reason="old")
    back = w.registry.rollback(CAROL, "fraud", "production")
    assert back.ref == "fraud:1"
    assert w.registry.resolve(VIC, "fraud:4").state is State.ROLLED_BACK
    with pytest.raises(InvalidTransition, match="no earlier version"):
        w.registry.rollback(CAROL, "fraud", "production")


def test_rollback_of_quarantined_current_keeps_it_quarantined(w: World) -> None:
    for seed in range(2):
        w.approved(seed=seed)
        w.registry.deploy(CAROL, f"fraud:{seed + 1}", "production")
    w.registry.quarantine(CAROL, "fraud:2", "alert")
    assert w.registry.rollback(CAROL, "fraud", "production").ref == "fraud:1"
    assert w.registry.resolve(VIC, "fraud:2").state is State.QUARANTINED


def test_retired_version_is_never_deployed_again(w: World) -> None:
    admin = w.registry.authenticate(w.admin_token)
    w.approved()
    w.registry.deploy(CAROL, "fraud:1", "production")
    retired = w.registry.retire(admin, "fraud:1", reason="superseded")
    assert (retired.state, retired.aliases) == (State.RETIRED, ())
    with pytest.raises(InvalidTransition, match="retired"):
        w.registry.deploy(CAROL, "fraud:1", "production")
    with pytest.raises(NotFound, match="points at no version"):
        w.registry.resolve(VIC, "fraud@production")
    with pytest.raises(InvalidTransition, match="retired"):
        w.registry.artifact_path(VIC, "fraud:1")


def test_retire_hook_failure_rolls_everything_back(w: World) -> None:
    admin = w.registry.authenticate(w.admin_token)
    w.approved()
    w.registry.deploy(CAROL, "fraud:1", "production")

    def hook(_session: object, _info: object) -> dict[str, str]:
        raise InvalidTransition("archive failed")

    with pytest.raises(InvalidTransition, match="archive failed"):
        w.registry.retire(admin, "fraud:1", hook=hook)  # type: ignore[arg-type]
    current = w.registry.resolve(VIC, "fraud@production")
    assert (current.state, current.aliases) == (State.DEPLOYED, ("production",))


def test_attach_adds_evidence_but_not_to_retired(w: World) -> None:
    v = w.register()
    report = w.root / "tests.json"
    report.write_text(json.dumps({"model_digest": v.digest, "passed": 10}))
    info = w.registry.attach(ALICE, "fraud:1", "test_report", report)
    assert info.latest(AttachmentKind.TEST_REPORT) is not None
    with pytest.raises(BadInput, match="unknown attachment kind"):
        w.registry.attach(ALICE, "fraud:1", "selfie", report)
    with pytest.raises(BadInput, match="ML-BOM"):
        w.registry.attach(ALICE, "fraud:1", "bom", report)
    w.registry.retire(w.registry.authenticate(w.admin_token), "fraud:1")
    with pytest.raises(InvalidTransition, match="retired"):
        w.registry.attach(ALICE, "fraud:1", "test_report", report)


def test_references_and_not_found(w: World) -> None:
    w.register()
    with pytest.raises(NotFound, match="no model named 'ghost'"):
        w.registry.resolve(VIC, "ghost:1")
    with pytest.raises(NotFound, match="has no version 9"):
        w.registry.resolve(VIC, "fraud:9")
    with pytest.raises(NotFound, match="has no alias 'production'"):
        w.registry.resolve(VIC, "fraud@production")
    with pytest.raises(BadInput, match="NAME:VERSION"):
        w.registry.resolve(VIC, "fraud")


def test_gate_is_re_checked_if_version_changes_in_between(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    v = w.register()
    w.registry.scan(ALICE, v.ref, modes=STATIC)
    real = _lifecycle.evaluate_approve

    def racing(gates, evidence):  # type: ignore[no-untyped-def]
        result = real(gates, evidence)
        w.registry.quarantine(CAROL, v.ref, "raced")  # a concurrent change after the gate looked
        return result

    monkeypatch.setattr(_lifecycle, "evaluate_approve", racing)
    with pytest.raises(Conflict, match="changed while it was being checked"):
        w.registry.approve(BOB, v.ref)
    assert w.registry.resolve(VIC, v.ref).state is State.QUARANTINED


def test_dead_database_is_one_line_database_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError) as caught:
        Registry.open("postgresql+psycopg://nobody@127.0.0.1:9/none", home=tmp_path)
    message = str(caught.value)
    assert "unavailable" in message
    assert "\n" not in message


def test_scan_refuses_corrupted_stored_bytes(w: World) -> None:
    v = w.register()
    blob = w.root / "home" / "blobs" / "sha256" / v.files[0].digest[:2] / v.files[0].digest[2:]
    os.chmod(blob, 0o644)
    with blob.open("r+b") as handle:
        handle.write(b"X")
    with pytest.raises(Exception, match="hash to sha256:"):
        w.registry.scan(ALICE, v.ref, modes=STATIC)
    assert w.registry.resolve(VIC, v.ref).state is State.RECEIVED


def test_token_lifetime_is_recorded(w: World) -> None:
    admin = w.registry.authenticate(w.admin_token)
    issued = w.registry.issue_token(admin, "vic", expires_in=timedelta(days=1))
    assert issued.expires_at is not None
    assert timedelta(hours=23) < issued.expires_at - utcnow() <= timedelta(days=1)


def test_signed_by_other_key_is_stored_but_not_trusted(w: World) -> None:
    other = make_keys(w.root / "other", "rogue")
    path, _ = w.model(seed=5)
    signature = sign(path, other)
    v = w.registry.register(ALICE, "fraud", path, signature=signature, dataset_manifests=[w.manifest])
    w.registry.scan(ALICE, v.ref, modes=STATIC)
    with pytest.raises(GateRefused, match="signature_required: signature does not verify"):
        w.registry.approve(BOB, v.ref)


def _sandbox_available() -> bool:
    from mlwarden.scan.dynamic.sandbox import SandboxUnavailable, check_available_cached

    try:
        check_available_cached()
    except SandboxUnavailable:
        return False
    return True


def test_dynamic_scan_of_the_stored_copy(w: World) -> None:
    if not _sandbox_available():
        pytest.skip("the dynamic-analysis sandbox is not available here")
    v = w.register()
    scanned = w.registry.scan(ALICE, v.ref, modes=("static", "dynamic"))
    report = scanned.latest(AttachmentKind.SCAN_REPORT)
    assert report is not None
    assert report.details["modes"] == ["static", "dynamic"]
    assert report.details["digest"] == v.digest
    stored = json.loads(w.registry.attachment_path(VIC, v.ref, report.id).read_text())
    assert stored["modes"] == ["static", "dynamic"]
    assert stored["verdict"] == report.details["verdict"]


def test_reads_audit_only_denials(w: World) -> None:
    size = w.registry.audit().size()
    with pytest.raises(NotFound):
        w.registry.resolve(VIC, "ghost:1")
    assert w.registry.audit().size() == size
    nobody = Principal("nobody", frozenset())
    with pytest.raises(PermissionDenied, match="nobody \\(no role\\) may not read"):
        w.registry.resolve(nobody, "ghost:1")
    assert [(e.actor, e.allowed) for e in list(w.registry.audit().entries())[size:]] == [("nobody", False)]


def test_locked_sqlite_database_fails_cleanly(tmp_path: Path) -> None:
    import sqlite3

    with world(f"sqlite:///{tmp_path / 'r.db'}", tmp_path) as built:
        blobs_before = blob_files(tmp_path / "home")
        impatient = built.reopen(gates=built.registry.gates, lock_timeout=0.5)
        holder = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            path, _ = built.model(seed=9)
            with pytest.raises(DatabaseError, match="locked"):
                impatient.register(ALICE, "fraud", path)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            impatient.close()
        assert blob_files(tmp_path / "home") == blobs_before
        assert staging_leftovers(tmp_path / "home") == []
        assert built.registry.register(ALICE, "fraud", path).version == 1
