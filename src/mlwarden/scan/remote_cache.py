"""A private, size-bounded, content-addressed cache of downloaded remote models, for dynamic analysis.

Static analysis reads a remote model in place (:mod:`mlwarden.scan.remote`). Dynamic analysis has to hand the
sandbox a file, so the object is downloaded once, whole, into this cache and analysed there (``docs/remote.md``):

* The cache lives in a folder only its owner can enter (``0700``; files ``0600``): ``$XDG_CACHE_HOME/mlwarden/remote``
  (``~/.cache/mlwarden/remote``) unless another folder is given.
* Copies are named by the SHA-256 of their bytes (``blobs/<sha256>``), computed while streaming to disk; a pin index
  (``pins/<key>.json``) maps the URL plus its pins (ETag, VersionId, commit, declared sha256) to the blob, so a
  second scan of the same pinned object reuses the copy without downloading (the copy is re-hashed on reuse).
* The pins are checked before and after the download (and the HTTP transport sends ``If-Match`` on every range): an
  object that moves during the download is an error, never a mixed copy. A declared sha256 (Hub LFS) must match.
* A file larger than ``max_file_size`` (the policy's) or than the cache itself is refused before any byte is read;
  room for a new copy is made by evicting the least recently used copies.
* Several processes may share one cache (bulk workers, two ``mlwarden scan`` runs): every change to the index or
  the blobs (reuse bookkeeping, eviction, committing a download) happens under an exclusive ``fcntl.flock`` on
  ``<cache>/lock``. Downloads and re-hashing run outside the lock, into ``tmp/``; a finished download is committed
  by an atomic rename under it, after evicting what the bound requires at that moment, so concurrent downloads
  cannot together overrun the bound or evict twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlwarden.scan.remote import RemoteError, RemoteFile

#: Default bound on the bytes the cache holds (all copies together).
DEFAULT_MAX_BYTES = 20 * 1024**3
#: Bytes fetched per ranged request while downloading.
CHUNK = 8 * 1024 * 1024
#: Pins that identify one immutable version of an object (``last_modified`` alone does not).
STRONG_PINS = ("etag", "version_id", "commit", "sha256")


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/mlwarden/remote``, or ``~/.cache/mlwarden/remote``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlwarden" / "remote"


@dataclass(frozen=True)
class CachedCopy:
    """A verified local copy of one remote object.

    Attributes:
        path: the copy (``blobs/<sha256>``); read-only to everyone but its owner.
        sha256: hex SHA-256 of the copy's bytes.
        size: its length in bytes.
        downloaded: ``True`` when this call downloaded it, ``False`` when a previous copy of the same pin was reused.
    """

    path: Path
    sha256: str
    size: int
    downloaded: bool


class RemoteCache:
    """Downloads remote objects once into a private folder and hands back verified copies.

    Args:
        directory: the cache folder (created ``0700``); ``None``: :func:`default_dir`.
        max_bytes: bound on all copies together; least recently used copies are evicted to make room.
        chunk: bytes per ranged request while downloading.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES, *, chunk: int = CHUNK
    ) -> None:
        if max_bytes <= 0 or chunk <= 0:
            raise RemoteError("remote cache: the size bound and the chunk size must be positive")
        self.directory = Path(directory) if directory is not None else default_dir()
        self.max_bytes = max_bytes
        self.chunk = chunk

    # --- public -----------------------------------------------------------------------------------------

    def fetch(self, item: RemoteFile, max_file_size: int) -> CachedCopy:
        """A verified local copy of ``item``: reused when the same pinned version is cached, else downloaded.

        Raises:
            RemoteError: the object is larger than ``max_file_size`` or than the cache, it changed before, during
                or after the download, its bytes do not match a declared sha256, or the cache folder is unusable.
        """
        if item.size > max_file_size:
            raise RemoteError(
                f"{item.display}: {item.size} bytes, more than max_file_size ({max_file_size}); not downloaded"
            )
        if item.size > self.max_bytes:
            raise RemoteError(f"{item.display}: {item.size} bytes, more than the remote cache holds ({self.max_bytes})")
        self._prepare()
        key = self._key(item)
        if key is not None:
            reused = self._reuse(key, item)
            if reused is not None:
                return reused
        return self._download(item, key)

    def total_bytes(self) -> int:
        """Bytes held by all copies now."""
        return sum(size for _, size, _ in self._blobs())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache's exclusive lock (``flock`` on ``<cache>/lock``): one process changes the cache at a time.

        The lock is advisory and per open file: it coordinates processes on one machine (``flock`` on a network file
        system may not). It is released when the block ends, or by the kernel if the process dies.
        """
        import fcntl  # POSIX only, as the sandbox that uses the cache

        try:
            fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RemoteError(f"remote cache {self.directory}: cannot open its lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    # --- layout -----------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        try:
            for sub in (self.directory, self.directory / "blobs", self.directory / "pins", self.directory / "tmp"):
                sub.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)  # an existing folder is made private too
            owner = self.directory.stat().st_uid
        except OSError as exc:
            raise RemoteError(f"remote cache {self.directory}: {exc.strerror or exc}") from None
        if hasattr(os, "getuid") and owner != os.getuid():
            raise RemoteError(f"remote cache {self.directory}: owned by another user; choose another --cache-dir")

    @staticmethod
    def _key(item: RemoteFile) -> str | None:
        """Index key of the pinned version, or ``None`` when nothing pins it (then it is downloaded every time)."""
        pins = {k: item.pins[k] for k in STRONG_PINS if item.pins.get(k)}
        if not pins:
            return None
        text = json.dumps({"url": item.display, "size": item.size, "pins": pins}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _blob(self, sha256: str) -> Path:
        return self.directory / "blobs" / sha256

    def _blobs(self) -> Iterator[tuple[Path, int, float]]:
        """(path, size, last use) of every copy."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory / "blobs"):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    yield Path(entry.path), st.st_size, st.st_mtime

    # --- reuse ------------------------------------------------------------------------------------------

    def _reuse(self, key: str, item: RemoteFile) -> CachedCopy | None:
        """The cached copy of this pinned version, re-hashed; ``None`` when there is none (or it was damaged).

        The copy is hashed outside the lock (it may be large) through a descriptor opened under it, so what was
        hashed is the inode the index named; the verdict is applied under the lock again, and only to that inode.
        """
        index = self.directory / "pins" / f"{key}.json"
        with self.locked():
            try:
                sha256 = str(json.loads(index.read_text(encoding="utf-8"))["sha256"])
                handle = open(self._blob(sha256), "rb")  # closed below, after hashing
            except (OSError, ValueError, KeyError, TypeError):
                return None
            os.utime(handle.fileno())  # most recently used: an eviction meanwhile prefers other copies
        with handle:
            inode = os.fstat(handle.fileno()).st_ino
            digest, size = _hash_stream(handle)
        blob = self._blob(sha256)
        with self.locked():
            current = _inode(blob)
            if digest != sha256 or size != item.size:  # damaged or replaced: drop it and download again
                if current == inode:
                    blob.unlink(missing_ok=True)
                    self._drop_index(index, sha256)
                return None
            if current != inode:  # evicted (or replaced) while it was hashed
                return None
        return CachedCopy(blob, sha256, size, downloaded=False)

    def _write_index(self, key: str, item: RemoteFile, copy: CachedCopy) -> None:
        doc = {"url": item.display, "pins": item.pins, "size": copy.size, "sha256": copy.sha256}
        _atomic_write(self.directory / "pins" / f"{key}.json", json.dumps(doc, sort_keys=True).encode(), self.directory)

    @staticmethod
    def _drop_index(index: Path, sha256: str) -> None:
        """Remove ``index`` if it still names ``sha256`` (another process may have re-pointed it)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(index.read_text(encoding="utf-8"))["sha256"] == sha256:
                index.unlink(missing_ok=True)

    # --- download ---------------------------------------------------------------------------------------

    def _download(self, item: RemoteFile, key: str | None) -> CachedCopy:
        """Download ``item`` into ``tmp/`` (no lock held), then commit it under the lock (evict, rename, index)."""
        _check_pins(item, "before the download")
        with self.locked():  # room before the download too, so one process alone never holds more than the bound
            self._evict(item.size)
        fd, tmp = tempfile.mkstemp(dir=self.directory / "tmp", prefix="dl-")
        committed = False
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for start in range(0, item.size, self.chunk):
                    data = item.fetch(start, min(item.size, start + self.chunk))
                    if len(data) != min(self.chunk, item.size - start):
                        raise RemoteError(f"{item.display}: short read at offset {start} while downloading")
                    digest.update(data)
                    out.write(data)
            _check_pins(item, "during the download")
            sha256 = digest.hexdigest()
            declared = item.pins.get("sha256")
            if declared and declared.lower() != sha256:
                raise RemoteError(
                    f"{item.display}: downloaded bytes have sha256 {sha256}, the store declares {declared}"
                )
            os.chmod(tmp, 0o600)
            blob = self._blob(sha256)
            with self.locked():
                if _inode(blob) is None:  # else the same bytes were committed meanwhile: no room to make
                    self._evict(item.size)  # other processes may have committed copies while this one downloaded
                os.replace(tmp, blob)  # verified bytes; also heals a copy damaged since another process committed it
                committed = True
                if key is not None:
                    self._write_index(key, item, CachedCopy(blob, sha256, item.size, downloaded=True))
        finally:
            if not committed:  # a failed download: no partial file stays
                Path(tmp).unlink(missing_ok=True)
        return CachedCopy(blob, sha256, item.size, downloaded=True)

    def _evict(self, incoming: int) -> None:
        """Drop least recently used copies (and their index entries) until ``incoming`` more bytes fit.

        Called with the lock held.
        """
        blobs = sorted(self._blobs(), key=lambda b: b[2])
        total = sum(size for _, size, _ in blobs)
        dropped: set[str] = set()
        for path, size, _ in blobs:
            if total + incoming <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            dropped.add(path.name)
            total -= size
        if dropped:
            for index in (self.directory / "pins").glob("*.json"):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    if json.loads(index.read_text(encoding="utf-8"))["sha256"] in dropped:
                        index.unlink(missing_ok=True)


@contextlib.contextmanager
def downloaded(url: str, max_file_size: int, cache: RemoteCache | None = None) -> Iterator[Path]:
    """The files ``url`` names, fetched through ``cache`` and laid out under their own names in a new private folder.

    One file gives that file (its base name); a prefix or an ``hf://`` repository gives a folder of the files under
    their paths relative to the common prefix. The layout is hard links to the cached copies (same file system) and
    is removed on exit; the copies stay cached. For consumers that take a local path and copy it again while hashing
    (the registry's staging, the loader).

    Raises:
        RemoteError: as :func:`~mlwarden.scan.remote.resolve` and :meth:`RemoteCache.fetch`, or a remote name that
            is not a safe relative path.
    """
    from mlwarden.scan.remote import resolve

    cache = cache or RemoteCache()
    items = resolve(url)
    copies = [(item, cache.fetch(item, max_file_size)) for item in items]
    names = _relative_names([item.display for item in items])
    root = Path(tempfile.mkdtemp(dir=cache.directory / "tmp", prefix="view-"))
    try:
        for (_, copy), name in zip(copies, names, strict=True):
            dest = root.joinpath(*name)
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.link(copy.path, dest)
        yield root / names[0][0] if len(items) == 1 else root
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _relative_names(displays: list[str]) -> list[tuple[str, ...]]:
    """Path parts of each URL below the URLs' common folder (one URL: its base name)."""
    split = [d.split("?", 1)[0].split("://", 1)[-1].split("/") for d in displays]
    common = 0
    folders = [parts[:-1] for parts in split]
    while all(len(f) > common and f[common] == folders[0][common] for f in folders):
        common += 1
    names = [tuple(parts[common:]) for parts in split]
    for name, display in zip(names, displays, strict=True):
        if not name or any(part in ("", ".", "..") for part in name):
            raise RemoteError(f"{display}: not a safe relative file name")
    return names


def _check_pins(item: RemoteFile, when: str) -> None:
    changed = item.verify() if item.verify is not None else None
    if changed is not None:
        raise RemoteError(f"{changed} ({when})")


def _hash_stream(fh: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while block := fh.read(1024 * 1024):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _atomic_write(path: Path, data: bytes, root: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=root / "tmp", prefix="ix-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
