"""Per-client state shared through Redis: a client spread over two guards is limited and tracked as one.

Each test starts a throw-away ``redis-server`` on 127.0.0.1 (no persistence) and points two state backends, or
two live guard services, at it — what ``mlwarden serve --workers 2 --redis URL`` does with two processes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlwarden.core.errors import UsageError
from mlwarden.guard.extraction import ExtractionConfig, ExtractionMonitor
from mlwarden.serve.policy import parse_guard_policy
from mlwarden.serve.service import ServiceOptions
from mlwarden.serve.state import LocalState, RedisState, StateSettings, StateUnavailableError, make_state
from tests.serve.test_e2e import OPEN_LIMITS, assert_error
from tests.serve.world import (
    World,
    bearer,
    digits_split,
    metrics_auth,
    opened_world,
    serve,
    train_digits_sklearn,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PREDICT = "/v1/models/{}/predict"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process on a free loopback port, without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is missing under CI (make system-deps installs it)")
            pytest.skip("optional: redis-server is not installed (make system-deps installs it)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                assert self.proc.poll() is None, "redis-server exited at start"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def settings() -> StateSettings:
    return StateSettings(key_prefix=f"t{uuid.uuid4().hex[:8]}")


# -- the backends themselves ----------------------------------------------------------------------------------------


def test_a_client_alternating_between_two_workers_gets_the_burst_once(redis_server: RedisServer) -> None:
    shared = settings()
    one, two = (RedisState(redis_server.url, 0.001, 5, shared) for _ in range(2))
    granted = [(one if i % 2 == 0 else two).take("mallory").allowed for i in range(12)]
    assert granted == [True] * 5 + [False] * 7  # 5 in total, not 5 per worker
    refused = two.take("mallory")
    assert refused.retry_after_s > 100  # one token takes 1000 s at 0.001/s
    assert one.take("alice").allowed  # another client has its own bucket
    # The planted contrast: per-process buckets let the same client through twice as often.
    local = [LocalState(0.001, 5), LocalState(0.001, 5)]
    assert sum(local[i % 2].take("mallory").allowed for i in range(12)) == 10


def test_the_shared_bucket_refills_at_the_rate(redis_server: RedisServer) -> None:
    one, two = (RedisState(redis_server.url, 20.0, 2, s) for s in [settings()] * 2)
    assert [one.take("c").allowed, two.take("c").allowed, one.take("c").allowed] == [True, True, False]
    time.sleep(0.12)  # 20/s: two tokens back (capped at the burst of 2)
    assert [two.take("c").allowed, one.take("c").allowed, two.take("c").allowed] == [True, True, False]


def _streams(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A benign stream (independent gaussian queries) and an attack stream (a random walk of tiny steps that
    jumps to a new start every 10 queries, as a line search or a perturbation attack does)."""
    rng = np.random.default_rng(seed)
    benign = rng.standard_normal((150, 6))
    attack, x = [], np.zeros(6)
    for i in range(150):
        x = rng.standard_normal(6) * 3 if i % 10 == 0 else x + 0.05 * rng.standard_normal(6)
        attack.append(x.copy())
    return benign, np.array(attack)


CONFIG = ExtractionConfig(min_distances=30, test_every=5, delta=0.9)


def _run(stream: np.ndarray, backends: list, monitors: list[ExtractionMonitor]) -> list[tuple[str, float | None]]:  # type: ignore[type-arg]
    """Send ``stream`` one query at a time, alternating between (backend, monitor) pairs; each verdict."""
    out = []
    for i, row in enumerate(stream):
        k = i % len(backends)
        verdict = backends[k].observe(monitors[k], "v1", "eve", row[None, :], [0], float(i))
        out.append((verdict.action, verdict.prada_w))
    return out


def test_prada_split_over_two_workers_fires_as_on_one(redis_server: RedisServer) -> None:
    benign, attack = _streams(0)
    for stream, attacked in ((attack, True), (benign, False)):
        alone = _run(stream, [LocalState(1, 1)], [ExtractionMonitor(CONFIG)])
        shared = settings()
        pair = [RedisState(redis_server.url, 1, 1, shared) for _ in range(2)]
        split = _run(stream, pair, [ExtractionMonitor(CONFIG), ExtractionMonitor(CONFIG)])
        assert split == alone  # the same verdict, query by query, with the same Shapiro-Wilk W
        first = next((i for i, (action, _) in enumerate(alone) if action == "block"), None)
        if attacked:
            assert first is not None, alone
            assert first < 60, alone[:60]
            # The planted contrast: per-process statistics see half the stream each and fire later.
            halves = _run(stream, [LocalState(1, 1), LocalState(1, 1)], [ExtractionMonitor(CONFIG) for _ in "ab"])
            later = next((i for i, (action, _) in enumerate(halves) if action == "block"), len(halves))
            assert later > first
        else:
            assert first is None, alone
    # Two versions (scopes) never share a client's statistics.
    keys = {k.decode() for k in pair[0].redis.scan_iter(f"{shared.key_prefix}:extraction:*")}
    assert keys == {f"{shared.key_prefix}:extraction:v1:eve"}


def test_concurrent_queries_of_one_client_on_two_workers_are_all_counted(redis_server: RedisServer) -> None:
    """4 threads (2 per backend, as 2 workers with 2 requests in flight each) send 40 queries each for one client:
    the shared state counts 160 queries (no update lost to a race) and a waiting request is served, not refused."""
    shared = settings()
    pairs = [(RedisState(redis_server.url, 1, 1, shared), ExtractionMonitor(CONFIG)) for _ in range(2)]
    rows = np.random.default_rng(5).standard_normal((160, 6))
    last: list[int] = []

    def send(k: int) -> None:
        backend, monitor = pairs[k % 2]
        for i in range(k, 160, 4):
            verdict = backend.observe(monitor, "v1", "eve", rows[i : i + 1], [0], float(i))
        last.append(verdict.queries)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(last) == 160


def test_a_request_that_lost_the_lock_does_not_overwrite_newer_state(redis_server: RedisServer) -> None:
    shared = settings()
    backend = RedisState(redis_server.url, 1, 1, shared)
    key = f"{shared.key_prefix}:extraction:v1:eve"
    token, blob = backend._lock_and_read(key + ":lock", key, "eve")
    assert blob is None
    backend.redis.delete(key + ":lock")  # it expired; another request took it and wrote
    backend.redis.set(key, b"newer")
    assert backend._write(keys=[key, key + ":lock"], args=[token, b"older", 60_000]) == 0
    assert backend.redis.get(key) == b"newer"


def test_redis_down_fails_closed_with_a_clear_error(redis_server: RedisServer) -> None:
    backend = RedisState(redis_server.url, 10, 10, StateSettings(timeout_s=0.2))
    assert backend.take("c").allowed
    redis_server.stop()
    with pytest.raises(StateUnavailableError, match="rate limit state unavailable"):
        backend.take("c")
    with pytest.raises(StateUnavailableError, match="extraction state unavailable"):
        backend.observe(ExtractionMonitor(CONFIG), "v1", "c", np.zeros((1, 3)), [0], 0.0)
    with pytest.raises(StateUnavailableError, match="redis did not answer"):  # at start-up: before listening
        make_state(StateSettings(timeout_s=0.2), 10, 10, max_clients=10, redis_url=redis_server.url)


def test_a_malformed_state_value_is_refused_not_trusted(redis_server: RedisServer) -> None:
    shared = settings()
    backend = RedisState(redis_server.url, 1, 1, shared)
    backend.redis.set(f"{shared.key_prefix}:extraction:v1:eve", b"\x00\x00\x00\x02{}garbage")
    with pytest.raises(UsageError, match="unreadable extraction state"):
        backend.observe(ExtractionMonitor(CONFIG), "v1", "eve", np.zeros((1, 3)), [0], 0.0)


def test_the_policy_state_section_is_validated_and_the_default_stays_in_memory() -> None:
    from mlwarden.core.errors import PolicyError

    assert isinstance(
        make_state(parse_guard_policy({}).state, 10, 10, max_clients=10), LocalState
    )  # one worker without Redis: the embedded default
    with pytest.raises(PolicyError, match=r"state\.redis_host"):
        parse_guard_policy({"state": {"redis_host": "x"}})
    with pytest.raises(PolicyError, match=r"state\.key_prefix"):
        parse_guard_policy({"state": {"key_prefix": "a b"}})
    with pytest.raises(UsageError, match="--redis"):
        RedisState("http://not-redis", 1, 1)


# -- two live guards sharing one Redis -------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with opened_world(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path) as w:
        yield w


def _steal(pool: np.ndarray, token: str, guards: list[httpx.Client]) -> int | None:
    """A perturbation walk (two small random steps from a random digit, then another digit), round robin over
    ``guards``; the query at which the guard stopped it (403 extraction_suspected)."""
    rng = np.random.default_rng(7)
    x = pool[0]
    for i in range(120):
        x = np.clip(x + 0.05 * rng.standard_normal(64), 0.0, 1.0) if i % 3 else pool[rng.integers(len(pool))]
        answer = guards[i % len(guards)].post(
            PREDICT.format("digits"), json={"inputs": [x.tolist()]}, headers=bearer(token)
        )
        if answer.status_code != 200:
            assert_error(answer, 403, "extraction_suspected")
            return i
    return None


def test_two_live_guards_limit_and_track_one_client_together(
    world: World, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Rate: 6 allowed of 14 alternated requests (burst 6). Extraction: a client replaying near-copies of a few
    digits through both guards is stopped as on one guard; a client sending held-out digits is not."""
    _, _, x_test, _ = digits_split()
    pool, reference = x_test[:600], x_test[600:]
    world.release("digits", train_digits_sklearn(tmp_path / "digits.joblib"), reference=reference)
    doc = {
        "limits": {"rate_per_s": 0.001, "burst": 6, "token_cache_s": 0},
        "input": {"range_action": "flag", "ood_action": "off"},
        "adversarial": {"action": "off"},
        "extraction": {"action": "enforce", "config": {"min_distances": 30, "test_every": 5}},
        "state": {"key_prefix": f"t{uuid.uuid4().hex[:8]}"},
    }
    options = ServiceOptions(redis_url=redis_server.url)
    limited = parse_guard_policy(doc)
    with (
        serve(world, "digits@production", limited, options=options) as a,
        serve(world, "digits@production", limited, options=options) as b,
    ):
        token = world.user("mallory", "viewer")
        codes = []
        for i in range(14):
            url = (a if i % 2 == 0 else b).url + PREDICT.format("digits")
            codes.append(httpx.post(url, json={"inputs": [pool[i].tolist()]}, headers=bearer(token)).status_code)
        assert codes == [200] * 6 + [429] * 8
    doc["limits"] = OPEN_LIMITS
    doc["state"] = {"key_prefix": f"t{uuid.uuid4().hex[:8]}"}
    policy = parse_guard_policy(doc)
    rng = np.random.default_rng(3)
    with (
        serve(world, "digits@production", policy, options=options) as a,
        serve(world, "digits@production", policy, options=options) as b,
    ):
        guards = [httpx.Client(base_url=g.url, timeout=30) for g in (a, b)]
        normal = world.user("normal", "viewer")
        for i, row in enumerate(pool[rng.choice(len(pool), 120, replace=False)]):
            answer = guards[i % 2].post(
                PREDICT.format("digits"), json={"inputs": [row.tolist()]}, headers=bearer(normal)
            )
            assert answer.status_code == 200, (i, answer.text)
        thieves = {"thief_on_one": guards[:1], "thief_on_two": guards}
        stopped = {name: _steal(pool, world.user(name, "viewer"), pair) for name, pair in thieves.items()}
        for g in guards:
            g.close()
    assert stopped["thief_on_one"] is not None  # the ground truth: one guard stops this stream
    assert stopped["thief_on_one"] < 60, stopped  # 30 distances, then the next test
    assert stopped["thief_on_two"] == stopped["thief_on_one"]  # spread over two guards: stopped at the same query
    blocked = [e for e in world.registry.audit().entries() if e.action == "guard.predict" and not e.allowed]
    assert {e.actor for e in blocked} == {"mallory", *thieves}  # mallory: rate limited; "normal" never refused


def test_a_live_guard_answers_503_when_redis_goes_away(world: World, tmp_path: Path) -> None:
    server = RedisServer()
    try:
        world.release("digits", train_digits_sklearn(tmp_path / "digits.joblib"), reference=digits_split()[2][600:])
        policy = parse_guard_policy(
            {"limits": OPEN_LIMITS, "state": {"timeout_s": 0.2}, "input": {"ood_action": "off"}}
        )
        row = digits_split()[2][0].tolist()
        with serve(world, "digits@production", policy, options=ServiceOptions(redis_url=server.url)) as live:
            token = world.user("carol", "viewer")
            url = live.url + PREDICT.format("digits")
            assert httpx.post(url, json={"inputs": [row]}, headers=bearer(token)).status_code == 200
            server.stop()
            for _ in range(2):
                error = assert_error(
                    httpx.post(url, json={"inputs": [row]}, headers=bearer(token)), 503, "state_unavailable"
                )
                assert "unavailable" in error["message"]
            metrics = httpx.get(live.url + "/metrics", headers=metrics_auth()).text
        line = next(m for m in metrics.splitlines() if "state_unavailable" in m and not m.startswith("#"))
        assert line.endswith(" 2.0"), line
    finally:
        server.stop()
