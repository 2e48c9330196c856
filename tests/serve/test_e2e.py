"""End to end: a real registry, real signed models, uvicorn on 127.0.0.1, real HTTP clients.

Each test releases versions through the whole lifecycle (sign, register, scan, baseline, approve, deploy) and
talks to the guard only over HTTP, then checks what the registry and its audit log say happened.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import pytest

from mlwarden.monitor.forensics import verify_bundle
from mlwarden.registry.states import State
from mlwarden.serve.policy import parse_guard_policy
from mlwarden.serve.service import ServiceOptions
from tests.registry.conftest import db_url  # noqa: F401 - fixture used by name
from tests.serve.world import World, bearer, metrics_auth, opened_world, serve, tabular_data, train_sklearn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Limits generous enough that the tests' own request bursts are not rate limited (one test is about that).
OPEN_LIMITS = {"rate_per_s": 10_000, "burst": 10_000, "token_cache_s": 0}


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:  # noqa: F811 - the imported fixture
    with opened_world(db_url, tmp_path) as w:
        yield w


def _rows(x: np.ndarray) -> dict[str, list[list[float]]]:
    return {"inputs": x.tolist()}


def _guard_events(world: World, action: str = "guard.predict") -> list:  # type: ignore[type-arg]
    return [e for e in world.registry.audit().entries() if e.action == action]


def assert_error(response: httpx.Response, status: int, code: str) -> dict:  # type: ignore[type-arg]
    """The guard's error shape with ``status`` and ``code``, and no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    return body["error"]


def test_serves_the_verified_version_and_audits_each_decision(world: World, tmp_path: Path) -> None:
    model = train_sklearn(tmp_path / "fraud.joblib", seed=1)
    ref = world.release("fraud", model)
    client = world.user("carol", "viewer", scope="model:fraud")
    policy = parse_guard_policy({"limits": OPEN_LIMITS})
    x, _ = tabular_data(5, seed=7)
    with serve(world, "fraud@production", policy) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        assert http.get("/healthz").json() == {
            "status": "ok",
            "model": "fraud",
            "version": 1,
            "mlwarden": pytest.importorskip("mlwarden").__version__,
        }
        answer = http.post("/v1/models/fraud/predict", json=_rows(x), headers=bearer(client))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "fraud"
        assert body["version"] == 1
        assert body["decision"] == "allowed"
        expected = live.service.current.servable.predict(x).scores
        got = np.array([[row["scores"][c] for c in ("0", "1")] for row in body["predictions"]])
        assert np.allclose(got, np.round(expected, 2))  # the default policy rounds to 2 decimals
        assert "checks" not in body  # evidence goes to the audit log, not to the client
        served = http.get("/v1/models/fraud", headers=bearer(client)).json()
        assert served["digest"] == world.registry.resolve(world.principals["root"], ref).digest
        metrics = http.get("/metrics", headers=metrics_auth()).text
        assert 'mlwarden_guard_requests_total{decision="allowed",model="fraud",version="1"} 1.0' in metrics
        assert "openapi" in http.get("/openapi.json").json()
    events = _guard_events(world)
    assert [(e.actor, e.subject, e.allowed) for e in events] == [("carol", "model:fraud:1", True)]
    assert events[0].details["request_id"] == body["request_id"]
    verified = [e for e in world.registry.audit().entries() if e.action == "serve.verify"]
    assert verified
    assert verified[-1].allowed
    assert verified[-1].subject == "model:fraud:1"
    assert world.registry.audit().verify(world.audit_signer.public_key).ok


def test_refusals_get_their_status_and_no_traceback(world: World, tmp_path: Path) -> None:
    ref = world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    assert ref == "fraud:1"
    world.release("other", train_sklearn(tmp_path / "other.joblib", seed=2))
    carol = world.user("carol", "viewer", scope="model:fraud")
    elsewhere = world.user("eve", "viewer", scope="model:other")
    policy = parse_guard_policy({"limits": {**OPEN_LIMITS, "max_body_bytes": 4096}, "input": {"max_rows": 4}})
    good = _rows(tabular_data(1, seed=3)[0])
    url = "/v1/models/fraud/predict"
    with serve(world, "fraud@production", policy) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        assert_error(http.post(url, json=good), 401, "unauthenticated")
        assert_error(http.post(url, json=good, headers=bearer("mlw_" + "0" * 43)), 401, "unauthenticated")
        assert_error(http.post(url, json=good, headers=bearer(elsewhere)), 403, "forbidden")
        big = json.dumps({"inputs": [[0.0] * 8] * 200}).encode()
        assert_error(
            http.post(url, content=big, headers={**bearer(carol), "Content-Type": "application/json"}),
            413,
            "payload_too_large",
        )
        chunked = (big[i : i + 512] for i in range(0, len(big), 512))  # no Content-Length: counted as it arrives
        assert_error(
            http.post(url, content=chunked, headers={**bearer(carol), "Content-Type": "application/json"}),
            413,
            "payload_too_large",
        )
        assert_error(http.post(url, json=_rows(np.zeros((5, 8))), headers=bearer(carol)), 413, "payload_too_large")
        malformed = http.post(
            url, content=b'{"inputs": [[1, 2', headers={**bearer(carol), "Content-Type": "application/json"}
        )
        assert_error(malformed, 422, "invalid_input")
        assert_error(http.post(url, json=_rows(np.zeros((1, 3))), headers=bearer(carol)), 422, "invalid_input")
        assert_error(http.post(url, json={"inputs": [["a"] * 8]}, headers=bearer(carol)), 422, "invalid_input")
        assert_error(http.post(url, json={"rows": [[0] * 8]}, headers=bearer(carol)), 422, "invalid_input")
        nan = b'{"inputs": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}'
        assert_error(
            http.post(url, content=nan, headers={**bearer(carol), "Content-Type": "application/json"}),
            422,
            "invalid_input",
        )
        assert_error(http.post("/v1/models/other/predict", json=good, headers=bearer(carol)), 404, "not_found")
        ok = http.post(url, json=good, headers=bearer(carol))
        assert ok.status_code == 200, ok.text
        metrics = http.get("/metrics", headers=metrics_auth()).text
    assert 'mlwarden_guard_rejections_total{model="fraud",reason="unauthenticated"} 2.0' in metrics
    refused = [e for e in _guard_events(world) if not e.allowed]
    assert any(e.actor == "eve" and "scope" in e.reason for e in refused)


def test_out_of_range_input_is_blocked_with_evidence(world: World, tmp_path: Path) -> None:
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    carol = world.user("carol", "viewer")
    policy = parse_guard_policy({"limits": OPEN_LIMITS})
    x = tabular_data(1, seed=3)[0]
    x[0, 2] = 1e6
    with serve(world, "fraud@production", policy) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        error = assert_error(
            http.post("/v1/models/fraud/predict", json=_rows(x), headers=bearer(carol)), 403, "blocked_by_guard"
        )
    assert "x2" in error["message"] or "outside the baseline range" in error["message"]
    (event,) = [e for e in _guard_events(world) if not e.allowed]
    (check,) = [c for c in event.details["checks"] if c["check"] == "range"]
    assert check["outcome"] == "block"
    assert check["evidence"]["examples"][0]["value"] == 1e6


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []  # type: ignore[type-arg]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:  # type: ignore[type-arg]
    received: list[dict] = []  # type: ignore[type-arg]
    handler = type("Hook", (_Hook,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.parametrize("monitor", ["thread", "process"])
def test_drift_raises_an_alert_and_the_playbook_rolls_back_without_downtime(
    world: World,
    tmp_path: Path,
    webhook: tuple[str, list[dict]],  # type: ignore[type-arg]
    monitor: Literal["thread", "process"],
) -> None:
    """A stream shifted by 1 sigma on every feature, mixed with a second client's normal traffic: the drift alert
    fires, the playbook writes a signed forensics bundle, quarantines v2, rolls production back to v1 (kept warm),
    calls the webhook; the second client, hammering the service meanwhile, gets only 200s. With the monitor in a
    process of its own, the playbook acts through the registry and the request process swaps when told to."""
    from cryptography.hazmat.primitives.asymmetric import ec

    hook_url, received = webhook
    world.release("fraud", train_sklearn(tmp_path / "v1.joblib", seed=1))
    world.release("fraud", train_sklearn(tmp_path / "v2.joblib", seed=2))
    carol = world.user("carol", "viewer")
    signer = ec.generate_private_key(ec.SECP256R1())
    policy = parse_guard_policy(
        {
            "limits": OPEN_LIMITS,
            "input": {"range_action": "flag", "ood_action": "flag"},
            "extraction": {"action": "off"},
            "adversarial": {"action": "off"},
            "monitor": {
                "window": 300,
                "min_rows": 200,
                "check_every": 100,
                "alerts": [{"name": "input-drift", "on": "drift", "severity": "critical", "cooldown_s": 600}],
            },
            "playbooks": [
                {
                    "name": "drift-response",
                    "on": ["input-drift"],
                    "min_severity": "critical",
                    "steps": [
                        {"action": "forensics", "window": 50},
                        {"action": "quarantine", "reason": "input drift"},
                        {"action": "rollback"},
                        {"action": "webhook", "url": hook_url, "timeout_s": 5},
                    ],
                }
            ],
        }
    )
    options = ServiceOptions(
        forensics_dir=tmp_path / "forensics",
        signer=signer,
        history_dir=tmp_path / "history",
        tick_s=0.05,
        monitor=monitor,
    )
    statuses: list[int] = []
    stop = threading.Event()
    with serve(world, "fraud@production", policy, options=options) as live:
        assert live.service.current.info.ref == "fraud:2"
        deadline = time.monotonic() + 30
        while live.service._standby is None:  # the rollback target is loaded in the background
            assert time.monotonic() < deadline, "the standby was never loaded"
            time.sleep(0.05)

        def hammer() -> None:
            with httpx.Client(base_url=live.url, timeout=30) as http:
                pool = tabular_data(2000, seed=5)[0]  # in distribution, like the traffic before the drift
                i = 0
                while not stop.is_set():
                    row = _rows(pool[i % len(pool)][None])
                    statuses.append(http.post("/v1/models/fraud/predict", json=row, headers=bearer(carol)).status_code)
                    i += 1

        background = threading.Thread(target=hammer)
        background.start()
        with httpx.Client(base_url=live.url, timeout=30) as http:
            for row in tabular_data(250, seed=11)[0]:  # in distribution: no alert
                assert (
                    http.post("/v1/models/fraud/predict", json=_rows(row[None]), headers=bearer(carol)).status_code
                    == 200
                )
            assert live.service.current.info.ref == "fraud:2"
            for row in tabular_data(1500, seed=12, shift=1.0)[0]:
                http.post("/v1/models/fraud/predict", json=_rows(row[None]), headers=bearer(carol))
                if live.service.current.info.ref == "fraud:1":
                    break
            deadline = time.monotonic() + 30
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
        stop.set()
        background.join(30)
        assert live.service.current.info.ref == "fraud:1"
    root = world.principals["root"]
    assert world.registry.resolve(root, "fraud:2").state is State.QUARANTINED
    assert world.registry.resolve(root, "fraud@production").ref == "fraud:1"
    assert statuses, "the second client sent nothing"
    assert set(statuses) == {200}, f"{len(statuses)} requests, statuses {sorted(set(statuses))}"
    assert received
    assert received[0]["alert"]["rule"] == "input-drift"
    steps = [e.action for e in world.registry.audit().entries() if e.action.startswith("playbook.")]
    assert steps == ["playbook.forensics", "playbook.quarantine", "playbook.rollback", "playbook.webhook"]
    (bundle,) = sorted((tmp_path / "forensics").iterdir())
    verify_bundle(bundle, signer.public_key())
