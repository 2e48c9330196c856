"""Fixtures of the loader tests: a canary folder and a hostile pickle built opcode by opcode."""

from __future__ import annotations

from pathlib import Path

import pytest


def os_system_pickle(command: str) -> bytes:
    """A protocol-2 pickle calling ``os.system(command)`` on load, assembled without importing anything."""
    arg = command.encode()
    return (
        b"\x80\x02cos\nsystem\n" + b"X" + len(arg).to_bytes(4, "little") + arg + b"\x85R."  # TUPLE1 REDUCE STOP
    )


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """Path of a file a hostile payload would create; tests assert it never appears."""
    folder = tmp_path / "canary"
    folder.mkdir()
    return folder / "pwned"


@pytest.fixture
def hostile(tmp_path: Path, canary: Path) -> bytes:
    return os_system_pickle(f"touch {canary}")
