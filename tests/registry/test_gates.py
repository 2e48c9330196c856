"""Gates: strict config loading, and each rule failing alone (named in the refusal), through the service."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from mlwarden.core.errors import PolicyError
from mlwarden.registry import _lifecycle
from mlwarden.registry.db import Database
from mlwarden.registry.errors import BadInput, GateRefused
from mlwarden.registry.gates import Evidence, Gates, evaluate_approve, load_gates
from mlwarden.registry.models import utcnow
from mlwarden.registry.states import State
from mlwarden.registry.values import AttachmentInfo, AttachmentKind, VersionInfo

from .helpers import ALICE, BOB, CAROL, STATIC, VIC, World, make_keys, sign, world

EVIL_PICKLE = b"cos\nsystem\n(S'echo never run'\ntR."  # GLOBAL os.system: never loaded, only scanned


# -- loading ---------------------------------------------------------------------------------------------------------


def test_load_gates_resolves_trusted_keys_relative_to_file(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    path = tmp_path / "gates.toml"
    path.write_text(
        '[approve]\ntrusted_keys = ["keys/release.pub"]\nfail_on = "high"\n[deploy]\nallowed_aliases = ["prod"]\n'
    )
    gates = load_gates(path)
    assert gates.trusted_key_paths("approve") == (keys.public.resolve(),)
    assert gates.trusted_key_paths("deploy") == (keys.public.resolve(),)  # deploy inherits approve's keys
    assert gates.approve.fail_on == "high"
    assert gates.deploy.allowed_aliases == ("prod",)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[approve]\nscan_requird = true\n", "scan_requird"),
        ('[approve]\nfail_on = "severe"\n', "unknown severity"),
        ('[approve]\nscan_max_age = "soon"\n', "invalid duration"),
        ('[approve]\nscan_modes = ["static", "psychic"]\n', "scan_modes"),
        ('[approve]\ntrusted_keys = ["missing.pub"]\n', "does not exist"),
        ('[deploy]\nverify_digest = "maybe"\n', "verify_digest"),
        ("[approve\n", "not valid TOML"),
        ('base_dir = "/"\n', "base_dir"),
    ],
)
def test_load_gates_is_strict(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "gates.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=words):
        load_gates(path)


def test_missing_gates_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read gates file"):
        load_gates(tmp_path / "nope.toml")


def _version(*attachments: AttachmentInfo) -> VersionInfo:
    return VersionInfo("m", 1, State.SCANNED, "sha256:" + "a" * 64, "alice", utcnow(), (), (), attachments)


def _attachment(kind: AttachmentKind, **details: object) -> AttachmentInfo:
    return AttachmentInfo(1, kind, "x", "b" * 64, 1, "alice", utcnow(), dict(details))


def test_defaults_fail_closed(tmp_path: Path) -> None:
    result = evaluate_approve(Gates(), Evidence(_version(), tmp_path, {}, utcnow()))
    assert {c.rule for c in result.failed} == {"scan_required", "signature_required", "dataset_manifest_required"}


def test_attached_scan_reports_do_not_count(tmp_path: Path) -> None:
    forged = _attachment(AttachmentKind.SCAN_REPORT, source="attached", digest="sha256:" + "a" * 64)
    result = evaluate_approve(Gates(), Evidence(_version(forged), tmp_path, {}, utcnow()))
    scan = next(c for c in result.checks if c.rule == "scan_required")
    assert not scan.passed
    assert "attached reports do not count" in scan.detail


def test_scan_of_other_bytes_does_not_count(tmp_path: Path) -> None:
    stale = _attachment(AttachmentKind.SCAN_REPORT, source="registry", digest="sha256:" + "c" * 64, modes=["static"])
    result = evaluate_approve(Gates(), Evidence(_version(stale), tmp_path, {}, utcnow()))
    assert "scan_required" in {c.rule for c in result.failed}


# -- through the service ---------------------------------------------------------------------------------------------


@pytest.fixture
def w(database: Database, tmp_path: Path) -> Iterator[World]:
    with world(database.url, tmp_path) as built:
        yield built


def _refusal(call) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    with pytest.raises(GateRefused) as caught:
        call()
    for check in caught.value.failed:
        assert check.rule in str(caught.value)
    return tuple(c.rule for c in caught.value.failed)


def _with_gates(w: World, **changes: object) -> None:
    from .helpers import gates_for

    w.registry._core.gates = gates_for(w.keys, **changes)


def test_approve_refuses_when_scan_found_problems(w: World) -> None:
    evil = w.root / "evil" / "model.pkl"
    evil.parent.mkdir()
    evil.write_bytes(EVIL_PICKLE)
    v = w.registry.register(ALICE, "fraud", evil, signature=sign(evil, w.keys), dataset_manifests=[w.manifest])
    scanned = w.registry.scan(ALICE, v.ref, modes=STATIC)
    report = scanned.latest(AttachmentKind.SCAN_REPORT)
    assert report is not None
    assert report.details["verdict"] == "FAIL"
    assert _refusal(lambda: w.registry.approve(BOB, v.ref)) == ("fail_on",)
    refused = list(w.registry.audit().entries())[-1]
    assert refused.allowed is False
    assert refused.details["failed"][0]["rule"] == "fail_on"


def test_approve_requires_the_configured_scan_modes(w: World) -> None:
    v = w.register()
    w.registry.scan(ALICE, v.ref, modes=STATIC)
    _with_gates(w, scan_modes=("static", "dynamic"))
    assert _refusal(lambda: w.registry.approve(BOB, v.ref)) == ("scan_modes",)


def test_approve_refuses_a_stale_scan(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    v = w.register()
    w.registry.scan(ALICE, v.ref, modes=STATIC)
    later = utcnow() + timedelta(days=31)
    monkeypatch.setattr(_lifecycle, "utcnow", lambda: later)
    assert _refusal(lambda: w.registry.approve(BOB, v.ref)) == ("scan_max_age",)


def test_approve_requires_a_signature(w: World) -> None:
    v = w.register(signature=None)
    w.registry.scan(ALICE, v.ref, modes=STATIC)
    assert _refusal(lambda: w.registry.approve(BOB, v.ref)) == ("signature_required",)


def test_a_signature_over_other_bytes_is_refused_at_registration(w: World) -> None:
    path, _ = w.model(seed=1)
    other, _ = w.model(seed=2)
    with pytest.raises(BadInput, match="signs other bytes than this version's"):
        w.registry.register(ALICE, "fraud", path, signature=sign(other, w.keys), dataset_manifests=[w.manifest])
    assert w.registry.list_models(VIC) == []


def test_approve_requires_a_dataset_manifest(w: World) -> None:
    v = w.register(dataset_manifests=[])
    w.registry.scan(ALICE, v.ref, modes=STATIC)
    assert _refusal(lambda: w.registry.approve(BOB, v.ref)) == ("dataset_manifest_required",)


def test_approve_can_require_a_training_record(w: World) -> None:
    v = w.register()
    w.registry.scan(ALICE, v.ref, modes=STATIC)
    _with_gates(w, training_record_required=True)
    assert _refusal(lambda: w.registry.approve(BOB, v.ref)) == ("training_record_required",)


def test_refusal_lists_every_failed_rule(w: World) -> None:
    v = w.register(signature=None, dataset_manifests=[])
    w.registry.scan(ALICE, v.ref, modes=STATIC)
    _with_gates(w, training_record_required=True)
    rules = _refusal(lambda: w.registry.approve(BOB, v.ref))
    assert rules == ("signature_required", "dataset_manifest_required", "training_record_required")
    assert w.registry.resolve(VIC, v.ref).state is State.SCANNED


def test_approve_passes_when_rules_are_switched_off(w: World) -> None:
    v = w.register(signature=None, dataset_manifests=[])
    w.registry.scan(ALICE, v.ref, modes=STATIC)
    _with_gates(w, signature_required=False, dataset_manifest_required=False)
    assert w.registry.approve(BOB, v.ref).state is State.APPROVED


def test_deploy_refuses_corrupted_stored_bytes(w: World) -> None:
    v = w.approved()
    digest = v.files[0].digest
    blob = w.root / "home" / "blobs" / "sha256" / digest[:2] / digest[2:]
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(GateRefused, match="verify_digest: stored bytes hash to sha256:") as caught:
        w.registry.deploy(CAROL, v.ref, "production")
    assert "verify_digest" in {c.rule for c in caught.value.failed}
    assert w.registry.resolve(VIC, v.ref).state is State.APPROVED


def test_deploy_re_verifies_the_signature(w: World) -> None:
    v = w.approved()
    rogue = make_keys(w.root / "rogue", "rogue")
    _with_gates(w, deploy_trusted_keys=(str(rogue.public),))  # the approved signature is not by a deploy key
    assert _refusal(lambda: w.registry.deploy(CAROL, v.ref, "production")) == ("signature_required",)


def test_deploy_only_to_allowed_aliases(w: World) -> None:
    v = w.approved()
    _with_gates(w, deploy_allowed_aliases=("staging", "production"))
    assert _refusal(lambda: w.registry.deploy(CAROL, v.ref, "canary")) == ("allowed_aliases",)
    assert w.registry.deploy(CAROL, v.ref, "staging").aliases == ("staging",)
