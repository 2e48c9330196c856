"""A real uvicorn server on 127.0.0.1 (ephemeral port): in a thread, and as ``mlwarden api serve`` in a process."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from mlwarden.api import create_app
from mlwarden.registry.service import Registry
from tests.api.conftest import GATES, bearer, make_model

#: Runs ``mlwarden api serve`` through the real command line.
DRIVER = "import sys\nfrom mlwarden.cli import main as cli\nsys.exit(cli.main(sys.argv[1:]))\n"


def declare_upload(port: int, token: str, length: int) -> tuple[int, dict]:  # type: ignore[type-arg]
    """Send only the headers of an upload declaring ``length`` bytes; the status and JSON body of the answer."""
    head = (
        f"POST /v1/models/fraud/versions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(body)


def _content_length(data: bytes) -> int:
    match = re.search(rb"(?i)content-length: *(\d+)", data.partition(b"\r\n\r\n")[0])
    return int(match.group(1)) if match else 0


@pytest.fixture
def live_url(registry: Registry) -> Iterator[str]:
    config = uvicorn.Config(create_app(registry), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive(), "uvicorn did not shut down"


def test_live_server_serves_the_lifecycle(live_url: str, registry: Registry, tmp_path: Path) -> None:
    admin = bearer(registry.bootstrap("root").token)
    with httpx.Client(base_url=live_url, timeout=60) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        assert http.get("/v1/models").status_code == 401
        for name, role in (("alice", "submitter"), ("bob", "approver")):
            assert http.post("/v1/users", json={"username": name, "roles": [role]}, headers=admin).status_code == 201
        alice = bearer(http.post("/v1/users/alice/tokens", json={}, headers=admin).json()["token"])
        bob = bearer(http.post("/v1/users/bob/tokens", json={}, headers=admin).json()["token"])
        model = make_model(tmp_path / "weights.npy")
        with model.open("rb") as handle:
            created = http.post("/v1/models/fraud/versions", files={"model": ("weights.npy", handle)}, headers=alice)
        assert created.status_code == 201, created.text
        assert (
            http.post("/v1/models/fraud/versions/1/scan", json={"modes": ["static"]}, headers=alice).status_code == 200
        )
        approved = http.post("/v1/models/fraud/versions/1/approve", headers=bob)
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] == "approved"
        assert http.get("/openapi.json").json()["info"]["title"] == "mlwarden registry"


def test_live_server_refuses_an_oversized_upload_early(live_url: str, registry: Registry) -> None:
    token = registry.bootstrap("root").token
    # Only the headers are sent: the server answers from the declared length, before any body byte arrives.
    status, body = declare_upload(int(live_url.rsplit(":", 1)[1]), token, 3 << 30)
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert "2 GiB" in body["error"]["message"]


def _wait_for_port(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """The port from uvicorn's "running on" line (read unbuffered: a buffered reader hides lines from select)."""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk
        match = re.search(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)", seen)
        if match:
            return int(match.group(1))
    process.kill()
    pytest.fail("mlwarden api serve did not start:\n" + seen.decode(errors="replace"))


def test_cli_serve_runs_and_stops_cleanly(db_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    gates = tmp_path / "gates.toml"
    gates.write_text(GATES, encoding="utf-8")
    registry = Registry.open(db_url, home=home, gates=gates)
    token = registry.bootstrap("root").token
    registry.close()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DRIVER,
            "api",
            "serve",
            "--port",
            "0",
            "--db",
            db_url,
            "--home",
            str(home),
            "--gates",
            str(gates),
            "--max-upload",
            "1MiB",
            "--log-level",
            "info",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        port = _wait_for_port(process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/healthz").status_code == 200
            me = http.get("/v1/whoami", headers=bearer(token))
            assert me.status_code == 200
            assert me.json()["username"] == "root"
        status, body = declare_upload(port, token, 2 << 20)
        assert status == 413
        assert "1 MiB" in body["error"]["message"]
    finally:
        process.send_signal(signal.SIGINT)
        _, raw = process.communicate(timeout=30)
    stderr = raw.decode(errors="replace")
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_cli_serve_refuses_half_a_tls_configuration(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, "api", "serve", "--tls-cert", str(cert), "--db", f"sqlite:///{tmp_path}/r.db"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--tls-cert and --tls-key go together" in result.stderr
