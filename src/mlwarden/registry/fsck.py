"""Check the blob store against the database: ``mlwarden registry fsck [--repair]``, and start-up recovery.

Blobs are stored (fsynced) before the rows that point at them commit, so after a crash the store can hold blobs
no row references, and killed uploads or registrations leave staging folders under ``blobs/tmp``. Older
registries renamed blobs into place *after* the commit, so a crash there left rows without their bytes — while
the fsynced copy still sat in staging. This module finds:

* ``missing`` — a live version's file or attachment whose blob is absent (repair: restored from a staging
  leftover with the same digest, when there is one);
* ``orphan`` — a blob no row references (repair: deleted, unless younger than :data:`ORPHAN_GRACE_SECONDS`: it
  may belong to a registration committing right now);
* ``corrupt`` — a blob whose bytes no longer hash to its name (repair: replaced by a good staged copy if any;
  otherwise reported only: restore it from a backup or an archive);
* ``staging`` — a staging folder no live process holds (repair: its files recover missing blobs, then it goes).

Retired versions are skipped: retirement removes their exclusive blobs on purpose.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from mlwarden.registry.blobs import BLOB_MODE, LOCK_NAME, BlobStore, _fsync_dir, _hash_file, stale_stagings
from mlwarden.registry.db import Database
from mlwarden.registry.errors import StorageError
from mlwarden.registry.models import AttachmentRow, ModelRow, VersionFileRow, VersionRow
from mlwarden.registry.states import State

__all__ = ["ORPHAN_GRACE_SECONDS", "FsckProblem", "FsckReport", "fsck", "recover_staging"]

#: Unreferenced blobs younger than this are reported but never deleted (a registration may be committing).
ORPHAN_GRACE_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class FsckProblem:
    """One finding: ``kind`` (missing, orphan, corrupt, staging), the digest or folder, who uses it, what was done."""

    kind: str
    subject: str
    detail: str
    repaired: bool = False


@dataclass
class FsckReport:
    """Every problem found; ``clean`` when none is left unrepaired."""

    blobs: int = 0
    rows: int = 0
    problems: list[FsckProblem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No problem, or every problem repaired."""
        return all(p.repaired for p in self.problems)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "blobs": self.blobs,
            "rows": self.rows,
            "clean": self.clean,
            "problems": [
                {"kind": p.kind, "subject": p.subject, "detail": p.detail, "repaired": p.repaired}
                for p in self.problems
            ],
        }


def _references(database: Database) -> tuple[dict[str, list[str]], set[str]]:
    """Digest -> users of it among live versions; and every digest any row (retired included) references."""
    live: dict[str, list[str]] = {}
    every: set[str] = set()
    with database.reading() as session:
        query = (
            select(VersionFileRow.digest, VersionFileRow.path, ModelRow.name, VersionRow.number, VersionRow.state)
            .join(VersionRow, VersionFileRow.version_id == VersionRow.id)
            .join(ModelRow, VersionRow.model_id == ModelRow.id)
        )
        for digest, path, name, number, state in session.execute(query):
            every.add(digest)
            if state != State.RETIRED.value:
                live.setdefault(digest, []).append(f"{name}:{number} file {path}")
        query2 = (
            select(AttachmentRow.digest, AttachmentRow.kind, AttachmentRow.id, ModelRow.name, VersionRow.number)
            .add_columns(VersionRow.state)
            .join(VersionRow, AttachmentRow.version_id == VersionRow.id)
            .join(ModelRow, VersionRow.model_id == ModelRow.id)
        )
        for digest, kind, attachment_id, name, number, state in session.execute(query2):
            every.add(digest)
            if state != State.RETIRED.value:
                live.setdefault(digest, []).append(f"{name}:{number} {kind} #{attachment_id}")
    return live, every


def _stored(store: BlobStore) -> dict[str, Path]:
    base = store.root / "sha256"
    found: dict[str, Path] = {}
    if base.is_dir():
        for prefix in sorted(base.iterdir()):
            if prefix.is_dir():
                for blob in sorted(prefix.iterdir()):
                    found[prefix.name + blob.name] = blob
    return found


def _staged_copies(folders: list[Path]) -> dict[str, Path]:
    """Digest -> a staged file holding those bytes, over the stale staging folders."""
    copies: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for item in sorted(folder.rglob("*")):
            if item.is_file() and not item.is_symlink() and item.name != LOCK_NAME:
                try:
                    digest, _ = _hash_file(item)
                except StorageError:
                    continue
                copies.setdefault(digest, item)
    return copies


def _place(store: BlobStore, digest: str, source: Path) -> None:
    final = store.path(digest)
    from mlwarden.registry._fs import private_dir

    private_dir(final.parent)
    os.chmod(source, BLOB_MODE)
    os.replace(source, final)
    _fsync_dir(final.parent)


def recover_staging(store: BlobStore, database: Database) -> list[FsckProblem]:
    """Start-up clean-up: restore missing blobs from stale staging folders, then delete those folders."""
    folders = stale_stagings(store.root)
    if not folders:
        return []
    live, _ = _references(database)
    copies = _staged_copies(folders)
    done: list[FsckProblem] = []
    for digest, source in copies.items():
        if digest in live and not store.exists(digest):
            _place(store, digest, source)
            done.append(FsckProblem("missing", f"sha256:{digest}", "restored from staging", True))
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
    return done


def fsck(store: BlobStore, database: Database, *, repair: bool = False, now: float | None = None) -> FsckReport:
    """Compare the blob store with the rows; with ``repair`` fix what can be fixed safely (module docstring)."""
    now = time.time() if now is None else now
    live, every = _references(database)
    stored = _stored(store)
    stale = stale_stagings(store.root)
    copies = _staged_copies(stale)
    report = FsckReport(blobs=len(stored), rows=sum(len(v) for v in live.values()))
    for digest, users in sorted(live.items()):
        if digest in stored:
            continue
        copy = copies.get(digest)
        fixed = False
        if repair and copy is not None:
            _place(store, digest, copy)
            fixed = True
        how = "restored from staging" if fixed else ("a staged copy exists" if copy else "no copy to restore from")
        report.problems.append(FsckProblem("missing", f"sha256:{digest}", f"{'; '.join(users)} ({how})", fixed))
    for digest, path in sorted(stored.items()):
        if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            report.problems.append(FsckProblem("orphan", str(path.relative_to(store.root)), "not a blob name"))
            continue
        try:
            actual, _ = _hash_file(path)
        except StorageError as exc:
            actual = f"unreadable ({exc})"
        if actual != digest:
            copy = copies.get(digest)
            fixed = False
            if repair and copy is not None:
                _place(store, digest, copy)
                fixed = True
            detail = f"bytes hash to {actual}" + ("; replaced by a good staged copy" if fixed else "")
            report.problems.append(FsckProblem("corrupt", f"sha256:{digest}", detail, fixed))
            continue
        if digest not in every:
            age = now - path.stat().st_mtime
            young = age < ORPHAN_GRACE_SECONDS
            fixed = False
            if repair and not young:
                path.unlink(missing_ok=True)
                fixed = True
            detail = "no row references it" + (" (recent: kept, may be committing)" if young and repair else "")
            report.problems.append(FsckProblem("orphan", f"sha256:{digest}", detail, fixed))
    for folder in stale:
        fixed = False
        if repair:
            shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
            fixed = True
        report.problems.append(FsckProblem("staging", folder.name, "left by a killed upload or registration", fixed))
    return report
