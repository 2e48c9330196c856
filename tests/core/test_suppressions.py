"""The suppressions file and its values: globs, strict parsing, expiry, and appending without losing anything."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

import pytest

from mlwarden.core.suppressions import (
    Suppression,
    SuppressionError,
    glob_match,
    load_suppressions,
    new_suppression,
    parse_suppressions,
    path_spellings,
)
from mlwarden.core.suppressions_edit import append_suppression

TODAY = date(2026, 6, 1)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("models/*.pkl", "models/a.pkl", True),
        ("models/*.pkl", "./models/a.pkl", True),
        ("models/*.pkl", "models/sub/a.pkl", False),  # * stays in one folder
        ("models/**/*.pkl", "models/a.pkl", True),  # ** may be empty
        ("models/**/*.pkl", "models/x/y/a.pkl", True),
        ("**/*.pkl", "a.pkl", True),
        ("models/**", "models/x/y/a.bin", True),
        ("models/?.pkl", "models/a.pkl", True),
        ("models/?.pkl", "models/ab.pkl", False),
        ("models/[ab].pkl", "models/b.pkl", True),
        ("models/[!ab].pkl", "models/b.pkl", False),
        ("models/a.pkl", "models/a.pkl.bak", False),  # the whole path
        ("m(1).pkl", "m(1).pkl", True),  # regex characters are literal
        ("*.pkl", "models/a.pkl", False),
    ],
)
def test_glob(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected


def test_absolute_paths_below_cwd_are_also_relative(tmp_path: Path) -> None:
    assert path_spellings(str(tmp_path / "models" / "a.pkl"), tmp_path)[1:] == ("models/a.pkl",)
    assert path_spellings("models/a.pkl", tmp_path) == ("models/a.pkl",)


def test_expiry_is_the_first_day_it_no_longer_applies() -> None:
    s = Suppression("MLW-PKL-110", "r", "a", date(2026, 6, 2), path="x")
    assert not s.expired(TODAY)
    assert s.expired(date(2026, 6, 2))


def test_digest_and_path_matching() -> None:
    by_digest = Suppression("MLW-PKL-110", "r", "a", TODAY, digest="ab" * 32)
    assert by_digest.covers("MLW-PKL-110", ("x",), "AB" * 32)
    assert not by_digest.covers("MLW-PKL-110", ("x",), None)  # unknown digest: never matches
    assert not by_digest.covers("MLW-PKL-001", ("x",), "ab" * 32)
    by_path = Suppression("MLW-PKL-110", "r", "a", TODAY, path="models/*")
    assert by_path.covers("MLW-PKL-110", ("/abs/models/a", "models/a"), None)


def test_new_suppression_checks_everything() -> None:
    ok = new_suppression("MLW-PKL-110", reason=" r ", reviewer="a", expires="2026-06-02", path="x", on=TODAY)
    assert (ok.reason, ok.expires) == ("r", date(2026, 6, 2))
    with pytest.raises(SuppressionError, match="in the future"):
        new_suppression("MLW-PKL-110", reason="r", reviewer="a", expires="2026-06-01", path="x", on=TODAY)
    with pytest.raises(SuppressionError, match="unknown rule"):
        new_suppression(
            "MLW-PKL-999", reason="r", reviewer="a", expires="2027-01-01", path="x", known_rules={"MLW-X-1"}
        )
    with pytest.raises(SuppressionError, match="control characters"):
        new_suppression("MLW-PKL-110", reason="r\x1b[2J", reviewer="a", expires="2027-01-01", path="x", on=TODAY)
    with pytest.raises(SuppressionError, match="exactly one"):
        new_suppression("MLW-PKL-110", reason="r", reviewer="a", expires="2027-01-01", on=TODAY)


def test_append_round_trips_hostile_text(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    tricky = 'quote " backslash \\ newline\nunicode ✓ tab\t"""'
    entry = new_suppression("MLW-PKL-110", reason=tricky, reviewer="ö", expires="2027-01-01", path='a"b', on=TODAY)
    stored = append_suppression(path, entry, on=TODAY)
    assert stored.source == f"{path}#1"
    [loaded] = load_suppressions(path)
    assert (loaded.reason, loaded.reviewer, loaded.path) == (tricky, "ö", 'a"b')
    assert tomllib.loads(path.read_text())["suppression"][0]["added"] == TODAY


def test_a_failed_append_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("version = 1\nsurprise = true\n")
    entry = new_suppression("MLW-PKL-110", reason="r", reviewer="a", expires="2027-01-01", path="x", on=TODAY)
    with pytest.raises(SuppressionError, match="unknown key"):
        append_suppression(path, entry, on=TODAY)
    assert path.read_text() == "version = 1\nsurprise = true\n"


def test_an_empty_file_has_no_suppressions() -> None:
    assert parse_suppressions("") == ()
    assert parse_suppressions("version = 1\n") == ()
    with pytest.raises(SuppressionError, match="array of tables"):
        parse_suppressions('suppression = "x"\n')
