"""The monitor's history: JSON lines, one record per event, rotated by size, read back in order.

Records are ``{"t": unix time, "type": "drift" | "window" | "chart" | "alert", ...}``. Each is written with a
single ``write`` of one line under a lock, so a crash leaves at most one torn last line; the reader skips (and
counts) lines that do not parse rather than failing, because a report of the rest is worth more than none.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlwarden.core.errors import UsageError

FILE = "history.jsonl"


class History:
    """Append-only JSONL history with size rotation (``history.jsonl``, ``history.jsonl.1`` ... ``.keep``)."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024, keep: int = 5) -> None:
        if max_bytes < 1024 or keep < 1:
            raise UsageError(f"history: max_bytes must be >= 1024 and keep >= 1, got {max_bytes} and {keep}")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"history directory {self.directory}: {exc.strerror or exc}") from None
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record (a line); rotate first when the file is full."""
        line = json.dumps(record, separators=(",", ":"), default=float, allow_nan=False) + "\n"
        path = self.directory / FILE
        with self._lock:
            try:
                if path.exists() and path.stat().st_size + len(line) > self.max_bytes:
                    self._rotate(path)
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError:
                pass  # monitoring must never take serving down; the gap shows in the report's time axis

    def _rotate(self, path: Path) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = path.with_name(f"{FILE}.{i}")
            if older.exists():
                older.replace(path.with_name(f"{FILE}.{i + 1}"))
        path.replace(path.with_name(f"{FILE}.1"))


@dataclass
class HistoryRead:
    """What :func:`read_history` found: the records in time order and the lines it had to skip."""

    records: list[dict[str, Any]]
    skipped: int


def read_history(directory: str | os.PathLike[str], *, max_records: int = 2_000_000) -> HistoryRead:
    """Every record under ``directory``, oldest first (rotated files included).

    Raises:
        UsageError: no such directory or no history file in it.
    """
    folder = Path(directory)
    files = sorted(folder.glob(f"{FILE}.*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    files = [p for p in files if p.suffix[1:].isdigit()] + ([folder / FILE] if (folder / FILE).exists() else [])
    if not folder.is_dir() or not files:
        raise UsageError(f"no monitor history in {folder} (start the guard with --history-dir {folder})")
    records: list[dict[str, Any]] = []
    skipped = 0
    for path in files:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if not isinstance(record, dict) or "t" not in record or "type" not in record:
                    skipped += 1
                    continue
                records.append(record)
                if len(records) >= max_records:
                    break
    records.sort(key=lambda r: float(r["t"]))
    return HistoryRead(records, skipped)
