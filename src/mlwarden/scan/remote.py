"""Scan models where they live: ``https://``, ``s3://``, ``hf://ORG/NAME[@REVISION]`` and any fsspec URL.

Nothing is downloaded whole. Each remote object becomes an :class:`~mlwarden.artifacts.artifact.Artifact` whose
streams read through one shared, bounded block cache that fetches byte ranges on demand: handlers that read only
a zip's central directory, a pickle member, a safetensors or GGUF header fetch only those ranges, never the tensor
bytes. Every range fetched is counted and digested, and the object is pinned (ETag / VersionId / commit) so the
report says exactly what was read (``docs/remote.md``).

Transports: ``http(s)://`` and ``hf://`` use :mod:`requests` (explicit timeouts, a small retry budget, redirects
followed only to the same host for ``http(s)://``); everything else goes through :func:`fsspec.core.url_to_fs`
(``s3://`` via s3fs, with boto's usual credential chain and ``AWS_ENDPOINT_URL`` for S3-compatible servers).
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Literal
from urllib.parse import urlsplit, urlunsplit

from mlwarden.artifacts.artifact import HEAD_SIZE, Artifact
from mlwarden.core.errors import UsageError
from mlwarden.scan.result import RemoteProvenance

if TYPE_CHECKING:
    from mlwarden.scan.remote_folder import Listing

#: Smallest range fetched (a zip local header or a 256-byte storage head costs one block).
BLOCK_SIZE = 4 * 1024
#: Sequential misses double the fetch up to this size (reading a multi-megabyte data.pkl takes a few requests).
MAX_READAHEAD = 4 * 1024 * 1024
#: Bytes kept in the block cache of one object (least recently used blocks are dropped first).
CACHE_BYTES = 64 * 1024 * 1024
#: A prefix listing that holds more files than this is refused (list a narrower prefix).
MAX_FILES = 10_000
#: Folder levels a prefix listing descends.
MAX_LIST_DEPTH = 32
#: (connect, read) seconds for every HTTP request; retries on connection errors and 5xx / 429.
TIMEOUT = (10.0, 60.0)
RETRIES = 3
MAX_REDIRECTS = 5

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RemoteError(UsageError):
    """A remote model could not be resolved or read (missing object, refused access, no range support)."""


class RemoteNotFoundError(RemoteError):
    """The object does not exist (HTTP 404, no such key); a neighbour lookup reads this as "missing"."""


def is_remote(target: object) -> bool:
    """True for a ``scheme://`` string (a URL, not a local path)."""
    return isinstance(target, str) and _URL.match(target) is not None


def redact(url: str) -> str:
    """``url`` as it may be displayed: no ``user:password@``, query values replaced (presigned URLs carry keys)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(f"{kv.split('=', 1)[0]}=REDACTED" for kv in parts.query.split("&") if kv) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class _Reader:
    """Fetches byte ranges of one object through a bounded block cache; counts requests, bytes and digests them."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int) -> None:
        self._fetch = fetch
        self.size = size
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0
        self._last_miss = -2
        self._streak = 0
        self.requests = 0
        self.bytes_read = 0
        self._ranges: set[tuple[int, int, str]] = set()
        self.failure: str | None = None  # the first transport error (handlers turn exceptions into findings)

    def read(self, start: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``start`` (fewer at the end of the object)."""
        end = min(self.size, start + n)
        if start >= end:
            return b""
        out = bytearray()
        for index in range(start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1):
            block = self._block(index)
            lo = max(start, index * BLOCK_SIZE) - index * BLOCK_SIZE
            hi = min(end, (index + 1) * BLOCK_SIZE) - index * BLOCK_SIZE
            out += block[lo:hi]
        return bytes(out)

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is not None:
            self._blocks.move_to_end(index)
            return block
        # one block per miss; from the second miss in a row that continues the last one, double (a sequential read)
        self._streak = self._streak + 1 if index == self._last_miss + 1 else 0
        count = min(
            2 ** max(0, self._streak - 1),
            MAX_READAHEAD // BLOCK_SIZE,
            -(-(self.size - index * BLOCK_SIZE) // BLOCK_SIZE),
        )
        while count > 1 and any(i in self._blocks for i in range(index, index + count)):
            count //= 2
        start = index * BLOCK_SIZE
        end = min(self.size, start + count * BLOCK_SIZE)
        try:
            data = self._fetch(start, end)
            if len(data) != end - start:
                raise RemoteError(f"asked for {end - start} bytes at offset {start}, got {len(data)}")
        except Exception as exc:
            self.failure = self.failure or (str(exc) if isinstance(exc, RemoteError) else f"read failed: {exc}")
            raise
        self.requests += 1
        self.bytes_read += len(data)
        self._ranges.add((start, end, hashlib.sha256(data).hexdigest()))
        self._last_miss = index + count - 1
        for i in range(count):
            self._store(index + i, data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
        return data[:BLOCK_SIZE]

    def _store(self, index: int, block: bytes) -> None:
        self._blocks[index] = block
        self._cached += len(block)
        while self._cached > CACHE_BYTES and len(self._blocks) > 1:
            _, dropped = self._blocks.popitem(last=False)
            self._cached -= len(dropped)

    def digest(self) -> str:
        """SHA-256 over the sorted ``"start end sha256(range)"`` lines of every range fetched."""
        lines = "".join(f"{s} {e} {h}\n" for s, e, h in sorted(self._ranges))
        return hashlib.sha256(lines.encode()).hexdigest()


class _RangeStream(io.RawIOBase):
    """A seekable, read-only stream over a :class:`_Reader` (one per ``Artifact.open()``; they share the cache)."""

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self._pos = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable."""
        return True

    def tell(self) -> int:
        """Current offset."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move (clamped at 0; reads past the end return nothing)."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._reader.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Read from the shared cache, at most to the end of the current block.

        ``Artifact.open`` wraps this in a 64 KiB ``BufferedReader``: a short read keeps a 30-byte header read from
        fetching 64 KiB (a raw stream may return fewer bytes than asked; the buffer asks again when it needs more).
        """
        limit = BLOCK_SIZE - self._pos % BLOCK_SIZE
        data = self._reader.read(self._pos, min(len(buffer), limit))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass
class RemoteFile:
    """One remote object to scan: where it is, how to fetch ranges of it, and what pins it.

    Attributes:
        display: the URL as reports show it (credentials removed).
        size: length in bytes, from the server's metadata (checked against ``max_file_size`` before reading).
        fetch: returns the bytes ``[start, end)`` of exactly the pinned object.
        pins: provenance known before reading (etag, version_id, last_modified, commit, revision, sha256).
        verify: re-reads the metadata after the scan; returns an error text if the object changed, else ``None``.
        listing: the objects around it, for checks that look beside a model (:mod:`mlwarden.scan.remote_folder`).
        key: its key in ``listing``.
    """

    display: str
    size: int
    fetch: Callable[[int, int], bytes]
    pins: dict[str, str]
    verify: Callable[[], str | None] | None = None
    listing: Listing | None = None
    key: str = ""

    def artifact(self) -> tuple[Artifact, _Reader]:
        """The artifact handlers analyse, and the reader that counts what they fetched."""
        reader = _Reader(self.fetch, self.size)
        head = reader.read(0, HEAD_SIZE)
        folder = None
        if self.listing is not None:
            from mlwarden.scan.remote_folder import RemoteFolder, parent_key

            folder = RemoteFolder(self.listing, parent_key(self.key), reader)
        return (
            Artifact(chain=(self.display,), size=self.size, opener=lambda: _open(reader), head=head, folder=folder),
            reader,
        )

    def provenance(self, reader: _Reader | None, cached_sha256: str | None = None) -> RemoteProvenance:
        """What was scanned, for the report (``cached_sha256``: the downloaded copy dynamic analysis ran)."""
        return RemoteProvenance(
            url=self.display,
            etag=self.pins.get("etag"),
            version_id=self.pins.get("version_id"),
            last_modified=self.pins.get("last_modified"),
            revision=self.pins.get("revision"),
            commit=self.pins.get("commit"),
            sha256=self.pins.get("sha256"),
            bytes_read=0 if reader is None else reader.bytes_read,
            requests=0 if reader is None else reader.requests,
            read_digest=None if reader is None else reader.digest(),
            cached_sha256=cached_sha256,
        )


def _open(reader: _Reader) -> BinaryIO:
    return _RangeStream(reader)  # type: ignore[return-value]


def resolve(url: str) -> list[RemoteFile]:
    """The objects ``url`` names: one file, or the regular files under a prefix (sorted, at most ``MAX_FILES``).

    Raises:
        RemoteError: the URL names nothing, access is refused, or the transport is not installed.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        from mlwarden.scan.remote_http import http_file

        return [http_file(url)]
    if scheme == "hf":
        from mlwarden.scan.remote_http import hf_files

        return hf_files(url)
    return _fsspec_files(url)


def _fsspec_files(url: str) -> list[RemoteFile]:
    """Objects behind any fsspec URL (``s3://`` and others); a prefix lists its regular files."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise RemoteError("remote scanning needs fsspec (pip install 'mlwarden[remote]')") from None
    display = redact(url)
    try:
        fs, path = url_to_fs(url, skip_instance_cache=True)  # credentials and endpoint as the environment says now
        info = fs.info(path)
    except ImportError as exc:
        raise RemoteError(f"{display}: transport not installed ({exc.name}); pip install 'mlwarden[remote]'") from None
    except FileNotFoundError:
        raise RemoteNotFoundError(f"{display}: no such object or prefix") from None
    except (OSError, ValueError) as exc:
        raise RemoteError(f"{display}: {_scrub(str(exc), url)}") from None
    scheme = display.split("://", 1)[0]
    if info.get("type") == "file":
        item = _fsspec_file(fs, path, info, display)
        item.listing, item.key = _fsspec_lookups(fs, scheme), path  # no listing: one info() per name asked about
        return [item]
    found = fs.find(path, maxdepth=MAX_LIST_DEPTH, withdirs=False, detail=True)
    files = sorted((p, i) for p, i in found.items() if i.get("type") == "file")
    if not files:
        raise RemoteError(f"{display}: no files under this prefix")
    if len(files) > MAX_FILES:
        raise RemoteError(f"{display}: {len(files)} files under this prefix, more than {MAX_FILES}; narrow it")
    from mlwarden.scan.remote_folder import Listing

    items = {p: _fsspec_file(fs, p, i, f"{scheme}://{p}") for p, i in files}
    listing = Listing(items, items.get)  # complete below the prefix: the checks beside a file cost no request
    for p, item in items.items():
        item.listing, item.key = listing, p
    return list(items.values())


def _fsspec_lookups(fs: Any, scheme: str) -> Listing:
    """A listing that asks ``fs.info`` about each name (a single object: nothing around it was listed)."""
    from mlwarden.scan.remote_folder import DIRECTORY, Listing

    def lookup(key: str) -> RemoteFile | Literal["directory"] | None:
        display = f"{scheme}://{key}"
        try:
            info = fs.info(key)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RemoteError(f"{display}: {type(exc).__name__} when looking it up") from None
        return _fsspec_file(fs, key, info, display) if info.get("type") == "file" else DIRECTORY

    return Listing(None, lookup)


def _fsspec_pins(info: dict[str, Any]) -> dict[str, str]:
    pins: dict[str, str] = {}
    names = {"ETag": "etag", "etag": "etag", "VersionId": "version_id", "LastModified": "last_modified"}
    for key, name in names.items():
        value = info.get(key)
        if value:
            pins[name] = str(value).strip('"')
    return pins


def _fsspec_file(fs: Any, path: str, info: dict[str, Any], display: str) -> RemoteFile:
    """One fsspec object, read with ranged requests (s3fs sends ``If-Match`` with the ETag it opened)."""
    pins = _fsspec_pins(info)
    size = int(info.get("size") or 0)
    handle: list[Any] = []

    def fetch(start: int, end: int) -> bytes:
        for attempt in range(RETRIES + 1):
            try:
                if not handle:
                    handle.append(fs.open(path, "rb", cache_type="none"))
                f = handle[0]
                f.seek(start)
                return bytes(f.read(end - start))
            except OSError as exc:
                if attempt == RETRIES or isinstance(exc, FileNotFoundError | PermissionError):
                    raise RemoteError(f"{display}: {type(exc).__name__} while reading") from None
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def verify() -> str | None:
        try:
            now = _fsspec_pins(fs.info(path))
        except OSError as exc:
            return f"{display}: {type(exc).__name__} when checking the object after the scan"
        changed = [k for k in ("etag", "version_id") if pins.get(k) != now.get(k)]
        return f"{display}: object changed during the scan ({', '.join(changed)})" if changed else None

    return RemoteFile(display, size, fetch, pins, verify)


def _scrub(text: str, url: str) -> str:
    """Remove the raw URL and any password in it from a library's error text."""
    parts = urlsplit(url)
    text = text.replace(url, redact(url))
    if parts.password:
        text = text.replace(parts.password, "REDACTED")
    return text
