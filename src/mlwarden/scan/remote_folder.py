"""The folder around a remote file, so checks that look beside a model work on a repository or prefix in place.

A local scan checks a model against its folder (:mod:`mlwarden.artifacts.folder`): the modules a ``config.json``
``auto_map`` names, the external data files of an ONNX model, the arrays of a legacy joblib pickle. A remote file
gets a :class:`RemoteFolder` over the :class:`Listing` of the URL it came from:

* a prefix or an ``hf://`` repository is listed once (the listing the scan already made; for ``hf://`` the whole
  repository at the pinned commit, also when one path in it was named), so the checks cost no request;
* a single ``http(s)://`` or fsspec object has no listing: each name a check asks about costs one metadata request
  (HEAD for HTTP, ``info`` for fsspec), at most :data:`MAX_LOOKUPS` per listing, and never a body byte.

Only a check that analyses a sibling's content (a legacy joblib ``NDArrayWrapper`` array, which numpy unpickles)
reads that sibling, with the same ranged reads as any remote file. A lookup that fails for another reason than a
missing object (refused, unreachable) makes the scanned file an error, like a failed range read: a check that could
not look is never reported as a clean folder.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Literal

from mlwarden.artifacts.artifact import HEAD_SIZE, Artifact
from mlwarden.artifacts.folder import NOT_FOUND, NOT_REGULAR, WHOLE_FILE, Folder, relative_path_problem
from mlwarden.core.errors import LimitExceeded
from mlwarden.scan.remote import RemoteError, _open, _Reader

if TYPE_CHECKING:
    from mlwarden.scan.remote import RemoteFile

#: Metadata requests one listing makes for names it does not hold (single objects have no listing).
MAX_LOOKUPS = 1_000
#: What a lookup returns for a name that is a folder (a prefix with objects under it).
DIRECTORY: Literal["directory"] = "directory"

Lookup = Callable[[str], "RemoteFile | Literal['directory'] | None"]


class Listing:
    """The objects around the remote files of one URL.

    Args:
        names: every object's key when the listing is complete (a prefix, a repository); ``None`` when each name
            must be looked up.
        lookup: the object with a key (``None`` when there is none, :data:`DIRECTORY` for a folder). Raises
            :class:`~mlwarden.scan.remote.RemoteError` when it cannot tell. Called for listed names only when
            ``names`` is given (to build the object that a check opens).
        max_lookups: bound on lookups of names the listing does not hold (default :data:`MAX_LOOKUPS`).
    """

    def __init__(self, names: Collection[str] | None, lookup: Lookup, max_lookups: int | None = None) -> None:
        self.names = None if names is None else frozenset(names)
        self.folders = frozenset() if self.names is None else _folders(self.names)
        self._lookup = lookup
        self._found: dict[str, RemoteFile | Literal["directory"] | None] = {}
        self._max = MAX_LOOKUPS if max_lookups is None else max_lookups
        self.lookups = 0

    def kind(self, key: str) -> Literal["file", "directory"] | None:
        """What ``key`` is: a regular object, a folder, or nothing."""
        if self.names is not None:
            if key in self.names:
                return "file"
            return "directory" if key in self.folders else None
        found = self._get(key)
        if found is None:
            return None
        return "directory" if found == DIRECTORY else "file"

    def file(self, key: str) -> RemoteFile:
        """The object ``key`` (for which :meth:`kind` is ``"file"``)."""
        found = self._get(key)
        if found is None or found == DIRECTORY:
            raise RemoteError(f"{key}: no such object")
        return found

    def _get(self, key: str) -> RemoteFile | Literal["directory"] | None:
        if key not in self._found:
            if self.names is None:
                if self.lookups >= self._max:
                    raise LimitExceeded("max_neighbour_lookups", f"more than {self._max} names looked up beside it")
                self.lookups += 1
            self._found[key] = self._lookup(key)
        return self._found[key]


def _folders(names: Collection[str]) -> frozenset[str]:
    """Every folder that holds a listed object, at any depth (``a/b/c`` -> ``a``, ``a/b``)."""
    out: set[str] = set()
    for name in names:
        folder = posixpath.dirname(name)
        while folder and folder not in out:
            out.add(folder)
            folder = posixpath.dirname(folder)
    return frozenset(out)


class RemoteFolder(Folder):
    """The folder ``base`` of a :class:`Listing`, as seen by checks on one scanned file.

    Args:
        listing: the objects of the URL.
        base: the folder's key (``""`` at the top, else ending in ``/``).
        sink: the scanned file's reader; a failed lookup is recorded as its failure, so the file becomes an error.
    """

    def __init__(self, listing: Listing, base: str, sink: _Reader) -> None:
        self.listing = listing
        self.base = base
        self.sink = sink

    def _key(self, name: str) -> str | None:
        """The key ``name`` names below this folder; ``None`` for the folder itself."""
        parts = [p for p in name.split("/") if p not in ("", ".")]
        return self.base + "/".join(parts) if parts else None

    def _kind(self, key: str) -> Literal["file", "directory"] | None:
        try:
            return self.listing.kind(key)
        except RemoteError as exc:
            self.sink.failure = self.sink.failure or f"looking beside the file: {exc}"
            raise

    def problem(self, name: str) -> tuple[str, bool] | None:
        """Missing, a folder, or an unsafe name (an object store has no symlinks or special files)."""
        lexical = relative_path_problem(name)
        if lexical is not None:
            return lexical, True
        key = self._key(name)
        kind = "directory" if key is None else self._kind(key)
        if kind == "file":
            return None
        return (NOT_REGULAR, True) if kind == "directory" else (NOT_FOUND, False)

    def is_file(self, name: str) -> bool:
        """Whether the listing holds an object ``name`` (never true for an unsafe name)."""
        key = None if relative_path_problem(name) is not None else self._key(name)
        return key is not None and self._kind(key) == "file"

    def open(self, name: str, chain: tuple[str, ...], depth: int) -> Artifact:
        """The sibling read with ranged requests of its own (a failure makes the scanned file an error)."""
        key = self._key(name)
        if key is None:
            raise RemoteError(f"{name!r} is a folder")
        try:
            item = self.listing.file(key)
        except RemoteError as exc:
            self.sink.failure = self.sink.failure or f"looking beside the file: {exc}"
            raise
        sink = self.sink

        def fetch(start: int, end: int) -> bytes:
            try:
                return item.fetch(start, end)
            except Exception as exc:
                sink.failure = sink.failure or f"reading {item.display}: {exc}"
                raise

        reader = _Reader(fetch, item.size)
        head = reader.read(0, HEAD_SIZE)
        return Artifact(
            chain=chain,
            size=item.size,
            opener=lambda: _open(reader),
            head=head,
            depth=depth,
            notes=frozenset({WHOLE_FILE}),
            folder=RemoteFolder(self.listing, parent_key(key), sink),
        )


def parent_key(key: str) -> str:
    """The folder key of ``key`` (``"a/b/c.onnx"`` -> ``"a/b/"``, ``"c.onnx"`` -> ``""``)."""
    folder = posixpath.dirname(key)
    return f"{folder}/" if folder else ""
