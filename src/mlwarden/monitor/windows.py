"""Bounded sliding windows over what a deployed model sees and says.

Monitoring must never grow with traffic: every window here is a fixed-capacity ring buffer preallocated in
numpy, so an append is O(1) and memory is fixed at construction. Optionally, entries also expire by age
(``max_age_s``) so that a quiet service does not judge today's traffic against last week's stragglers; expiry
pops from the oldest end and is amortised O(1) per append. The clock is injectable so that tests (and replays
of recorded traffic) control time.

Four shapes cover the monitor's needs:

* :class:`ScalarWindow` - one number per event: confidence, latency, a 0/1 error flag;
* :class:`VectorWindow` - a numeric feature vector per request;
* :class:`CategoricalWindow` - one or more categorical values per request (stored as bounded strings);
* :class:`FeatureWindow` - named numeric and categorical features of a tabular request, sharing one clock
  and one eviction order, which is what :class:`~mlwarden.monitor.drift.DriftDetector` consumes.

``values()`` returns a snapshot (a copy, oldest first); later appends never change a snapshot.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mlwarden.core.errors import UsageError

Clock = Callable[[], float]
"""A function returning the current time in seconds (``time.monotonic`` by default)."""

MAX_CAPACITY = 10_000_000
"""Upper bound on any window's capacity: a guard against a typo allocating the whole machine."""


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """Bookkeeping of a window, for metrics and for evidence attached to drift decisions.

    Attributes:
        size: entries currently held.
        capacity: the fixed maximum number of entries.
        appended: entries ever appended.
        evicted: entries pushed out because the window was full.
        expired: entries dropped because they were older than ``max_age_s``.
    """

    size: int
    capacity: int
    appended: int
    evicted: int
    expired: int


class _Ring:
    """Index and timestamp bookkeeping shared by the windows: which slots are live, oldest first."""

    __slots__ = ("_clock", "_size", "_stamps", "_start", "appended", "capacity", "evicted", "expired", "max_age_s")

    def __init__(self, capacity: int, max_age_s: float | None, clock: Clock | None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 < capacity <= MAX_CAPACITY:
            raise UsageError(f"window capacity must be an integer in 1..{MAX_CAPACITY}, got {capacity!r}")
        if max_age_s is not None and not (isinstance(max_age_s, int | float) and 0 < max_age_s < math.inf):
            raise UsageError(f"window max_age_s must be a positive finite number of seconds or None, got {max_age_s!r}")
        self.capacity = capacity
        self.max_age_s = None if max_age_s is None else float(max_age_s)
        self._clock: Clock = clock if clock is not None else time.monotonic
        self._stamps = np.zeros(capacity, dtype=np.float64) if max_age_s is not None else None
        self._start = 0
        self._size = 0
        self.appended = 0
        self.evicted = 0
        self.expired = 0

    def _expire(self) -> None:
        if self._stamps is None or self.max_age_s is None:
            return
        cutoff = float(self._clock()) - self.max_age_s
        while self._size and self._stamps[self._start] < cutoff:
            self._start = (self._start + 1) % self.capacity
            self._size -= 1
            self.expired += 1

    def next_slot(self) -> int:
        """Reserve the slot for a new entry (expiring and evicting as needed) and return its index."""
        self._expire()
        if self._size == self.capacity:
            self._start = (self._start + 1) % self.capacity
            self._size -= 1
            self.evicted += 1
        slot = (self._start + self._size) % self.capacity
        self._size += 1
        self.appended += 1
        if self._stamps is not None:
            self._stamps[slot] = float(self._clock())
        return slot

    def order(self) -> NDArray[np.intp]:
        """Live slots, oldest first (after expiring old entries)."""
        self._expire()
        return (self._start + np.arange(self._size, dtype=np.intp)) % self.capacity

    def size(self) -> int:
        self._expire()
        return self._size

    def clear(self) -> None:
        self._start = 0
        self._size = 0

    def counts(self) -> WindowCounts:
        return WindowCounts(self.size(), self.capacity, self.appended, self.evicted, self.expired)


def _finite_vector(x: ArrayLike | Sequence[Any], n: int, what: str) -> NDArray[np.float64]:
    try:
        arr = np.asarray(cast(Any, x), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what}: not numeric ({exc})") from None
    if arr.shape != (n,):
        raise UsageError(f"{what}: expected {n} value(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise UsageError(f"{what}: values must be finite (validate inputs before monitoring them)")
    return arr


class _Window:
    """Common surface: length, counts, clear."""

    _ring: _Ring

    def __len__(self) -> int:
        return self._ring.size()

    @property
    def capacity(self) -> int:
        """The fixed maximum number of entries."""
        return self._ring.capacity

    def counts(self) -> WindowCounts:
        """Current size and lifetime append / eviction / expiry counts."""
        return self._ring.counts()

    def clear(self) -> None:
        """Drop every entry (lifetime counts are kept)."""
        self._ring.clear()


class ScalarWindow(_Window):
    """A sliding window of one number per event (confidence, latency, a 0/1 error flag).

    Args:
        capacity: maximum number of values kept; the oldest is evicted beyond it.
        max_age_s: optionally drop values older than this many seconds.
        clock: time source for ``max_age_s`` (seconds); injectable for tests.
    """

    def __init__(self, capacity: int, *, max_age_s: float | None = None, clock: Clock | None = None) -> None:
        self._ring = _Ring(capacity, max_age_s, clock)
        self._data = np.zeros(capacity, dtype=np.float64)

    def append(self, x: float) -> None:
        """Add one finite value in O(1)."""
        self._data[self._ring.next_slot()] = _finite_vector([x], 1, "scalar window")[0]

    def values(self) -> NDArray[np.float64]:
        """A copy of the live values, oldest first."""
        return self._data[self._ring.order()]

    def mean(self) -> float | None:
        """Mean of the live values (for a 0/1 flag: the rate), or None when empty."""
        v = self.values()
        return float(v.mean()) if v.size else None


class VectorWindow(_Window):
    """A sliding window of numeric feature vectors of a fixed dimension.

    Args:
        n_features: length of every vector.
        capacity: maximum number of vectors kept; the oldest is evicted beyond it.
        max_age_s: optionally drop vectors older than this many seconds.
        clock: time source for ``max_age_s`` (seconds); injectable for tests.
    """

    def __init__(
        self, n_features: int, capacity: int, *, max_age_s: float | None = None, clock: Clock | None = None
    ) -> None:
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise UsageError(f"n_features must be a positive integer, got {n_features!r}")
        self._ring = _Ring(capacity, max_age_s, clock)
        self.n_features = n_features
        self._data = np.zeros((capacity, n_features), dtype=np.float64)

    def append(self, x: ArrayLike) -> None:
        """Add one finite vector of length ``n_features`` in O(n_features)."""
        vec = _finite_vector(x, self.n_features, "vector window")
        self._data[self._ring.next_slot()] = vec

    def extend(self, rows: ArrayLike) -> None:
        """Append each row of a 2-D array, in order."""
        for row in np.atleast_2d(np.asarray(rows, dtype=np.float64)):
            self.append(row)

    def values(self) -> NDArray[np.float64]:
        """A copy of the live vectors, shape ``(len, n_features)``, oldest first."""
        return self._data[self._ring.order()]


def _category(value: object, max_len: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:max_len]


class CategoricalWindow(_Window):
    """A sliding window of categorical values (``n_features`` per entry), stored as strings.

    Values are converted with ``str`` and truncated to ``max_value_len`` characters, so memory stays bounded
    whatever a client sends.

    Args:
        n_features: number of categorical values per entry.
        capacity: maximum number of entries kept.
        max_age_s: optionally drop entries older than this many seconds.
        clock: time source for ``max_age_s`` (seconds).
        max_value_len: longest stored value, in characters.
    """

    def __init__(
        self,
        n_features: int,
        capacity: int,
        *,
        max_age_s: float | None = None,
        clock: Clock | None = None,
        max_value_len: int = 256,
    ) -> None:
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise UsageError(f"n_features must be a positive integer, got {n_features!r}")
        if not isinstance(max_value_len, int) or max_value_len < 1:
            raise UsageError(f"max_value_len must be a positive integer, got {max_value_len!r}")
        self._ring = _Ring(capacity, max_age_s, clock)
        self.n_features = n_features
        self.max_value_len = max_value_len
        self._data = np.full((capacity, n_features), "", dtype=object)

    def append(self, values: Sequence[object] | str) -> None:
        """Add one entry: a sequence of ``n_features`` values (a bare string when ``n_features == 1``)."""
        items: Sequence[object] = [values] if isinstance(values, str) else values
        if len(items) != self.n_features:
            raise UsageError(f"categorical window: expected {self.n_features} value(s), got {len(items)}")
        self._data[self._ring.next_slot()] = [_category(v, self.max_value_len) for v in items]

    def values(self) -> NDArray[np.object_]:
        """A copy of the live entries, shape ``(len, n_features)`` of ``str``, oldest first."""
        return self._data[self._ring.order()]

    def counts_of(self, feature: int = 0) -> dict[str, int]:
        """How often each value of one feature occurs in the window (O(window))."""
        if not 0 <= feature < self.n_features:
            raise UsageError(f"feature index {feature} out of range 0..{self.n_features - 1}")
        return dict(Counter(self.values()[:, feature].tolist()))


class FeatureWindow(_Window):
    """A sliding window of tabular requests with named numeric and categorical features.

    Both kinds share one ring, so they always hold the same requests; this is the window
    :meth:`mlwarden.monitor.drift.DriftDetector.check` compares with a baseline.

    Args:
        numeric: names of the numeric features (stored as float64).
        categorical: names of the categorical features (stored as bounded strings).
        capacity: maximum number of requests kept.
        max_age_s: optionally drop requests older than this many seconds.
        clock: time source for ``max_age_s`` (seconds).
        max_value_len: longest stored categorical value, in characters.
    """

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str] = (),
        *,
        capacity: int,
        max_age_s: float | None = None,
        clock: Clock | None = None,
        max_value_len: int = 256,
    ) -> None:
        names = [*numeric, *categorical]
        if not names:
            raise UsageError("a feature window needs at least one feature")
        if len(set(names)) != len(names):
            raise UsageError(f"duplicate feature names in {names}")
        self._ring = _Ring(capacity, max_age_s, clock)
        self.numeric_names = tuple(numeric)
        self.categorical_names = tuple(categorical)
        self.max_value_len = max_value_len
        self._num = np.zeros((capacity, len(self.numeric_names)), dtype=np.float64)
        self._cat = np.full((capacity, len(self.categorical_names)), "", dtype=object)

    def append(self, row: Mapping[str, object]) -> None:
        """Add one request given as ``{feature name: value}``; every declared feature must be present."""
        missing = [n for n in (*self.numeric_names, *self.categorical_names) if n not in row]
        if missing:
            raise UsageError(f"feature window: missing feature(s) {missing}")
        num = _finite_vector([row[n] for n in self.numeric_names], len(self.numeric_names), "feature window")
        slot = self._ring.next_slot()
        self._num[slot] = num
        self._cat[slot] = [_category(row[n], self.max_value_len) for n in self.categorical_names]

    def numeric(self) -> NDArray[np.float64]:
        """A copy of the numeric features, shape ``(len, n_numeric)``, oldest first."""
        return self._num[self._ring.order()]

    def categorical(self) -> NDArray[np.object_]:
        """A copy of the categorical features, shape ``(len, n_categorical)``, oldest first."""
        return self._cat[self._ring.order()]

    def columns(self) -> dict[str, NDArray[np.float64] | NDArray[np.object_]]:
        """A snapshot as ``{feature name: 1-D column}`` (numeric columns float64, categorical ``str``)."""
        order = self._ring.order()
        cols: dict[str, NDArray[np.float64] | NDArray[np.object_]] = {}
        for i, name in enumerate(self.numeric_names):
            cols[name] = self._num[order, i]
        for i, name in enumerate(self.categorical_names):
            cols[name] = self._cat[order, i]
        return cols
