"""A small OpenAI-compatible upstream for the LLM proxy's tests and benchmark (it is not under test).

It answers ``/v1/chat/completions`` (streamed or not), ``/v1/completions`` and ``/v1/embeddings`` with what the
test scripted: a reply, the pieces a stream is cut into, a pause between pieces, failures before answering, a
hang, usage reported or not. It records every request (body and ``Authorization`` header) so tests can check
what the proxy forwarded. Served by uvicorn on 127.0.0.1 (ephemeral port) in a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

#: Token counts the upstream reports when ``Script.usage`` is on.
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 9


@dataclass
class Script:
    """What the upstream does next (tests change it between requests)."""

    reply: str = "Hello from upstream."
    chunks: list[str] | None = None  # streamed pieces (default: the reply in pieces of 8 characters)
    delay_s: float = 0.0  # pause before each streamed piece
    fail_first: int = 0  # answer 500 to this many requests before answering normally
    status: int | None = None  # answer every request with this error status
    hang_s: float = 0.0  # wait this long before answering
    usage: bool = True
    break_after: int | None = None  # drop the connection after this many streamed pieces
    tool_args: str | None = None  # answer with a tool call with these arguments (streamed: in ``chunks``)
    logprobs: bool = False  # add logprobs: the text in tokens of 3 characters
    requests: list[dict[str, Any]] = field(default_factory=list)

    def pieces(self) -> list[str]:
        """The streamed pieces."""
        return self.chunks if self.chunks is not None else [self.reply[i : i + 8] for i in range(0, len(self.reply), 8)]


def logprob_entries(text: str) -> list[dict[str, Any]]:
    """``logprobs.content`` for ``text``: tokens of 3 characters, each with itself as the only alternative."""
    tokens = [text[i : i + 3] for i in range(0, len(text), 3)]
    return [
        {
            "token": t,
            "logprob": -0.5,
            "bytes": list(t.encode()),
            "top_logprobs": [{"token": t, "logprob": -0.5, "bytes": list(t.encode())}],
        }
        for t in tokens
    ]


def _tool_call(arguments: str, first: bool) -> dict[str, Any]:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": arguments}}
    if first:
        call |= {"id": "call_1", "type": "function"}
        call["function"]["name"] = "send_mail"
    return call


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


async def _stream(script: Script, body: dict[str, Any], chat: bool) -> AsyncIterator[bytes]:
    base = {
        "id": "cmpl-1",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 1,
        "model": body.get("model", "m"),
    }
    with_usage = bool((body.get("stream_options") or {}).get("include_usage")) and script.usage
    extra = {"usage": None} if with_usage else {}

    def chunk(text: str | None, finish: str | None = None, first: bool = False) -> bytes:
        if chat and script.tool_args is not None:
            delta: dict[str, Any] = {} if text is None else {"tool_calls": [_tool_call(text, first)]}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        elif chat:
            delta = {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
        if script.logprobs and text is not None and script.tool_args is None:
            choice["logprobs"] = {"content": logprob_entries(text), "refusal": None}
        return b"data: " + json.dumps(base | {"choices": [choice]} | extra).encode() + b"\n\n"

    if chat:
        yield (
            b"data: "
            + json.dumps(
                base
                | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
                | extra
            ).encode()
            + b"\n\n"
        )
    pieces = script.pieces()
    if script.tool_args is not None:
        pieces = script.chunks or [script.tool_args]
    for i, piece in enumerate(pieces):
        if script.break_after is not None and i == script.break_after:
            raise ConnectionAbortedError("the upstream test server drops the stream")  # uvicorn cuts the body
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        yield chunk(piece, first=i == 0)
    yield chunk(None, "tool_calls" if script.tool_args is not None else "stop")
    if with_usage:
        yield b"data: " + json.dumps(base | {"choices": [], "usage": _usage()}).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def upstream_app(script: Script) -> Starlette:
    """The upstream's ASGI app, following ``script``."""

    async def handler(request: Request) -> Response:
        body = json.loads(await request.body())
        script.requests.append({"path": request.url.path, "body": body, "auth": request.headers.get("authorization")})
        if script.hang_s:
            await asyncio.sleep(script.hang_s)
        if script.fail_first > 0:
            script.fail_first -= 1
            return JSONResponse({"error": {"message": "internal trouble"}}, status_code=500)
        if script.status is not None:
            message = f"Incorrect API key provided: {request.headers.get('authorization', '')}"
            return JSONResponse({"error": {"message": message, "type": "x"}}, status_code=script.status)
        path = request.url.path
        if path.endswith("/embeddings"):
            doc = {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": body.get("model"),
                "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS},
            }
            return JSONResponse(doc)
        chat = path.endswith("/chat/completions")
        if body.get("stream"):
            return StreamingResponse(_stream(script, body, chat), media_type="text/event-stream")
        if chat and script.tool_args is not None:
            call = _tool_call(script.tool_args, True)
            del call["index"]
            tool_message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice: dict[str, Any] = {"index": 0, "message": tool_message, "finish_reason": "tool_calls"}
        elif chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": script.reply},
                "finish_reason": "stop",
            }
            if script.logprobs:
                choice["logprobs"] = {"content": logprob_entries(script.reply), "refusal": None}
        else:
            choice = {"index": 0, "text": script.reply, "finish_reason": "stop"}
        doc = {
            "id": "cmpl-1",
            "object": "chat.completion" if chat else "text_completion",
            "created": 1,
            "model": body.get("model"),
            "choices": [choice],
        }
        if script.usage:
            doc["usage"] = _usage()
        return JSONResponse(doc)

    routes = [Route(f"/v1/{p}", handler, methods=["POST"]) for p in ("chat/completions", "completions", "embeddings")]
    return Starlette(routes=routes)


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (ephemeral port) in a thread; yields ``http://127.0.0.1:PORT``."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped before it started"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
