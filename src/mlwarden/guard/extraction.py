"""Per-client reconnaissance and model-extraction detection: PRADA, query rate and input-space coverage.

PRADA (Juuti, Szyller, Marchal and Asokan, "PRADA: Protecting against DNN Model Stealing Attacks", IEEE EuroS&P
2019) rests on one observation: benign clients send natural inputs whose distances to each other are roughly
normally distributed, whereas extraction attacks synthesise queries (Jacobian augmentation, random
perturbations of a few seeds, line searches) whose distances are not. Per client and per predicted class it
keeps a *growing set* of past queries; each new query contributes its minimum L2 distance to the growing set of
its class, and it joins the set when that distance exceeds the class threshold ``T_c = max(T_c, mean - std)``
of the set's distances. Once enough distances exist, the Shapiro-Wilk statistic ``W`` of the distances (after
rejecting outliers beyond ``outlier_sigma`` standard deviations, as the authors' code does) is compared to
``delta``: ``W < delta`` means the distribution is not normal, i.e. an attack.

Defaults follow the paper: at least 100 distances before testing (the paper tests once ``|D| > 100``) and
``delta = 0.96``, the value used for MNIST; the paper tunes ``delta`` per model to the largest value that gives
no false positive on benign traffic (lower for GTSRB), so calibrate it on your own traffic.

Two cheaper signals complement it: a sliding-window query rate, and coverage (fraction of the classes and of
coarse input-space grid cells a client has touched, and the ratio of distinct queries).
All state is bounded: a capped growing set per class, a capped window of distances, at most ``max_clients``
clients with least-recently-seen eviction. Eviction forgets a client's history, so ``max_clients`` must exceed
the number of concurrently active authenticated clients (client ids come from API tokens, not from requests).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

from mlwarden.core.errors import UsageError

Action = Literal["allow", "throttle", "block"]
_SEVERITY: dict[Action, int] = {"allow": 0, "throttle": 1, "block": 2}


@dataclass(frozen=True, slots=True)
class ExtractionConfig:
    """Thresholds and memory limits for :class:`ExtractionMonitor` (validated on construction).

    Attributes:
        delta: PRADA alarm threshold on the Shapiro-Wilk ``W`` (flag when ``W < delta``).
        min_distances: distances needed before the normality test runs.
        test_every: run the test every ``k`` queries of a client (Shapiro-Wilk is O(n log n)).
        outlier_sigma: distances farther than this many standard deviations from the mean are left out.
        max_distances: sliding window of distances kept per client.
        max_set_per_class: cap on stored queries per class in a client's growing set (oldest evicted).
        max_classes: classes tracked per client; queries of further classes skip PRADA.
        max_clients: clients tracked; the least recently seen is evicted beyond it.
        rate_window_s: the sliding window for the query rate, in seconds.
        throttle_queries / block_queries: queries within the window that trigger throttle / block.
        prada_action: what a PRADA alarm does; the alarm is sticky until the client's state is reset.
        coverage_bins / coverage_dims: grid of ``bins ** dims`` cells over the top principal components of the
            reference data (needs ``reference=`` on the monitor).
        coverage_min_queries: coverage thresholds apply only after this many queries.
        max_cell_coverage / max_class_coverage: throttle above these fractions (None: report only).
        min_distinct_ratio: throttle when distinct queries / queries in the window falls below (None: report
            only); catches replay and scraping loops.
        distinct_window: queries remembered for the distinct ratio.
    """

    delta: float = 0.96
    min_distances: int = 100
    test_every: int = 10
    outlier_sigma: float = 3.0
    max_distances: int = 2000
    max_set_per_class: int = 500
    max_classes: int = 1000
    max_clients: int = 10_000
    rate_window_s: float = 60.0
    throttle_queries: int = 600
    block_queries: int = 3000
    prada_action: Action = "block"
    coverage_bins: int = 6
    coverage_dims: int = 3
    coverage_min_queries: int = 200
    max_cell_coverage: float | None = None
    max_class_coverage: float | None = None
    min_distinct_ratio: float | None = None
    distinct_window: int = 1000

    def __post_init__(self) -> None:
        checks = {
            "delta must be in (0, 1)": 0 < self.delta < 1,
            "min_distances must be >= 3 (Shapiro-Wilk minimum)": self.min_distances >= 3,
            "max_distances must be >= min_distances and <= 5000": self.min_distances <= self.max_distances <= 5000,
            "test_every must be >= 1": self.test_every >= 1,
            "outlier_sigma must be > 0": self.outlier_sigma > 0,
            "max_set_per_class must be >= 1": self.max_set_per_class >= 1,
            "max_classes must be >= 1": self.max_classes >= 1,
            "max_clients must be >= 1": self.max_clients >= 1,
            "rate_window_s must be > 0": self.rate_window_s > 0 and math.isfinite(self.rate_window_s),
            "need 1 <= throttle_queries <= block_queries": 1 <= self.throttle_queries <= self.block_queries,
            "prada_action must be throttle or block": self.prada_action in ("throttle", "block"),
            "coverage_bins must be in 2..64": 2 <= self.coverage_bins <= 64,
            "coverage_dims must be in 1..4": 1 <= self.coverage_dims <= 4,
            "coverage_bins ** coverage_dims must be <= 100000": self.coverage_bins**self.coverage_dims <= 100_000,
            "coverage_min_queries must be >= 1": self.coverage_min_queries >= 1,
            "distinct_window must be >= 1": self.distinct_window >= 1,
        }
        for frac in (self.max_cell_coverage, self.max_class_coverage, self.min_distinct_ratio):
            checks["coverage fractions must be in (0, 1]"] = checks.get(
                "coverage fractions must be in (0, 1]", True
            ) and (frac is None or 0 < frac <= 1)
        failed = [msg for msg, ok in checks.items() if not ok]
        if failed:
            raise UsageError("invalid extraction config: " + "; ".join(failed))


@dataclass(frozen=True, slots=True)
class CoverageStats:
    """How much of the model a client has explored. ``cells`` is None without reference data."""

    cells: float | None
    classes: float | None
    distinct_ratio: float


@dataclass(frozen=True, slots=True)
class ClientVerdict:
    """The decision for one query of one client, with the evidence behind it.

    ``prada_w`` is the latest Shapiro-Wilk statistic (None until ``min_distances`` exist); ``rate`` is queries
    per second over the sliding window.
    """

    client: str
    action: Action
    reasons: tuple[str, ...]
    prada_w: float | None
    rate: float
    coverage: CoverageStats
    queries: int


@dataclass
class _ClassSet:
    """One class's growing set (a ring buffer of queries) and the PRADA threshold ``T_c``."""

    points: np.ndarray
    size: int = 0
    head: int = 0
    threshold: float = 0.0
    set_dists: list[float] = field(default_factory=list)

    def add(self, x: np.ndarray, dist: float, cap: int) -> None:
        self.points[self.head] = x
        self.head = (self.head + 1) % cap
        self.size = min(self.size + 1, cap)
        self.set_dists.append(dist)
        if len(self.set_dists) > cap:
            del self.set_dists[0]


@dataclass
class _ClientState:
    sets: dict[int, _ClassSet] = field(default_factory=dict)
    distances: deque[float] = field(default_factory=deque)
    times: deque[float] = field(default_factory=deque)
    recent: deque[bytes] = field(default_factory=deque)
    recent_counts: dict[bytes, int] = field(default_factory=dict)
    cells: set[int] = field(default_factory=set)
    classes: set[int] = field(default_factory=set)
    queries: int = 0
    prada_w: float | None = None
    prada_alarm: bool = False


class ExtractionMonitor:
    """Watches each client's queries and answers allow, throttle or block with the evidence.

    Args:
        config: thresholds and limits.
        n_classes: number of model classes (for class coverage); None leaves class coverage unreported.
        reference: clean reference inputs ``(n, d)`` defining the coverage grid (top principal components,
            bounded by the reference range); None leaves cell coverage unreported.
    """

    def __init__(
        self,
        config: ExtractionConfig | None = None,
        *,
        n_classes: int | None = None,
        reference: np.ndarray | None = None,
    ) -> None:
        self.config = config or ExtractionConfig()
        if n_classes is not None and n_classes < 1:
            raise UsageError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes = n_classes
        self._clients: OrderedDict[str, _ClientState] = OrderedDict()
        self._dim: int | None = None
        self._grid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        if reference is not None:
            self._grid = self._fit_grid(np.asarray(reference, dtype=np.float64))
            self._dim = self._grid[0].shape[0]

    def _fit_grid(self, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if ref.ndim != 2 or ref.shape[0] < 2 or not np.all(np.isfinite(ref)):
            raise UsageError(f"reference must be a finite (n >= 2, d) array, got shape {ref.shape}")
        mean = ref.mean(axis=0)
        k = min(self.config.coverage_dims, ref.shape[1])
        _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
        proj = (ref - mean) @ vt[:k].T
        return mean, vt[:k], proj.min(axis=0), proj.max(axis=0)

    def reset(self, client: str) -> None:
        """Forget a client's state (e.g. after a human reviewed and released a block)."""
        self._clients.pop(client, None)

    def __len__(self) -> int:
        return len(self._clients)

    def _state(self, client: str) -> _ClientState:
        state = self._clients.get(client)
        if state is None:
            state = _ClientState()
            self._clients[client] = state
            while len(self._clients) > self.config.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        return state

    def observe(self, client: str, x: np.ndarray, predicted_class: int, now: float) -> ClientVerdict:
        """Record one query (a flat feature vector) and its predicted class; return the client's verdict.

        Raises:
            UsageError: the input is not a finite 1-D vector of the monitor's dimension, or the class is negative.
        """
        vec = np.asarray(x, dtype=np.float64).reshape(-1)
        if vec.size == 0 or not np.all(np.isfinite(vec)):
            raise UsageError("query must be a non-empty finite vector")
        if self._dim is None:
            self._dim = vec.size
        elif vec.size != self._dim:
            raise UsageError(f"query has {vec.size} features, the monitor expects {self._dim}")
        cls = int(predicted_class)
        if cls < 0:
            raise UsageError(f"predicted_class must be >= 0, got {predicted_class}")
        cfg = self.config
        state = self._state(client)
        state.queries += 1
        self._update_rate(state, float(now))
        self._update_prada(state, vec, cls)
        self._update_coverage(state, vec, cls)

        reasons: list[str] = []
        action: Action = "allow"

        def escalate(to: Action, why: str) -> None:
            nonlocal action
            reasons.append(why)
            if _SEVERITY[to] > _SEVERITY[action]:
                action = to

        in_window = len(state.times)
        if in_window > cfg.block_queries:
            escalate("block", f"rate: {in_window} queries in {cfg.rate_window_s:g}s > {cfg.block_queries}")
        elif in_window > cfg.throttle_queries:
            escalate("throttle", f"rate: {in_window} queries in {cfg.rate_window_s:g}s > {cfg.throttle_queries}")
        if state.prada_alarm:
            escalate(cfg.prada_action, f"prada: Shapiro-Wilk W={state.prada_w:.4f} < delta={cfg.delta}")
        coverage = self._coverage(state)
        if state.queries >= cfg.coverage_min_queries:
            if (
                cfg.max_cell_coverage is not None
                and coverage.cells is not None
                and coverage.cells > cfg.max_cell_coverage
            ):
                escalate("throttle", f"coverage: {coverage.cells:.2f} of input cells > {cfg.max_cell_coverage}")
            if (
                cfg.max_class_coverage is not None
                and coverage.classes is not None
                and coverage.classes > cfg.max_class_coverage
            ):
                escalate("throttle", f"coverage: {coverage.classes:.2f} of classes > {cfg.max_class_coverage}")
            if cfg.min_distinct_ratio is not None and coverage.distinct_ratio < cfg.min_distinct_ratio:
                escalate("throttle", f"distinct queries {coverage.distinct_ratio:.2f} < {cfg.min_distinct_ratio}")
        rate = in_window / cfg.rate_window_s
        return ClientVerdict(client, action, tuple(reasons), state.prada_w, rate, coverage, state.queries)

    def _update_rate(self, state: _ClientState, now: float) -> None:
        if not math.isfinite(now):
            raise UsageError("now must be a finite timestamp")
        times = state.times
        times.append(now)
        horizon = now - self.config.rate_window_s
        while times and times[0] <= horizon:
            times.popleft()
        while len(times) > self.config.block_queries + 1:  # bounded: beyond the block limit the count is moot
            times.popleft()

    def _update_prada(self, state: _ClientState, vec: np.ndarray, cls: int) -> None:
        cfg = self.config
        cset = state.sets.get(cls)
        if cset is None:
            if len(state.sets) >= cfg.max_classes:
                return
            cset = _ClassSet(np.empty((cfg.max_set_per_class, vec.size)))
            cset.add(vec, 0.0, cfg.max_set_per_class)
            state.sets[cls] = cset
            return
        d_min = float(np.sqrt(np.min(np.sum((cset.points[: cset.size] - vec) ** 2, axis=1))))
        state.distances.append(d_min)
        if len(state.distances) > cfg.max_distances:
            state.distances.popleft()
        if d_min > cset.threshold:
            cset.add(vec, d_min, cfg.max_set_per_class)
            arr = np.asarray(cset.set_dists)
            cset.threshold = max(cset.threshold, float(arr.mean() - arr.std()))
        if len(state.distances) >= cfg.min_distances and state.queries % cfg.test_every == 0:
            self._test(state)

    def _test(self, state: _ClientState) -> None:
        cfg = self.config
        dists = np.asarray(state.distances)
        std = dists.std()
        if std > 0:
            dists = dists[np.abs(dists - dists.mean()) <= cfg.outlier_sigma * std]
        if dists.size < 3 or np.ptp(dists) == 0:
            # Identical distances (e.g. a replayed query) are as far from normal as it gets.
            state.prada_w = 0.0
        else:
            state.prada_w = float(stats.shapiro(dists).statistic)
        if state.prada_w < cfg.delta:
            state.prada_alarm = True

    def _update_coverage(self, state: _ClientState, vec: np.ndarray, cls: int) -> None:
        cfg = self.config
        if len(state.classes) < cfg.max_classes:
            state.classes.add(cls)
        if self._grid is not None:
            mean, comps, lo, hi = self._grid
            proj = comps @ (vec - mean)
            span = np.where(hi > lo, hi - lo, 1.0)
            idx = np.clip(((proj - lo) / span * cfg.coverage_bins).astype(np.int64), 0, cfg.coverage_bins - 1)
            state.cells.add(int(np.ravel_multi_index(tuple(idx), (cfg.coverage_bins,) * idx.size)))
        key = hashlib.blake2b(np.round(vec, 6).tobytes(), digest_size=16).digest()
        state.recent.append(key)
        state.recent_counts[key] = state.recent_counts.get(key, 0) + 1
        if len(state.recent) > cfg.distinct_window:
            old = state.recent.popleft()
            state.recent_counts[old] -= 1
            if state.recent_counts[old] == 0:
                del state.recent_counts[old]

    def _coverage(self, state: _ClientState) -> CoverageStats:
        cells = None
        if self._grid is not None:
            cells = len(state.cells) / self.config.coverage_bins ** self._grid[1].shape[0]
        classes = len(state.classes) / self.n_classes if self.n_classes else None
        distinct = len(state.recent_counts) / len(state.recent)
        return CoverageStats(cells, classes, distinct)


# -- one client's state as bytes (shared state: mlwarden.serve.state keeps it in Redis between workers) -----------

#: Format tag of :meth:`ExtractionMonitor.export_client` blobs (a reader refuses other versions).
STATE_FORMAT = 1


def _pack_state(state: _ClientState, dim: int) -> bytes:
    """``state`` as a small JSON header and raw float64/bytes arrays (no pickle: the blob is data, never code)."""
    arrays: list[bytes] = []
    sets = []
    for cls, cset in state.sets.items():
        sets.append([cls, cset.size, cset.head, cset.threshold, len(cset.set_dists)])
        arrays.append(np.ascontiguousarray(cset.points[: cset.size], dtype=np.float64).tobytes())
        arrays.append(np.asarray(cset.set_dists, dtype=np.float64).tobytes())
    arrays.append(np.asarray(state.distances, dtype=np.float64).tobytes())
    arrays.append(np.asarray(state.times, dtype=np.float64).tobytes())
    arrays.append(b"".join(state.recent))
    header = {
        "v": STATE_FORMAT,
        "dim": dim,
        "sets": sets,
        "n_distances": len(state.distances),
        "n_times": len(state.times),
        "n_recent": len(state.recent),
        "cells": sorted(state.cells),
        "classes": sorted(state.classes),
        "queries": state.queries,
        "prada_w": state.prada_w,
        "alarm": state.prada_alarm,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return len(head).to_bytes(4, "big") + head + b"".join(arrays)


def _unpack_state(blob: bytes, dim: int, cap: int) -> _ClientState:
    """The inverse of :func:`_pack_state`; raises :class:`UsageError` on anything malformed (fail closed)."""
    try:
        n = int.from_bytes(blob[:4], "big")
        header = json.loads(blob[4 : 4 + n])
        if header["v"] != STATE_FORMAT or header["dim"] != dim:
            raise ValueError(f"format {header['v']} / dimension {header['dim']}, expected {STATE_FORMAT} / {dim}")
        view, pos = memoryview(blob), 4 + n

        def take(count: int, width: int = 8) -> memoryview:
            nonlocal pos
            part = view[pos : pos + count * width]
            if len(part) != count * width:
                raise ValueError("truncated")
            pos += count * width
            return part

        state = _ClientState()
        for cls, size, head_, threshold, n_dists in header["sets"]:
            if not 0 <= size <= cap:
                raise ValueError(f"a class set of {size} points exceeds the cap {cap}")
            cset = _ClassSet(np.empty((cap, dim)), int(size), int(head_), float(threshold))
            cset.points[:size] = np.frombuffer(take(size * dim), dtype=np.float64).reshape(size, dim)
            cset.set_dists = np.frombuffer(take(n_dists), dtype=np.float64).tolist()
            state.sets[int(cls)] = cset
        state.distances = deque(np.frombuffer(take(header["n_distances"]), dtype=np.float64).tolist())
        state.times = deque(np.frombuffer(take(header["n_times"]), dtype=np.float64).tolist())
        raw = bytes(take(header["n_recent"], 16))
        state.recent = deque(raw[i : i + 16] for i in range(0, len(raw), 16))
        for key in state.recent:
            state.recent_counts[key] = state.recent_counts.get(key, 0) + 1
        state.cells = {int(c) for c in header["cells"]}
        state.classes = {int(c) for c in header["classes"]}
        state.queries = int(header["queries"])
        state.prada_w = None if header["prada_w"] is None else float(header["prada_w"])
        state.prada_alarm = bool(header["alarm"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"unreadable extraction state: {exc}") from None
    return state


def export_client(monitor: ExtractionMonitor, client: str) -> bytes | None:
    """``client``'s state in ``monitor`` as bytes (``None`` when the monitor holds none)."""
    state = monitor._clients.get(client)
    if state is None or monitor._dim is None:
        return None
    return _pack_state(state, monitor._dim)


def import_client(monitor: ExtractionMonitor, client: str, blob: bytes | None, dim: int) -> None:
    """Replace ``client``'s state in ``monitor`` with ``blob`` (``None``: a client never seen).

    Raises:
        UsageError: the blob is malformed or was written for another input dimension.
    """
    monitor._clients.pop(client, None)
    if monitor._dim is None:
        monitor._dim = dim
    if blob is not None:
        monitor._state(client)  # the LRU bookkeeping (and eviction) of a new client
        monitor._clients[client] = _unpack_state(blob, dim, monitor.config.max_set_per_class)
