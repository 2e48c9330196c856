"""Output filtering remembers the strings it found clean (field names, class labels) and still masks every
answer that carries personal data, on every request — the memory changes the cost, never the outcome."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mlwarden.guard.redact import redact_json
from mlwarden.serve.checks import RequestGuard
from mlwarden.serve.policy import parse_guard_policy
from mlwarden.serve.servable import Prediction, Servable

CARD = "4111 1111 1111 1111"


class _Fixed(Servable):
    """A stand-in model: the tests hand its predictions to the output filter directly."""

    def __init__(self, classes: tuple[Any, ...] | None) -> None:
        self.classes = classes
        self.n_features = 2

    def predict(self, x: np.ndarray | list[str]) -> Prediction:
        raise NotImplementedError


def _guard(classes: tuple[Any, ...] | None, action: str = "mask") -> RequestGuard:
    policy = parse_guard_policy({"output": {"pii_action": action}, "extraction": {"action": "off"}})
    return RequestGuard(policy, _Fixed(classes), None)


def test_clean_answers_are_remembered_and_unchanged() -> None:
    guard = _guard(("approved", "denied"))
    prediction = Prediction(["denied"], np.array([[0.251, 0.749]]), ("approved", "denied"))
    for _ in range(3):
        rows, checks = guard.filter_output(prediction)
        assert (
            rows
            == redact_json(rows, guard.redaction).value
            == [{"label": "denied", "scores": {"approved": 0.25, "denied": 0.75}}]
        )
        assert [c.check for c in checks] == ["output_scores"]
    assert {"label", "scores", "approved", "denied"} <= guard._clean


@pytest.mark.parametrize("action", ["mask", "block"])
def test_personal_data_is_caught_on_every_request_after_clean_ones(action: str) -> None:
    guard = _guard(None, action)
    clean = Prediction(["ok", "fine"], None, None)
    leaky = Prediction(["ok", f"card {CARD}"], None, None)
    as_number = Prediction([4111111111111111], None, None)  # a card number as a JSON integer
    for _ in range(3):
        rows, checks = guard.filter_output(clean)
        assert rows == [{"value": "ok"}, {"value": "fine"}]
        assert checks == []
        for prediction in (leaky, as_number):
            rows, checks = guard.filter_output(prediction)
            assert [c.check for c in checks] == ["output_pii"]
            assert checks[0].outcome == ("block" if action == "block" else "flag")
            assert CARD not in str(rows)
            assert "4111111111111111" not in str(rows)
    assert f"card {CARD}" not in guard._clean


def test_unusual_values_take_the_full_walk() -> None:
    guard = _guard(None)
    assert guard._strings_to_scan([{"value": ("a", "b")}]) is None  # a tuple: redact_json decides
    assert guard._strings_to_scan([{"value": 10**12}]) is None  # a long integer is scanned as text
    assert guard._strings_to_scan([{"value": "x" * 10}]) == {"value", "x" * 10}
    deep: Any = "leaf"
    for _ in range(guard.redaction.max_depth):
        deep = [deep]
    assert guard._strings_to_scan(deep) is None
