"""An httpx transport on aiohttp: the proxy's upstream connections, at a quarter of httpcore's CPU per chunk.

The proxy relays every chunk of every streamed answer. httpx's own transport (httpcore, h11 and anyio, all pure
Python) cost about 0.14 ms of CPU per SSE chunk received through ``Upstream``; with this transport about 0.04 ms
(100 concurrent streams of 22 chunks from the test upstream: 0.27-0.41 s of CPU against 0.08-0.09 s). At 100
streams x 20 chunks/s that difference is a fifth of a core or more, on the one event loop that also answers new
requests: the time to first byte of a new stream queues behind it (``benchmarks/llm_proxy.py``).

Only the wire is aiohttp's: requests and responses stay ``httpx.Request``/``httpx.Response`` (the proxy's code, its
timeouts and its error handling do not change), aiohttp's failures are raised as the httpx exceptions they mean,
and the body is passed on undecoded (httpx decodes it, once). No redirects, no environment proxies, no cookies.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp as it arrives; closing it returns or drops the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response, self._request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._response.content.iter_any():
                yield piece
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, self._request) from exc

    async def aclose(self) -> None:
        # A body read to its end leaves a reusable connection; one closed early cannot be reused.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


def _translate(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception an aiohttp failure means: the one httpcore raises for the same failure.

    The proxy's retry rules (``upstream._failure``) are written against httpx's exceptions; only failures before
    the response head are ever retried there, and only those that mean the request was not taken.
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # connecting, or waiting for a free connection
        return httpx.ConnectTimeout(text, request=request)
    if isinstance(exc, TimeoutError):  # aiohttp.ServerTimeoutError included: no byte within the read timeout
        return httpx.ReadTimeout(text, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unresolvable, TLS verification failed
        return httpx.ConnectError(text, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(text, request=request)  # closed before the answer, or mid-body (as h11)
    return httpx.ReadError(text, request=request)  # a reset or another socket error


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests sent over one aiohttp connection pool (created on first use, in the serving event loop).

    Args:
        timeout: httpx's timeouts: ``connect`` (also the wait for a free connection) and ``read`` (between chunks).
        max_connections: connections open at most (aiohttp's pool limit).
        tls: the TLS context for ``https://`` upstreams (certificates are verified).
    """

    def __init__(self, timeout: httpx.Timeout, max_connections: int, tls: ssl.SSLContext) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout.pool, sock_connect=timeout.connect, sock_read=timeout.read
        )
        self._limit, self._tls = max_connections, tls
        self._session: aiohttp.ClientSession | None = None

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, ssl=self._tls, force_close=False)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,  # httpx decodes the body by its Content-Encoding
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the response's body is streamed (see :class:`_Body`)."""
        try:
            content = request.content
        except httpx.RequestNotRead:
            content = await request.aread()
        try:
            response = await self._pool().request(
                request.method,
                str(request.url),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
                data=content,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=[(bytes(k), bytes(v)) for k, v in response.raw_headers],
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()
