"""The proxy's upstream wire (aiohttp under httpx): bodies decoded once, headers and streams passed through.

The behaviour under failures (unreachable, read timeout, a stream cut mid-body, 5xx retries) is tested end to end
in ``test_llm_proxy.py``; these tests cover what only the transport does.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mlwarden.serve.proxy.settings import UpstreamSettings
from mlwarden.serve.proxy.upstream import Credential, Upstream
from tests.serve.llm_upstream import running

pytest.importorskip("aiohttp", reason="optional: the server extra's aiohttp")

SEEN: list[dict[str, str]] = []


async def _compressed(request: Request) -> Response:
    SEEN.append(dict(request.headers) | {"body": (await request.body()).decode()})
    doc = json.dumps({"choices": [{"message": {"content": "x" * 5000}}]}).encode()
    return Response(gzip.compress(doc), headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})


async def _stream(_request: Request) -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(pieces(), media_type="text/event-stream")


APP = Starlette(
    routes=[Route("/v1/compressed", _compressed, methods=["POST"]), Route("/v1/stream", _stream, methods=["POST"])]
)


def test_a_compressed_answer_is_decoded_once_and_the_request_goes_out_whole() -> None:
    async def go(url: str) -> tuple[bytes, list[str]]:
        upstream = Upstream(f"{url}/v1", UpstreamSettings(), Credential("sk-test-key"))
        try:
            assert type(upstream.clients[0]._transport).__name__ == "AiohttpTransport"
            response = await upstream.send("compressed", {"model": "m", "n": 1}, stream=False)
            body = await response.aread()
            await upstream.release(response)
            streamed = await upstream.send("stream", {"model": "m"}, stream=True)
            lines = [line async for line in streamed.aiter_lines() if line]
            await upstream.release(streamed)
            assert upstream.in_flight == 0
            return body, lines
        finally:
            await upstream.close()

    with running(APP) as url:
        body, lines = asyncio.run(go(url))
    assert json.loads(body)["choices"][0]["message"]["content"] == "x" * 5000
    assert lines == ["data: 0", "data: 1", "data: 2"]
    sent = SEEN[-1]
    assert sent["authorization"] == "Bearer sk-test-key"
    assert sent["content-type"] == "application/json"
    assert json.loads(sent["body"]) == {"model": "m", "n": 1}
    assert "gzip" in sent["accept-encoding"]  # httpx's, so the answer may be compressed: httpx decodes it


def test_an_unreachable_upstream_is_a_connect_error_for_the_retry_rules() -> None:
    async def go() -> None:
        upstream = Upstream("http://127.0.0.1:9/v1", UpstreamSettings(retries=0), Credential(None))
        try:
            await upstream.clients[0].post("http://127.0.0.1:9/v1/x", json={})
        finally:
            await upstream.close()

    with pytest.raises(httpx.ConnectError):
        asyncio.run(go())
