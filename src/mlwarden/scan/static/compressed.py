"""Compressed layers (gzip, bzip2, xz/lzma, zlib, joblib's ZF, lz4, zstd), removed under bomb limits.

joblib compresses whole pickles this way and people ship ``model.pkl.gz``; the decompressed stream is
handed back to the dispatcher, so a gzip-wrapped pickle is analysed exactly like a plain one.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from mlwarden.artifacts.artifact import HEAD_SIZE
from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Severity, rule
from mlwarden.scan.context import INCOMPLETE, MissingDependency
from mlwarden.scan.static.base import Handler

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

CORRUPT = rule(
    "MLW-CMP-001",
    "Compressed data is corrupt or truncated",
    Severity.LOW,
    cwe=20,
    description="Decompression failed part-way; what decompressed before the error was analysed (a loader "
    "would stop at the same point).",
    remediation="Obtain an intact copy of the file.",
)

_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)
_JOBLIB_ZF_HEADER = re.compile(rb"ZF0x[0-9a-fA-F]+L? *")  # hex length padded to 19 (Python 3) or 20 (Python 2)


class _ZlibReader(io.RawIOBase):
    """A forward-only zlib stream (seeking backwards restarts from the beginning)."""

    def __init__(self, opener: Callable[[], BinaryIO], skip: int) -> None:
        self._opener, self._skip = opener, skip
        self._restart()

    def _restart(self) -> None:
        self._raw = self._opener()
        self._raw.seek(self._skip)
        self._d = zlib.decompressobj()
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset}.get(whence)
        if target is None:
            raise io.UnsupportedOperation("seek from end of a zlib stream")
        if target < self._pos:
            self._raw.close()
            self._restart()
        while self._pos < target and self.read(min(1 << 20, target - self._pos)):
            pass
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._buf and not self._d.eof:
            chunk = self._raw.read(1 << 16)
            if not chunk:
                raise EOFError("compressed stream ended before the end-of-stream marker")
            self._buf = self._d.decompress(chunk, 1 << 20)
            while not self._buf and self._d.unconsumed_tail:
                self._buf = self._d.decompress(self._d.unconsumed_tail, 1 << 20)
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        if not self._buf and self._d.unconsumed_tail:
            self._buf = self._d.decompress(self._d.unconsumed_tail, 1 << 20)
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _Guarded(io.RawIOBase):
    """A decompressed stream that counts bytes against the limit and turns decoder errors into end-of-data.

    Seeking is done by reading: forward by decompressing and discarding, backward by starting the decoder
    again (some decoders cannot seek at all). Every byte produced counts against the limit, so a bomb is
    stopped whichever way a handler moves through it.
    """

    def __init__(self, factory: Callable[[], BinaryIO], limit: int, on_error: Callable[[str], None]) -> None:
        self._factory, self._limit, self._on_error = factory, limit, on_error
        self._inner = factory()
        self._pos = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Seekable by re-reading (see the class docstring)."""
        return True

    def tell(self) -> int:
        """Position in the decompressed data."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move by decompressing (forward) or restarting the decoder (backward); no seeking from the end."""
        if whence == io.SEEK_END:
            raise io.UnsupportedOperation("the end of a compressed stream is unknown until it is read")
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if target > self._limit:
            raise LimitExceeded("max_member_size", f"decompressed more than {self._limit} bytes")
        if target < self._pos:
            self._inner.close()
            self._inner = self._factory()
            self._pos = 0
        while self._pos < target:
            if not self.read(min(1 << 20, target - self._pos)):
                break
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Decompress into ``buffer``, counting against the limit."""
        try:
            data = self._inner.read(len(buffer))
        except _ERRORS as exc:
            self._on_error(f"{type(exc).__name__}: {exc}")
            return 0
        n = len(data)
        buffer[:n] = data
        self._pos += n
        if self._pos > self._limit:
            raise LimitExceeded("max_member_size", f"decompressed more than {self._limit} bytes")
        return n

    def close(self) -> None:
        """Close the decoder and the underlying file."""
        if not self.closed:
            self._inner.close()
        super().close()


def _decoder(fmt: Format, artifact: Artifact) -> Callable[[], BinaryIO]:
    if fmt is Format.GZIP:
        return lambda: gzip.GzipFile(fileobj=artifact.open(), mode="rb")  # type: ignore[return-value]
    if fmt is Format.BZIP2:
        return lambda: bz2.BZ2File(artifact.open())  # type: ignore[return-value]
    if fmt is Format.XZ:
        return lambda: lzma.LZMAFile(artifact.open(), format=lzma.FORMAT_XZ)  # type: ignore[return-value]
    if fmt is Format.LZMA:
        return lambda: lzma.LZMAFile(artifact.open(), format=lzma.FORMAT_ALONE)  # type: ignore[return-value]
    if fmt is Format.ZLIB:
        return lambda: _ZlibReader(artifact.open, 0)  # type: ignore[return-value]
    if fmt is Format.JOBLIB_ZF:
        m = _JOBLIB_ZF_HEADER.match(artifact.head[:32])
        skip = m.end() if m else 21  # the zlib stream starts after the padding, whatever the writer's width
        return lambda: _ZlibReader(artifact.open, skip)  # type: ignore[return-value]
    if fmt is Format.LZ4:
        try:
            import lz4.frame
        except ImportError:
            raise MissingDependency("lz4", "compression") from None
        return lambda: lz4.frame.LZ4FrameFile(artifact.open())
    if fmt is Format.ZSTD:
        try:
            import zstandard
        except ImportError:
            raise MissingDependency("zstandard", "compression") from None
        return lambda: zstandard.ZstdDecompressor().stream_reader(artifact.open())
    raise ValueError(f"not a compressed format: {fmt}")


class CompressedHandler(Handler):
    """Removes one compression layer and analyses what is inside."""

    formats = (
        Format.GZIP,
        Format.BZIP2,
        Format.XZ,
        Format.LZMA,
        Format.ZLIB,
        Format.JOBLIB_ZF,
        Format.LZ4,
        Format.ZSTD,
    )

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Decompress lazily (bounded) and descend into the content."""
        from mlwarden.artifacts.sniff import sniff

        fmt = sniff(artifact)
        decode = _decoder(fmt, artifact)
        errors: list[str] = []
        compressed = artifact.size or 0
        limits = ctx.limits
        # The ratio bounds the layer only above min_bomb_size: a bomb is a large absolute expansion.
        limit = min(limits.max_member_size, max(int(compressed * limits.max_compression_ratio), limits.min_bomb_size))

        def opener() -> BinaryIO:
            return _Guarded(decode, limit, errors.append)  # type: ignore[return-value]

        with opener() as fh:
            head = fh.read(HEAD_SIZE)
        name = f"<{fmt.value}>"
        child = artifact.child(name, None, opener, head)
        spooled: str | None = None
        try:
            if sniff(child) not in _STREAMED:
                # Zip central directories, HDF5 superblocks and protobuf field walks need to seek and to know the
                # size, which a decoder cannot give: the layer is decompressed once (bounded by `limit`) into a
                # private temporary file, and the content is analysed from there.
                spooled, size = _spool(opener)
                child = artifact.child(name, size, _file_opener(spooled), head)
            ctx.descend(child)
        except LimitExceeded as exc:
            ctx.report(INCOMPLETE.finding(child.location(), str(exc), limit=exc.limit))
        finally:
            if spooled is not None:
                os.unlink(spooled)
            if errors:
                ctx.report(CORRUPT.finding(artifact.location(), errors[0], format=fmt.value))


#: Inner formats analysed straight from the decoder: read front to back, never from the end.
_STREAMED = frozenset({Format.PICKLE, Format.EMPTY})


def _spool(opener: Callable[[], BinaryIO]) -> tuple[str, int]:
    """Decompress everything ``opener`` yields into a new 0600 temporary file; its path and size."""
    fd, path = tempfile.mkstemp(prefix="mlwarden-layer-")
    try:
        with os.fdopen(fd, "wb") as out, opener() as fh:
            shutil.copyfileobj(fh, out, 1 << 20)
            return path, out.tell()
    except BaseException:
        os.unlink(path)
        raise


def _file_opener(path: str) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")  # the caller closes the stream it asked for
