"""Users and tokens: random tokens stored hashed, constant-time lookup, expiry, revocation, role management."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from mlwarden.registry import auth
from mlwarden.registry.db import Database
from mlwarden.registry.errors import AuthError, BadInput, Conflict, NotFound, PermissionDenied
from mlwarden.registry.models import TokenRow, utcnow
from mlwarden.registry.roles import Role

from .helpers import ALICE, VIC, World, world


@pytest.fixture
def w(database: Database, tmp_path: Path) -> Iterator[World]:
    with world(database.url, tmp_path) as built:
        yield built


def admin(w: World):  # type: ignore[no-untyped-def]
    return w.registry.authenticate(w.admin_token)


def test_token_shape_and_only_a_hash_is_stored(w: World) -> None:
    issued = w.registry.issue_token(admin(w), "alice", name="ci")
    assert issued.token.startswith("mlw_")
    assert len(issued.token) == 4 + 43
    with w.registry.database.reading() as session:
        row = session.get(TokenRow, issued.id)
        assert row is not None
        stored = [str(getattr(row, c.key)) for c in TokenRow.__table__.columns]
        assert row.secret_hash == auth.hash_token(issued.token)
        assert row.lookup == issued.token[4:12]
    assert not any(issued.token in value for value in stored)
    principal = w.registry.authenticate(issued.token)
    assert (principal.username, principal.roles, principal.token_id) == ("alice", ALICE.roles, issued.id)


def test_tokens_are_unique(w: World) -> None:
    tokens = {w.registry.issue_token(admin(w), "vic").token for _ in range(5)}
    assert len(tokens) == 5


@pytest.mark.parametrize(
    "presented",
    ["", "mlw_", "not-a-token", "mlw_" + "A" * 43, "mlw_" + "A" * 42 + "!", "Bearer mlw_x", "mlw_" + "A" * 44],
)
def test_wrong_tokens_are_refused_and_audited(w: World, presented: str) -> None:
    size = w.registry.audit().size()
    with pytest.raises(AuthError, match="not recognised"):
        w.registry.authenticate(presented)
    entries = list(w.registry.audit().entries())[size:]
    assert [(e.actor, e.action, e.allowed) for e in entries] == [("anonymous", "auth", False)]


def test_a_token_with_a_live_prefix_but_wrong_secret_is_refused(w: World) -> None:
    issued = w.registry.issue_token(admin(w), "vic")
    forged = issued.token[:12] + ("B" if issued.token[12] != "B" else "C") + issued.token[13:]
    with pytest.raises(AuthError, match="not recognised"):
        w.registry.authenticate(forged)


def test_lookup_compares_in_constant_time_whether_or_not_the_prefix_exists(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = w.registry.issue_token(admin(w), "vic")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    unknown = "mlw_" + "Z" * 43
    with pytest.raises(AuthError):
        w.registry.authenticate(unknown)
    assert len(calls) == 1
    assert len(calls[0][0]) == len(calls[0][1]) == 64
    calls.clear()
    w.registry.authenticate(issued.token)
    assert len(calls) == 1
    assert calls[0][0] == calls[0][1]


def test_expired_token(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    issued = w.registry.issue_token(admin(w), "vic", expires_in=timedelta(hours=1))
    assert w.registry.authenticate(issued.token).username == "vic"
    later = utcnow() + timedelta(hours=2)
    monkeypatch.setattr("mlwarden.registry._users.utcnow", lambda: later)
    with pytest.raises(AuthError, match=f"token {issued.id} expired"):
        w.registry.authenticate(issued.token)


def test_revoked_token_and_own_revocation(w: World) -> None:
    issued = w.registry.issue_token(admin(w), "vic")
    other = w.registry.issue_token(admin(w), "alice")
    with pytest.raises(PermissionDenied, match="needs role admin"):
        w.registry.revoke_token(VIC, other.id)  # not vic's token
    revoked = w.registry.revoke_token(VIC, issued.id)  # vic's own
    assert revoked.revoked_at is not None
    with pytest.raises(AuthError, match=f"token {issued.id} was revoked"):
        w.registry.authenticate(issued.token)
    assert w.registry.authenticate(other.token).username == "alice"
    with pytest.raises(NotFound):
        w.registry.revoke_token(admin(w), 9999)


def test_last_used_is_recorded(w: World) -> None:
    issued = w.registry.issue_token(admin(w), "vic")
    before = utcnow()
    w.registry.authenticate(issued.token)
    (listed,) = w.registry.list_tokens(admin(w), "vic")
    assert listed.last_used_at is not None
    assert listed.last_used_at >= before - timedelta(seconds=1)
    assert listed.prefix == issued.token[:12]


def test_users_see_only_their_own_tokens(w: World) -> None:
    w.registry.issue_token(admin(w), "vic")
    w.registry.issue_token(admin(w), "alice")
    assert {t.username for t in w.registry.list_tokens(VIC)} == {"vic"}
    with pytest.raises(PermissionDenied):
        w.registry.list_tokens(VIC, "alice")
    assert {t.username for t in w.registry.list_tokens(admin(w))} >= {"vic", "alice", "root"}


def test_bootstrap_only_once(w: World) -> None:
    with pytest.raises(AuthError, match="already has users"):
        w.registry.bootstrap("mallory")


def test_disabled_user_cannot_authenticate(w: World) -> None:
    issued = w.registry.issue_token(admin(w), "vic")
    w.registry.disable_user(admin(w), "vic")
    with pytest.raises(AuthError, match="user vic is disabled"):
        w.registry.authenticate(issued.token)
    with pytest.raises(Conflict, match="disabled"):
        w.registry.issue_token(admin(w), "vic")


def test_user_management(w: World) -> None:
    with pytest.raises(Conflict, match="already exists"):
        w.registry.create_user(admin(w), "alice", ["viewer"])
    with pytest.raises(BadInput, match="unknown role 'wizard'"):
        w.registry.create_user(admin(w), "dave", ["wizard"])
    with pytest.raises(BadInput, match="at least one role"):
        w.registry.create_user(admin(w), "dave", [])
    with pytest.raises(BadInput, match="invalid user name"):
        w.registry.create_user(admin(w), "../dave", ["viewer"])
    dave = w.registry.set_roles(admin(w), "alice", ["approver", "deployer"])
    assert dave.roles == {Role.APPROVER, Role.DEPLOYER}
    assert [u.username for u in w.registry.list_users(admin(w))] == ["alice", "bob", "carol", "root", "vic"]


def test_the_last_admin_is_kept(w: World) -> None:
    with pytest.raises(Conflict, match="last enabled admin"):
        w.registry.disable_user(admin(w), "root")
    with pytest.raises(Conflict, match="last enabled admin"):
        w.registry.set_roles(admin(w), "root", ["viewer"])
    w.registry.set_roles(admin(w), "bob", ["approver", "admin"])
    assert w.registry.set_roles(admin(w), "root", ["viewer"]).roles == {Role.VIEWER}


def test_no_token_secret_in_audit_log(w: World) -> None:
    issued = w.registry.issue_token(admin(w), "vic")
    with w.registry.database.reading() as session:
        from mlwarden.registry.audit.tables import AuditEntryRow

        texts = [" ".join(str(c) for c in row) for row in session.execute(select(AuditEntryRow)).all()]
    assert not any(issued.token[12:] in text for text in texts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("2w", timedelta(weeks=2)),
        ("never", None),
    ],
)
def test_parse_duration(text: str, expected: timedelta | None) -> None:
    assert auth.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0d", "soon", "5", "3y", "-1d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(BadInput, match="invalid duration"):
        auth.parse_duration(text)


def test_recheck_tokens_answers_by_id_for_live_tokens_only_and_records_use(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = w.registry.issue_token(admin(w), "vic", scope="model:fraud")
    revoked = w.registry.issue_token(admin(w), "vic")
    expiring = w.registry.issue_token(admin(w), "vic", expires_in=timedelta(hours=1))
    of_disabled = w.registry.issue_token(admin(w), "alice")
    w.registry.revoke_token(admin(w), revoked.id)
    w.registry.disable_user(admin(w), "alice")
    w.registry.set_roles(admin(w), "vic", ["submitter"])
    later = utcnow() + timedelta(hours=2)
    monkeypatch.setattr("mlwarden.registry._users.utcnow", lambda: later)
    ids = [live.id, revoked.id, expiring.id, of_disabled.id, 9999]
    answer = w.registry.recheck_tokens(ids, used=[live.id, revoked.id])
    assert set(answer) == {live.id}  # revoked, expired, disabled user and unknown are all left out
    assert (answer[live.id].username, answer[live.id].roles) == ("vic", frozenset({Role.SUBMITTER}))
    assert (answer[live.id].token_id, answer[live.id].scope) == (live.id, "model:fraud")
    used = {t.id: t.last_used_at for t in w.registry.list_tokens(admin(w), "vic")}
    assert used[live.id] == later  # its use is recorded
    assert used[revoked.id] is None  # a dead token's use is not
    assert w.registry.recheck_tokens([]) == {}


def test_recheck_tokens_reads_many_ids_in_batches(w: World) -> None:
    issued = [w.registry.issue_token(admin(w), "vic").id for _ in range(3)]
    ids = [*issued, *range(100_000, 101_200)]  # more ids than one query binds
    assert set(w.registry.recheck_tokens(ids)) == set(issued)
