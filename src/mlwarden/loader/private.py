"""Copy a model's bytes once into a private directory, hashing them on the way.

Everything :func:`mlwarden.load` does after the copy — static analysis, the sandboxed run, the actual load —
reads only this copy, so what is loaded is exactly what was analysed: nobody can swap the file between the
check and the load (the check-then-reopen race). The directory is created by ``mkdtemp`` (mode 0700, owned by
us), files are created with ``O_EXCL`` and mode 0600, and the source is read exactly once.

A folder (e.g. an ONNX model with external data) is copied whole. Its walk uses directory file descriptors
and ``O_NOFOLLOW``, and refuses symbolic links and special files inside it: a link would make the copy read
bytes from outside the model (``/etc/shadow`` as "external data").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlwarden.core.errors import LimitExceeded, UsageError
from mlwarden.core.policy import Limits

_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # NONBLOCK: never hang on a FIFO


@dataclass(frozen=True, slots=True)
class CopiedFile:
    """One file of the private copy."""

    relpath: str  # relative to the model root ("" parts joined with "/"); the file name for a single file
    path: Path  # the private copy
    size: int
    sha256: str  # hex


@dataclass(frozen=True, slots=True)
class PrivateCopy:
    """The private copy of a model: a 0700 directory the caller must remove (:meth:`remove`)."""

    root: Path
    files: tuple[CopiedFile, ...]
    is_folder: bool
    companions: tuple[CopiedFile, ...] = ()  # joblib < 0.10 array files copied beside a single model file

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the file; for a folder (or a file with companions), of the sorted manifest."""
        if not self.is_folder and not self.companions:
            return self.files[0].sha256
        every = (*self.files, *self.companions)
        manifest = "".join(f"{f.sha256}  {f.relpath}\n" for f in sorted(every, key=lambda f: f.relpath))
        return hashlib.sha256(manifest.encode()).hexdigest()

    def remove(self) -> None:
        """Delete the copy (a returned object that memory-maps a file keeps its inode alive on POSIX)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _copy_fd(src_fd: int, dest: Path, limits: Limits, display: str) -> tuple[int, str]:
    """Copy an open regular file to ``dest`` (created exclusively), returning (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    out_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(out_fd, "wb") as out:
        while chunk := os.read(src_fd, _CHUNK):
            size += len(chunk)
            if size > limits.max_file_size:  # checked while reading: the file may grow after fstat
                raise LimitExceeded("max_file_size", f"{display} is larger than {limits.max_file_size} bytes")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def _regular(fd: int, display: str, limits: Limits) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{display}: not a regular file")
    if st.st_size > limits.max_file_size:
        raise LimitExceeded(
            "max_file_size", f"{display} is {st.st_size} bytes, max_file_size is {limits.max_file_size}"
        )


def _walk(dir_fd: int, rel: str, dest: Path, limits: Limits, display: str, out: list[CopiedFile]) -> None:
    with os.scandir(dir_fd) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        relpath = f"{rel}/{name}" if rel else name
        shown = f"{display}/{relpath}"
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{shown}: symbolic links inside a model folder are refused (they can point anywhere)")
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, _OPEN_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                (dest / name).mkdir(mode=0o700)
                _walk(sub, relpath, dest / name, limits, display, out)
            finally:
                os.close(sub)
            continue
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{shown}: not a regular file")
        if len(out) >= limits.max_members:
            raise LimitExceeded("max_members", f"{display} holds more than {limits.max_members} files")
        fd = os.open(name, _OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            _regular(fd, shown, limits)  # re-checked on the descriptor: the entry may have been swapped
            size, sha = _copy_fd(fd, dest / name, limits, shown)
        finally:
            os.close(fd)
        out.append(CopiedFile(relpath, dest / name, size, sha))


def _companions(source: Path, root: Path, limits: Limits) -> tuple[CopiedFile, ...]:
    """Copy the array files joblib < 0.10 wrote beside ``source`` (``NAME_01.npy``, ``NAME_01.npy.z``).

    Their names are joblib's own convention; the analysis and the loader then only honour names the pickle
    gives that are files of this private directory. Links and special files are skipped.
    """
    from mlwarden.loader.legacy import companion_pattern

    pattern = companion_pattern(source.name)
    out: list[CopiedFile] = []
    try:
        names = sorted(n for n in os.listdir(source.parent) if pattern.fullmatch(n))
    except OSError:
        return ()
    for n in names[: limits.max_members]:
        try:
            fd = os.open(source.parent / n, _OPEN_FLAGS | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            size, sha = _copy_fd(fd, root / n, limits, str(source.parent / n))
            out.append(CopiedFile(n, root / n, size, sha))
        finally:
            os.close(fd)
    return tuple(out)


def copy_model(source: Path, limits: Limits) -> PrivateCopy:
    """Copy ``source`` (a file, or a folder recursively) into a new private directory.

    Raises:
        UsageError: the path does not exist, is not a regular file or folder, or a folder holds a symbolic
            link or a special file.
        LimitExceeded: a file is larger than ``limits.max_file_size`` or a folder holds more than
            ``limits.max_members`` files.
    """
    display = str(source)
    try:
        fd = os.open(source, _OPEN_FLAGS)
    except OSError as exc:
        raise UsageError(f"{display}: {exc.strerror or exc}") from None
    root = Path(tempfile.mkdtemp(prefix="mlwarden-load-"))
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            files: list[CopiedFile] = []
            model = root / (source.name or "model")
            model.mkdir(mode=0o700)
            _walk(fd, "", model, limits, display, files)
            if not files:
                raise UsageError(f"{display}: empty folder")
            return PrivateCopy(root, tuple(files), True)
        _regular(fd, display, limits)
        name = source.name or "model"
        size, sha = _copy_fd(fd, root / name, limits, display)
        companions = _companions(source, root, limits)
        return PrivateCopy(root, (CopiedFile(name, root / name, size, sha),), False, companions)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        os.close(fd)
