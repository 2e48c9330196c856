"""The content-addressed blob store: staged copies, atomic commit, read-only blobs, verification, views."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from mlwarden.core.errors import LimitExceeded
from mlwarden.integrity.errors import ModelPathError
from mlwarden.integrity.hashing import hash_model
from mlwarden.registry.blobs import BlobStore
from mlwarden.registry.errors import StorageError

from .helpers import folder_model


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _big(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        for i in range(size // 65536 + 1):
            handle.write(hashlib.sha256(str(i).encode()).digest() * 2048)
    return path


def test_staged_copies_become_blobs_only_on_commit(store: BlobStore, tmp_path: Path) -> None:
    source = _big(tmp_path / "weights.bin", 3 * 1024 * 1024)
    with store.staging() as stage:
        item = stage.add_file(source)
        assert item.digest == hashlib.sha256(source.read_bytes()).hexdigest()
        assert not store.exists(item.digest)
        stage.commit()
    blob = store.path(item.digest)
    assert blob == store.root / "sha256" / item.digest[:2] / item.digest[2:]
    assert blob.read_bytes() == source.read_bytes()
    assert not blob.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert not any((store.root / "tmp").rglob("*"))


def test_leaving_without_commit_discards(store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"abc")

    def failing_write() -> str:
        with store.staging() as stage:
            digest = stage.add_file(source).digest
            raise RuntimeError(f"database said no to {digest}")

    with pytest.raises(RuntimeError, match="database said no") as caught:
        failing_write()
    digest = str(caught.value).rsplit(" ", 1)[-1]
    assert store.path(digest).parent.parent == store.root / "sha256"
    assert not store.exists(digest)
    assert not any((store.root / "tmp").rglob("*"))


def test_model_manifest_equals_hash_model(store: BlobStore, tmp_path: Path) -> None:
    model = folder_model(tmp_path / "model")
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: main\n")
    with store.staging() as stage:
        manifest = stage.add_model(model)
        stage.commit()
    assert manifest == hash_model(model)
    assert all(store.exists(f.digest) for f in manifest.files)


def test_symlinks_inside_a_model_are_refused(store: BlobStore, tmp_path: Path) -> None:
    model = folder_model(tmp_path / "model")
    os.symlink("/etc/passwd", model / "leak")
    with pytest.raises(ModelPathError, match="symbolic link"), store.staging() as stage:
        stage.add_model(model)


def test_size_limit(store: BlobStore, tmp_path: Path) -> None:
    source = _big(tmp_path / "w.bin", 200_000)
    with pytest.raises(LimitExceeded, match="limit is 1000"), store.staging() as stage:
        stage.add_model(source, max_bytes=1000)


def test_verify_detects_corruption_and_absence(store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"original bytes")
    with store.staging() as stage:
        item = stage.add_file(source)
        stage.commit()
    store.verify(item.digest)
    blob = store.path(item.digest)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"tampered bytes")
    with pytest.raises(StorageError, match=f"sha256:{item.digest} is corrupt"):
        store.verify(item.digest)
    assert store.delete(item.digest)
    assert not store.delete(item.digest)
    with pytest.raises(StorageError, match="missing"):
        store.verify(item.digest)


def test_recommitting_the_same_content_repairs_a_damaged_blob(store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"good")
    for _ in range(2):
        with store.staging() as stage:
            item = stage.add_file(source)
            stage.commit()
        os.chmod(store.path(item.digest), 0o644)
        store.path(item.digest).write_bytes(b"bad!")
    with store.staging() as stage:
        stage.add_file(source)
        stage.commit()
    store.verify(item.digest)


def test_views_hard_link_blobs_and_are_rebuilt_when_stale(store: BlobStore, tmp_path: Path) -> None:
    model = folder_model(tmp_path / "model")
    with store.staging() as stage:
        manifest = stage.add_model(model)
        stage.commit()
    view = store.materialize(manifest.files, tmp_path / "views" / "m" / "1", "model", is_file=False)
    inner = view / "weights" / "model.pt"
    blob = store.path(manifest.get("weights/model.pt").digest)  # type: ignore[union-attr]
    assert os.stat(inner).st_ino == os.stat(blob).st_ino
    (view / "extra.txt").write_text("dropped in by someone")
    again = store.materialize(manifest.files, tmp_path / "views" / "m" / "1", "model", is_file=False)
    assert not (again / "extra.txt").exists()
    assert hash_model(again) == manifest


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "A" * 64])
def test_paths_need_a_real_digest(store: BlobStore, bad: str) -> None:
    with pytest.raises(StorageError, match="not a SHA-256"):
        store.path(bad)
