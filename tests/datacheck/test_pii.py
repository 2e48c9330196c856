"""Planted personal data is found with exact counts, in columns and in free text; clean data gives none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlwarden.datacheck import CheckOptions, check_dataset
from mlwarden.datacheck.pii_scan import scan_cells, triggered
from mlwarden.guard.pii import DETECTORS, PiiConfig, find

from .builders import email, gb_iban, luhn_card, phone, sentence


def planted(n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, dict[str, int]]:
    rng = np.random.default_rng(seed)
    rows = []
    expected = {"email": 0, "credit_card": 0, "iban": 0, "phone": 0}
    for i in range(n):
        row = {"x": float(rng.normal()), "city": str(rng.choice(["Oslo", "Lima", "Pune"])), "contact": "", "card": ""}
        if i % 7 == 0:
            row["contact"] = email(i)
            expected["email"] += 1
        elif i % 11 == 0:
            row["contact"] = phone(rng)
            expected["phone"] += 1
        if i % 13 == 0:
            row["card"] = luhn_card(rng)
            expected["credit_card"] += 1
        note = sentence(rng)
        if i % 17 == 0:
            note += f" please pay to {gb_iban(rng)} today"
            expected["iban"] += 1
        if i % 19 == 0:
            note += f" or write to {email(10_000 + i)} and call {phone(rng)}"
            expected["email"] += 1
            expected["phone"] += 1
        row["note"] = note
        rows.append(row)
    return pd.DataFrame(rows), expected


def test_planted_pii_found_with_exact_counts(tmp_path: Path) -> None:
    frame, expected = planted()
    frame.to_csv(tmp_path / "d.csv", index=False)
    result = check_dataset(tmp_path / "d.csv", CheckOptions(checks=("pii",))).check("pii")
    assert result.metrics["matches"] == expected
    columns = result.metrics["columns"]
    assert columns["card"]["matches"] == {"credit_card": expected["credit_card"]}
    assert columns["note"]["rows_by_detector"]["iban"] == expected["iban"]
    assert set(columns["city"]["matches"]) == set()


def test_reports_never_hold_raw_values(tmp_path: Path) -> None:
    frame, _ = planted(120)
    frame.to_csv(tmp_path / "d.csv", index=False)
    report = check_dataset(tmp_path / "d.csv", CheckOptions(checks=("pii",)))
    text = report.to_json()
    for value in frame["card"].tolist() + frame["contact"].tolist():
        if value:
            assert value not in text
    assert "4" in str(report.check("pii").metrics["columns"]["card"]["examples_masked"]["credit_card"])


def test_clean_data_has_no_pii(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=2000),
            "n": rng.integers(0, 1000, 2000),
            "city": rng.choice(["Oslo", "Lima", "Pune"], 2000),
            "note": [sentence(rng, 10) for _ in range(2000)],
            "code": [f"SKU-{i:05d}" for i in range(2000)],
        }
    )
    frame.to_csv(tmp_path / "d.csv", index=False)
    result = check_dataset(tmp_path / "d.csv", CheckOptions(checks=("pii",))).check("pii")
    assert result.metrics["matches"] == {}
    assert result.metrics["bytes_scanned"] > 100_000


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_every_detector_example_passes_the_triggers(detector: str) -> None:
    example = DETECTORS[detector].example.replace("\\n", "\n")
    cells = ["plain words only", f"value: {example} end", "more plain words"]
    assert detector in triggered(cells)[1]


def test_shortcut_equals_every_detector_on_every_cell() -> None:
    frame, _ = planted(400, seed=9)
    cells = [str(v) for column in ("contact", "card", "note", "city") for v in frame[column]]
    cells += [DETECTORS[d].example.replace("\\n", "\n") for d in sorted(DETECTORS)]
    config = PiiConfig(max_chars=10**9)
    brute = {i: find(c, config) for i, c in enumerate(cells) if find(c, config)}
    assert scan_cells(cells, config) == brute
