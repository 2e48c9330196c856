"""Hash a model (a file or a folder) into a manifest of per-file SHA-256 digests.

The manifest is what a signature covers, what the registry stores per version and what a deployment checks
again before it serves bytes. It is built exactly as OpenSSF ``model_signing`` builds its default ("files")
serialization, so a manifest computed here and one computed there list the same files with the same digests:

* a folder is walked recursively; every regular file is one entry, its path relative to the model root in
  POSIX form (``weights/part-1.bin``); empty folders contribute nothing;
* a symbolic link anywhere (the model path included) is an error naming it, like ``model_signing``'s default
  (``allow_symlinks=False``): following it would sign bytes from outside the model; special files (FIFOs,
  sockets, devices) are errors too;
* ignore paths are relative to the model root; an ignored folder hides everything below it; by default the
  git bookkeeping at the root (``.git``, ``.gitattributes``, ``.github``, ``.gitignore``) is ignored, which
  is ``model_signing``'s default too;
* files are read in 1 MiB chunks (never whole into memory) and hashed in parallel threads: ``hashlib`` releases
  the GIL while it hashes, so threads use every core.

One deliberate difference: for a single-file model the entry's path is the file's name (``model_signing``
writes ``.``); :mod:`mlwarden.integrity.signing` translates when it writes or reads a signature.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Literal, Protocol

from mlwarden.core.errors import UsageError
from mlwarden.integrity.errors import ModelPathError

CHUNK_SIZE = 1 << 20
#: Ignored at the model root unless ``ignore_git_paths=False`` (``model_signing``'s default list).
GIT_PATHS: tuple[str, ...] = (".git", ".gitattributes", ".github", ".gitignore")
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileDigest:
    """The digest of one file of a model.

    Attributes:
        path: POSIX path relative to the model root; for a single-file model, the file's name.
        algorithm: hash algorithm name as ``model_signing`` writes it (always ``sha256`` here).
        digest: lowercase hex digest of the file's bytes.
        size: number of bytes hashed.
    """

    path: str
    algorithm: str = "sha256"
    digest: str
    size: int


class Digested(Protocol):
    """Anything naming a file and its digest (a :class:`FileDigest`, a resource read from a signature)."""

    @property
    def path(self) -> str:
        """POSIX path relative to the model root."""

    @property
    def algorithm(self) -> str:
        """Hash algorithm name."""

    @property
    def digest(self) -> str:
        """Hex digest."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One way two manifests differ, seen from the expected (signed) one.

    ``str()`` gives the line shown to users: ``file added: x``, ``file removed: y`` or
    ``file changed: z (sha256 expected ab… got cd…)``.
    """

    kind: Literal["added", "removed", "changed"]
    path: str
    expected: str | None = None  # "algorithm:hex" of the expected side, None when added
    actual: str | None = None  # "algorithm:hex" of the actual side, None when removed

    def __str__(self) -> str:
        if self.kind != "changed":
            return f"file {self.kind}: {self.path}"
        expected_alg, _, expected_hex = (self.expected or "").partition(":")
        actual_alg, _, actual_hex = (self.actual or "").partition(":")
        if expected_alg == actual_alg:
            return f"file changed: {self.path} ({expected_alg} expected {expected_hex} got {actual_hex})"
        return f"file changed: {self.path} (expected {self.expected} got {self.actual})"


def path_key(path: str) -> tuple[str, ...]:
    """Sort key for manifest paths: component by component, the order ``model_signing`` signs them in."""
    return tuple(path.split("/"))


def diff_files(expected: Iterable[Digested], actual: Iterable[Digested]) -> list[Difference]:
    """What changed from ``expected`` to ``actual``, sorted by path (empty when they match)."""
    want = {f.path: f for f in expected}
    have = {f.path: f for f in actual}
    out: list[Difference] = []
    for path in sorted(want.keys() | have.keys(), key=path_key):
        old, new = want.get(path), have.get(path)
        if old is None:
            out.append(Difference("added", path))
        elif new is None:
            out.append(Difference("removed", path))
        elif (old.algorithm, old.digest.lower()) != (new.algorithm, new.digest.lower()):
            out.append(Difference("changed", path, f"{old.algorithm}:{old.digest}", f"{new.algorithm}:{new.digest}"))
    return out


def _manifest_line(entry: FileDigest) -> str:
    """One ``sha256sum``-style line; names with a backslash or line break are escaped the way GNU does."""
    if any(c in entry.path for c in "\\\n\r"):
        name = entry.path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{entry.digest}  {name}\n"
    return f"{entry.digest}  {entry.path}\n"


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """Every file of a model with its digest.

    Attributes:
        name: the model's name (the last component of its path), informative only: renaming a model does not
            change its manifest's digest.
        files: one entry per file, sorted by path component by component.
        is_file: True when the model is a single file (``files`` then has exactly one entry).
    """

    name: str
    files: tuple[FileDigest, ...]
    is_file: bool = False

    @property
    def digest(self) -> str:
        r"""One SHA-256 (hex) naming the model's content.

        For a single file it is the file's own SHA-256. For a folder it is the SHA-256 of the UTF-8 text
        made of one ``sha256sum``-style line per file, ``<hex digest><two spaces><path>\n``, sorted by path
        (plain string order); a path containing a backslash or a line break is escaped like GNU ``sha256sum``
        does (the line starts with ``\``, and ``\``, ``\n``, ``\r`` stand for those characters). So
        ``find . -type f -printf "%P\0" | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum`` run in the
        folder reproduces it, and it equals the digest :func:`mlwarden.load` reports for a folder. Unlike
        ``model_signing``'s root digest (over the digests alone) it binds every path, so renaming a file
        changes it.
        """
        if self.is_file and len(self.files) == 1:
            return self.files[0].digest
        text = "".join(_manifest_line(f) for f in sorted(self.files, key=lambda f: f.path))
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    @property
    def total_size(self) -> int:
        """Bytes hashed over all files."""
        return sum(f.size for f in self.files)

    def get(self, path: str) -> FileDigest | None:
        """The entry for ``path`` (relative POSIX path), or None."""
        return next((f for f in self.files if f.path == path), None)

    def diff(self, other: ModelManifest) -> list[Difference]:
        """What changed going from this manifest (the expected one) to ``other`` (the actual one)."""
        return diff_files(self.files, other.files)


def normalise_ignore_paths(ignore_paths: Iterable[str | PurePath]) -> tuple[PurePosixPath, ...]:
    """Ignore paths as POSIX paths relative to the model root; absolute, ``..`` or empty ones are refused."""
    out: list[PurePosixPath] = []
    for raw in ignore_paths:
        text = raw.as_posix() if isinstance(raw, PurePath) else str(raw).replace(os.sep, "/")
        path = PurePosixPath(text)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise UsageError(f"ignore path {str(raw)!r} must be a path inside the model, relative to its root")
        if path not in out:
            out.append(path)
    return tuple(out)


def _ignored(parts: tuple[str, ...], ignore: tuple[tuple[str, ...], ...]) -> bool:
    return any(parts[: len(prefix)] == prefix for prefix in ignore)


def walk_files(root: Path, ignore: tuple[tuple[str, ...], ...]) -> list[tuple[Path, str]]:
    """Every regular file under ``root`` (not ignored) as (absolute path, relative POSIX path).

    ``ignore`` holds path-component prefixes relative to ``root``. Symbolic links, FIFOs, sockets and devices are
    refused (:class:`ModelPathError`): a model's bytes are its regular files, never something a link points at.
    """
    found: list[tuple[Path, str]] = []
    pending: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listing = list(entries)
        except OSError as exc:
            raise ModelPathError(f"cannot list {folder}: {exc.strerror or exc}") from None
        for entry in listing:
            parts = (*prefix, entry.name)
            if _ignored(parts, ignore):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                raise ModelPathError(f"{path} is a symbolic link: links are not followed (they could point outside)")
            if entry.is_dir(follow_symlinks=False):
                pending.append((path, parts))
            elif entry.is_file(follow_symlinks=False):
                found.append((path, "/".join(parts)))
            else:
                raise ModelPathError(f"{path} is not a regular file or folder (a FIFO, socket or device?)")
    return found


def hash_file(path: Path, *, chunk_size: int = CHUNK_SIZE) -> tuple[str, int]:
    """SHA-256 (hex) and size of one regular file, read in ``chunk_size`` pieces into a reused buffer.

    Raises:
        ModelPathError: the file is missing, unreadable, a symbolic link or not a regular file.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise ModelPathError(f"{path} is a symbolic link: links are not signed") from None
        raise ModelPathError(f"cannot read {path}: {exc.strerror or exc}") from None
    with open(fd, "rb", buffering=0, closefd=True) as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelPathError(f"{path} is not a regular file")
        digest = hashlib.sha256()
        buffer = bytearray(chunk_size)
        view = memoryview(buffer)
        size = 0
        try:
            while n := stream.readinto(view):
                digest.update(view[:n])
                size += n
        except OSError as exc:
            raise ModelPathError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest(), size


def default_workers(file_count: int) -> int:
    """Threads to hash ``file_count`` files with: enough to keep every core and the disk busy, no more."""
    return max(1, min(file_count, 32, (os.cpu_count() or 1) + 2))


def model_name(path: Path) -> str:
    """The informative name of a model: its last path component (resolved when the path ends in ``..``)."""
    name = path.name
    if not name or name == "..":
        name = os.path.basename(path.resolve())
    return name


def hash_model(
    path: Path | str,
    *,
    ignore_paths: Sequence[str | PurePath] = (),
    workers: int | None = None,
    ignore_git_paths: bool = True,
) -> ModelManifest:
    """Hash a model file or folder into a :class:`ModelManifest`.

    Args:
        path: the model: a regular file, or a folder walked recursively.
        ignore_paths: paths relative to the model root to leave out (a folder hides everything below it).
            Ignored for a single-file model, as ``model_signing`` does.
        workers: hashing threads (default: cores + 2, at most one per file).
        ignore_git_paths: also leave out ``.git``, ``.gitattributes``, ``.github`` and ``.gitignore`` at the
            root (``model_signing``'s default).

    Raises:
        ModelPathError: the path is missing, is (or contains) a symbolic link or a special file, or a file
            cannot be read.
        UsageError: an ignore path is absolute or climbs out of the model with ``..``.
    """
    root = Path(path)
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    ignore = normalise_ignore_paths([*ignore_paths, *(GIT_PATHS if ignore_git_paths else ())])
    if root.is_symlink():
        raise ModelPathError(f"{root} is a symbolic link: sign the real path instead")
    if root.is_file():
        digest, size = hash_file(root)
        return ModelManifest(model_name(root), (FileDigest(path=root.name, digest=digest, size=size),), is_file=True)
    if not root.is_dir():
        if not root.exists():
            raise ModelPathError(f"no such file or folder: {root}")
        raise ModelPathError(f"{root} is not a regular file or folder")
    files = walk_files(root, tuple(p.parts for p in ignore))
    count = workers or default_workers(len(files))
    if count == 1 or len(files) <= 1:
        results = [hash_file(p) for p, _ in files]
    else:
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="mlwarden-hash") as pool:
            results = list(pool.map(hash_file, [p for p, _ in files]))
    entries = [FileDigest(path=rel, digest=d, size=s) for (_, rel), (d, s) in zip(files, results, strict=True)]
    entries.sort(key=lambda f: path_key(f.path))
    return ModelManifest(model_name(root), tuple(entries))
