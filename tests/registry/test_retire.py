"""Retirement: aliases detached, bytes archived (sealed) or deleted, absence verified, a signed certificate, all
audited — and a failure half-way leaves the version exactly as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mlwarden.integrity.archive import generate_recipient, load_identity, read_archive
from mlwarden.integrity.errors import VerificationError
from mlwarden.registry.errors import InvalidTransition, PermissionDenied, StorageError
from mlwarden.registry.retire import read_certificate, retire_version
from mlwarden.registry.roles import Principal
from mlwarden.registry.states import State
from tests.registry.helpers import ADMIN, ALICE, CAROL, World, make_keys, world


@pytest.fixture
def w(db_url: str, tmp_path: Path):
    with world(db_url, tmp_path) as built:
        yield built


def _admin(w: World) -> Principal:
    return w.registry.authenticate(w.admin_token)


def _deployed(w: World, seed: int = 0):
    version = w.approved(seed=seed)
    return w.registry.deploy(CAROL, version.ref, "production")


def _retire(w: World, ref: str, mode: str = "delete", **extra):
    if not (w.root / "registry-keys").exists():
        make_keys(w.root / "registry-keys", "registry")
    return retire_version(
        w.registry,
        _admin(w),
        ref,
        mode=mode,
        signing_key=w.root / "registry-keys" / "registry.pem",
        certificate_dir=w.root / "certificates",
        reason="superseded",
        **extra,
    )


def test_delete_removes_exclusive_bytes_and_certifies_them(w: World) -> None:
    version = _deployed(w)
    files = [w.registry.blobs.path(f.digest) for f in version.files]
    view = w.registry.artifact_path(ADMIN, version.ref)
    assert all(p.exists() for p in files)
    assert view.exists()

    result = _retire(w, version.ref)

    assert result.version.state is State.RETIRED
    assert result.version.aliases == ()
    assert not any(p.exists() for p in files)
    assert not view.exists()
    names = {i.name: i for i in result.items}
    model_item = names[f"model/{version.artifact_name}"]
    assert model_item.sha256 == version.files[0].digest
    assert model_item.disposition == "deleted"
    assert model_item.absent
    # every attachment (signature, dataset manifest, scan report, BOM) is listed with its digest
    assert {a.digest for a in version.attachments} <= {i.sha256 for i in result.items}
    statement = read_certificate(result.certificate, w.root / "registry-keys" / "registry.pub")
    predicate = statement["predicate"]
    assert predicate["model"] == "fraud"
    assert predicate["version"] == version.version
    assert predicate["mode"] == "delete"
    assert predicate["aliases_detached"] == ["production"]
    assert predicate["previous_state"] == "deployed"
    assert {s["digest"]["sha256"] for s in statement["subject"]} == {i.sha256 for i in result.items}
    assert result.certificate_sha256 == hashlib.sha256(result.certificate.read_bytes()).hexdigest()
    # audited with every item
    last = list(w.registry.audit().entries())[-1]
    assert last.action == "retire"
    assert last.allowed
    assert last.to_state == "retired"
    assert {i["sha256"] for i in last.details["items"]} == {i.sha256 for i in result.items}


def test_retired_version_can_never_be_deployed_or_served(w: World) -> None:
    version = _deployed(w)
    _retire(w, version.ref)
    with pytest.raises(InvalidTransition):
        w.registry.deploy(CAROL, version.ref, "production")
    with pytest.raises(InvalidTransition):
        w.registry.artifact_path(ADMIN, version.ref)
    with pytest.raises(InvalidTransition):
        _retire(w, version.ref)


def test_archive_mode_seals_every_item_to_the_custodian(w: World) -> None:
    version = w.approved()
    custodian = w.root / "custodian.key", w.root / "custodian.pub"
    generate_recipient(*custodian)
    result = _retire(w, version.ref, "archive", archive_dir=w.root / "archive", recipient=custodian[1])
    assert result.archive is not None
    assert result.archive.exists()
    assert result.archive_sha256 == hashlib.sha256(result.archive.read_bytes()).hexdigest()
    opened = dict(read_archive(result.archive, load_identity(custodian[0])))
    assert {name: hashlib.sha256(data).hexdigest() for name, data in opened.items()} == {
        i.name: i.sha256 for i in result.items
    }
    assert all(i.disposition == "archived and deleted" and i.absent for i in result.items)
    predicate = read_certificate(result.certificate, w.root / "registry-keys" / "registry.pub")["predicate"]
    assert predicate["archive"]["sha256"] == result.archive_sha256


def test_bytes_shared_with_another_version_are_retained(w: World) -> None:
    first = w.approved(seed=0)
    second = w.register(seed=0)  # same model bytes, a second version
    assert second.files[0].digest == first.files[0].digest
    result = _retire(w, first.ref)
    shared = next(i for i in result.items if i.sha256 == first.files[0].digest)
    assert shared.disposition == f"retained: shared with {second.ref}"
    assert not shared.absent
    assert w.registry.blobs.exists(first.files[0].digest)
    assert w.registry.artifact_path(ADMIN, second.ref).exists()  # the other version is untouched


def test_only_admins_retire_and_refusals_are_audited(w: World) -> None:
    version = w.approved()
    make_keys(w.root / "registry-keys", "registry")
    with pytest.raises(PermissionDenied):
        retire_version(
            w.registry,
            ALICE,
            version.ref,
            mode="delete",
            signing_key=w.root / "registry-keys" / "registry.pem",
            certificate_dir=w.root / "certificates",
        )
    last = list(w.registry.audit().entries())[-1]
    assert last.action == "retire"
    assert not last.allowed
    assert w.registry.get(ADMIN, version.ref).state is State.APPROVED
    assert not (w.root / "certificates").exists() or not any((w.root / "certificates").iterdir())


def test_failure_before_commit_restores_everything(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    version = _deployed(w)
    files = [w.registry.blobs.path(f.digest) for f in version.files]
    make_keys(w.root / "registry-keys", "registry")
    import mlwarden.registry.retire as retire_module

    def broken(*args: object, **kwargs: object) -> None:
        raise StorageError("disk full while writing the certificate")

    monkeypatch.setattr(retire_module._Work, "_certify", broken)
    with pytest.raises(StorageError, match="disk full"):
        _retire(w, version.ref)
    after = w.registry.get(ADMIN, version.ref)
    assert after.state is State.DEPLOYED
    assert after.aliases == ("production",)
    assert all(p.exists() for p in files)
    for f in version.files:
        w.registry.blobs.verify(f.digest)
    assert not list((w.root / "home" / "trash").rglob("*")) if (w.root / "home" / "trash").exists() else True


def test_bad_options_fail_before_anything_changes(w: World) -> None:
    version = w.approved()
    make_keys(w.root / "registry-keys", "registry")
    with pytest.raises(Exception, match="archive folder and the custodian"):
        _retire(w, version.ref, "archive")
    with pytest.raises(Exception, match="'archive' or 'delete'"):
        _retire(w, version.ref, "shred")
    assert w.registry.get(ADMIN, version.ref).state is State.APPROVED


def test_certificate_with_wrong_key_or_tampering_fails(w: World) -> None:
    version = w.approved()
    result = _retire(w, version.ref)
    other = make_keys(w.root / "other")
    with pytest.raises(VerificationError):
        read_certificate(result.certificate, other.public)
    data = bytearray(result.certificate.read_bytes())
    data[len(data) // 2] ^= 0x01
    result.certificate.write_bytes(bytes(data))
    with pytest.raises(VerificationError):
        read_certificate(result.certificate, w.root / "registry-keys" / "registry.pub")
