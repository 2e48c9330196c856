"""Policy loading: safe defaults, strict validation, helpful errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.core.errors import PolicyError
from mlwarden.core.findings import Severity
from mlwarden.core.policy import Policy, load_policy


def test_defaults_are_safe() -> None:
    p = load_policy(None)
    assert p.fail_on is Severity.MEDIUM
    assert p.limits.max_depth >= 4
    assert p.limits.timeout_seconds > 0
    assert p.pickle.allow == ()


def test_full_policy_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text("""
version = 1
fail_on = "high"
[limits]
max_depth = 3
timeout_seconds = 5.5
[pickle]
allow = ["mycorp.models.*", "mycorp.utils.Scaler"]
deny = ["collections.OrderedDict"]
[rules.MLW-PKL-110]
severity = "low"
[rules.MLW-GEN-003]
enabled = false
""")
    p = load_policy(f)
    assert p.fail_on is Severity.HIGH
    assert p.limits.max_depth == 3
    assert p.rules["MLW-PKL-110"].severity is Severity.LOW
    assert p.rules["MLW-GEN-003"].enabled is False


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("fail_on = 'sometimes'", "unknown severity"),
        ("[limits]\nmax_depth = -1", "limits.max_depth"),
        ("[pickle]\nallow = ['nodot']", "pickle.allow"),
        ("colour = 'blue'", "colour"),
        ("version = 2", "unsupported policy version"),
        ("this is not toml", "not valid TOML"),
        ("[rules.X]\nseverity = 'huge'", "unknown severity"),
    ],
)
def test_invalid_policies_are_rejected_with_the_key(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(PolicyError, match=needle):
        load_policy(f)


def test_policy_is_immutable() -> None:
    p = Policy()
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        p.fail_on = Severity.LOW  # type: ignore[misc]
    assert p.with_fail_on(Severity.LOW).fail_on is Severity.LOW
    assert p.fail_on is Severity.MEDIUM


def test_documented_example_policy_is_valid(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    block = doc.split("```toml", 1)[1].split("```", 1)[0]
    f = tmp_path / "doc.toml"
    f.write_text(block)
    p = load_policy(f)
    assert p.pickle.allow == ("mycorp.models.TinyNet", "mycorp.layers.*")
    assert p.rules["MLW-PKL-110"].severity is Severity.HIGH
    assert p.limits == Policy().limits  # the documented values are the defaults
    assert p.sandbox == Policy().sandbox
