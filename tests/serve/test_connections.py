"""Slowloris and connection floods against a live guard on loopback (outside security review, item 7).

Reported: about 20,000 held partial connections made ``/healthz`` fail for 15 s. Here the attackers are real
sockets on 127.0.0.2 (the whole 127/8 is loopback on Linux) trickling header bytes; the health checks come from
127.0.0.1, a different client address, as a real user's would. Every loop is bounded by a deadline.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlwarden.serve.connections import ConnectionGate, client_key
from mlwarden.serve.policy import ConnectionSettings, parse_guard_policy
from tests.serve.world import World, opened_world, serve, train_sklearn

ATTACKER = "127.0.0.2"
N_ATTACKERS = 200
PER_IP = 20
HEADER_TIMEOUT = 2.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with opened_world(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path) as w:
        yield w


@pytest.fixture(autouse=True)
def second_loopback_address() -> None:
    with socket.socket() as probe:
        try:
            probe.bind((ATTACKER, 0))
        except OSError:
            pytest.skip(f"{ATTACKER} is not a loopback address here")


class Slow:
    """One attacking connection: what it received and whether the server closed it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.settimeout(5)
        self.sock.bind((ATTACKER, 0))
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.received = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.sock.send(data)
        except OSError:  # reset or broken pipe: the server closed it
            self.closed = True

    def poll(self) -> None:
        while not self.closed and select.select([self.sock], [], [], 0)[0]:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                self.closed = True
                return
            if not chunk:
                self.closed = True
            self.received += chunk

    def close(self) -> None:
        self.sock.close()


def _trickle(conns: list[Slow], seconds: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in conns:
            c.send(b"X-Slow: 1\r\n")
            c.poll()
        time.sleep(every)


def _policy(**connections: float) -> dict[str, Any]:
    return {"limits": {"rate_per_s": 10_000, "burst": 10_000}, "connections": connections}


def test_slowloris_is_capped_per_address_and_timed_out_while_healthz_answers(world: World, tmp_path: Path) -> None:
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    policy = parse_guard_policy(_policy(max_connections_per_ip=PER_IP, header_timeout_s=HEADER_TIMEOUT))
    with serve(world, "fraud@production", policy) as live:
        port = int(live.url.rsplit(":", 1)[1])
        conns: list[Slow] = []
        try:
            for _ in range(N_ATTACKERS):
                conn = Slow(port)
                conn.send(b"GET /healthz HTTP/1.1\r\nHost: guard\r\n")  # never finished
                conns.append(conn)
            _trickle(conns, 0.5)
            held = [c for c in conns if not c.closed]
            # Beyond the per-address cap, connections are reset at once.
            assert len(held) <= PER_IP, len(held)
            assert len(held) >= PER_IP // 2  # the cap, not something else, closed them
            # A fresh client (another address) is answered quickly while the attack holds its connections.
            started = time.monotonic()
            health = httpx.get(f"{live.url}/healthz", timeout=5)
            assert health.status_code == 200
            assert time.monotonic() - started < 1.0
            # Trickling header bytes does not keep a connection: 408 and closed after the header timeout.
            _trickle(conns, HEADER_TIMEOUT + 1.0)
            assert all(c.closed for c in conns), sum(not c.closed for c in conns)
            assert all(c.received.startswith(b"HTTP/1.1 408") for c in held), [c.received[:40] for c in held]
        finally:
            for c in conns:
                c.close()
        # The places were given back: the attacking address may connect again, and is answered.
        again = []
        try:
            for _ in range(PER_IP):
                conn = Slow(port)
                conn.send(b"GET /healthz HTTP/1.1\r\nHost: guard\r\nConnection: close\r\n\r\n")
                again.append(conn)
            deadline = time.monotonic() + 5
            while not all(c.closed for c in again) and time.monotonic() < deadline:
                for c in again:
                    c.poll()
                time.sleep(0.05)
            assert all(c.received.startswith(b"HTTP/1.1 200") for c in again), [c.received[:40] for c in again]
        finally:
            for c in again:
                c.close()


def test_a_slow_body_and_oversized_headers_are_refused(world: World, tmp_path: Path) -> None:
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    policy = parse_guard_policy(_policy(body_timeout_s=1.0, max_header_bytes=4096, keep_alive_s=1))
    with serve(world, "fraud@production", policy) as live:
        port = int(live.url.rsplit(":", 1)[1])
        slow_body, big_headers, idle = Slow(port), Slow(port), Slow(port)
        try:
            slow_body.send(
                b"POST /v1/models/fraud/predict HTTP/1.1\r\nHost: guard\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            big_headers.send(b"GET /healthz HTTP/1.1\r\nHost: guard\r\n" + b"X-Pad: " + b"a" * 8000 + b"\r\n")
            idle.send(b"GET /healthz HTTP/1.1\r\nHost: guard\r\n\r\n")  # answered, then kept alive and idle
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and not all(c.closed for c in (slow_body, big_headers, idle)):
                slow_body.send(b" ")
                for c in (slow_body, big_headers, idle):
                    c.poll()
                time.sleep(0.2)
            assert slow_body.closed
            assert slow_body.received.startswith(b"HTTP/1.1 408"), slow_body.received[:80]
            assert big_headers.closed
            assert big_headers.received.startswith(b"HTTP/1.1 431"), big_headers.received[:80]
            assert idle.closed  # the keep-alive timeout
            assert idle.received.startswith(b"HTTP/1.1 200"), idle.received[:80]
        finally:
            for c in (slow_body, big_headers, idle):
                c.close()
        assert httpx.get(f"{live.url}/healthz", timeout=5).status_code == 200


def test_the_gate_counts_per_address_and_in_all() -> None:
    gate = ConnectionGate(ConnectionSettings(max_connections=3, max_connections_per_ip=2))
    assert gate.admit("a") is None
    assert gate.admit("a") is None
    assert gate.admit("a") == "the per-client connection limit"
    assert gate.admit("b") is None
    assert gate.admit("c") == "the server's connection limit"
    gate.release("a")
    assert gate.admit("c") is None
    assert gate.total == 3
    assert gate.refused == 2
    for key in ("a", "b", "c"):
        gate.release(key)
    assert gate.total == 0
    assert gate.per_client == {}


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("203.0.113.7", 5000), "203.0.113.7"),
        (("::ffff:203.0.113.7", 5000, 0, 0), "203.0.113.7"),
        (("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::9", 5000, 0, 0), "2001:db8:1:2::/64"),  # same /64: one client
        (None, ""),
    ],
)
def test_client_key(peer: object, key: str) -> None:
    assert client_key(peer) == key
