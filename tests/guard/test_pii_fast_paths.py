"""The guard detectors' shortcuts (ASCII masking in C, short digit runs skipped) give the reference answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mlwarden.guard.pii import PiiConfig, find, mask_keep


def reference_mask(value: str, keep_start: int = 0, keep_end: int = 0) -> str:
    """Character by character: letters and digits outside the kept ends become ``*``."""
    n = len(value)
    return "".join(c if (i < keep_start or i >= n - keep_end or not c.isalnum()) else "*" for i, c in enumerate(value))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="aZ09 -.+_é٣\u212aß€", max_size=30), st.integers(0, 8), st.integers(0, 8))
def test_mask_keep_equals_character_by_character(value: str, keep_start: int, keep_end: int) -> None:
    assert mask_keep(value, keep_start, keep_end) == reference_mask(value, keep_start, keep_end)


def test_masks_of_planted_values() -> None:
    assert mask_keep("+44 20 7946 0958", keep_end=2) == "+** ** **** **58"
    assert mask_keep("GB82 WEST 1234 5698 7654 32", keep_start=2, keep_end=2) == "GB** **** **** **** **** 32"
    assert mask_keep("١٢٣-45-6789", keep_end=4) == "***-**-6789"


def test_shortest_card_still_found_and_shorter_runs_are_not() -> None:
    config = PiiConfig()
    assert [m.detector for m in find("card 4222222222222 end", config)] == ["credit_card"]  # 13 digits, Luhn-valid
    assert find("card 422222222222 end", config) == []  # 12 digits: no issuer uses that length
    assert [(m.start, m.end) for m in find("ref 12 4111 1111 1111 1111 x", config)] == [(7, 26)]
