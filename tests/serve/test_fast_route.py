"""The predict route's fast path (serve/app.py ``fast_predict``) answers only well-formed requests of cached
callers, exactly as the regular FastAPI route would; everything else is left to the regular route and its errors.

A spy records what the fast path returned for each request: ``None`` (left to the regular route) or an answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request
from fastapi.responses import Response

import mlwarden.serve.app as guard_app
from mlwarden.serve.policy import parse_guard_policy
from tests.serve.world import World, bearer, opened_world, serve, tabular_data, train_sklearn

PREDICT = "/v1/models/{}/predict"
LIMITS = {"rate_per_s": 10_000, "burst": 10_000}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with opened_world(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path) as w:
        yield w


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each predict request: whether the fast path answered it."""
    seen: list[bool] = []
    original = guard_app.fast_predict

    async def spy(request: Request) -> Response | None:
        answer = await original(request)
        seen.append(answer is not None)
        return answer

    monkeypatch.setattr(guard_app, "fast_predict", spy)
    return seen


def _shape(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


def test_fast_path_answers_like_the_regular_route(world: World, tmp_path: Path, taken: list[bool]) -> None:
    world.release("fraud", train_sklearn(tmp_path / "m.joblib", 1))
    carol = world.user("carol", "viewer")
    policy = parse_guard_policy({"limits": {**LIMITS, "token_cache_s": 60}, "extraction": {"action": "off"}})
    row = tabular_data(1, 3)[0].tolist()
    json_headers = {**bearer(carol), "Content-Type": "application/json"}
    with serve(world, "fraud@production", policy) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        first = http.post(PREDICT.format("fraud"), json={"inputs": row}, headers=bearer(carol))
        second = http.post(PREDICT.format("fraud"), json={"inputs": row}, headers=bearer(carol))
        assert taken == [False, True]  # the token was not cached yet, then it was
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert _shape(first.json()) == _shape(second.json())
        assert first.headers["content-type"] == second.headers["content-type"]
        # Everything below is left to the regular route, which answers with its own errors.
        cases: list[tuple[bytes, dict[str, str], int, str]] = [
            (b'{"inputs": [["0.5"]]}', json_headers, 422, "invalid_input"),
            (b'{"inputs": [[0.1,', json_headers, 422, "invalid_input"),
            (b"", json_headers, 422, "invalid_input"),
            (b'{"inputs": [[0.1]], "extra": 1}', json_headers, 422, "invalid_input"),
            (b'{"inputs": [[0.1]]}', {**bearer("mlw_unknown"), "Content-Type": "application/json"}, 401, ""),
            (b'{"inputs": [[0.1]]}', {"Content-Type": "application/json"}, 401, ""),
            (b'{"inputs": [[0.1]]}', {**bearer(carol), "Content-Type": "text/plain"}, 422, "invalid_input"),
        ]
        for body, headers, status, code in cases:
            before = len(taken)
            answer = http.post(PREDICT.format("fraud"), content=body, headers=headers)
            assert answer.status_code == status, (body, answer.text)
            assert "error" in answer.json()
            if code:
                assert answer.json()["error"]["code"] == code
            if status == 422 and body.startswith(b'{"inputs": [["'):
                assert "inputs.rows.0.0" in answer.json()["error"]["message"]  # the regular route's location
            assert taken[before:] in ([], [False])  # never answered by the fast path
        # A body past the limit, sent without a length: cut off while it arrives, 413 as on the regular route.
        chunks = iter([b'{"inputs": [[' + b"0.1, " * 400_000, b"0.1]]}"])
        huge = http.post(PREDICT.format("fraud"), content=chunks, headers=json_headers)
        assert huge.status_code == 413, huge.text
        assert huge.json()["error"]["code"] == "payload_too_large"
        # Well-formed requests of the cached caller: the fast path, with handle_predict's own refusals.
        wrong_model = http.post(PREDICT.format("other"), json={"inputs": row}, headers=bearer(carol))
        short_row = http.post(PREDICT.format("fraud"), json={"inputs": [row[0][:3]]}, headers=bearer(carol))
        assert taken[-2:] == [True, True]
        assert wrong_model.status_code == 404
        assert wrong_model.json()["error"]["code"] == "not_found"
        assert short_row.status_code == 422
        assert short_row.json()["error"]["code"] == "invalid_input"
