"""The history file: rotation by size, order across rotated files, corrupt lines skipped and counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.core.errors import UsageError
from mlwarden.monitor.history import FILE, History, read_history


def test_rotation_keeps_order_and_bounds_the_files(tmp_path: Path) -> None:
    history = History(tmp_path, max_bytes=2048, keep=3)
    for i in range(400):
        history.append({"t": float(i), "type": "chart", "value": i})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [FILE, f"{FILE}.1", f"{FILE}.2", f"{FILE}.3"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.iterdir())
    values = [r["value"] for r in read_history(tmp_path).records]
    assert values == sorted(values)
    assert values[-1] == 399
    assert len(values) < 400  # the oldest rotated out


def test_corrupt_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.append({"t": 1.0, "type": "alert", "rule": "a"})
    with (tmp_path / FILE).open("a") as fh:
        fh.write('{"t": 2.0, "type": "al')  # a torn line, as a crash leaves it
        fh.write("\n[1, 2]\n")
    history.append({"t": 3.0, "type": "alert", "rule": "b"})
    read = read_history(tmp_path)
    assert [r["rule"] for r in read.records] == ["a", "b"]
    assert read.skipped == 2


def test_missing_history_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no monitor history"):
        read_history(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="max_bytes"):
        History(tmp_path, max_bytes=10)
