"""Reviewed suppressions in the registry: who may suppress, the audit entry, and the approve gate honouring them."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from mlwarden.core import policy as policy_module
from mlwarden.core.policy import Limits, Policy
from mlwarden.registry import _lifecycle
from mlwarden.registry.db import Database
from mlwarden.registry.errors import BadInput, GateRefused, PermissionDenied
from mlwarden.registry.models import utcnow
from mlwarden.registry.roles import Principal, Role
from mlwarden.registry.states import State
from mlwarden.registry.values import VersionInfo

from .helpers import ADMIN, ALICE, BOB, CAROL, STATIC, Keys, World, sign, world
from .test_registry_cli import Cli, setup  # noqa: F401 - the CLI fixture

#: A benign pickle. The registry scans with a policy whose max_file_size (8 bytes) it exceeds, so the scan gets
#: one MLW-GEN-001 ("analysis incomplete", medium) finding from the engine itself, whatever the pickle rules say.
FLAGGED = pickle.dumps({"w": [1.0, 2.0]})
RULE = "MLW-GEN-001"
TINY = Policy(limits=Limits(max_file_size=8))


@pytest.fixture
def w(database: Database, tmp_path: Path) -> Iterator[World]:
    with world(database.url, tmp_path) as built:
        built.registry._core.policy = TINY
        yield built


def _flagged(w: World, submitter: Principal = ALICE) -> VersionInfo:
    """A signed version whose registry scan fails at medium with one MLW-GEN-001 finding."""
    path = w.root / "flagged" / "model.pkl"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(FLAGGED)
    v = w.registry.register(
        submitter, "fraud", path, signature=sign(path, w.keys), dataset_manifests=[w.manifest], framework="pickle"
    )
    scanned = w.registry.scan(submitter, v.ref, modes=STATIC)
    assert scanned.state is State.SCANNED
    return scanned


def _in(days: int) -> str:
    return (utcnow().date() + timedelta(days=days)).isoformat()


def test_the_gate_refuses_the_flagged_version_without_a_suppression(w: World) -> None:
    v = _flagged(w)
    with pytest.raises(GateRefused, match="fail_on: findings at or above medium: 1 medium"):
        w.registry.approve(BOB, v.ref)


def test_gate_passes_with_a_suppression_and_says_so(w: World) -> None:
    v = _flagged(w)
    s = w.registry.suppress(BOB, v.ref, RULE, reason="Net is our own class, reviewed", expires=_in(30))
    assert (s.rule_id, s.reviewer, s.digest) == (RULE, "bob", v.digest.removeprefix("sha256:"))
    assert w.registry.approve(BOB, v.ref).state is State.APPROVED
    approved = list(w.registry.audit().entries())[-1]
    assert approved.action == "approve"
    check = next(c for c in approved.details["checks"] if c["rule"] == "fail_on")
    assert check["passed"] is True
    assert f"1 {RULE} finding(s) suppressed ({s.source}) by bob" in check["detail"]
    assert "Net is our own class, reviewed" in check["detail"]


def test_gate_fails_after_the_suppression_expires(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    v = _flagged(w)
    w.registry.suppress(BOB, v.ref, RULE, reason="reviewed", expires=_in(2))
    later = utcnow() + timedelta(days=3)  # the scan is still fresh (scan_max_age 30d); the suppression is not
    monkeypatch.setattr(_lifecycle, "utcnow", lambda: later)
    with pytest.raises(GateRefused) as caught:
        w.registry.approve(BOB, v.ref)
    assert [c.rule for c in caught.value.failed] == ["fail_on"]
    assert f"suppression of {RULE} expired on {_in(2)}: not applied" in caught.value.failed[0].detail


def test_a_suppression_of_another_rule_does_not_help(w: World) -> None:
    v = _flagged(w)
    w.registry.suppress(BOB, v.ref, "MLW-PKL-110", reason="not this one", expires=_in(30))
    with pytest.raises(GateRefused, match="fail_on"):
        w.registry.approve(BOB, v.ref)


def test_suppress_writes_an_audit_entry(w: World) -> None:
    v = _flagged(w)
    s = w.registry.suppress(BOB, v.ref, RULE, reason="reviewed in SEC-42", expires=_in(30))
    entry = list(w.registry.audit().entries())[-1]
    assert (entry.actor, entry.action, entry.subject, entry.allowed) == ("bob", "suppress", f"model:{v.ref}", True)
    assert entry.details["rule"] == RULE
    assert entry.details["reason"] == "reviewed in SEC-42"
    assert entry.details["expires"] == _in(30)
    assert f"registry#{entry.details['suppression']}" == s.source
    assert entry.digests == {"artifact": v.digest}
    assert w.registry.suppressions(CAROL, v.ref) == [s]


def test_nobody_suppresses_findings_on_their_own_upload(w: World) -> None:
    v = _flagged(w, submitter=ADMIN)  # an admin holds every permission, and still may not
    with pytest.raises(PermissionDenied, match="separation of duties: root submitted fraud:1 and may not suppress"):
        w.registry.suppress(ADMIN, v.ref, RULE, reason="mine is fine", expires=_in(30))
    refused = list(w.registry.audit().entries())[-1]
    assert (refused.action, refused.allowed) == ("suppress", False)
    assert "separation of duties" in refused.reason
    assert w.registry.suppressions(BOB, v.ref) == []


@pytest.mark.parametrize("who", [ALICE, CAROL])
def test_only_approvers_and_admins_suppress(w: World, who: Principal) -> None:
    v = _flagged(w)
    with pytest.raises(PermissionDenied, match="needs role approver or admin"):
        w.registry.suppress(who, v.ref, RULE, reason="x", expires=_in(30))


def test_an_admin_who_did_not_submit_may_suppress(w: World) -> None:
    v = _flagged(w)
    other_admin = Principal("root", frozenset({Role.ADMIN}))
    assert w.registry.suppress(other_admin, v.ref, RULE, reason="ok", expires=_in(30)).reviewer == "root"


@pytest.mark.parametrize(
    ("rule", "reason", "expires", "words"),
    [
        ("MLW-NOPE-999", "r", 30, "unknown rule MLW-NOPE-999"),
        ("not a rule", "r", 30, "is not a rule ID"),
        (RULE, "  ", 30, "reason must not be empty"),
        (RULE, "r", -1, "expires must be a date in the future"),
        (RULE, "r", 0, "expires must be a date in the future"),
    ],
)
def test_suppress_validates_strictly(w: World, rule: str, reason: str, expires: int, words: str) -> None:
    v = _flagged(w)
    with pytest.raises(BadInput, match=words):
        w.registry.suppress(BOB, v.ref, rule, reason=reason, expires=_in(expires))
    assert list(w.registry.audit().entries())[-1].allowed is False


def test_a_bad_expiry_date_is_bad_input(w: World) -> None:
    v = _flagged(w)
    with pytest.raises(BadInput, match="ISO date"):
        w.registry.suppress(BOB, v.ref, RULE, reason="r", expires="next week")


def test_registry_suppress_through_the_cli(
    setup: tuple[Cli, dict[str, str], Path],  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, tokens, root = setup
    monkeypatch.setattr(policy_module, "load_policy", lambda _path: TINY)  # what the registry scans with
    model = root / "flagged" / "model.pkl"
    model.parent.mkdir()
    model.write_bytes(FLAGGED)
    signature = sign(model, Keys(root / "keys" / "release.pem", root / "keys" / "release.pub"))
    manifest = root / "ds" / "dataset.manifest.json"
    code, _, err = run(
        "register", "fraud", str(model), "--signature", str(signature), "--dataset-manifest", str(manifest),
        token=tokens["alice"],
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert run("registry", "scan", "fraud:1", "--static-only", token=tokens["alice"])[0] == 1  # FAIL
    assert run("approve", "fraud:1", token=tokens["bob"])[0] == 1  # the gate refuses

    code, _, err = run(
        "registry", "suppress", "fraud:1", RULE, "--reason", "x", "--expires", _in(9), token=tokens["alice"]
    )
    assert code == 2
    assert err.count("\n") == 1
    assert "needs role approver or admin" in err
    code, _, err = run(
        "registry", "suppress", "fraud:1", "MLW-NOPE-1", "--reason", "x", "--expires", _in(9), token=tokens["bob"]
    )
    assert (code, err) == (2, "mlwarden: error: unknown rule MLW-NOPE-1 (see `mlwarden rules`)\n")
    code, out, err = run(
        "registry", "suppress", "fraud:1", RULE, "--reason", "own class", "--expires", _in(9), token=tokens["bob"]
    )
    assert (code, err) == (0, "")
    assert out.startswith(f"fraud:1: {RULE} suppressed by bob until {_in(9)} (registry#")
    code, out, _ = run("approve", "fraud:1", token=tokens["bob"])
    assert (code, out) == (0, "fraud:1: approved\n")
