"""Masking of PII in texts and JSON outputs, and the score leakage reducers (rounding, top-k)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlwarden.core.errors import LimitExceeded, UsageError
from mlwarden.guard.pii import PiiConfig, find
from mlwarden.guard.redact import (
    OutputLimits,
    RedactionConfig,
    limit_scores,
    redact_json,
    redact_text,
    round_scores,
    top_k_scores,
)

TEXT = "Dear Jane, your card 4111 1111 1111 1111 and jane@example.com are on file.\nThanks!  "


def test_text_masks_matches_and_keeps_everything_else_exactly() -> None:
    result = redact_text(TEXT)
    assert result.text == "Dear Jane, your card [REDACTED:credit_card] and [REDACTED:email] are on file.\nThanks!  "
    assert [m.detector for m in result.matches] == ["credit_card", "email"]
    assert result.changed


def test_last4_style_and_custom_template() -> None:
    assert "card **** **** **** 1111 and" in redact_text(TEXT, RedactionConfig(card_style="last4")).text
    assert redact_text("mail a@b.org", RedactionConfig(template="<{detector}>")).text == "mail <email>"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_text_without_pii_is_unchanged(text: str) -> None:
    if not find(text):
        assert redact_text(text).text == text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abc XYZ.,;\n", max_size=60), st.text(alphabet="abc XYZ.,;\n", max_size=60))
def test_text_around_pii_is_preserved(before: str, after: str) -> None:
    text = f"{before} 4111-1111-1111-1111 {after}"
    assert redact_text(text).text == f"{before} [REDACTED:credit_card] {after}"


def test_json_masks_string_leaves_keys_and_long_integers() -> None:
    output = {
        "label": "ok",
        "choices": [{"text": "write to bob@example.org", "score": 0.9}],
        "card": 4111111111111111,
        "count": 123456,
        "scores": {"alice@example.com": 0.7, "carol@example.com": 0.3},
        "flag": True,
        "none": None,
        "pair": ("x", "AKIAIOSFODNN7EXAMPLE"),
    }
    result = redact_json(output)
    assert result.value == {
        "label": "ok",
        "choices": [{"text": "write to [REDACTED:email]", "score": 0.9}],
        "card": "[REDACTED:credit_card]",
        "count": 123456,
        "scores": {"[REDACTED:email]": 0.7, "[REDACTED:email]*": 0.3},
        "flag": True,
        "none": None,
        "pair": ("x", "[REDACTED:aws_access_key_id]"),
    }
    paths = [p for p, _ in result.redactions]
    assert paths == [
        "/choices/0/text",
        "/card",
        "/scores/[REDACTED:email]#key",
        "/scores/[REDACTED:email]*#key",
        "/pair/1",
    ]
    assert all("example" not in p for p in paths)  # the evidence does not leak what it masked
    assert output["choices"][0]["text"] == "write to bob@example.org"  # the input is not modified


def test_json_without_pii_is_returned_equal() -> None:
    output = {"a": [1, 2.5, "plain text", {"b": None}], "c": "order 1234567890123456"}
    result = redact_json(output)
    assert result.value == output
    assert not result.changed


def test_json_limits_raise_clear_errors() -> None:
    deep: object = "x"
    for _ in range(10):
        deep = [deep]
    with pytest.raises(LimitExceeded, match="redaction depth exceeded: nesting deeper than 5"):
        redact_json(deep, RedactionConfig(max_depth=5))
    with pytest.raises(LimitExceeded, match="redaction nodes exceeded"):
        redact_json(list(range(100)), RedactionConfig(max_nodes=50))
    with pytest.raises(LimitExceeded, match="redaction size exceeded"):
        redact_json(["a" * 60, "b" * 60], RedactionConfig(max_total_chars=100))
    with pytest.raises(LimitExceeded, match="PII input size"):
        redact_json({"t": "x" * 20}, RedactionConfig(pii=PiiConfig(max_chars=10)))
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(LimitExceeded, match="depth"):
        redact_json(cyclic)


def test_json_rejects_unknown_types_and_bad_config() -> None:
    with pytest.raises(UsageError, match="cannot redact a value of type bytes at /a/0"):
        redact_json({"a": [b"raw"]})
    with pytest.raises(UsageError, match="card_style"):
        RedactionConfig(card_style="first6")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="template"):
        RedactionConfig(template="{nope}")
    with pytest.raises(UsageError, match="max_depth"):
        RedactionConfig(max_depth=0)


# --- leakage reducers ------------------------------------------------------------------------------------------


def test_rounding_reports_what_changed() -> None:
    result = round_scores([0.12345, 0.5, 0.37655], decimals=2)
    assert result.value == [0.12, 0.5, 0.38]
    assert result.rounded == 2
    assert result.dropped == 0
    assert not result.renormalized
    assert result.max_abs_change == pytest.approx(0.00345)


def test_top_k_on_a_label_map_keeps_k_entries_without_renormalising() -> None:
    result = top_k_scores({"cat": 0.6, "dog": 0.25, "fox": 0.1, "owl": 0.05}, 2)
    assert result.value == {"cat": 0.6, "dog": 0.25}
    assert result.dropped == 2
    assert not result.renormalized


def test_top_k_with_renormalisation_sums_to_one() -> None:
    result = top_k_scores({"cat": 0.6, "dog": 0.2, "fox": 0.2}, 2, renormalize=True)
    assert result.value == pytest.approx({"cat": 0.75, "dog": 0.25})  # ties keep the earlier label
    assert result.renormalized
    assert result.changed


def test_top_k_on_a_batch_keeps_shape_and_dtype() -> None:
    scores = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]], dtype=np.float32)
    result = limit_scores(scores, OutputLimits(decimals=1, top_k=1))
    assert isinstance(result.value, np.ndarray)
    assert result.value.dtype == np.float32
    np.testing.assert_allclose(result.value, [[0.0, 0.0, 0.7], [0.5, 0.0, 0.0]], rtol=1e-6)
    assert result.dropped == 4


def test_reducers_leave_already_coarse_outputs_alone() -> None:
    result = limit_scores([0.25, 0.75], OutputLimits(decimals=2, top_k=5))
    assert result.value == [0.25, 0.75]
    assert not result.changed


def test_reducers_reject_bad_scores_and_limits() -> None:
    with pytest.raises(UsageError, match="NaN or infinity"):
        round_scores([0.5, float("nan")])
    with pytest.raises(UsageError, match="non-empty vector"):
        round_scores([])
    with pytest.raises(UsageError, match="top_k"):
        OutputLimits(top_k=0)
    with pytest.raises(UsageError, match="decimals"):
        OutputLimits(decimals=-1)
