"""Token scopes: a token limited to one model or one version acts only there, refusals are audited, and retiring
a version revokes exactly the tokens scoped to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.cli import main as cli
from mlwarden.registry._core import attempt
from mlwarden.registry._users import revoke_tokens_for
from mlwarden.registry.audit import AuditRecord
from mlwarden.registry.errors import AuthError, BadInput, PermissionDenied
from mlwarden.registry.models import TokenRow
from mlwarden.registry.retire import retire_version
from mlwarden.registry.roles import Permission, Principal, Role
from mlwarden.registry.states import State
from tests.registry.helpers import ALICE, STATIC, World, make_keys, world


@pytest.fixture
def w(db_url: str, tmp_path: Path):
    with world(db_url, tmp_path) as built:
        yield built


def _issue(w: World, user: str, scope: str | None) -> str:
    admin = w.registry.authenticate(w.admin_token)
    return w.registry.issue_token(admin, user, name="scoped", scope=scope).token


def _as(w: World, user: str, scope: str | None) -> Principal:
    return w.registry.authenticate(_issue(w, user, scope))


def _last(w: World) -> AuditRecord:
    return list(w.registry.audit().entries())[-1]


# -- the rule itself (no database) -------------------------------------------------------------------------------------

_SUBJECTS = {
    "model:fraud": (True, False),
    "model:fraud:1": (True, True),
    "model:fraud:2": (True, False),
    "model:fraud@production": (True, False),
    "alias:fraud@production": (True, False),
    "model:fraud2:1": (False, False),
    "model:fraud-x@prod": (False, False),
    "model:churn:1": (False, False),
    "models": (False, False),
    "users": (False, False),
    "user:fraud": (False, False),
    "token:1": (False, False),
}


@pytest.mark.parametrize(("subject", "expected"), _SUBJECTS.items())
def test_within_model_and_version_scopes(subject: str, expected: tuple[bool, bool]) -> None:
    model_scoped = Principal("svc", frozenset({Role.VIEWER}), 7, "model:fraud")
    version_scoped = Principal("svc", frozenset({Role.VIEWER}), 7, "model:fraud:1")
    assert (model_scoped.within(subject), version_scoped.within(subject)) == expected
    assert Principal("svc", frozenset({Role.VIEWER}), 7).within(subject)


@pytest.mark.parametrize("stored", ["user:bob", "model:", "model:a:1:2", "fraud", ""])
def test_unknown_stored_scopes_fail_closed(stored: str) -> None:
    principal = Principal("svc", frozenset({Role.ADMIN}), 1, stored)
    assert not any(principal.within(s) for s in [*_SUBJECTS, stored, f"model:{stored}"])


def test_principal_stays_positionally_compatible() -> None:
    old_style = Principal("alice", frozenset({Role.SUBMITTER}), 3)
    assert (old_style.token_id, old_style.scope) == (3, None)
    assert ALICE.scope is None


# -- issuing -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope", ["fraud", "model:", "model:../x", "model:fraud:0", "model:fraud:x", "model:fraud@prod", "user:bob"]
)
def test_bad_scopes_are_refused(w: World, scope: str) -> None:
    before = w.registry.audit().size()
    with pytest.raises(BadInput, match="scope|invalid model name"):
        _issue(w, "alice", scope)
    assert w.registry.list_tokens(w.registry.authenticate(w.admin_token), "alice") == []
    assert w.registry.audit().size() == before + 1  # the refusal is audited


def test_issued_scope_is_stored_listed_and_audited(w: World) -> None:
    admin = w.registry.authenticate(w.admin_token)
    issued = w.registry.issue_token(admin, "bob", name="serving", scope="model:fraud:2")
    assert issued.scope == "model:fraud:2"
    event = _last(w)
    assert (event.action, event.subject, event.allowed) == ("token.issue", "user:bob", True)
    assert event.details["scope"] == "model:fraud:2"
    listed = {t.id: t.scope for t in w.registry.list_tokens(admin, "bob")}
    assert listed == {issued.id: "model:fraud:2"}
    principal = w.registry.authenticate(issued.token)
    assert (principal.token_id, principal.scope, principal.roles) == (
        issued.id,
        "model:fraud:2",
        frozenset({Role.APPROVER}),
    )


# -- enforcement -------------------------------------------------------------------------------------------------------


def test_model_scope_allows_that_model_only(w: World) -> None:
    fraud = w.register("fraud", seed=0)
    other = w.register("churn", seed=1)
    alice = _as(w, "alice", "model:fraud")
    assert w.registry.scan(alice, fraud.ref, modes=STATIC).state is State.SCANNED
    assert w.registry.register(alice, "fraud", w.model(seed=2)[0]).version == 2
    assert [v.version for v in w.registry.versions(alice, "fraud")] == [1, 2]
    with pytest.raises(PermissionDenied, match="scoped to model:fraud and may not scan model:churn:1"):
        w.registry.scan(alice, other.ref, modes=STATIC)
    event = _last(w)
    assert (event.actor, event.action, event.subject, event.allowed) == ("alice", "scan", "model:churn:1", False)
    assert "scoped to model:fraud" in event.reason
    assert event.details["error"] == "PermissionDenied"
    assert w.registry.get(ALICE, other.ref).state is State.RECEIVED  # nothing changed
    with pytest.raises(PermissionDenied, match="scoped"):
        w.registry.register(alice, "churn", w.model(seed=3)[0])
    assert [v.version for v in w.registry.versions(ALICE, "churn")] == [1]


def test_scoped_approver_approves_within_scope_and_roles_still_apply(w: World) -> None:
    first = w.register("fraud", seed=0)
    second = w.register("fraud", seed=1)
    for version in (first, second):
        w.registry.scan(ALICE, version.ref, modes=STATIC)
    bob = _as(w, "bob", f"model:fraud:{second.version}")
    with pytest.raises(PermissionDenied, match=f"may not approve model:fraud:{first.version}"):
        w.registry.approve(bob, first.ref)
    assert w.registry.approve(bob, second.ref).state is State.APPROVED
    assert w.registry.get(ALICE, first.ref).state is State.SCANNED
    with pytest.raises(PermissionDenied, match="needs role"):  # bob is an approver, not a deployer
        w.registry.deploy(bob, second.ref, "staging")


def test_aliases_are_checked_once_resolved(w: World) -> None:
    first = w.approved("fraud", seed=0)
    second = w.approved("fraud", seed=1)
    admin = w.registry.authenticate(w.admin_token)
    w.registry.deploy(admin, second.ref, "production")
    w.registry.deploy(admin, first.ref, "staging")
    on_first = _as(w, "carol", f"model:fraud:{first.version}")
    assert w.registry.get(on_first, first.ref).version == first.version
    with pytest.raises(PermissionDenied, match="scoped"):
        w.registry.get(on_first, second.ref)
    # an alias is refused to a version scope, even one pointing at the version: it can move at any time
    for alias in ("production", "staging"):
        with pytest.raises(PermissionDenied, match="not an alias"):
            w.registry.quarantine(on_first, f"fraud@{alias}", "test")
    on_churn = _as(w, "carol", "model:churn")
    with pytest.raises(PermissionDenied, match="scoped to model:churn"):
        w.registry.quarantine(on_churn, "fraud@production", "test")
    assert w.registry.get(admin, second.ref).state is State.DEPLOYED
    on_fraud = _as(w, "carol", "model:fraud")
    assert w.registry.get(on_fraud, "fraud@production").version == second.version
    assert w.registry.quarantine(on_fraud, "fraud@production", "test").state is State.QUARANTINED
    assert _last(w).subject == f"model:fraud:{second.version}"  # audited under the resolved version


def test_a_resolution_outside_the_scope_is_refused_and_audited(w: World) -> None:
    # no alias of fraud can point into churn today; the re-check guards every path that resolves a reference
    principal = _as(w, "vic", "model:fraud")
    with (
        pytest.raises(PermissionDenied, match="may not read model:churn:1"),
        attempt(w.registry._core, principal, "read", "model:fraud@production", Permission.READ) as act,
    ):
        act.resolved("model:churn:1")
    event = _last(w)
    assert (event.actor, event.subject, event.allowed) == ("vic", "model:churn:1", False)


def test_rollback_needs_the_model_scope(w: World) -> None:
    first = w.approved("fraud", seed=0)
    second = w.approved("fraud", seed=1)
    admin = w.registry.authenticate(w.admin_token)
    w.registry.deploy(admin, first.ref, "production")
    w.registry.deploy(admin, second.ref, "production")
    for scope in (f"model:fraud:{second.version}", "model:churn"):
        with pytest.raises(PermissionDenied, match="scoped"):
            w.registry.rollback(_as(w, "carol", scope), "fraud", "production")
    back = w.registry.rollback(_as(w, "carol", "model:fraud"), "fraud", "production")
    assert back.version == first.version
    assert w.registry.get(admin, second.ref).state is State.ROLLED_BACK


def test_scoped_admin_cannot_manage_users_or_tokens(w: World) -> None:
    fraud = w.register("fraud")
    admin = _as(w, "root", "model:fraud")
    assert w.registry.get(admin, fraud.ref).version == 1
    refusals = {
        "user.create": lambda: w.registry.create_user(admin, "eve", [Role.ADMIN]),
        "user.set_roles": lambda: w.registry.set_roles(admin, "vic", [Role.ADMIN]),
        "user.disable": lambda: w.registry.disable_user(admin, "bob"),
        "user.list": lambda: w.registry.list_users(admin),
        "token.issue": lambda: w.registry.issue_token(admin, "vic"),
        "token.list": lambda: w.registry.list_tokens(admin),
        "token.revoke": lambda: w.registry.revoke_token(admin, 1),
        "read": lambda: w.registry.list_models(admin),
    }
    for action, call in refusals.items():
        with pytest.raises(PermissionDenied, match="scoped to model:fraud"):
            call()
        event = _last(w)
        assert (event.action, event.allowed) == (action, False), action
    assert w.registry.authenticate(w.admin_token).roles == frozenset({Role.ADMIN})  # the bootstrap token still works
    assert {u.username for u in w.registry.list_users(w.registry.authenticate(w.admin_token))} == {
        "root",
        "alice",
        "bob",
        "carol",
        "vic",
    }


def test_version_scope_cannot_list_its_model(w: World) -> None:
    version = w.register("fraud")
    viewer = _as(w, "vic", f"model:fraud:{version.version}")
    with pytest.raises(PermissionDenied, match="scoped"):
        w.registry.versions(viewer, "fraud")
    assert w.registry.artifact_path(viewer, version.ref).is_file()


def test_unscoped_principals_are_unaffected(w: World) -> None:
    version = w.register("fraud")
    alice = _as(w, "alice", None)
    assert alice.scope is None
    assert w.registry.scan(alice, version.ref, modes=STATIC).state is State.SCANNED
    assert [m.name for m in w.registry.list_models(alice)] == ["fraud"]


# -- revocation --------------------------------------------------------------------------------------------------------


def test_revoke_tokens_for_revokes_exactly_the_versions_live_tokens(w: World) -> None:
    admin = w.registry.authenticate(w.admin_token)
    scopes = ["model:fraud:1", "model:fraud:1", "model:fraud:1", "model:fraud:12", "model:fraud", "model:churn:1", None]
    issued = [w.registry.issue_token(admin, "bob", scope=s) for s in scopes]
    w.registry.revoke_token(admin, issued[2].id)
    with w.registry.database.reading() as session:
        already = session.get(TokenRow, issued[2].id).revoked_at  # type: ignore[union-attr]
    with w.registry.database.transaction() as session:
        revoked = revoke_tokens_for(session, "fraud", 1)
    assert revoked == [issued[0].id, issued[1].id]
    for token in issued[:3]:
        with pytest.raises(AuthError, match="revoked"):
            w.registry.authenticate(token.token)
    assert [w.registry.authenticate(t.token).scope for t in issued[3:]] == scopes[3:]
    with w.registry.database.reading() as session:
        assert session.get(TokenRow, issued[2].id).revoked_at == already  # type: ignore[union-attr]
    with w.registry.database.transaction() as session:
        assert revoke_tokens_for(session, "fraud", 1) == []


def test_revoke_tokens_for_rolls_back_with_its_transaction(w: World) -> None:
    token = _issue(w, "bob", "model:fraud:1")

    revoked: list[int] = []

    class Abort(Exception):  # noqa: N818
        pass

    def revoke_then_fail() -> None:
        with w.registry.database.transaction() as session:
            revoked.extend(revoke_tokens_for(session, "fraud", 1))
            raise Abort

    with pytest.raises(Abort):
        revoke_then_fail()
    assert len(revoked) == 1
    assert w.registry.authenticate(token).scope == "model:fraud:1"


def test_retirement_revokes_exactly_the_versions_tokens(w: World) -> None:
    first = w.approved("fraud", seed=0)
    second = w.approved("fraud", seed=1)
    on_first = _issue(w, "bob", f"model:fraud:{first.version}")
    on_second = _issue(w, "bob", f"model:fraud:{second.version}")
    on_model = _issue(w, "bob", "model:fraud")
    make_keys(w.root / "registry-keys", "registry")
    result = retire_version(
        w.registry,
        w.registry.authenticate(w.admin_token),
        first.ref,
        mode="delete",
        signing_key=w.root / "registry-keys" / "registry.pem",
        certificate_dir=w.root / "certificates",
    )
    assert len(result.tokens_revoked) == 1
    with pytest.raises(AuthError):
        w.registry.authenticate(on_first)
    assert w.registry.authenticate(on_second).scope == f"model:fraud:{second.version}"
    assert w.registry.authenticate(on_model).roles == frozenset({Role.APPROVER})


# -- CLI ---------------------------------------------------------------------------------------------------------------


def test_cli_issues_lists_and_enforces_scoped_tokens(
    w: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLWARDEN_TOKEN", raising=False)
    w.register("fraud", seed=0)
    w.register("churn", seed=1)
    base = ["--db", w.url, "--home", str(w.root / "home")]

    def run(*argv: str, token: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setenv("MLWARDEN_TOKEN", token)  # not --token: the command line is visible in ps (warned)
        code = cli.main([*argv, *base])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("token", "issue", "vic", "--scope", "model:fraud", "--name", "svc", token=w.admin_token)
    assert code == 0, err
    assert "scoped to model:fraud" in err
    scoped = out.strip()
    code, out, _ = run("token", "list", "vic", token=w.admin_token)
    assert code == 0
    assert "model:fraud" in out
    assert "svc" in out
    code, out, err = run("token", "issue", "vic", "--scope", "fraud", token=w.admin_token)
    assert code == 2
    assert "model:NAME" in err
    assert "Traceback" not in err
    assert run("show", "fraud:1", token=scoped)[0] == 0
    code, _, err = run("show", "churn:1", token=scoped)
    assert code == 2
    assert "scoped to model:fraud" in err
    assert len(err.strip().splitlines()) == 1
