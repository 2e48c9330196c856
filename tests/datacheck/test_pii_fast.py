"""The fast PII path (joined cells, prefilters, detectors only where a prefilter fires) equals the reference.

The reference runs every detector on every cell (``scan_every_cell``); the fast path must give the same matches
per cell, the same counts and rows in a data check's report, and must never join a value split over two cells.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlwarden.datacheck.pii_scan import EXOTIC, Joined, PiiScan, exotic, prefiltered, scan_cells, scan_every_cell
from mlwarden.guard.pii import DETECTORS, PiiConfig, find

from .builders import email, gb_iban, luhn_card, phone, sentence

CONFIG = PiiConfig(max_chars=2**62)

#: One planted value per detector kind (and a few formats of the same kind); each is found by ``find``.
PLANTS = (
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "3782 822463 10005",
    "GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432", "123-45-6789", "SSN 123 45 6789",
    "social security number 123456789", "jane.doe@example.com", "+44 20 7946 0958", "(415) 555-2671",
    "415-555-2671", "415.555.2671", "01 23 45 67 89", "01.23.45.67.89", "020 7946 0958", "203.0.113.42",
    "2001:db8::8a2e:370:7334", "AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2" * 9, "glpat-" + "x9Y8" * 5,
    "xoxb-123456789012-1234567890123-AbCdEfGh", "sk_live_" + "Z9y8X7w6" * 3, "whsec_" + "Qq12" * 6,
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "password = 'Tr0ub4dor&3xQ9'",
    "api_key: Zx81-Qp27-Lm99", "Bearer abC8dEf1GhI2jK", "https://hooks.slack.com/services/T0AB12CD/B0EF34GH/abcdEFGH1234ijkl",
    # non-ASCII spellings Python's case-insensitive matching and \d accept: only the every-detector fallback sees them
    "to\u212aen: Tr0ub4dor&3xQ9zz", "pa\u017f\u017fword = 'Tr0ub4dor&3xQ9'", "\u017f\u017fn 123 45 6789",
    "+4\u0664 \u0662\u0660 \u0667\u0669\u0664\u0666 \u0660\u0669\u0665\u0668", "1\u0662\u0663-45-6789",
)  # fmt: skip
#: Look-alikes that must stay clean: order numbers, versions, times, prices, a failing Luhn, words.
DECOYS = (
    "order 202400000019 shipped", "version 1.2.3.4", "at 14:05:33", "total 129.99 EUR", "4111 1111 1111 1112",
    "the monkey took the token bus", "a passage on secret gardens", "aws region eu-west-1", "e.g. and i.e. text",
    "well-known self-contained long-running", "ticket _internal_state_value_", "ratio a::b", "Tel 12 34",
)  # fmt: skip
#: (first cell, second cell): a value cut in two by a cell boundary; neither half is personal data on its own.
SPLITS = (
    ("pay 4111 1111 ", "1111 1111 today"), ("mail jane.doe@exa", "mple.com"),
    ("iban GB82 WEST 1234 ", "5698 7654 32"), ("call +44 20 ", "7946 0958"), ("ssn 123-45", "-6789"),
    ("key AKIAIOSFOD", "NN7EXAMPLE"), ("token ghp_" + "a1B2" * 4, "a1B2" * 5), ("ip 203.0", ".113.42"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzd", "WIiOiIxIn0.c2ln"),
)  # fmt: skip


def mixed_cells(n: int, seed: int) -> tuple[list[str], Counter[str]]:
    """Prose with planted values (counted per detector by ``find`` on the plant alone), decoys and split values."""
    rng = np.random.default_rng(seed)
    cells: list[str] = []
    planted: Counter[str] = Counter()
    for i in range(n):
        cell = sentence(rng, int(rng.integers(3, 12)))
        kind = i % 10
        if kind == 0:
            plant = PLANTS[int(rng.integers(len(PLANTS)))]
            cell = f"{cell} {plant} {sentence(rng, 2)}"
            planted.update(m.detector for m in find(plant, CONFIG))
        elif kind == 1:
            cell = f"{cell} {DECOYS[int(rng.integers(len(DECOYS)))]}"
        elif kind == 2:
            cell = f"{cell} {luhn_card(rng)} {email(i)} {phone(rng)} {gb_iban(rng)}"
            planted.update(["credit_card", "email", "phone", "iban"])
        cells.append(cell)
    for first, second in SPLITS:
        cells += [first, second]
    return cells, planted


def test_fast_path_equals_every_detector_on_every_cell() -> None:
    cells, planted = mixed_cells(3000, seed=1)
    fast = scan_cells(cells, CONFIG)
    assert fast == scan_every_cell(cells, CONFIG)
    found = Counter(m.detector for matches in fast.values() for m in matches)
    assert found == planted  # every plant found once, no decoy reported
    assert set(found) >= {"credit_card", "iban", "us_ssn", "email", "phone", "generic_secret", "jwt", "private_key"}


def test_a_value_split_over_two_cells_is_not_joined() -> None:
    cells = [half for pair in SPLITS for half in pair]
    assert scan_cells(cells, CONFIG) == {}
    for first, second in SPLITS:  # joined, each is found: the emptiness above is the boundary, not the value
        assert find(first + second, CONFIG), first + second


@pytest.mark.parametrize("plant", PLANTS)
def test_every_plant_reaches_its_detector(plant: str) -> None:
    expected = {m.detector for m in find(plant, CONFIG)}
    assert expected
    labels = prefiltered(Joined.of(["quiet words", f"x {plant} y", "more words"]))
    assert expected <= labels[1]
    assert sorted(labels) == [1]


def test_cells_holding_nul() -> None:
    jwt, ipv6 = DETECTORS["jwt"].example, DETECTORS["ipv6"].example  # found only once small letters are dropped
    cells = ["a\x00b 4111 1111 1111 1111", "plain", "x\x00jane.doe@example.com\x00", "ssn\x00123 45 6789", jwt, ipv6]
    assert scan_cells(cells, CONFIG) == scan_every_cell(cells, CONFIG)
    assert set(scan_cells(cells, CONFIG)) == {0, 2, 3, 4, 5}


FRAGMENTS = st.sampled_from(
    ["0", "4", "9", "12", "4111", "1111", " ", "-", ".", "(", ")", "+", ":", "@", "_", "a", "Z", "GB82", "WEST",
     "ey", "J", "ssn", "key", "token", "pass", "secret", "aws", "\u212a", "\u0663", "\u00e9", "\x00", "\n",
     "example.com", "jane", "AKIA", "ghp_", "glpat-", "xoxb-", "sk_live_", "whsec_", "=", "'", "Tr0ub4dor&3xQ9"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(FRAGMENTS, max_size=40).map("".join), min_size=1, max_size=8))
def test_fast_path_equals_reference_on_generated_cells(cells: list[str]) -> None:
    assert scan_cells(cells, CONFIG) == scan_every_cell(cells, CONFIG)


def reference_tally(values: list[str]) -> tuple[Counter[str], Counter[str], int, list[int]]:
    """Matches and rows per detector, rows with PII, and the first 20 such rows, by ``find`` on every row."""
    matches: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    with_pii = []
    for row, value in enumerate(values):
        found = find(value, CONFIG)
        matches.update(m.detector for m in found)
        rows.update({m.detector for m in found})
        if found:
            with_pii.append(row)
    return matches, rows, len(with_pii), with_pii[:20]


@pytest.mark.parametrize("storage", ["pyarrow", "python"])
def test_scan_report_equals_reference_over_chunks(storage: str) -> None:
    cells, _ = mixed_cells(1200, seed=2)
    rng = np.random.default_rng(2)
    cells += [cells[int(i)] for i in rng.integers(0, len(cells), 600)]  # repeated values, counted once per row
    frame = pd.DataFrame({"note": pd.array(cells, dtype=pd.StringDtype(storage))})
    scan = PiiScan(["note"])
    for start in range(0, len(frame), 500):
        scan.add(frame.iloc[start : start + 500])
    column = scan.metrics()["columns"]["note"]
    matches, rows, with_pii, first = reference_tally(cells)
    assert column["matches"] == dict(sorted(matches.items()))
    assert column["rows_by_detector"] == dict(sorted(rows.items()))
    assert column["rows_with_pii"]["count"] == with_pii
    assert column["first_rows"] == first
    assert scan.bytes == sum(len(c.encode("utf-8")) for c in cells)
    for detector, examples in column["examples_masked"].items():
        assert detector in DETECTORS
        assert 1 <= len(examples) <= 3
        assert not any(e in cells for e in examples)


@pytest.mark.parametrize("kind", sorted(EXOTIC))
def test_exotic_characters_are_exactly_those_re_matches(kind: str) -> None:
    every = "".join(chr(c) for c in range(0x80, sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    found = {m.decode() for m in exotic(kind).findall(every.encode())}
    assert found == set(re.findall(kind, every))
    assert ("\u0663" in found) == (kind == r"\d")
    assert ({"\u0130", "\u0131", "\u017f", "\u212a"} <= found) == (kind != r"\d")
    assert "\u00e9" not in found
