"""A live LLM proxy on loopback for the monitoring, playbook, shared-state and output tests.

The proxy runs under uvicorn in a thread, in front of one or two scripted upstreams
(``tests/serve/llm_upstream.py``, not under test); clients are the official ``openai`` SDK and httpx.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import uvicorn

from mlwarden.serve.policy import parse_guard_policy
from mlwarden.serve.proxy.app import create_proxy_app
from mlwarden.serve.proxy.service import ProxyService
from mlwarden.serve.proxy.upstream import Credential, Upstream
from mlwarden.serve.server import Listen, uvicorn_config
from tests.serve.world import METRICS_TOKEN, World


@dataclass
class Proxy:
    """A running proxy: its service, its base URL, and where the audit log stood when it started."""

    service: ProxyService
    url: str
    first_seq: int

    def client(self, token: str) -> openai.OpenAI:
        """The official client, authenticating with a registry token."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0, timeout=10)

    def ask(self, token: str, text: str = "hello there", model: str = "gpt-test", **kw: Any) -> Any:
        """One chat completion."""
        messages = [{"role": "user", "content": text}]
        return self.client(token).chat.completions.create(model=model, messages=messages, **kw)

    def metrics(self) -> str:
        """The ``/metrics`` text."""
        return httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text

    def audit(self, world: World, action: str) -> list[Any]:
        """Audit records of ``action`` written since the proxy started."""
        self.service.auditor.flush()
        return [r for r in world.registry.audit().entries(self.first_seq) if r.action == action]


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Call ``check`` until it returns a true value (the monitor works on its own thread); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


@contextmanager
def proxy(
    world: World,
    policy: dict[str, Any],
    primary: str,
    *,
    fallback: str | None = None,
    redis_url: str | None = None,
    **options: Any,
) -> Iterator[Proxy]:
    """A proxy with the guard ``policy`` in front of ``primary`` (and ``fallback``), listening on loopback.

    ``options``: further keyword arguments of :class:`ProxyService` (``signer``, ``forensics_dir``).
    """
    parsed = parse_guard_policy(policy)
    upstream = Upstream(primary, parsed.proxy.upstream, Credential(None), fallback=fallback)
    service = ProxyService(world.registry, parsed, upstream, redis_url=redis_url, **options)
    app = create_proxy_app(service, metrics_token=METRICS_TOKEN)
    server = uvicorn.Server(uvicorn_config(app, Listen("127.0.0.1", 0), parsed.connections))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    try:
        while not server.started:
            assert thread.is_alive(), "the proxy stopped before it started"
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Proxy(service, f"http://127.0.0.1:{port}", world.registry.audit().size())
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        service.shutdown()
