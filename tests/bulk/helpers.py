"""Small builders shared by the bulk tests."""

from __future__ import annotations

import pickle
from pathlib import Path


def make_folder(root: Path, n: int) -> list[Path]:
    """``n`` small benign pickles (distinct contents) in nested folders; returns their paths, sorted."""
    out = []
    for i in range(n):
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"m{i:04d}.pkl"
        path.write_bytes(pickle.dumps({"layer": i, "weights": list(range(i % 7))}, protocol=4))
        out.append(path)
    return sorted(out)
