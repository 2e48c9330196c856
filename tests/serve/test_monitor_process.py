"""The guard with its background work in a monitor process (``ServiceOptions(monitor="process")``).

What is tested: decisions are audited through the monitor process (blocks before their reply, allowed ones
batched, none lost at shutdown); its state and Prometheus series reach the request process's endpoints; a stopped
monitor process never stalls a request (the buffer fills, items are dropped and counted, answers that could not
be audited are refused, and the overflow is alerted once it runs again); a killed one is started again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlwarden.serve.policy import parse_guard_policy
from mlwarden.serve.service import ServiceOptions
from tests.registry.conftest import db_url  # noqa: F401 - fixture used by name
from tests.serve.world import World, bearer, metrics_auth, opened_world, serve, tabular_data, train_sklearn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OPEN_LIMITS = {"rate_per_s": 10_000, "burst": 10_000, "token_cache_s": 0}
PREDICT = "/v1/models/fraud/predict"


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:  # noqa: F811 - the imported fixture
    with opened_world(db_url, tmp_path) as w:
        yield w


def _rows(x: np.ndarray) -> dict[str, list[list[float]]]:
    return {"inputs": x.tolist()}


def _predict_events(world: World) -> list:  # type: ignore[type-arg]
    return [e for e in world.registry.audit().entries() if e.action == "guard.predict"]


def _wait(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_decisions_are_audited_by_the_monitor_process(world: World, tmp_path: Path) -> None:
    """A block is in the log when its 403 arrives; every allowed answer is in it once the service stopped; the
    monitor's state and series are served by the request process; the monitor ran in another process."""
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    carol = world.user("carol", "viewer")
    policy = parse_guard_policy({"limits": OPEN_LIMITS, "monitor": {"window": 200, "min_rows": 50}})
    x = tabular_data(40, seed=3)[0]
    bad = x[:1].copy()
    bad[0, 2] = 1e6
    options = ServiceOptions(monitor="process", tick_s=0.05)
    with serve(world, "fraud@production", policy, options=options) as live:
        link = live.service.link
        assert link is not None
        assert link.pid is not None
        assert link.pid != os.getpid()
        with httpx.Client(base_url=live.url, timeout=30) as http:
            for row in x:
                assert http.post(PREDICT, json=_rows(row[None]), headers=bearer(carol)).status_code == 200
            blocked = http.post(PREDICT, json=_rows(bad), headers=bearer(carol))
            assert blocked.status_code == 403
            request_id = blocked.json()["error"]["request_id"]
            # written before the reply: no waiting
            assert [e.details["request_id"] for e in _predict_events(world) if not e.allowed] == [request_id]

            def monitor_saw_everything() -> bool:
                state = http.get("/v1/models/fraud/monitor", headers=bearer(carol)).json()
                return state.get("requests") == len(x) + 1

            _wait(monitor_saw_everything)
            state = http.get("/v1/models/fraud/monitor", headers=bearer(carol)).json()
            assert state["window_rows"] == len(x)
            _wait(lambda: "mlwarden_monitor_window_rows" in http.get("/metrics", headers=metrics_auth()).text)
    allowed = [e for e in _predict_events(world) if e.allowed]
    assert len(allowed) == len(x)


def test_a_stopped_monitor_process_never_stalls_a_request(world: World, tmp_path: Path) -> None:
    """SIGSTOP the monitor process: requests keep getting answers at once (200 while the buffer has room, then 503
    for answers that could not be audited), items are dropped and counted; after SIGCONT the overflow is alerted
    and every answer that was served is in the audit log."""
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    carol = world.user("carol", "viewer")
    policy = parse_guard_policy({"limits": OPEN_LIMITS})
    x = tabular_data(600, seed=4)[0]
    options = ServiceOptions(monitor="process", tick_s=0.05, monitor_buffer=100)
    answered: set[str] = set()
    refused: set[str] = set()
    with serve(world, "fraud@production", policy, options=options) as live:
        link = live.service.link
        assert link is not None
        assert link.pid is not None
        with httpx.Client(base_url=live.url, timeout=30) as http:
            first = http.post(PREDICT, json=_rows(x[:1]), headers=bearer(carol))
            assert first.status_code == 200
            answered.add(first.json()["request_id"])
            _wait(lambda: link.heard)  # it has started and is beating
            os.kill(link.pid, signal.SIGSTOP)
            try:
                statuses, slowest = [], 0.0
                for row in x[1:]:
                    started = time.perf_counter()
                    reply = http.post(PREDICT, json=_rows(row[None]), headers=bearer(carol))
                    slowest = max(slowest, time.perf_counter() - started)
                    statuses.append(reply.status_code)
                    if reply.status_code == 200:
                        answered.add(reply.json()["request_id"])
                    else:
                        refused.add(reply.json()["error"]["request_id"])
                metrics = http.get("/metrics", headers=metrics_auth()).text
            finally:
                os.kill(link.pid, signal.SIGCONT)
            assert set(statuses) <= {200, 503}, set(statuses)
            assert 503 in statuses, "the buffer never filled: the test did not test anything"
            assert slowest < 4.0, f"a request waited {slowest:.2f} s for a stopped monitor process"
            assert _metric(metrics, "mlwarden_guard_monitor_dropped_total") >= statuses.count(503)

            def overflow_alerted() -> bool:
                state = http.get("/v1/models/fraud/monitor", headers=bearer(carol)).json()
                return any(a["rule"] == "monitor_queue_overflow" for a in state.get("recent_alerts", []))

            _wait(overflow_alerted)
    logged = [e.details["request_id"] for e in _predict_events(world)]
    assert answered <= set(logged), "an answer left without its audit record"
    # a refused request's event may land (it was on its way when the wait gave up), never an unknown one
    assert set(logged) <= answered | refused
    assert len(logged) == len(set(logged))


def test_a_killed_monitor_process_is_started_again(world: World, tmp_path: Path) -> None:
    """SIGKILL the monitor process: the link starts another, tells it what is served, and blocks are audited again."""
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    carol = world.user("carol", "viewer")
    policy = parse_guard_policy({"limits": OPEN_LIMITS})
    bad = tabular_data(1, seed=3)[0]
    bad[0, 2] = 1e6
    options = ServiceOptions(monitor="process", tick_s=0.05)
    with serve(world, "fraud@production", policy, options=options) as live:
        link = live.service.link
        assert link is not None
        assert link.pid is not None
        first = link.pid
        os.kill(first, signal.SIGKILL)
        _wait(lambda: link.alive and link.pid != first)
        with httpx.Client(base_url=live.url, timeout=30) as http:
            blocked = http.post(PREDICT, json=_rows(bad), headers=bearer(carol))
            assert blocked.status_code == 403
            assert [e.allowed for e in _predict_events(world)] == [False]
            state = http.get("/v1/models/fraud/monitor", headers=bearer(carol)).json()
            assert state["model"] == "fraud"
            assert state["requests"] == 1
            metrics = http.get("/metrics", headers=metrics_auth()).text
    assert _metric(metrics, "mlwarden_guard_monitor_restarts_total") == 1


def test_a_monitor_process_that_cannot_start_stops_the_service_with_its_reason(world: World, tmp_path: Path) -> None:
    """An alert rule on a metric only the LLM proxy keeps is valid policy syntax, but this monitor cannot run it:
    the service refuses to start and says why, instead of serving without its audit writer (or respawning it)."""
    from mlwarden.serve.deployment import ServeError
    from mlwarden.serve.service import GuardService

    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    policy = parse_guard_policy(
        {"monitor": {"alerts": [{"name": "upstream", "on": "rate:upstream_error_rate", "above": 0.5}]}}
    )
    started = time.monotonic()
    with pytest.raises(ServeError, match="upstream_error_rate"):
        GuardService(
            world.registry, world.principals["dave"], "fraud@production", policy, ServiceOptions(monitor="process")
        )
    assert time.monotonic() - started < 30
