"""Artifacts: bytes under analysis, wherever they live (a file, an archive member, a decompressed layer).

An :class:`Artifact` never holds its whole content. It knows how to open a fresh stream over its bytes,
keeps the first :data:`HEAD_SIZE` bytes for sniffing, and remembers the chain of containers it came
from so that every finding can say exactly where it is.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mlwarden.core.findings import Location

if TYPE_CHECKING:
    from mlwarden.artifacts.folder import Folder

HEAD_SIZE = 64 * 1024
_CHUNK = 1024 * 1024
_BUFFER = 64 * 1024


@dataclass(frozen=True)
class Artifact:
    """Bytes under analysis.

    Attributes:
        chain: display chain, on-disk path first, then members / layers.
        size: length in bytes when known (``None`` for streams whose size is unknown until read).
        opener: returns a new binary stream positioned at the first byte.
        head: the first bytes (at most ``HEAD_SIZE``), for sniffing without re-reading.
        fs_path: the file on disk when these bytes are exactly that file (folder-aware checks need it).
        depth: how many containers / layers enclose it (0 for a file on disk).
        notes: facts about how it was obtained (e.g. ``"zip-flag-encrypted"``) that handlers may use.
        folder: the folder around the file these bytes came from, on disk or remote; members and layers inherit
            it (:mod:`mlwarden.artifacts.folder` says when a check may use it).
    """

    chain: tuple[str, ...]
    size: int | None
    opener: Callable[[], BinaryIO]
    head: bytes
    fs_path: Path | None = None
    depth: int = 0
    notes: frozenset[str] = field(default_factory=frozenset)
    folder: Folder | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_path(cls, path: Path, display: str | None = None) -> Artifact:
        """An artifact for a regular file (raises ``OSError`` when it cannot be read)."""
        from mlwarden.artifacts.folder import LocalFolder

        with open(path, "rb") as fh:
            head = fh.read(HEAD_SIZE)
            size = os.fstat(fh.fileno()).st_size
        return cls(
            chain=(display or str(path),),
            size=size,
            opener=lambda: open(path, "rb"),
            head=head,
            fs_path=path,
            folder=LocalFolder(path.parent),
        )

    @classmethod
    def from_bytes(
        cls, data: bytes, chain: tuple[str, ...], depth: int, notes: frozenset[str] = frozenset()
    ) -> Artifact:
        """An in-memory artifact (small decoded layers, embedded pickles)."""
        return cls(
            chain=chain,
            size=len(data),
            opener=lambda: io.BytesIO(data),
            head=data[:HEAD_SIZE],
            depth=depth,
            notes=notes,
        )

    @property
    def name(self) -> str:
        """Innermost name in the chain (a member name or the file path)."""
        return self.chain[-1]

    def open(self) -> BinaryIO:
        """A fresh, buffered stream over the content (handlers read small pieces, often one byte)."""
        stream = self.opener()
        if isinstance(stream, io.RawIOBase):
            return io.BufferedReader(stream, _BUFFER)
        return stream

    def location(self, offset: int | None = None, phase: str | None = None) -> Location:
        """A :class:`Location` inside this artifact."""
        return Location(self.chain, offset, phase)

    def child(
        self,
        name: str,
        size: int | None,
        opener: Callable[[], BinaryIO],
        head: bytes,
        notes: frozenset[str] = frozenset(),
    ) -> Artifact:
        """An artifact contained in this one (an archive member or a decoded layer)."""
        return Artifact(
            chain=(*self.chain, name),
            size=size,
            opener=opener,
            head=head,
            depth=self.depth + 1,
            notes=notes,
            folder=self.folder,
        )


class SliceReader(io.RawIOBase):
    """A read-only, seekable window ``[start, start+length)`` over another seekable binary file."""

    def __init__(self, opener: Callable[[], BinaryIO], start: int, length: int) -> None:
        self._fh = opener()
        self._start = start
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable (within the window)."""
        return True

    def tell(self) -> int:
        """Position within the window."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move within the window (clamped at 0; reads past the end return nothing)."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Read from the underlying file at the window's offset."""
        remaining = self._length - self._pos
        if remaining <= 0:
            return 0
        n = min(len(buffer), remaining)
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        """Close the underlying file."""
        if not self.closed:
            self._fh.close()
        super().close()


def skip(stream: BinaryIO, n: int) -> int:
    """Advance ``stream`` by ``n`` bytes, seeking when possible; returns how many bytes were skipped."""
    if n <= 0:
        return 0
    try:
        if stream.seekable():
            pos = stream.tell()
            end = stream.seek(0, io.SEEK_END)
            target = min(pos + n, end)
            stream.seek(target)
            return target - pos
    except (OSError, ValueError):
        pass
    done = 0
    while done < n:
        chunk = stream.read(min(_CHUNK, n - done))
        if not chunk:
            break
        done += len(chunk)
    return done
