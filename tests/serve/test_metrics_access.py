"""Who may read ``/metrics`` (outside security review, item 10).

Reported: ``/metrics`` answered anyone on the public port, and its series name the served model, its version and
its digest. Now it is on the public port only behind a metrics token, or on a listener of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlwarden.core.errors import UsageError
from mlwarden.serve.app import check_metrics_token
from mlwarden.serve.policy import parse_guard_policy
from tests.serve.world import METRICS_TOKEN, World, bearer, metrics_auth, opened_world, serve, train_sklearn

SERVING = "mlwarden_guard_serving_info"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with opened_world(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path) as w:
        w.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
        yield w


def test_metrics_are_not_on_the_public_port_by_default(world: World) -> None:
    digest = world.registry.resolve(world.principals["root"], "fraud:1").digest
    policy = parse_guard_policy({})
    with serve(world, "fraud@production", policy, metrics_token=None) as live:
        answer = httpx.get(f"{live.url}/metrics", timeout=10)
        carol = world.user("carol", "viewer")
        as_client = httpx.get(f"{live.url}/metrics", headers=bearer(carol), timeout=10)  # a registry token: no
        assert httpx.get(f"{live.url}/healthz", timeout=10).status_code == 200
    assert answer.status_code == 404, answer.text
    assert as_client.status_code == 404
    assert digest not in answer.text
    assert SERVING not in answer.text


def test_the_metrics_token_guards_the_public_metrics(world: World) -> None:
    policy = parse_guard_policy({})
    with serve(world, "fraud@production", policy) as live:  # started with METRICS_TOKEN
        anonymous = httpx.get(f"{live.url}/metrics", timeout=10)
        wrong = httpx.get(f"{live.url}/metrics", headers=bearer(METRICS_TOKEN[:-1] + "x"), timeout=10)
        carol = world.user("carol", "viewer")
        client = httpx.get(f"{live.url}/metrics", headers=bearer(carol), timeout=10)
        scraper = httpx.get(f"{live.url}/metrics", headers=metrics_auth(), timeout=10)
    for refused in (anonymous, wrong, client):
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "unauthenticated"
        assert SERVING not in refused.text
    assert scraper.status_code == 200
    assert SERVING in scraper.text


def test_metrics_on_a_listener_of_their_own(world: World) -> None:
    policy = parse_guard_policy({})
    with serve(world, "fraud@production", policy, metrics_token=None, metrics_listener=True) as live:
        assert live.metrics_url is not None
        assert live.metrics_url != live.url
        public = httpx.get(f"{live.url}/metrics", timeout=10)
        private = httpx.get(f"{live.metrics_url}/metrics", timeout=10)
        only_metrics = httpx.get(f"{live.metrics_url}/healthz", timeout=10)
        no_docs = httpx.get(f"{live.metrics_url}/openapi.json", timeout=10)
    assert public.status_code == 404
    assert private.status_code == 200
    assert SERVING in private.text
    assert only_metrics.status_code == 404
    assert no_docs.status_code == 404


def test_a_metrics_listener_can_require_the_token_too(world: World) -> None:
    policy = parse_guard_policy({})
    with serve(world, "fraud@production", policy, metrics_listener=True) as live:
        assert live.metrics_url is not None
        anonymous = httpx.get(f"{live.metrics_url}/metrics", timeout=10)
        scraper = httpx.get(f"{live.metrics_url}/metrics", headers=metrics_auth(), timeout=10)
    assert anonymous.status_code == 401
    assert scraper.status_code == 200


@pytest.mark.parametrize("token", ["short", "x" * 300])
def test_a_metrics_token_must_look_like_a_secret(token: str) -> None:
    with pytest.raises(UsageError, match="metrics token"):
        check_metrics_token(token)


def test_no_metrics_token() -> None:
    assert check_metrics_token(None) is None
    assert check_metrics_token("  ") is None
    assert check_metrics_token(f" {METRICS_TOKEN} ") == METRICS_TOKEN
