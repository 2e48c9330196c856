"""Turn bulk SOURCEs (folders, files, ``@list`` files, remote URLs and prefixes, Hub listings) into work items.

A list file holds one path or URL per line; blank lines and ``#`` comments are ignored, relative paths are
taken relative to the list file. Folders are walked recursively and remote prefixes are listed exactly as
``mlwarden scan`` does (:func:`mlwarden.scan.engine.expand_targets`). A Hub listing (``hf://ORG``,
``hf://?search=...``; :mod:`mlwarden.bulk.hub`) becomes one ``hf://ORG/NAME@COMMIT`` per repository, each expanded
the same way; a repository that cannot be expanded becomes a failed item rather than stopping the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlwarden.bulk.hub import DEFAULT_MAX_REPOS, Note, list_repos, parse_listing
from mlwarden.bulk.store import BulkError, Known
from mlwarden.core.errors import UsageError
from mlwarden.scan.engine import expand_targets
from mlwarden.scan.remote import RemoteFile, is_remote


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One artifact to scan: its identity (path or URL) and what the coordinator knows of it without reading it."""

    source: str
    remote: bool = False
    size: int | None = None
    mtime_ns: int | None = None
    pin: str | None = None  # remote: the store's content pin (sha256 or etag) when it declares one
    error: str | None = None  # known unscannable when planned (a listed repository that could not be expanded)


def read_list(path: Path) -> list[str]:
    """The entries of a list file (``#`` comments and blank lines skipped; relative paths resolved beside it).

    Raises:
        BulkError: the list file cannot be read.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BulkError(f"cannot read list file {path}: {exc}") from None
    out: list[str] = []
    for line in lines:
        entry = line.split("#", 1)[0].strip() if not is_remote(line.strip()) else line.strip()
        if not entry:
            continue
        out.append(entry if is_remote(entry) or os.path.isabs(entry) else str(path.parent / entry))
    return out


def expand_sources(
    sources: Iterable[str], *, max_repos: int = DEFAULT_MAX_REPOS, on_note: Note | None = None
) -> list[WorkItem]:
    """Every artifact named by ``sources`` (``@FILE`` is a list file), deduplicated, in a stable order.

    Args:
        sources: folders, files, ``@list`` files, URLs and prefixes, Hub listings.
        max_repos: bound on the repositories each Hub listing expands to.
        on_note: told when a Hub listing was cut at ``max_repos``.

    Raises:
        BulkError: a path does not exist, a list file is unreadable, a URL names nothing, or a Hub listing fails.
    """
    targets: list[str] = []
    for source in sources:
        if source.startswith("@"):
            targets.extend(read_list(Path(source[1:])))
        else:
            targets.append(source)
    items: list[WorkItem] = []
    seen: set[str] = set()
    for target in targets:
        query = parse_listing(target) if is_remote(target) else None
        if query is None:
            _add(items, seen, _expand(target))
            continue
        for repo in list_repos(query, max_repos, on_note):
            try:
                _add(items, seen, _expand(repo))
            except BulkError as exc:  # one repository (gated, gone since the listing): a failed row, not a failed run
                if repo not in seen:
                    seen.add(repo)
                    items.append(WorkItem(repo, remote=True, error=str(exc)))
    return items


def _expand(target: str) -> list[WorkItem]:
    try:
        found = expand_targets([target])
    except UsageError as exc:
        raise BulkError(str(exc)) from None
    items: list[WorkItem] = []
    for item in found:
        if isinstance(item, RemoteFile):
            pin = item.pins.get("sha256") or item.pins.get("etag") or item.pins.get("version_id")
            items.append(WorkItem(item.display, remote=True, size=item.size, pin=pin))
            continue
        try:
            st = item.stat()
            items.append(WorkItem(str(item), size=st.st_size, mtime_ns=st.st_mtime_ns))
        except OSError:  # dangling link, vanished: the worker reports it as a failed row
            items.append(WorkItem(str(item)))
    return items


def _add(items: list[WorkItem], seen: set[str], found: list[WorkItem]) -> None:
    for item in found:
        if item.source not in seen:
            seen.add(item.source)
            items.append(item)


def already_done(item: WorkItem, known: Known | None, *, retry_failed: bool) -> bool:
    """Whether the store makes dispatching ``item`` unnecessary.

    A local file is skipped when its newest row is ``done`` with the same size and mtime (the row holds the digest
    those bytes had); a remote object when its row is ``done`` and carries the store's current pin. Failed and
    timed-out rows are skipped too unless ``retry_failed``: a re-run without it only fills what is missing.
    """
    if known is None:
        return False
    if known.status != "done":
        return not retry_failed and known.size == item.size and known.mtime_ns == item.mtime_ns
    if item.remote:
        return item.pin is not None and known.digest == item.pin
    return known.size == item.size and known.mtime_ns == item.mtime_ns and item.size is not None
