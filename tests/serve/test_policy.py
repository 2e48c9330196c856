"""The guard policy file: defaults, YAML 1.2 keys, strict validation naming the field, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.core.errors import PolicyError
from mlwarden.serve.policy import MAX_POLICY_BYTES, GuardPolicy, load_guard_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "guard-policy.yaml"


def test_defaults_are_the_safe_choices() -> None:
    policy = load_guard_policy(None)
    assert policy.input.range_action == "block"
    assert policy.prompt.action == "block"
    assert policy.extraction.action == "enforce"
    assert policy.output.pii_action == "mask"
    assert policy.output.expose_evidence is False
    assert policy.limits.require_signature is True
    assert policy.input.require_baseline is True
    assert policy.playbooks == ()
    assert {r.name for r in policy.monitor.alerts} >= {"input-drift"}


def test_the_shipped_example_loads(tmp_path: Path) -> None:
    policy = load_guard_policy(EXAMPLE)
    assert policy.model == "fraud"
    (book,) = policy.playbooks
    assert [s.action for s in book.steps] == ["forensics", "quarantine", "rollback", "webhook"]
    unquoted = tmp_path / "p.yaml"
    unquoted.write_text(
        "playbooks:\n  - name: p\n    on: [input-drift]\n    steps: [{action: rollback}]\n"
        "monitor:\n  alerts:\n    - {name: d, on: drift}\n"
    )
    policy = load_guard_policy(unquoted)
    assert policy.playbooks[0].on == ("input-drift",)  # YAML 1.1 would have read `on` as True
    assert policy.monitor.alerts[0].on == "drift"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("input:\n  max_rows: 0\n", "input.max_rows"),
        ("input:\n  range_action: shout\n", "input.range_action"),
        ("limits:\n  rate_per_s: -1\n", "limits.rate_per_s"),
        ("extraction:\n  config:\n    delta: 1.5\n", "delta must be in"),
        ("extraction:\n  config:\n    nonsense: 1\n", "unexpected keyword"),
        ("output:\n  pii_action: shred\n", "output.pii_action"),
        ("adversarial:\n  detectors: [magic]\n", "adversarial.detectors"),
        ("unknown_section: {}\n", "unknown_section"),
        ("format: mlwarden.guard-policy/9\n", "format"),
        ("- a list\n", "top level must be a mapping"),
        ("input: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_bad_policies_name_the_problem(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=field.replace("[", r"\[")):
        load_guard_policy(path)


def test_missing_and_huge_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_guard_policy(tmp_path / "nope.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_POLICY_BYTES + 1))
    with pytest.raises(PolicyError, match="larger than"):
        load_guard_policy(big)


def test_policies_are_immutable() -> None:
    policy = GuardPolicy()
    with pytest.raises(Exception, match="frozen"):
        policy.input.max_rows = 5  # type: ignore[misc]
