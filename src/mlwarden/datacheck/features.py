"""The rows the model-based checks learn from, and how they become features.

Confident learning and outlier scores need every sampled row at once (cross-validation), so this is the one
place rows are held in memory: at most ``max_rows`` of them, chosen by a seeded hash of the row number (the same
rows whatever the chunk size), restricted to the feature, label and sensitive columns. Numbers are used as is,
categorical columns one-hot encoded and free text turned into TF-IDF vectors; identifiers never become features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlwarden.datacheck.model import ColumnInfo

_MIX = np.uint64(0x9E3779B97F4A7C15)


def row_keys(rows: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random 64-bit key per row number (SplitMix64's finaliser)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) * _MIX + np.uint64(seed) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class FeatureSample:
    """Keeps the ``max_rows`` rows with the smallest keys (a uniform sample without replacement)."""

    def __init__(self, columns: Sequence[ColumnInfo], max_rows: int, seed: int, extra: Sequence[str] = ()) -> None:
        self.features = [c for c in columns if c.kind in ("numeric", "categorical", "text")]
        wanted = [c.name for c in self.features] + [e for e in extra if e]
        self.keep = list(dict.fromkeys(wanted))
        self.max_rows = max_rows
        self.seed = seed
        self.total = 0
        self._kept: pd.DataFrame | None = None
        self._keys: np.ndarray = np.empty(0, dtype=np.uint64)

    def add(self, frame: pd.DataFrame) -> None:
        """Offer one normalised chunk."""
        self.total += len(frame)
        keys = row_keys(frame.index.to_numpy(), self.seed)
        part = frame[self.keep]
        merged = part if self._kept is None else pd.concat([self._kept, part])
        all_keys = np.concatenate([self._keys, keys])
        if len(merged) > self.max_rows:
            chosen = np.argpartition(all_keys, self.max_rows - 1)[: self.max_rows]
            chosen.sort()
            merged, all_keys = merged.iloc[chosen], all_keys[chosen]
        self._kept, self._keys = merged, all_keys

    def frame(self) -> pd.DataFrame:
        """The sampled rows in file order (index: row number)."""
        if self._kept is None:
            return pd.DataFrame(columns=self.keep)
        return self._kept.sort_index()


def design(features: Sequence[ColumnInfo], max_text_features: int = 2**15) -> tuple[Any, bool]:
    """A scikit-learn transformer for ``features`` and whether its output is sparse (text present)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import OneHotEncoder

    numeric = [c.name for c in features if c.kind == "numeric"]
    categorical = [c.name for c in features if c.kind == "categorical"]
    text = [c.name for c in features if c.kind == "text"]
    parts: list[tuple[str, Any, Any]] = []
    if numeric:
        parts.append(("numeric", "passthrough", numeric))
    if categorical:
        parts.append(("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=bool(text)), categorical))
    for name in text:
        vectorizer = TfidfVectorizer(max_features=max_text_features, ngram_range=(1, 2), sublinear_tf=True, min_df=2)
        parts.append((f"text:{name}", vectorizer, name))
    return ColumnTransformer(parts, sparse_threshold=0.3 if text else 0.0), bool(text)
