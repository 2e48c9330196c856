"""Exact and near duplicates, and duplicates whose labels disagree, found by hashing rows while streaming.

Each row's key columns (every column but the label and identifier columns, which differ between copies by
construction) are hashed twice with pandas' 64-bit row hash: as they are (exact duplicates), and coarsened
(near duplicates) — numbers binned to ``tolerance`` standard deviations of their column (measured on the schema
sample, so the bins do not depend on the chunk size), text case-folded with punctuation and runs of spaces
collapsed. Only 8 bytes per row per key stay in memory. A 64-bit collision among n rows has probability about
n²/2⁶⁵ (3·10⁻¹⁰ for a million rows). Near-duplicate detection by binning misses pairs that straddle a bin edge:
it finds copies with tiny perturbations, it does not measure distances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlwarden.datacheck.model import ColumnInfo, Rate


class DuplicateScan:
    """Accumulates row hashes over chunks; :meth:`metrics` and :meth:`samples` summarise them."""

    def __init__(
        self,
        columns: Sequence[ColumnInfo],
        label: str | None,
        scales: Mapping[str, float],
        *,
        tolerance: float = 0.05,
        max_groups_listed: int = 50,
    ) -> None:
        self.keys = [c for c in columns if c.kind in ("numeric", "categorical", "text")]
        self.label = label
        self.widths = {c.name: tolerance * (scales.get(c.name) or 1.0) for c in self.keys if c.kind == "numeric"}
        self.tolerance = tolerance
        self.max_groups_listed = max_groups_listed
        self._exact: list[np.ndarray] = []
        self._near: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    @property
    def key_columns(self) -> list[str]:
        """The columns compared."""
        return [c.name for c in self.keys]

    def add(self, frame: pd.DataFrame) -> None:
        """Hash one normalised chunk."""
        names = self.key_columns
        if not names:
            return
        self._exact.append(pd.util.hash_pandas_object(frame[names], index=False).to_numpy(np.uint64))
        near = {}
        for c in self.keys:
            col = frame[c.name]
            if c.kind == "numeric":
                near[c.name] = np.floor(col.to_numpy(np.float64) / self.widths[c.name])
            else:
                near[c.name] = col.str.casefold().str.replace(r"[\W_]+", " ", regex=True).str.strip()
        self._near.append(pd.util.hash_pandas_object(pd.DataFrame(near), index=False).to_numpy(np.uint64))
        if self.label is not None:
            self._labels.append(frame[self.label].to_numpy(dtype=object))

    def _table(self) -> pd.DataFrame:
        table = pd.DataFrame({"exact": np.concatenate(self._exact), "near": np.concatenate(self._near)})
        if self._labels:
            table["label"] = np.concatenate(self._labels)
        return table

    def _conflicts(self, table: pd.DataFrame, key: str) -> pd.Series:
        """Per duplicated key with more than one distinct label: its number of distinct labels."""
        dup = table[table[key].duplicated(keep=False)]
        distinct = dup.groupby(key)["label"].nunique()
        return distinct[distinct > 1]

    def metrics(self) -> dict[str, Any]:
        """Counts and rates of duplicate rows (copies beyond the first) and conflicting groups."""
        if not self._exact:
            return {"key_columns": []}
        table = self._table()
        n = len(table)
        out: dict[str, Any] = {"key_columns": self.key_columns}
        for key in ("exact", "near"):
            groups = table[key].value_counts()
            groups = groups[groups > 1]
            entry: dict[str, Any] = {
                "duplicate_rows": Rate(int(table[key].duplicated(keep="first").sum()), n).to_dict(),
                "groups": len(groups),
                "largest_group": int(groups.max()) if len(groups) else 0,
            }
            if "label" in table:
                conflicts = self._conflicts(table, key)
                rows = int(table[key].isin(conflicts.index).sum())
                entry["conflicting_label_groups"] = len(conflicts)
                entry["conflicting_label_rows"] = Rate(rows, n).to_dict()
            out[key] = entry
        near_only = table["near"].duplicated(keep="first") & ~table["exact"].duplicated(keep="first")
        out["near_only_rows"] = Rate(int(near_only.sum()), n).to_dict()
        return out

    def samples(self) -> list[dict[str, Any]]:
        """Duplicate groups (rows counted from 0): conflicting-label groups first, then the others."""
        if not self._exact:
            return []
        table = self._table()
        listed: list[dict[str, Any]] = []
        conflicts = self._conflicts(table, "exact") if "label" in table else pd.Series(dtype=int)
        dup = table[table["exact"].duplicated(keep=False)]
        for digest, group in dup.groupby("exact", sort=False):
            entry: dict[str, Any] = {"kind": "exact", "rows": [int(i) for i in group.index]}
            if "label" in table:
                entry["labels"] = [str(v) for v in group["label"]]
                entry["conflicting"] = digest in conflicts.index
            listed.append(entry)
        listed.sort(key=lambda e: (not e.get("conflicting", False), e["rows"][0]))
        return listed[: self.max_groups_listed]
