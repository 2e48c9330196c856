"""Content-addressed blob store: every stored file lives at ``<root>/sha256/ab/cdef…`` named by its SHA-256.

Why content addressing: a name that *is* the digest cannot silently point at other bytes, identical files of
successive versions are stored once, and checking a blob is re-hashing it and comparing with its name.

Writes are two-phase so the database decides what exists. :meth:`BlobStore.staging` copies files into a private
temporary folder while hashing them (1 MiB chunks, several files in parallel, each fsynced); the caller writes
its rows; only after the database commit does :meth:`Staging.commit` rename the copies to their digest names
(atomic on one file system). Leaving the ``with`` block without committing deletes the copies: a failed
registration leaves neither rows nor blobs. Stored blobs are read-only (0444).

A version's files are served from a *view* (:meth:`BlobStore.materialize`): its original file or folder names,
hard-linked to the blobs, so what is loaded is byte for byte what the digests name, and corrupting a blob shows
in the view too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mlwarden.core.errors import LimitExceeded
from mlwarden.integrity.errors import ModelPathError
from mlwarden.integrity.hashing import (
    GIT_PATHS,
    FileDigest,
    ModelManifest,
    default_workers,
    hash_file,
    model_name,
    path_key,
    walk_files,
)
from mlwarden.registry._fs import private_dir
from mlwarden.registry.errors import StorageError

__all__ = ["CHUNK_SIZE", "BlobStore", "Staging", "StagedFile"]

CHUNK_SIZE = 1 << 20
#: Stored blobs are read-only and owner-only (their folders are 0700: see :mod:`mlwarden.registry._fs`).
BLOB_MODE = 0o400
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A file copied into the staging area: its temporary copy, digest (hex) and size."""

    temp: Path
    digest: str
    size: int


class BlobStore:
    """The blob store rooted at ``root`` (``<home>/blobs``)."""

    def __init__(self, root: Path) -> None:
        """Use ``root`` (created on first write)."""
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r})"

    def path(self, digest: str) -> Path:
        """Where the blob with SHA-256 ``digest`` (64 lowercase hex) lives."""
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise StorageError(f"not a SHA-256 digest: {digest!r}")
        return self.root / "sha256" / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        """Whether the blob is present (not whether it is intact: see :meth:`verify`)."""
        return self.path(digest).is_file()

    @contextlib.contextmanager
    def staging(self, in_use: Callable[[str], bool] | None = None) -> Iterator[Staging]:
        """A staging area; unless :meth:`Staging.commit` ran, its copies are deleted on exit.

        So are the blobs it stored that ``in_use`` (the database) says no row references.
        """
        stage = Staging(self, in_use)
        try:
            yield stage
        finally:
            stage.discard()

    def verify(self, digest: str) -> None:
        """Re-hash the blob and compare with its name.

        Raises:
            StorageError: the blob is missing, unreadable or its bytes no longer hash to ``digest``.
        """
        actual, _ = _hash_file(self.path(digest))
        if actual != digest:
            raise StorageError(f"blob sha256:{digest} is corrupt: its bytes hash to sha256:{actual}")

    @contextlib.contextmanager
    def open_verified(self, digest: str) -> Iterator[Path]:
        """Check a blob, then yield its path (for small blobs read right after: signatures, manifests)."""
        self.verify(digest)
        yield self.path(digest)

    def delete(self, digest: str) -> bool:
        """Remove a blob; True if it was there. The caller checks that no row references it any more."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot delete blob sha256:{digest}: {exc.strerror or exc}") from None
        return True

    def materialize(self, files: Sequence[FileDigest], destination: Path, name: str, *, is_file: bool) -> Path:
        """Lay out a version's files under ``destination/name`` as hard links to their blobs; returns that path.

        Reuses an existing view when every file is still the blob itself (same inode) and nothing was added;
        otherwise builds a new one beside it and swaps it in. Falls back to copying where hard links are
        impossible (another file system).
        """
        target = destination / name
        if self._view_is_current(files, target, is_file=is_file):
            return target
        private_dir(destination)
        build = destination / f".build-{uuid.uuid4().hex}"
        try:
            build.mkdir(mode=0o700)
            os.chmod(build, 0o700)
            root = build / name
            for entry in files:
                relative = _safe_relative(entry.path)
                dest = root if is_file else root / relative
                private_dir(dest.parent)
                blob = self.path(entry.digest)
                try:
                    os.link(blob, dest)
                except FileNotFoundError:
                    raise StorageError(f"blob sha256:{entry.digest} of {entry.path} is missing") from None
                except OSError:
                    shutil.copyfile(blob, dest)
                    os.chmod(dest, BLOB_MODE)
            if not is_file:
                private_dir(root)
            old = destination / f".old-{uuid.uuid4().hex}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(target, old)
            os.rename(root, target)
            _remove_tree(old)
        except OSError as exc:
            raise StorageError(f"cannot lay out {target}: {exc.strerror or exc}") from None
        finally:
            _remove_tree(build)
        return target

    def _view_is_current(self, files: Sequence[FileDigest], target: Path, *, is_file: bool) -> bool:
        try:
            if is_file:
                present = {"": target} if target.is_file() else {}
                expected = {"": files[0]} if files else {}
            else:
                if not target.is_dir():
                    return False
                present = {p.relative_to(target).as_posix(): p for p in target.rglob("*") if not p.is_dir()}
                expected = {f.path: f for f in files}
            if present.keys() != expected.keys():
                return False
            for key, entry in expected.items():
                view, blob = os.lstat(present[key]), os.stat(self.path(entry.digest))
                if (view.st_ino, view.st_dev) != (blob.st_ino, blob.st_dev):
                    return False
        except OSError:
            return False
        return True


class Staging:
    """Files copied in but not yet stored; see :meth:`BlobStore.staging`."""

    def __init__(self, store: BlobStore, in_use: Callable[[str], bool] | None = None) -> None:
        self._store = store
        self._folder = store.root / "tmp" / uuid.uuid4().hex
        self._files: list[StagedFile] = []
        self._stored: dict[StagedFile, int | None] = {}  # stored blobs -> inode if this staging created them
        self._in_use = in_use
        self._lock: int | None = None
        self._committed = False

    def _needed(self, digest: str) -> bool:
        """Whether a row references ``digest``; when that cannot be asked (database down), keep the blob."""
        if self._in_use is None:
            return False
        try:
            return self._in_use(digest)
        except Exception:  # noqa: BLE001 - cleaning up must not hide the error that made us clean up
            return True

    def _open(self) -> None:
        """Create the private folder and hold a lock in it while alive: start-up clean-up skips live stagings."""
        if self._lock is None:
            private_dir(self._folder)
            self._lock = _hold(self._folder / LOCK_NAME)

    def add_model(self, source: Path, *, max_bytes: int | None = None, workers: int | None = None) -> ModelManifest:
        """Copy a model file or folder in, hashing as it copies; returns the manifest of the copies.

        The walk follows :func:`mlwarden.integrity.hashing.hash_model`'s rules (symbolic links and special files
        refused, git bookkeeping at the root left out), so the manifest equals ``hash_model(source)``.

        Raises:
            ModelPathError: missing path, a link or special file in it, an unreadable file.
            LimitExceeded: the model is larger than ``max_bytes``.
        """
        source = Path(source)
        if source.is_symlink():
            raise ModelPathError(f"{source} is a symbolic link: register the real path instead")
        if source.is_file():
            pairs = [(source, source.name)]
        elif source.is_dir():
            pairs = _walk(source)
        elif not source.exists():
            raise ModelPathError(f"no such file or folder: {source}")
        else:
            raise ModelPathError(f"{source} is not a regular file or folder")
        if max_bytes is not None:
            total = sum(p.stat().st_size for p, _ in pairs)
            if total > max_bytes:
                raise LimitExceeded("max_artifact_bytes", f"{source} holds {total} bytes, the limit is {max_bytes}")
        count = workers or default_workers(len(pairs))
        if count == 1 or len(pairs) <= 1:
            staged = [self.add_file(p) for p, _ in pairs]
        else:
            with ThreadPoolExecutor(max_workers=count, thread_name_prefix="mlwarden-stage") as pool:
                staged = list(pool.map(self.add_file, [p for p, _ in pairs]))
        entries = [
            FileDigest(path=rel, digest=item.digest, size=item.size)
            for (_, rel), item in zip(pairs, staged, strict=True)
        ]
        entries.sort(key=lambda f: path_key(f.path))
        return ModelManifest(model_name(source), tuple(entries), is_file=source.is_file())

    def add_file(self, source: Path) -> StagedFile:
        """Copy one regular file in while hashing it (never whole in memory); fsynced before returning."""
        self._open()
        temp = self._folder / uuid.uuid4().hex
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(source, _READ_FLAGS)
        except OSError as exc:
            if os.path.islink(source):
                raise ModelPathError(f"{source} is a symbolic link") from None
            raise ModelPathError(f"cannot read {source}: {exc.strerror or exc}") from None
        with open(fd, "rb", buffering=0) as reader:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ModelPathError(f"{source} is not a regular file")
            try:
                with open(os.open(temp, _WRITE_FLAGS, 0o600), "wb") as writer:
                    buffer = bytearray(CHUNK_SIZE)
                    view = memoryview(buffer)
                    while n := reader.readinto(view):
                        digest.update(view[:n])
                        writer.write(view[:n])
                        size += n
                    writer.flush()
                    os.fsync(writer.fileno())
            except OSError as exc:
                temp.unlink(missing_ok=True)
                raise StorageError(f"cannot copy {source} into the blob store: {exc.strerror or exc}") from None
        os.chmod(temp, BLOB_MODE)
        staged = StagedFile(temp, digest.hexdigest(), size)
        self._files.append(staged)
        return staged

    def add_bytes(self, data: bytes) -> StagedFile:
        """Stage a small generated document (a BOM, a scan report) given as bytes."""
        self._open()
        temp = self._folder / uuid.uuid4().hex
        try:
            with open(os.open(temp, _WRITE_FLAGS, 0o600), "wb") as writer:
                writer.write(data)
                writer.flush()
                os.fsync(writer.fileno())
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write into the blob store: {exc.strerror or exc}") from None
        os.chmod(temp, BLOB_MODE)
        staged = StagedFile(temp, hashlib.sha256(data).hexdigest(), len(data))
        self._files.append(staged)
        return staged

    def drop(self, staged: StagedFile) -> None:
        """Forget one staged copy (a write attempt that was retried no longer needs it)."""
        if staged in self._files:
            self._files.remove(staged)
            staged.temp.unlink(missing_ok=True)
        inode = self._stored.pop(staged, None)
        if inode is not None:
            final = self._store.path(staged.digest)
            with contextlib.suppress(OSError):
                if os.stat(final).st_ino == inode and not self._needed(staged.digest):
                    final.unlink()

    @property
    def files(self) -> tuple[StagedFile, ...]:
        """Everything staged so far."""
        return tuple(self._files)

    def store(self) -> None:
        """Put every staged copy in place under its digest name, durably: call *before* the database commit.

        A row must never point at bytes that are not there: the blob is renamed into place and its folder fsynced
        first (the copy itself was fsynced when staged), so a crash after the row's commit finds the bytes, and a
        crash before it leaves at worst an unreferenced blob (``mlwarden registry fsck --repair`` removes it). An
        existing blob of the same digest is replaced by the fresh, just-hashed copy, which also repairs a damaged
        one. Idempotent: a retried write stores only what is new.
        """
        touched: set[Path] = set()
        try:
            for staged in self._files:
                if staged in self._stored:
                    continue
                final = self._store.path(staged.digest)
                private_dir(final.parent)
                existed = final.exists()
                os.replace(staged.temp, final)
                self._stored[staged] = None if existed else os.stat(final).st_ino
                touched.add(final.parent)
            for folder in touched:
                _fsync_dir(folder)
        except OSError as exc:
            raise StorageError(f"cannot store blobs under {self._store.root}: {exc.strerror or exc}") from None

    def commit(self) -> None:
        """The rows are committed: keep the stored blobs (storing any not yet stored) and forget the staging."""
        self.store()
        self._committed = True
        self._files.clear()
        self._stored.clear()

    def discard(self) -> None:
        """Delete the staged copies, and the blobs :meth:`store` created if no row references them.

        A no-op after :meth:`commit`.
        A blob is removed only while it is still the very file this staging put there (same inode: a concurrent
        writer that stored the same bytes replaced it) and ``in_use`` (the database) says nothing points at it.
        """
        for staged, inode in list(self._stored.items()):
            if inode is None:
                continue
            final = self._store.path(staged.digest)
            with contextlib.suppress(OSError):
                if os.stat(final).st_ino == inode and not self._needed(staged.digest):
                    final.unlink()
        self._stored.clear()
        self._files.clear()
        _release(self._lock)
        self._lock = None
        _remove_tree(self._folder)


def _walk(root: Path) -> list[tuple[Path, str]]:
    """Regular files under ``root`` as (path, relative POSIX path): exactly what ``hash_model`` would hash."""
    return walk_files(root, tuple((name,) for name in GIT_PATHS))


def _hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a stored blob, with store-specific errors."""
    if not path.exists() and not path.is_symlink():
        raise StorageError(f"blob {path.parent.name}{path.name} is missing from the store")
    try:
        return hash_file(path)
    except ModelPathError as exc:
        raise StorageError(f"cannot read blob {path}: {exc}") from None


def _safe_relative(path: str) -> PurePosixPath:
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise StorageError(f"refusing to lay out a file outside its model folder: {path!r}")
    return relative


def _remove_tree(path: Path) -> None:
    """Delete a staging or view folder (read-only files inside go too: unlinking needs only the folder's write bit)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


#: A staging folder without a lock file younger than this may be one being created: left alone.
FRESH_SECONDS = 60.0
#: Lock file inside a live staging folder (held with flock for the staging's life).
LOCK_NAME = ".lock"


def _hold(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return None
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):
        pass
    return fd


def _age(path: Path) -> float:
    import time

    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def stale_stagings(root: Path) -> list[Path]:
    """Staging folders under ``<root>/tmp`` no live process holds (a killed upload's or registration's)."""
    tmp = root / "tmp"
    if not tmp.is_dir():
        return []
    stale: list[Path] = []
    for folder in sorted(tmp.iterdir()):
        if not folder.is_dir() or folder.is_symlink():
            stale.append(folder)
            continue
        lock = folder / LOCK_NAME
        if not lock.exists() and _age(folder) < FRESH_SECONDS:
            continue  # being created right now: its lock comes next
        fd = _hold_if_free(lock)
        if fd is not False:
            _release(fd if isinstance(fd, int) else None)
            stale.append(folder)
    return stale


def _hold_if_free(path: Path) -> int | None | bool:
    """An fd holding the lock if nobody held it (None: no lock file), False when a live process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    except ImportError:
        pass
    return fd


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
