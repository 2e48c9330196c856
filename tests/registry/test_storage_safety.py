"""Blob durability, staging recovery, fsck and file modes (security review 2027-01, items 4 and 5).

Reported: a crash between the database commit and the blob rename left a version without its bytes; killed
uploads left orphans in ``blobs/tmp``; with umask 022 the home, database, WAL and blobs were world readable.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlwarden.registry.blobs import Staging
from mlwarden.registry.db import Database
from mlwarden.registry.errors import PermissionDenied
from mlwarden.registry.service import Registry

from .helpers import ADMIN, VIC, World, blob_files, staging_leftovers, world


@pytest.fixture
def w(database: Database, tmp_path: Path) -> Iterator[World]:
    with world(database.url, tmp_path) as built:
        yield built


def test_a_crash_after_the_commit_leaves_the_bytes_in_place(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self: Staging) -> None:
        raise KeyboardInterrupt("killed right after the database commit")

    monkeypatch.setattr(Staging, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        w.register()
    monkeypatch.undo()
    info = w.registry.resolve(VIC, "fraud:1")  # the row committed...
    for f in info.files:
        w.registry.blobs.verify(f.digest)  # ...and its bytes are there
    for a in info.attachments:
        w.registry.blobs.verify(a.digest)


def test_stale_staging_is_cleaned_at_start_up_and_restores_lost_blobs(w: World) -> None:
    v = w.register()
    home = w.root / "home"
    lost = v.files[0]
    blob = w.registry.blobs.path(lost.digest)
    leftover = home / "blobs" / "tmp" / uuid.uuid4().hex
    leftover.mkdir(parents=True)
    os.chmod(blob, 0o600)
    os.replace(blob, leftover / uuid.uuid4().hex)  # an old registry's crash: row committed, blob still staged
    junk = home / "blobs" / "tmp" / uuid.uuid4().hex
    junk.mkdir()
    (junk / "partial").write_bytes(b"half an upload")
    old = time.time() - 3600
    for folder in (leftover, junk):
        os.utime(folder, (old, old))
    reopened = w.reopen()
    try:
        reopened.blobs.verify(lost.digest)
        assert staging_leftovers(home) == []
    finally:
        reopened.close()


def test_fsck_reports_and_repairs(w: World) -> None:
    admin = w.registry.authenticate(w.admin_token)
    v = w.register()
    assert w.registry.fsck(admin).clean
    store = w.registry.blobs
    missing = v.files[0].digest
    store.path(missing).unlink()
    data = b"nobody points here"
    orphan_digest = hashlib.sha256(data).hexdigest()
    orphan = store.path(orphan_digest)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(data)
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    corrupt = v.attachments[0].digest
    os.chmod(store.path(corrupt), 0o600)
    store.path(corrupt).write_bytes(b"tampered")
    leftover = store.root / "tmp" / uuid.uuid4().hex
    leftover.mkdir(parents=True)
    (leftover / "x").write_bytes(b"killed upload")
    os.utime(leftover, (old, old))
    report = w.registry.fsck(admin)
    kinds = {(p.kind, p.subject) for p in report.problems}
    assert ("missing", f"sha256:{missing}") in kinds
    assert ("orphan", f"sha256:{orphan_digest}") in kinds
    assert ("corrupt", f"sha256:{corrupt}") in kinds
    assert ("staging", leftover.name) in kinds
    assert not report.clean
    repaired = w.registry.fsck(admin, repair=True)
    assert {p.kind for p in repaired.problems if p.repaired} == {"orphan", "staging"}
    assert not orphan.exists()
    assert not leftover.exists()
    assert {p.kind for p in w.registry.fsck(admin).problems} == {"missing", "corrupt"}  # no copy to restore from
    with pytest.raises(PermissionDenied, match="needs role"):
        w.registry.fsck(VIC)
    assert ADMIN.username == "root"


def test_everything_is_owner_only_whatever_the_umask(db_url: str, tmp_path: Path) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("optional: file modes of the SQLite database; PostgreSQL's files belong to its server")
    home = tmp_path / "home"
    previous = os.umask(0o022)
    try:
        with world(f"sqlite:///{home / 'registry.db'}", tmp_path) as built:
            built.register()
            built.registry.artifact_path(VIC, "fraud:1")
            assert blob_files(home)
    finally:
        os.umask(previous)
    checked = [home, *home.rglob("*")]
    assert any(p.name == "registry.db-wal" for p in checked) or any(p.name == "registry.db" for p in checked)
    loose = [f"{p} {stat.filemode(p.stat().st_mode)}" for p in checked if p.stat().st_mode & 0o077]
    assert loose == []


def test_open_creates_a_private_home(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        registry = Registry.open(f"sqlite:///{tmp_path / 'h' / 'registry.db'}", home=tmp_path / "h")
        registry.close()
    finally:
        os.umask(previous)
    for path in (tmp_path / "h", tmp_path / "h" / "registry.db"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
