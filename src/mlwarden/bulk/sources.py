"""Turn bulk SOURCEs (folders, files, ``@list`` files, remote URLs and prefixes) into work items.

A list file holds one path or URL per line; blank lines and ``#`` comments are ignored, relative paths are
taken relative to the list file. Folders are walked recursively and remote prefixes are listed exactly as
``mlwarden scan`` does (:func:`mlwarden.scan.engine.expand_targets`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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


def expand_sources(sources: Iterable[str]) -> list[WorkItem]:
    """Every artifact named by ``sources`` (``@FILE`` is a list file), deduplicated, in a stable order.

    Raises:
        BulkError: a path does not exist, a list file is unreadable, or a URL names nothing.
    """
    targets: list[str] = []
    for source in sources:
        if source.startswith("@"):
            targets.extend(read_list(Path(source[1:])))
        else:
            targets.append(source)
    try:
        found = expand_targets(targets)
    except UsageError as exc:
        raise BulkError(str(exc)) from None
    items: list[WorkItem] = []
    for target in found:
        if isinstance(target, RemoteFile):
            pin = target.pins.get("sha256") or target.pins.get("etag") or target.pins.get("version_id")
            items.append(WorkItem(target.display, remote=True, size=target.size, pin=pin))
            continue
        try:
            st = target.stat()
            items.append(WorkItem(str(target), size=st.st_size, mtime_ns=st.st_mtime_ns))
        except OSError:  # dangling link, vanished: the worker reports it as a failed row
            items.append(WorkItem(str(target)))
    return items


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
