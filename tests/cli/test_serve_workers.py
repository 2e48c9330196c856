"""``mlwarden serve --workers 2 --redis URL``: two request processes on one port, one client limited across them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlwarden.cli.main import main
from tests.cli.test_guard_cmds import DRIVER, _free_port, _registry_args, _wait_healthy
from tests.serve.test_shared_state import RedisServer
from tests.serve.world import World, opened_world, tabular_data, train_sklearn


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with opened_world(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path) as w:
        yield w


def _free_pair() -> int:
    """A port P with P and P + 1 free (worker i serves its metrics on P + i)."""
    for _ in range(50):
        port = _free_port()
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no two consecutive free ports")


def _answered(metrics: str) -> tuple[float, float]:
    """Requests this worker decided (allowed or flagged) and refused as rate limited, from its ``/metrics``."""
    served = re.findall(r"^mlwarden_guard_requests_total\{.*\} ([0-9.e+]+)$", metrics, re.M)
    limited = re.findall(r'^mlwarden_guard_rejections_total\{.*reason="rate".*\} ([0-9.e+]+)$', metrics, re.M)
    return sum(map(float, served)), sum(map(float, limited))


def _start_two_workers(world: World, redis: RedisServer, extra: list[str]) -> tuple[subprocess.Popen[bytes], int, int]:
    """``mlwarden serve --workers 2 --redis`` on a free port, each worker with its metrics port; once both answer,
    (the process, the port, the first metrics port). If they do not, the service and ``redis`` are stopped."""
    port, metrics_port = _free_port(), _free_pair()
    while port in (metrics_port, metrics_port + 1):
        port = _free_port()
    env = {**os.environ, "MLWARDEN_TOKEN": world.tokens["dave"]}
    env.pop("MLWARDEN_METRICS_TOKEN", None)
    argv = [sys.executable, "-c", DRIVER, "serve", "--model", "fraud@production", "--port", str(port)]
    argv += ["--workers", "2", "--redis", redis.url, *extra, "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen([*argv, *_registry_args(world)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for i in range(2):
            _wait_healthy(proc, f"http://127.0.0.1:{metrics_port + i}/metrics")
    except BaseException:  # the caller's clean-up has not started yet: stop what was started here
        proc.kill()
        proc.communicate()
        redis.stop()
        raise
    return proc, port, metrics_port


def test_two_workers_share_one_port_and_one_clients_limit(world: World, tmp_path: Path) -> None:
    """20 requests, each on a new connection (the kernel spreads them over the workers): 8 allowed (the burst)
    and 12 rate limited in total, with both workers having answered some."""
    redis = RedisServer()
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    carol = world.user("carol", "viewer")
    policy = tmp_path / "guard.yaml"
    policy.write_text(
        "limits:\n  rate_per_s: 0.001\n  burst: 8\n  token_cache_s: 0\nextraction:\n  action: 'off'\n", encoding="utf-8"
    )
    proc, port, metrics_port = _start_two_workers(world, redis, ["--policy", str(policy)])
    try:
        row = {"inputs": tabular_data(1, 3)[0].tolist()}
        codes = []
        for _ in range(20):
            with httpx.Client(timeout=10) as fresh:  # a new connection each time
                answer = fresh.post(
                    f"http://127.0.0.1:{port}/v1/models/fraud/predict",
                    json=row,
                    headers={"Authorization": f"Bearer {carol}"},
                )
            codes.append(answer.status_code)
        per_worker = [_answered(httpx.get(f"http://127.0.0.1:{metrics_port + i}/metrics").text) for i in range(2)]
        states = _monitor_states(port, carol, expect_requests=8)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        redis.stop()
    assert codes.count(200) == 8, codes  # the burst once, not once per worker
    assert codes.count(429) == 12, codes
    assert sum(w[0] for w in per_worker) == 8, per_worker
    assert sum(w[1] for w in per_worker) == 12, per_worker
    assert min(sum(w) for w in per_worker) > 0, per_worker  # both workers answered
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert err.decode().count("serving fraud:1") == 2
    # one monitor process for both workers: it saw every decision, whichever worker made it
    assert {s["monitor_process"]["pid"] for s in states} == {states[0]["monitor_process"]["pid"]}
    assert states[0]["monitor_process"]["request_processes"] == 2
    events = [e for e in world.registry.audit().entries() if e.action == "guard.predict"]
    assert len(events) == 20  # written by the monitor process, none lost when the service stopped
    assert sum(e.allowed for e in events) == 8


def _monitor_states(port: int, token: str, expect_requests: int) -> list[dict]:  # type: ignore[type-arg]
    """The monitor state as several connections (so both workers) report it, once it counted ``expect_requests``."""
    deadline = time.monotonic() + 30
    while True:
        states = []
        for _ in range(6):
            with httpx.Client(timeout=10) as fresh:
                states.append(
                    fresh.get(
                        f"http://127.0.0.1:{port}/v1/models/fraud/monitor", headers={"Authorization": f"Bearer {token}"}
                    ).json()
                )
        if all(s.get("requests") == expect_requests for s in states):
            return states
        assert time.monotonic() < deadline, states
        time.sleep(0.2)


def test_workers_stop_when_their_monitor_process_dies(world: World, tmp_path: Path) -> None:
    """The shared monitor process holds the audit trail: when it is killed the service stops, with an error."""
    redis = RedisServer()
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    carol = world.user("carol", "viewer")
    proc, port, metrics_port = _start_two_workers(world, redis, [])
    try:
        (state, *_) = _monitor_states(port, carol, expect_requests=0)
        os.kill(state["monitor_process"]["pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        redis.stop()
    assert proc.returncode != 0
    assert "the monitor process exited" in err.decode()
    assert "Traceback" not in err.decode()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "2"], "--workers 2 needs --redis URL"),
        (["--workers", "2", "--redis", "redis://127.0.0.1:1/0", "--port", "0"], "needs a fixed --port"),
        (["--workers", "2", "--redis", "redis://127.0.0.1:1/0"], "redis did not answer"),
        (["--workers", "0"], "--workers must be 1 to 64"),
    ],
)
def test_workers_refuse_bad_starts(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    os.environ["MLWARDEN_TOKEN"] = world.tokens["dave"]
    try:
        assert main(["serve", "--model", "fraud@production", *_registry_args(world), *extra]) == 2
    finally:
        del os.environ["MLWARDEN_TOKEN"]
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
