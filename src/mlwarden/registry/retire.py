"""Retirement: take a version out of service for good, remove (or archive) its bytes, and prove it.

``retire_version`` runs inside the registry's ``retire`` transaction (its hook), in this order:

1. detach the version's aliases (the service does it) and revoke every token scoped to the version;
2. list its items — every artifact file and attachment, each with its SHA-256 — and find which blobs another
   version still references (those are *retained*, never deleted under someone else);
3. ``archive`` mode: write every item into an encrypted tarball sealed to a custodian's X25519 key
   (:mod:`mlwarden.integrity.archive`), and check that each archived member hashes to the recorded digest;
4. move the exclusive blobs and the served view into a trash folder and check that nothing is left at their paths;
5. write a signed retirement certificate (an in-toto statement in a Sigstore bundle, like every mlwarden
   attestation) listing each item with its digest and what happened to it.

If anything fails before the transaction commits, the trash is moved back and the archive and certificate are
removed: the version stays as it was. The trash is emptied only after the commit, so the database never says
"retired" about bytes that are still served, nor "live" about bytes that are gone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mlwarden.registry.errors import BadInput, StorageError
from mlwarden.registry.models import AttachmentRow, VersionFileRow, VersionRow, utcnow

if TYPE_CHECKING:
    from mlwarden.registry.roles import Principal
    from mlwarden.registry.service import Registry
    from mlwarden.registry.values import VersionInfo

#: The in-toto predicate type of retirement certificates.
PREDICATE_TYPE = "https://mlwarden.dev/retirement/v1"


class Mode(StrEnum):
    """What happens to the bytes: sealed into an archive, then removed; or removed."""

    ARCHIVE = "archive"
    DELETE = "delete"


@dataclass(frozen=True)
class RetiredItem:
    """One artifact file or attachment of the retired version and what happened to it."""

    name: str
    sha256: str
    size: int
    disposition: str  # "deleted", "archived and deleted", or "retained: shared with <refs>"
    absent: bool  # verified gone from the blob store (False only for retained items)


@dataclass(frozen=True)
class Retirement:
    """The outcome: the retired version, its items, the archive (if any) and the signed certificate."""

    version: VersionInfo
    mode: Mode
    items: tuple[RetiredItem, ...]
    certificate: Path
    certificate_sha256: str
    archive: Path | None = None
    archive_sha256: str | None = None
    tokens_revoked: tuple[int, ...] = field(default=())


def registry_key(home: Path) -> Path:
    """The registry's certificate-signing key, created (0600) with its public half on first use."""
    from mlwarden.integrity.keys import generate_key_pair

    private = home / "keys" / "registry.key"
    if not private.exists():
        private.parent.mkdir(parents=True, exist_ok=True)
        generate_key_pair(private, private.with_suffix(".pub"))
    return private


def retire_version(
    registry: Registry,
    actor: Principal,
    ref: str,
    *,
    mode: Mode | str,
    signing_key: Path,
    certificate_dir: Path,
    archive_dir: Path | None = None,
    recipient: Path | None = None,
    reason: str = "",
    password: bytes | None = None,
) -> Retirement:
    """Retire ``ref`` (admin): see the module docstring for the steps and guarantees.

    Args:
        registry: the registry.
        actor: who retires it (needs the retire permission; audited either way).
        ref: ``NAME:VERSION`` or ``NAME@ALIAS``.
        mode: ``archive`` (needs ``archive_dir`` and ``recipient``) or ``delete``.
        signing_key: PEM ECDSA private key that signs the certificate (the registry's key).
        certificate_dir: where the certificate is written (``<model>-<version>.retirement.json``).
        archive_dir: where the encrypted archive is written (archive mode).
        recipient: the custodian's X25519 public key the archive is sealed to (archive mode).
        reason: why; recorded in the certificate and the audit log.
        password: the signing key's password, if it has one.

    Raises:
        BadInput: a wrong mode or a missing archive option.
        MlwardenError: unreadable keys, an unwritable folder; the version is then unchanged.
    """
    from mlwarden.integrity.archive import load_recipient
    from mlwarden.integrity.keys import load_private_key

    try:
        chosen = Mode(mode)
    except ValueError:
        raise BadInput(f"retirement mode must be 'archive' or 'delete', not {mode!r}") from None
    key = load_private_key(signing_key, password)  # fail before touching anything
    custodian = None
    if chosen is Mode.ARCHIVE:
        if archive_dir is None or recipient is None:
            raise BadInput("--mode archive needs an archive folder and the custodian's public key (--recipient)")
        custodian = load_recipient(recipient)
    work = _Work(registry, chosen, reason, key, custodian, certificate_dir, archive_dir)
    try:
        info = registry.retire(actor, ref, reason=reason, hook=work.hook)
    except BaseException:
        work.undo()
        raise
    work.finish()
    if work.certificate is None or work.certificate_sha256 is None:  # pragma: no cover - the hook always certifies
        raise StorageError(f"retirement of {ref} produced no certificate")
    return Retirement(
        info,
        chosen,
        tuple(work.items),
        work.certificate,
        work.certificate_sha256,
        work.archive,
        work.archive_sha256,
        tuple(work.tokens),
    )


class _Work:
    """The hook's state, so the caller can undo or finish after the transaction's outcome is known."""

    def __init__(
        self,
        registry: Registry,
        mode: Mode,
        reason: str,
        key: Any,
        custodian: Any,
        certificate_dir: Path,
        archive_dir: Path | None,
    ) -> None:
        self.registry, self.mode, self.reason, self.key, self.custodian = registry, mode, reason, key, custodian
        self.certificate_dir, self.archive_dir = certificate_dir, archive_dir
        self.trash = registry.blobs.root.parent / "trash" / uuid.uuid4().hex
        self.moved: list[tuple[Path, Path]] = []
        self.items: list[RetiredItem] = []
        self.tokens: list[int] = []
        self.archive: Path | None = None
        self.archive_sha256: str | None = None
        self.certificate: Path | None = None
        self.certificate_sha256: str | None = None

    def hook(self, session: Session, info: VersionInfo) -> Mapping[str, Any]:
        """Runs inside the retire transaction, after the role and state checks passed."""
        self.tokens = _revoke_tokens(session, info)
        version_id = _version_id(session, info)
        entries = _entries(info)
        shared = {digest: _sharers(session, digest, version_id) for _, digest, _ in entries}
        if self.mode is Mode.ARCHIVE:
            self._archive(info, entries)
        for name, digest, size in entries:
            others = shared[digest]
            if others:
                self.items.append(RetiredItem(name, digest, size, f"retained: shared with {', '.join(others)}", False))
                continue
            self._discard(self.registry.blobs.path(digest))
            disposition = "archived and deleted" if self.mode is Mode.ARCHIVE else "deleted"
            self.items.append(RetiredItem(name, digest, size, disposition, not self.registry.blobs.exists(digest)))
        self._discard(self.registry._core.views / info.model / str(info.version))
        missing = [i.name for i in self.items if not i.disposition.startswith("retained") and not i.absent]
        if missing:
            raise StorageError(f"retirement of {info.ref} could not remove: {', '.join(missing)}")
        self._certify(info)
        return {
            "mode": self.mode.value,
            "items": [asdict(i) for i in self.items],
            "tokens_revoked": self.tokens,
            "archive": None if self.archive is None else {"name": self.archive.name, "sha256": self.archive_sha256},
            "certificate": {"name": str(self.certificate), "sha256": self.certificate_sha256},
        }

    def _archive(self, info: VersionInfo, entries: list[tuple[str, str, int]]) -> None:
        from mlwarden.integrity.archive import write_archive

        if not (self.archive_dir is not None):
            raise RuntimeError("internal invariant broken: self.archive_dir is not None")
        if not (self.custodian is not None):
            raise RuntimeError("internal invariant broken: self.custodian is not None")
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        target = self.archive_dir / f"{info.model}-{info.version}-{_stamp(utcnow())}.mlwarc"
        members = {name: self.registry.blobs.path(digest) for name, digest, _ in entries}
        for _, digest, _ in entries:
            self.registry.blobs.verify(digest)  # archive intact bytes only
        summary = write_archive(target, members, self.custodian)
        self.archive, self.archive_sha256 = target, summary.sha256
        written = {item.name: item.sha256 for item in summary.items}
        wrong = [name for name, digest, _ in entries if written.get(name) != digest]
        if wrong:
            raise StorageError(f"archive {target} does not hold the recorded bytes of: {', '.join(wrong)}")

    def _discard(self, path: Path) -> None:
        if not path.exists() and not path.is_symlink():
            return
        target = self.trash / str(len(self.moved))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc.strerror or exc}") from None
        self.moved.append((path, target))

    def _certify(self, info: VersionInfo) -> None:
        from mlwarden.integrity.envelope import sign_statement, write_bundle

        statement = {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": i.name, "digest": {"sha256": i.sha256}} for i in self.items],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "model": info.model,
                "version": info.version,
                "digest": info.digest,
                "previous_state": info.state.value,
                "mode": self.mode.value,
                "reason": self.reason,
                "retired_at": utcnow().isoformat(),
                "aliases_detached": list(info.aliases),
                "tokens_revoked": self.tokens,
                "archive": None
                if self.archive is None
                else {"name": self.archive.name, "sha256": self.archive_sha256, "sealed_to": _recipient_id(self)},
                "items": [asdict(i) for i in self.items],
            },
        }
        self.certificate_dir.mkdir(parents=True, exist_ok=True)
        path = self.certificate_dir / f"{info.model}-{info.version}.retirement.json"
        if path.exists():
            raise StorageError(f"{path} already exists")
        write_bundle(sign_statement(statement, self.key), path)
        self.certificate = path
        self.certificate_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

    def undo(self) -> None:
        """The transaction failed: put every moved file back and remove what was written."""
        for original, moved in reversed(self.moved):
            try:
                original.parent.mkdir(parents=True, exist_ok=True)
                os.replace(moved, original)
            except OSError:  # pragma: no cover - best effort; the trash keeps the bytes for an operator
                continue
        for written in (self.archive, self.certificate):
            if written is not None:
                written.unlink(missing_ok=True)
        if self.trash.exists() and not any(self.trash.iterdir()):
            self.trash.rmdir()

    def finish(self) -> None:
        """The transaction committed: empty the trash for good."""
        shutil.rmtree(self.trash, ignore_errors=True)


def _entries(info: VersionInfo) -> list[tuple[str, str, int]]:
    """``(name in the archive/certificate, sha256 hex, size)`` for every file and attachment."""
    base = info.artifact_name or info.model
    entries = [(f"model/{base}" if info.is_file else f"model/{base}/{f.path}", f.digest, f.size) for f in info.files]
    entries += [(f"attachments/{a.id}-{a.kind.value}-{a.filename}", a.digest, a.size) for a in info.attachments]
    return entries


def _version_id(session: Session, info: VersionInfo) -> int:
    from mlwarden.registry.models import ModelRow

    found = session.scalar(
        select(VersionRow.id).join(ModelRow).where(ModelRow.name == info.model, VersionRow.number == info.version)
    )
    if found is None:  # pragma: no cover - the service just locked it
        raise StorageError(f"{info.ref} vanished during retirement")
    return found


def _sharers(session: Session, digest: str, version_id: int) -> list[str]:
    """Other versions whose files or attachments have the blob ``digest`` (they keep it alive)."""
    from mlwarden.registry.models import ModelRow

    ids = set(session.scalars(select(VersionFileRow.version_id).where(VersionFileRow.digest == digest))) | set(
        session.scalars(select(AttachmentRow.version_id).where(AttachmentRow.digest == digest))
    )
    ids.discard(version_id)
    if not ids:
        return []
    rows = session.execute(
        select(ModelRow.name, VersionRow.number).join(ModelRow).where(VersionRow.id.in_(ids)).order_by(VersionRow.id)
    )
    return [f"{name}:{number}" for name, number in rows]


def _revoke_tokens(session: Session, info: VersionInfo) -> list[int]:
    from mlwarden.registry._users import revoke_tokens_for

    return list(revoke_tokens_for(session, info.model, info.version))


def _recipient_id(work: _Work) -> str | None:
    from mlwarden.integrity.archive import key_id

    return None if work.custodian is None else key_id(work.custodian)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def read_certificate(path: Path, public_key: Path) -> dict[str, Any]:
    """Verify a retirement certificate with the registry's public key and return its statement.

    Raises:
        VerificationError: the bundle is malformed, not a retirement certificate, or the signature is wrong.
    """
    from mlwarden.integrity.envelope import read_bundle, verify_statement
    from mlwarden.integrity.errors import VerificationError

    statement = verify_statement(read_bundle(path), public_key)
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError((f"{path} is not a retirement certificate",))
    return statement


def count_references(session: Session, digest: str) -> int:
    """How many file and attachment rows reference ``digest`` (for maintenance and tests)."""
    files = session.scalar(select(func.count()).where(VersionFileRow.digest == digest)) or 0
    attachments = session.scalar(select(func.count()).where(AttachmentRow.digest == digest)) or 0
    return int(files) + int(attachments)


def describe(retirement: Retirement) -> str:
    """A short human summary for the CLI."""
    lines = [f"retired {retirement.version.ref} ({retirement.mode.value}); certificate {retirement.certificate}"]
    if retirement.archive is not None:
        lines.append(f"archive {retirement.archive} sha256:{retirement.archive_sha256}")
    lines += [f"  {i.disposition:<22} sha256:{i.sha256[:16]}…  {i.name}" for i in retirement.items]
    return "\n".join(lines)


__all__ = ["PREDICATE_TYPE", "Mode", "RetiredItem", "Retirement", "describe", "read_certificate", "retire_version"]
