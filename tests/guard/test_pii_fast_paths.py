"""The guard detectors' shortcuts (ASCII masking in C, short digit runs skipped, triggers) give reference answers."""

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


def reference_find(text: str, config: PiiConfig) -> list:  # type: ignore[type-arg]
    """Every detector run on the whole text, no trigger consulted."""
    from mlwarden.guard.pii import DETECTORS, resolve_overlaps

    found = [m for d in DETECTORS.values() for m in d.scan(text, config) if m.confidence >= config.min_confidence]
    return resolve_overlaps(found)


def _pieces() -> list[str]:
    from mlwarden.guard.pii import DETECTORS

    examples = [d.example.replace("\\n", "\n") for d in DETECTORS.values()]
    near_misses = ["AKIA", "ASIA", "A3T", "gh", "ghp_", "github_pat_", "glpat-", "xoxb-", "xapp-1-", "sk_live_",
                   "whsec_", "-----BEGIN ", "PRIVATE KEY-----", "ey", "eyJ", "aws", "SECRET", "password: ", "@", ":",
                   "::", ".", "-", "+", "(415) ", "555-2671", "1", "42", "4111", "0958"]  # fmt: skip
    # one value of every alternative of every detector's pattern, not only the examples
    alternatives = ["ASIA" + "B" * 16, "ABIA" + "C" * 16, "ACCA" + "D" * 16, "A3TX" + "E" * 16, "gho_" + "b" * 36,
                    "github_pat_" + "c" * 82, "glsoat-" + "d" * 20, "gldt-" + "e" * 20, "xoxp-" + "1" * 12,
                    "xapp-1-A1B2-123-abc1", "https://hooks.slack.com/services/T0001/B0001/" + "a" * 16,
                    "rk_test_" + "f" * 16, "whsec_" + "g" * 24, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r",
                    "aws_secret = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "SSN 123 45 6789", "(415) 555-2671",
                    "415.555.2671", "01 23 45 67 89", "020 7946 0958", "DE89370400440532013000",
                    "::ffff:192.0.2.128", "fe80::1:2:3", "10.0.0.1", "jane@example.org",
                    "5500 0000 0000 0004"]  # fmt: skip
    prose = ["the answer is", "Paris", "kilometres", "café", "٣", "\n", " ", "version", "IP", "call"]
    return examples + alternatives + near_misses + prose


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_pieces()), max_size=12), st.lists(st.sampled_from(["", " ", "\n", ", "]), max_size=12))
def test_triggers_never_change_what_find_reports(pieces: list[str], gaps: list[str]) -> None:
    text = "".join(p + (gaps[i] if i < len(gaps) else "") for i, p in enumerate(pieces))
    config = PiiConfig()
    assert find(text, config) == reference_find(text, config)


def test_every_detector_example_contains_its_trigger_and_is_found() -> None:
    from mlwarden.guard.pii import DETECTORS

    config = PiiConfig()
    for detector in DETECTORS.values():
        example = detector.example.replace("\\n", "\n")
        assert any(m.detector == detector.id for m in find(f"see {example} here", config)), detector.id
        if detector.trigger is not None:
            assert detector.trigger.search(example), detector.id
    for value in _pieces():  # every planted value is found exactly as without triggers
        assert find(f"x {value} y", config) == reference_find(f"x {value} y", config), value
    gated = [d.id for d in DETECTORS.values() if d.trigger is not None]
    assert len(gated) >= 12  # most detectors are skipped on plain prose
    assert find("The capital of France is Paris, a city on the Seine.", config) == []
