"""Where a registered version was downloaded from: the URL, its pins, and the digest of every file fetched.

``mlwarden register NAME URL`` downloads the model through the remote cache (``docs/remote.md``) and registers the
local copy. :class:`ModelSource` records what was fetched so that a version answers "where did these bytes come
from?": the URL as it may be displayed (credentials removed, query values redacted), the pins that fixed the
object (ETag, S3 VersionId, ``hf://`` revision and commit, a declared sha256) and the SHA-256 of each downloaded
file. The registry stores it as a ``source`` attachment it writes itself (like the ML-BOM; no schema change): the
JSON document in the blob store, its summary in the attachment's details and in the audit event.

The record is checked against the registered bytes: the downloaded files' ``(sha256, size)`` must be exactly the
manifest's, so a source can only describe the version it is stored with.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.registry.errors import BadInput
from mlwarden.registry.values import check_text
from mlwarden.scan.remote import RemoteFile, redact
from mlwarden.scan.remote_cache import CachedCopy, RemoteCache, downloaded

if TYPE_CHECKING:
    from mlwarden.integrity.hashing import FileDigest

#: ``format`` of the stored source document.
SOURCE_FORMAT = "mlwarden.registry-source/1"
#: Pins kept per file (what :class:`~mlwarden.scan.remote.RemoteFile` records before reading).
PIN_NAMES = ("etag", "version_id", "last_modified", "revision", "commit", "sha256")
#: Longest URL or pin value kept.
MAX_TEXT = 4096


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One downloaded object.

    Attributes:
        url: the object's URL, redacted.
        size: bytes downloaded.
        sha256: SHA-256 (hex) of the downloaded bytes.
        pins: what pinned the object while it was read (``etag``, ``version_id``, ``last_modified``,
            ``revision``, ``commit``, and ``sha256`` when the store declares one).
    """

    url: str
    size: int
    sha256: str
    pins: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """The URL a version was registered from, and every file fetched from it."""

    url: str
    files: tuple[SourceFile, ...]

    @classmethod
    def from_downloads(cls, url: str, fetched: Sequence[tuple[RemoteFile, CachedCopy]]) -> ModelSource:
        """The record of ``url`` from the objects the remote cache handed back (each with its verified copy)."""
        files = tuple(
            SourceFile(
                url=item.display,
                size=copy.size,
                sha256=copy.sha256,
                pins={k: str(item.pins[k]) for k in PIN_NAMES if item.pins.get(k)},
            )
            for item, copy in fetched
        )
        return cls(url=url, files=files)

    def checked(self, manifest_files: Sequence[FileDigest]) -> ModelSource:
        """The record redacted, and validated against the manifest of the bytes being registered.

        Raises:
            BadInput: a text with control characters or too long, or files that are not the registered ones.
        """
        files = tuple(
            SourceFile(
                url=_text("source URL", redact(f.url)),
                size=int(f.size),
                sha256=_text("source sha256", f.sha256.lower()),
                pins={k: _text(f"source {k}", str(v)) for k, v in sorted(f.pins.items()) if k in PIN_NAMES},
            )
            for f in self.files
        )
        fetched = Counter((f.sha256, f.size) for f in files)
        registered = Counter((f.digest.lower(), f.size) for f in manifest_files)
        if not files or fetched != registered:
            raise BadInput("the source record does not describe the registered files (sha256 and size differ)")
        return ModelSource(url=_text("source URL", redact(self.url)), files=files)

    def _common(self, pin: str) -> str | None:
        values = {f.pins.get(pin) for f in self.files}
        return values.pop() if len(values) == 1 else None

    def summary(self) -> dict[str, Any]:
        """What a version shows and its audit event records.

        The URL, revision and commit; for a single file also its ETag / VersionId and sha256 (a folder's per-file
        pins are in the stored document).
        """
        out: dict[str, Any] = {"url": self.url, "files": len(self.files)}
        for pin in ("revision", "commit"):
            value = self._common(pin)
            if value:
                out[pin] = value
        if len(self.files) == 1:
            only = self.files[0]
            out["sha256"] = only.sha256
            for pin in ("etag", "version_id", "last_modified"):
                if only.pins.get(pin):
                    out[pin] = only.pins[pin]
        return out

    def document(self) -> bytes:
        """The stored JSON document (sorted keys, one per version)."""
        doc = {
            "format": SOURCE_FORMAT,
            **self.summary(),
            "files": [{"url": f.url, "size": f.size, "sha256": f.sha256, "pins": dict(f.pins)} for f in self.files],
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8")


def _text(kind: str, value: str) -> str:
    return check_text(kind, value, max_length=MAX_TEXT)


class _RecordingCache(RemoteCache):
    """A remote cache that remembers each object it hands back, with its verified copy."""

    def __init__(self, directory: Path | None = None) -> None:
        super().__init__(directory)
        self.fetched: list[tuple[RemoteFile, CachedCopy]] = []

    def fetch(self, item: RemoteFile, max_file_size: int) -> CachedCopy:
        """As :meth:`RemoteCache.fetch`, recording ``item`` and its copy."""
        copy = super().fetch(item, max_file_size)
        self.fetched.append((item, copy))
        return copy


@contextlib.contextmanager
def download(url: str, max_file_size: int, cache_dir: Path | None = None) -> Iterator[tuple[Path, ModelSource]]:
    """The files ``url`` names laid out locally (:func:`~mlwarden.scan.remote_cache.downloaded`), with their source.

    The record comes from the same resolution and download as the files (one listing, one set of pins), so it
    describes exactly the bytes handed to :meth:`~mlwarden.registry.service.Registry.register`.

    Raises:
        RemoteError: as :func:`~mlwarden.scan.remote_cache.downloaded`.
    """
    cache = _RecordingCache(cache_dir)
    with downloaded(url, max_file_size, cache) as path:
        yield path, ModelSource.from_downloads(url, cache.fetched)
