"""Owner-only files and folders, whatever the process umask.

The registry home holds the database (users, token hashes, the audit log), its WAL, every model's bytes and
signing keys: nothing there is for other local users. Folders are created 0700 and files 0600 (blobs 0400)
explicitly, so a permissive umask (022 is the common default) cannot make them readable by others.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: Mode of every folder the registry creates.
DIR_MODE = 0o700
#: Mode of every writable file the registry creates (the SQLite database; its WAL and SHM copy it).
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents as 0700 (existing parents are left alone); returns it."""
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
        with contextlib.suppress(OSError):
            os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def tighten(path: Path, mode: int = DIR_MODE) -> None:
    """Remove group and other permissions from an existing file or folder we own (no-op otherwise)."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(path, st.st_mode & mode & 0o7777)


def private_file(path: Path) -> None:
    """Create ``path`` empty as 0600 if missing, and make an existing one owner-only."""
    path = Path(path)
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE))
    tighten(path, FILE_MODE)
    for suffix in ("-wal", "-shm", "-journal"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            tighten(sidecar, FILE_MODE)
