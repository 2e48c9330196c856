"""Playbooks: validation, matching, cooldown, failure handling, audit events, webhooks against a loopback server."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mlwarden.core.errors import MlwardenError, PolicyError
from mlwarden.monitor.alerts import Alert
from mlwarden.monitor.forensics import ForensicMaterial, verify_bundle
from mlwarden.monitor.playbooks import PlaybookRunner, load_playbooks, parse_playbooks
from mlwarden.registry.audit.events import AuditEvent


class FakeControl:
    """Records what the playbooks asked; fails on demand."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()

    @property
    def model_ref(self) -> str:
        return "fraud:2"

    def quarantine(self, reason: str) -> Mapping[str, Any]:
        self.calls.append(f"quarantine:{reason.split(' (')[0]}")
        if "quarantine" in self.fail:
            raise MlwardenError("registry unreachable")
        return {"state": "quarantined"}

    def rollback(self) -> Mapping[str, Any]:
        self.calls.append("rollback")
        return {"from": "fraud:2", "to": "fraud:1"}

    def forensic_material(self, window: int) -> ForensicMaterial:
        self.calls.append(f"forensics:{window}")
        records = [{"request_id": f"r{i}", "inputs": [[i]]} for i in range(window)]
        return ForensicMaterial("fraud:2", "sha256:" + "ab" * 32, b'{"bundle": 1}', {"p": 1}, records, [])


def _alert(rule: str = "input-drift", kind: str = "drift", severity: str = "critical") -> Alert:
    return Alert(rule, kind, severity, "drift", 1e-6, 0.001, "drift on f0", time.time(), {"features": ["f0"]})


def _runner(books: object, control: FakeControl, tmp_path: Path, **kw: Any) -> tuple[PlaybookRunner, list]:  # type: ignore[type-arg]
    events: list[AuditEvent] = []
    runner = PlaybookRunner(
        parse_playbooks(books),
        control,
        audit=events.append,
        signer=kw.pop("signer", None),
        forensics_dir=tmp_path / "forensics",
        **kw,
    )
    return runner, events


def test_yaml_keeps_on_as_a_key_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "books.yaml"
    path.write_text("playbooks:\n  - name: p\n    on: [input-drift]\n    steps:\n      - action: rollback\n")
    (book,) = load_playbooks(path)
    assert book.on == ("input-drift",)
    for text, field in [
        ("- name: p\n  on: [x]\n  steps: [{action: reboot}]\n", "steps.0"),
        ("- name: p\n  on: [x]\n  steps: [{action: webhook, url: 'file:///etc/passwd'}]\n", "url"),
        ("- name: p\n  on: [x]\n  steps: [{action: webhook, url: 'http://x', timeout_s: -1}]\n", "timeout_s"),
        ("- name: p\n  on: []\n  steps: [{action: rollback}]\n", "on"),
        ("- name: p\n  on: [x]\n  steps: []\n", "steps"),
    ]:
        path.write_text(text)
        with pytest.raises(PolicyError, match=field):
            load_playbooks(path)


def test_matching_severity_cooldown_and_order(tmp_path: Path) -> None:
    control = FakeControl()
    now = [1000.0]
    books = [
        {
            "name": "drift",
            "on": ["input-drift"],
            "min_severity": "critical",
            "cooldown_s": 60,
            "steps": [{"action": "quarantine", "reason": "drift"}, {"action": "rollback"}],
        },
        {"name": "any-guard", "on": ["kind:guard"], "min_severity": "warning", "steps": [{"action": "rollback"}]},
        {"name": "all", "on": ["*"], "min_severity": "critical", "steps": [{"action": "forensics", "window": 3}]},
    ]
    runner, events = _runner(books, control, tmp_path, clock=lambda: now[0])
    assert runner.handle(_alert(severity="warning")) == []  # below every min_severity
    results = runner.handle(_alert())
    assert [(r.playbook, r.action, r.ok) for r in results] == [
        ("drift", "quarantine", True),
        ("drift", "rollback", True),
        ("all", "forensics", False),
    ]
    assert "signed" in (results[2].error or "")  # no signer: the forensics step refuses, audited
    assert runner.handle(_alert()) == []  # cooling down
    now[0] += 61
    assert [r.playbook for r in runner.handle(_alert())] == ["drift", "drift"]  # "all" has the default 300 s
    assert [r.playbook for r in runner.handle(_alert("extraction", "guard", "warning"))] == ["any-guard"]
    assert [(e.action, e.allowed, e.actor, e.subject) for e in events[:3]] == [
        ("playbook.quarantine", True, "system:guard", "model:fraud:2"),
        ("playbook.rollback", True, "system:guard", "model:fraud:2"),
        ("playbook.forensics", False, "system:guard", "model:fraud:2"),
    ]
    assert events[0].details["alert"]["rule"] == "input-drift"


def test_a_failing_step_stops_its_playbook_unless_told_otherwise(tmp_path: Path) -> None:
    steps = [{"action": "quarantine"}, {"action": "rollback"}]
    control = FakeControl(fail={"quarantine"})
    runner, events = _runner([{"name": "p", "on": ["*"], "steps": steps}], control, tmp_path)
    results = runner.handle(_alert())
    assert [(r.action, r.ok) for r in results] == [("quarantine", False)]
    assert results[0].error == "registry unreachable"
    assert events[0].reason == "registry unreachable"
    control = FakeControl(fail={"quarantine"})
    runner, _ = _runner([{"name": "p", "on": ["*"], "steps": steps, "continue_on_error": True}], control, tmp_path)
    assert [(r.action, r.ok) for r in runner.handle(_alert())] == [("quarantine", False), ("rollback", True)]


def test_the_forensics_step_writes_a_verifiable_bundle(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    runner, events = _runner(
        [{"name": "p", "on": ["*"], "steps": [{"action": "forensics", "window": 5}]}],
        FakeControl(),
        tmp_path,
        signer=key,
    )
    (result,) = runner.handle(_alert())
    assert result.ok, result.error
    verified = verify_bundle(result.details["bundle"], key.public_key())
    assert verified.predicate["model"] == "fraud:2"
    assert (
        events[0].details["step"]["sha256"] == hashlib.sha256(Path(result.details["bundle"]).read_bytes()).hexdigest()
    )


class _Receiver(http.server.BaseHTTPRequestHandler):
    statuses: list[int] = []
    bodies: list[tuple[bytes, str | None]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append((body, self.headers.get("X-Mlwarden-Signature")))
        status = type(self).statuses.pop(0) if type(self).statuses else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"statuses": [], "bodies": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()


def test_webhook_signs_the_body_and_retries(
    tmp_path: Path, receiver: tuple[str, type[_Receiver]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = receiver
    handler.statuses.extend([500, 503])  # two failures, then the default 204
    monkeypatch.setenv("HOOK_KEY", "s3cret")
    step = {"action": "webhook", "url": url, "retries": 2, "secret_env": "HOOK_KEY"}
    runner, _ = _runner([{"name": "p", "on": ["*"], "steps": [{"action": "rollback"}, step]}], FakeControl(), tmp_path)
    results = runner.handle(_alert())
    assert results[1].ok, results[1].error
    assert results[1].details["attempts"] == 3
    body, signature = handler.bodies[-1]
    assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    doc = json.loads(body)
    assert doc["alert"]["rule"] == "input-drift"
    assert doc["steps"][0]["details"] == {"from": "fraud:2", "to": "fraud:1"}


def test_webhook_gives_up_in_bounded_time(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        step = {"action": "webhook", "url": url, "timeout_s": 0.3, "retries": 1}
        runner, events = _runner([{"name": "p", "on": ["*"], "steps": [step]}], FakeControl(), tmp_path)
        began = time.monotonic()
        (result,) = runner.handle(_alert())
        assert time.monotonic() - began < 5
        assert not result.ok
        assert "after 2 attempt(s)" in (result.error or "")
        assert events[0].allowed is False
    finally:
        silent.close()
