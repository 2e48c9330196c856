"""The upstream model API: httpx with timeouts, bounded retries under a retry budget, a fallback, and a secret key.

Retries only where resending cannot do the work twice: a connection that could not be made, or a 5xx answer
before any byte of the body was passed on. A read timeout is not retried (the upstream may be generating, and
billing, the answer). Retries are also bounded by a **retry budget** — at most ``retry_min`` plus
``retry_budget`` x requests per 10-second window — so that an outage does not triple the load on an upstream
that is already failing (the approach of Envoy's and Finagle's retry budgets).

The key (``--upstream-key-env NAME`` / ``--upstream-key-file PATH``) is held by :class:`Credential`, whose
``repr`` never shows it; every text taken from the upstream into an error message is scrubbed of it.

The connections themselves are aiohttp's when it is installed (the ``server`` extra), under httpx's API
(:mod:`mlwarden.serve.proxy.transport`); without it, httpx's own transport over several small pools.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from mlwarden.core.errors import MlwardenError, UsageError
from mlwarden.serve.proxy.settings import UpstreamSettings

#: Largest upstream error body read (to quote its message).
MAX_ERROR_BODY = 64 * 1024
#: Connections per httpx pool (the proxy spreads requests over ``max_connections / POOL_SHARD`` pools).
POOL_SHARD = 16
_BUDGET_WINDOW_S = 10.0


class UpstreamError(MlwardenError):
    """A failure to be answered with ``status`` and an OpenAI-shaped error body (never a traceback)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after


class Credential:
    """The upstream's API key: sent as a bearer token, never shown by ``repr``/``str``, scrubbed from texts."""

    def __init__(self, key: str | None) -> None:
        self._key = key.strip() if key else None

    @classmethod
    def from_sources(cls, env: str | None = None, file: str | None = None) -> Credential:
        """Read the key from the environment variable ``env`` or the file ``file`` (not both; neither: no key).

        Raises:
            UsageError: both given, the variable is unset or empty, or the file cannot be read or is empty.
        """
        if env and file:
            raise UsageError("give --upstream-key-env or --upstream-key-file, not both")
        if env:
            value = os.environ.get(env, "").strip()
            if not value:
                raise UsageError(f"the environment variable {env} (the upstream key) is unset or empty")
            return cls(value)
        if file:
            try:
                value = Path(file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"cannot read the upstream key file {file}: {type(exc).__name__}") from None
            if not value:
                raise UsageError(f"the upstream key file {file} is empty")
            return cls(value)
        return cls(None)

    def headers(self) -> dict[str, str]:
        """The Authorization header (empty without a key)."""
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def scrub(self, text: str) -> str:
        """``text`` with the key replaced by ``***``."""
        return text.replace(self._key, "***") if self._key else text

    def __repr__(self) -> str:
        return "Credential(***)" if self._key else "Credential(None)"

    __str__ = __repr__


class RetryBudget:
    """Retries allowed per window: ``minimum`` plus ``ratio`` x requests (see the module docstring)."""

    def __init__(self, ratio: float, minimum: int) -> None:
        self.ratio, self.minimum = ratio, minimum
        self._start = time.monotonic()
        self._requests = 0
        self._retries = 0
        self._lock = threading.Lock()

    def _roll(self) -> None:
        if time.monotonic() - self._start >= _BUDGET_WINDOW_S:
            self._start, self._requests, self._retries = time.monotonic(), 0, 0

    def request(self) -> None:
        """Count a request."""
        with self._lock:
            self._roll()
            self._requests += 1

    def try_retry(self) -> bool:
        """Take a retry from the budget; ``False`` when it is spent."""
        with self._lock:
            self._roll()
            if self._retries >= self.minimum + self.ratio * self._requests:
                return False
            self._retries += 1
            return True


def _message(response_body: bytes, credential: Credential) -> str:
    """The ``error.message`` of an upstream error body (scrubbed, shortened), or a generic text."""
    import json

    try:
        doc = json.loads(response_body)
        message = doc["error"]["message"] if isinstance(doc.get("error"), dict) else str(doc.get("error"))
    except (ValueError, KeyError, TypeError, AttributeError):
        message = "no details"
    return credential.scrub(str(message))[:500]


def _failure(exc: BaseException) -> UpstreamError:
    """The retryable error ``exc`` means (a connection not made), or raise what the client gets instead."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.RemoteProtocolError):
        return UpstreamError(502, "upstream_unreachable", f"the upstream could not be reached ({type(exc).__name__})")
    if isinstance(exc, httpx.TimeoutException):
        raise UpstreamError(504, "upstream_timeout", f"the upstream did not answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.HTTPError):
        raise UpstreamError(502, "upstream_error", f"the upstream call failed ({type(exc).__name__})")
    raise exc  # cancellation and the like: not an upstream failure


class Upstream:
    """An OpenAI-compatible API at ``url`` (``https://host/v1``), with an optional ``fallback`` of the same kind."""

    def __init__(
        self, url: str, settings: UpstreamSettings, credential: Credential, *, fallback: str | None = None
    ) -> None:
        for u in (url, fallback):
            if u is not None and not u.startswith(("http://", "https://")):
                raise UsageError(f"an upstream URL starts with http:// or https://, got {u!r}")
        self.urls = tuple(u.rstrip("/") for u in (url, fallback) if u)
        self.settings = settings
        self.credential = credential
        self.budget = RetryBudget(settings.retry_budget, settings.retry_min)
        timeout = httpx.Timeout(
            settings.read_timeout_s, connect=settings.connect_timeout_s, pool=settings.connect_timeout_s
        )
        tls = httpx.create_ssl_context()  # one TLS context shared by the pools (each costs milliseconds to build)
        try:  # the wire on aiohttp (the server extra installs it): a quarter of httpcore's CPU per chunk
            from mlwarden.serve.proxy.transport import AiohttpTransport
        except ImportError:
            AiohttpTransport = None  # type: ignore[assignment,misc]  # noqa: N806
        if AiohttpTransport is not None:
            transport = AiohttpTransport(timeout, settings.max_connections, tls)
            self.clients = [httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)]
        else:
            # Several small pools, not one big one: httpcore matches each request against every connection of its
            # pool (quadratic in the pool's size), which cost more than the rest of the proxy together at 100
            # concurrent streams with one pool of 100+ connections (benchmarks/llm_proxy.py, cProfile).
            shards = max(1, -(-settings.max_connections // POOL_SHARD))
            per_shard = -(-settings.max_connections // shards)
            limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
            self.clients = [
                httpx.AsyncClient(timeout=timeout, limits=limits, verify=tls, follow_redirects=False, trust_env=False)
                for _ in range(shards)
            ]
        shards = len(self.clients)
        self._active = [0] * shards  # requests in flight per pool: the least busy (lowest first) is used
        self._shard_of: dict[int, int] = {}

    @property
    def in_flight(self) -> int:
        """Upstream responses open now (sent and not yet released)."""
        return sum(self._active)

    async def close(self) -> None:
        """Close the connection pool."""
        for client in self.clients:
            await client.aclose()

    def _attempts(self) -> int:
        return 1 + self.settings.retries + (1 if len(self.urls) > 1 and self.settings.retries == 0 else 0)

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))  # noqa: S311 - jitter

    @property
    def has_fallback(self) -> bool:
        """Whether a fallback upstream is configured."""
        return len(self.urls) > 1

    async def send(
        self, path: str, body: Mapping[str, Any], *, stream: bool, fallback_first: bool = False
    ) -> httpx.Response:
        """POST ``body`` to ``path``; returns a 200 response (its body not yet read when ``stream``).

        ``fallback_first`` starts with the fallback (a ``switch_upstream`` playbook step is in force); the primary
        is then the one a retry goes to.

        Raises:
            UpstreamError: 502 (unreachable, 5xx, refused credentials), 504 (timeout), or the upstream's 4xx.
        """
        self.budget.request()
        last: UpstreamError | None = None
        offset = 1 if fallback_first and self.has_fallback else 0
        for attempt in range(self._attempts()):
            if attempt and not (last is not None and last.status == 502 and self.budget.try_retry()):
                break
            if attempt:
                await self._backoff(attempt - 1)
            url = f"{self.urls[(attempt + offset) % len(self.urls)]}/{path}"
            shard = min(range(len(self.clients)), key=self._active.__getitem__)  # warm connections first
            client = self.clients[shard]
            self._active[shard] += 1
            try:
                request = client.build_request("POST", url, json=body, headers=self.credential.headers())
                response = await client.send(request, stream=stream)
                self._shard_of[id(response)] = shard
            except BaseException as exc:  # noqa: BLE001 - the count is restored, then _failure re-raises
                self._active[shard] -= 1
                last = _failure(exc)  # a retryable failure; any other is raised
                continue
            if response.status_code == 200:
                return response
            last = await self._refusal(response)  # read (bounded) and closed
            await self.release(response)
            if response.status_code < 500:
                raise last
        if last is None:
            raise UpstreamError(502, "upstream_error", "the upstream call failed")
        raise last

    async def release(self, response: httpx.Response) -> None:
        """Close ``response`` (a 200 from :meth:`send`) and count its pool as less busy."""
        shard = self._shard_of.pop(id(response), None)
        if shard is not None:
            self._active[shard] -= 1
        await response.aclose()

    async def _refusal(self, response: httpx.Response) -> UpstreamError:
        """The error an upstream non-200 answer becomes (the response is read, bounded, and closed)."""
        try:
            raw = b""
            async for piece in response.aiter_bytes():
                raw += piece
                if len(raw) > MAX_ERROR_BODY:
                    break
        except httpx.HTTPError:
            raw = b""
        finally:
            await response.aclose()
        status, detail = response.status_code, _message(raw, self.credential)
        if status >= 500:
            return UpstreamError(502, "upstream_error", f"the upstream failed (HTTP {status})")
        if status in (401, 403):
            return UpstreamError(502, "upstream_auth", "the upstream refused the proxy's credentials")
        if status == 429:
            return UpstreamError(
                429,
                "upstream_rate_limited",
                f"the upstream is rate limiting: {detail}",
                retry_after=response.headers.get("retry-after"),
            )
        return UpstreamError(
            status if 400 <= status < 500 else 502, "upstream_rejected", f"the upstream refused the request: {detail}"
        )
