"""Sliding windows: bounded, ordered, expiring by an injected clock, and strict about their input."""

from __future__ import annotations

import numpy as np
import pytest

from mlwarden.core.errors import UsageError
from mlwarden.monitor.windows import CategoricalWindow, FeatureWindow, ScalarWindow, VectorWindow


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_scalar_window_keeps_the_newest_in_order_and_counts_evictions() -> None:
    w = ScalarWindow(3)
    for x in range(5):
        w.append(float(x))
    assert w.values().tolist() == [2.0, 3.0, 4.0]
    c = w.counts()
    assert (c.size, c.capacity, c.appended, c.evicted, c.expired) == (3, 3, 5, 2, 0)
    assert w.mean() == pytest.approx(3.0)


def test_snapshot_is_a_copy() -> None:
    w = VectorWindow(2, 4)
    w.append([1.0, 2.0])
    snap = w.values()
    w.append([3.0, 4.0])
    snap[0, 0] = 99.0
    assert snap.shape == (1, 2)
    assert w.values().tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_memory_is_fixed_whatever_the_traffic() -> None:
    w = VectorWindow(4, 100)
    before = w._data.nbytes
    rng = np.random.default_rng(0)
    w.extend(rng.normal(size=(10_000, 4)))
    assert w._data.nbytes == before
    assert len(w) == 100
    assert w.counts().evicted == 9_900
    # The window holds exactly the last 100 rows appended, oldest first.
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(10_000, 4))
    np.testing.assert_array_equal(w.values(), rows[-100:])


def test_time_based_expiry_with_an_injected_clock() -> None:
    clock = FakeClock()
    w = ScalarWindow(10, max_age_s=5.0, clock=clock)
    for i in range(4):
        w.append(float(i))
        clock.now += 2.0  # appended at t=1000, 1002, 1004, 1006; now 1008
    assert w.values().tolist() == [2.0, 3.0]  # 1000 and 1002 are older than 5 s at t=1008
    assert w.counts().expired == 2
    clock.now += 100.0
    assert len(w) == 0
    assert w.mean() is None
    w.append(7.0)
    assert w.values().tolist() == [7.0]


def test_expiry_and_eviction_together() -> None:
    clock = FakeClock()
    w = VectorWindow(1, 3, max_age_s=10.0, clock=clock)
    for i in range(5):
        w.append([float(i)])
        clock.now += 1.0
    assert w.values().ravel().tolist() == [2.0, 3.0, 4.0]
    clock.now += 7.5  # entry 2 was appended at 1002; now 1012.5 -> cutoff 1002.5
    assert w.values().ravel().tolist() == [3.0, 4.0]
    c = w.counts()
    assert (c.evicted, c.expired) == (2, 1)


def test_categorical_window_truncates_and_counts() -> None:
    w = CategoricalWindow(2, 4, max_value_len=3)
    w.append(["france", 1])
    w.append(["fra", 2])
    w.append(["de", 1])
    assert w.values()[0].tolist() == ["fra", "1"]
    assert w.counts_of(0) == {"fra": 2, "de": 1}
    assert w.counts_of(1) == {"1": 2, "2": 1}
    single = CategoricalWindow(1, 2)
    single.append("a")
    assert single.values().tolist() == [["a"]]
    with pytest.raises(UsageError, match="feature index"):
        w.counts_of(2)


def test_feature_window_keeps_numeric_and_categorical_aligned() -> None:
    w = FeatureWindow(["age", "income"], ["country"], capacity=2)
    for i, c in enumerate(["fr", "de", "it"]):
        w.append({"age": i, "income": 10.0 * i, "country": c, "ignored": "x"})
    cols = w.columns()
    assert cols["age"].tolist() == [1.0, 2.0]
    assert cols["income"].tolist() == [10.0, 20.0]
    assert cols["country"].tolist() == ["de", "it"]
    assert w.numeric().shape == (2, 2)
    assert w.categorical().shape == (2, 1)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: ScalarWindow(0), "capacity"),
        (lambda: ScalarWindow(True), "capacity"),  # type: ignore[arg-type]
        (lambda: ScalarWindow(10**9), "capacity"),
        (lambda: ScalarWindow(5, max_age_s=0), "max_age_s"),
        (lambda: ScalarWindow(5, max_age_s=float("inf")), "max_age_s"),
        (lambda: VectorWindow(0, 5), "n_features"),
        (lambda: CategoricalWindow(1, 5, max_value_len=0), "max_value_len"),
        (lambda: FeatureWindow([], capacity=5), "at least one"),
        (lambda: FeatureWindow(["a"], ["a"], capacity=5), "duplicate"),
    ],
)
def test_bad_configuration_raises_a_clear_error(factory, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=message):
        factory()


def test_bad_input_is_rejected_and_leaves_the_window_unchanged() -> None:
    v = VectorWindow(2, 5)
    v.append([1.0, 2.0])
    with pytest.raises(UsageError, match="expected 2"):
        v.append([1.0, 2.0, 3.0])
    with pytest.raises(UsageError, match="finite"):
        v.append([np.nan, 1.0])
    with pytest.raises(UsageError, match="not numeric"):
        v.append(["a", "b"])
    s = ScalarWindow(5)
    with pytest.raises(UsageError, match="finite"):
        s.append(float("inf"))
    f = FeatureWindow(["a"], ["b"], capacity=5)
    with pytest.raises(UsageError, match="missing"):
        f.append({"a": 1.0})
    with pytest.raises(UsageError, match="expected 2"):
        CategoricalWindow(2, 5).append(["x"])
    assert len(v) == 1
    assert len(s) == 0
    assert len(f) == 0
    assert v.counts().appended == 1
