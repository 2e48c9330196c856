"""Budgets and cut-offs of the LLM proxy shared by two workers through a throw-away ``redis-server``.

Two proxy services (what ``mlwarden serve --upstream URL --workers 2 --redis URL`` runs, one per process) listen
on loopback in front of the same scripted upstream (``tests/serve/llm_upstream.py``, not under test) and share a
Redis started for the test; the client alternates between them with the official ``openai`` SDK.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import openai
import pytest

from mlwarden.serve.proxy.budget import Budgets, Usage
from mlwarden.serve.proxy.settings import BudgetSettings
from mlwarden.serve.proxy.shared import RedisHolds, RedisUsage, connect
from mlwarden.serve.state import StateSettings, StateUnavailableError
from tests.serve.llm_proxy_live import proxy
from tests.serve.llm_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, Script, running, upstream_app
from tests.serve.test_shared_state import RedisServer, free_port
from tests.serve.world import World, opened_world

PER_CALL = PROMPT_TOKENS + COMPLETION_TOKENS  # 20 tokens, as the upstream reports them


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("proxy-shared")
    with opened_world(f"sqlite:///{tmp / 'registry.db'}", tmp) as w:
        yield w


def _policy(prefix: str) -> dict[str, object]:
    return {"proxy": {"budget": {"tokens": 3 * PER_CALL}}, "state": {"key_prefix": prefix}}


def test_a_client_spread_over_two_workers_gets_its_token_budget_once(world: World, redis_server: RedisServer) -> None:
    token = world.user("olga", "viewer")
    policy = _policy(f"t{uuid.uuid4().hex[:8]}")
    with running(upstream_app(Script())) as url:
        with (
            proxy(world, policy, f"{url}/v1", redis_url=redis_server.url) as one,
            proxy(world, policy, f"{url}/v1", redis_url=redis_server.url) as two,
        ):
            one.ask(token)
            two.ask(token)
            one.ask(token)  # 60 tokens: the budget is used up on both workers
            for worker in (two, one):
                with pytest.raises(openai.RateLimitError) as caught:
                    worker.ask(token)
                assert caught.value.code == "insufficient_quota"
            assert one.service.budgets.used("olga").tokens == 3 * PER_CALL
            assert two.service.budgets.used("olga").tokens == 3 * PER_CALL
        # Ground truth: the same traffic over two workers without Redis gets each worker's budget.
        local = {"proxy": {"budget": {"tokens": 3 * PER_CALL}}}
        with proxy(world, local, f"{url}/v1") as one, proxy(world, local, f"{url}/v1") as two:
            for _ in range(3):
                one.ask(token)
                two.ask(token)  # six calls: twice the budget
            assert one.service.budgets.used("olga").tokens == 3 * PER_CALL


def test_a_client_cut_off_by_one_worker_is_refused_by_the_other(world: World, redis_server: RedisServer) -> None:
    token = world.user("pete", "viewer")
    policy = _policy(f"t{uuid.uuid4().hex[:8]}")
    with running(upstream_app(Script())) as url:
        with (
            proxy(world, policy, f"{url}/v1", redis_url=redis_server.url) as one,
            proxy(world, policy, f"{url}/v1", redis_url=redis_server.url) as two,
        ):
            two.ask(token)
            one.service.controls.cut_off("pete", 600, "test", "a test")  # what the playbook step does
            with pytest.raises(openai.PermissionDeniedError) as caught:
                two.ask(token)
            assert caught.value.code == "client_cut_off"
            assert set(two.service.controls.holds_snapshot()["client"]) == {"pete"}
            two.service.controls.lift("client", "pete", world.principals["root"])
            assert one.ask(token).choices[0].message.content


def test_the_shared_window_ends_and_holds_expire(redis_server: RedisServer) -> None:
    settings = StateSettings(key_prefix=f"t{uuid.uuid4().hex[:8]}")
    client = connect(redis_server.url, settings)
    budgets = Budgets(BudgetSettings(tokens=10, window_s=0.3), store=RedisUsage(client, settings))
    budgets.charge("q", "m", Usage(8, 4, estimated=False))
    assert budgets.check("q").refused is not None
    holds = RedisHolds(client, settings)
    holds.put("client", "q", {"reason": "r"}, 0.3)
    assert holds.get("client", "q") == {"reason": "r"}
    time.sleep(0.5)
    assert budgets.check("q").refused is None  # a new window
    assert budgets.check("q").tokens == 0
    assert holds.get("client", "q") is None


def test_redis_down_fails_closed(world: World, redis_server: RedisServer) -> None:
    token = world.user("rosa", "viewer")
    with running(upstream_app(Script())) as url:
        with proxy(world, _policy(f"t{uuid.uuid4().hex[:8]}"), f"{url}/v1", redis_url=redis_server.url) as one:
            one.ask(token)
            redis_server.stop()
            with pytest.raises(openai.InternalServerError) as caught:
                one.ask(token)
            assert caught.value.status_code == 503
            assert caught.value.code == "state_unavailable"
    with pytest.raises(StateUnavailableError):  # and a wrong URL fails at start-up
        connect(f"redis://127.0.0.1:{free_port()}/0", StateSettings(timeout_s=0.2))


def test_the_rate_limit_is_shared_too(world: World, redis_server: RedisServer) -> None:
    token = world.user("sam", "viewer")
    policy = {"limits": {"rate_per_s": 0.01, "burst": 2}, "state": {"key_prefix": f"t{uuid.uuid4().hex[:8]}"}}
    with running(upstream_app(Script())) as url:
        with (
            proxy(world, policy, f"{url}/v1", redis_url=redis_server.url) as one,
            proxy(world, policy, f"{url}/v1", redis_url=redis_server.url) as two,
        ):
            one.ask(token)
            two.ask(token)
            with pytest.raises(openai.RateLimitError) as caught:
                one.ask(token)
            assert caught.value.code == "rate_limited"


def test_workers_without_redis_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from mlwarden.cli.main import main

    assert main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--workers", "2", "--port", "18080"]) == 2
    assert "needs --redis" in capsys.readouterr().err
