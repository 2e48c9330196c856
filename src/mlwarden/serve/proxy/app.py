"""The LLM proxy's HTTP face: OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``.

Clients keep their OpenAI SDK and point ``base_url`` at the proxy, authenticating with their registry token as
the API key. Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` (which also carries
the registry API's ``code`` and ``message``), so the SDK raises its usual exceptions; no traceback reaches a
client. Streamed answers are relayed as Server-Sent Events chunk by chunk, masked on the way
(:mod:`mlwarden.serve.proxy.stream`): the proxy holds back only a short tail, never the whole answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from mlwarden._version import __version__
from mlwarden.http import errors
from mlwarden.http.auth import MAX_TOKEN_LENGTH, bearer
from mlwarden.http.errors import ApiError
from mlwarden.http.limits import BodyLimit, Limits
from mlwarden.registry.errors import AuthError
from mlwarden.registry.roles import Permission, Principal
from mlwarden.serve.app import _metrics_router, check_metrics_token
from mlwarden.serve.auditor import AuditBacklog
from mlwarden.serve.proxy.budget import Usage, usage_from
from mlwarden.serve.proxy.control import KINDS, ProxyRefusal
from mlwarden.serve.proxy.outputs import StreamExtras
from mlwarden.serve.proxy.service import ENDPOINTS, Exchange, ProxyService
from mlwarden.serve.proxy.stream import StreamMasker
from mlwarden.serve.proxy.upstream import Upstream, UpstreamError
from mlwarden.serve.state import StateUnavailableError

#: Largest non-streamed upstream answer read.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(status: int, code: str, message: str, retry_after: str | None = None) -> JSONResponse:
    """An OpenAI-shaped error response."""
    kind = "insufficient_quota" if code == "insufficient_quota" else _TYPES.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers={"Retry-After": retry_after} if retry_after else None)


def _sse(doc: Any) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


async def get_service(request: Request) -> ProxyService:
    """The service the app was created over."""
    service: ProxyService = request.app.state.service
    return service


ServiceDep = Annotated[ProxyService, Depends(get_service)]


async def authenticate(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> Principal:
    """The caller, from its registry token sent as the OpenAI API key (``Authorization: Bearer mlw_...``)."""
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        service.metrics.rejections.labels("unauthenticated").inc()
        raise ApiError(401, "invalid_api_key", "missing or invalid API key (send a registry token: mlw_...)")
    try:
        cached = service.tokens.cached(token)
        return cached if cached is not None else await run_in_threadpool(service.tokens.authenticate, token)
    except AuthError:
        service.metrics.rejections.labels("unauthenticated").inc()
        raise ApiError(401, "invalid_api_key", "invalid API key") from None


Caller = Annotated[Principal, Depends(authenticate)]


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ProxyRefusal(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ProxyRefusal(400, "invalid_json", "the request body must be a JSON object")
    return body


async def _refused(
    service: ProxyService, exchange: Exchange | None, caller: Principal, endpoint: str, exc: UpstreamError
) -> Response:
    if not isinstance(exc, ProxyRefusal):
        service.metrics.upstream_errors.labels(exc.code).inc()
    try:
        await run_in_threadpool(service.refuse, exchange, caller, endpoint, exc)
    except AuditBacklog:
        return openai_error(503, "audit_unavailable", "the audit log is unavailable; try again later")
    return openai_error(exc.status, exc.code, str(exc), exc.retry_after)


async def handle(service: ProxyService, caller: Caller, endpoint: str, request: Request) -> Response:
    """Admit, forward, filter, charge and audit one request (see ``docs/llm-proxy.md``)."""
    exchange: Exchange | None = None
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    try:
        body = await _json_body(request)
        exchange = service.admit(caller, endpoint, body)
        if exchange.decision == "block":
            raise ProxyRefusal(400, "prompt_rejected", "the prompt was rejected by the guard's prompt screen")
        started = loop.time()
        service.metrics.overhead_seconds.observe(started - arrived)
        fallback_first = service.controls.fallback_first()
        if exchange.stream:
            upstream = await service.upstream.send(endpoint, exchange.body, stream=True, fallback_first=fallback_first)
            exchange.upstream_s = loop.time() - started
            service.metrics.upstream_seconds.labels(endpoint).observe(exchange.upstream_s)
            return StreamingResponse(
                relay(service, exchange, upstream),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        async with asyncio.timeout(service.settings.upstream.total_timeout_s):
            upstream = await service.upstream.send(endpoint, exchange.body, stream=False, fallback_first=fallback_first)
            exchange.upstream_s = loop.time() - started
            service.metrics.upstream_seconds.labels(endpoint).observe(exchange.upstream_s)
            raw = await _read_bounded(service.upstream, upstream)
        return await _answer(service, exchange, raw)
    except TimeoutError:
        return await _refused(
            service,
            exchange,
            caller,
            endpoint,
            UpstreamError(504, "upstream_timeout", "the upstream did not answer in time"),
        )
    except UpstreamError as exc:
        return await _refused(service, exchange, caller, endpoint, exc)


async def _read_bounded(upstream: Upstream, response: httpx.Response) -> bytes:
    try:
        raw = bytearray()
        async for piece in response.aiter_bytes():
            raw += piece
            if len(raw) > MAX_ANSWER_BYTES:
                raise UpstreamError(502, "upstream_error", "the upstream answer is too large")
        return bytes(raw)
    except httpx.TimeoutException:
        raise UpstreamError(504, "upstream_timeout", "the upstream did not finish its answer in time") from None
    except httpx.HTTPError as exc:
        raise UpstreamError(502, "upstream_error", f"the upstream answer was cut off ({type(exc).__name__})") from None
    finally:
        await upstream.release(response)


async def _answer(service: ProxyService, exchange: Exchange, raw: bytes) -> Response:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        raise UpstreamError(502, "upstream_error", "the upstream answer is not a JSON object")
    maskers, blocked = service.filter_body(exchange, doc)
    usage = usage_from(doc, exchange.prompt_chars, exchange.completion_chars)
    await _finish(service, exchange, usage, maskers, None)
    if blocked:
        return openai_error(403, "output_withheld", "the answer reproduced the system prompt and was withheld")
    return JSONResponse(doc)


async def _finish(
    service: ProxyService, exchange: Exchange, usage: Usage, maskers: list[StreamMasker], error: str | None
) -> None:
    """:meth:`ProxyService.finish` on the event loop when it cannot wait, else in a pool thread."""
    if service.finish_blocks(exchange, maskers):
        await run_in_threadpool(service.finish, exchange, usage, maskers, error)
    else:
        service.finish(exchange, usage, maskers, error)


def _content(endpoint: str, choice: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    if endpoint == "chat/completions":
        delta = choice.get("delta")
        return (delta if isinstance(delta, dict) else None), "content"
    return choice, "text"


def _filter_chunk(
    service: ProxyService,
    exchange: Exchange,
    chunk: dict[str, Any],
    maskers: dict[int, StreamMasker],
    extras: dict[int, StreamExtras],
) -> None:
    """Mask the chunk's text (content, tool-call arguments, logprob tokens) in place; flush on ``finish_reason``."""
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
        holder, key = _content(exchange.endpoint, choice)
        masker = maskers.get(index)
        if masker is None:
            masker = maskers[index] = service.masker(exchange)
        extra = extras.get(index)
        if extra is None:
            extra = extras[index] = StreamExtras(
                exchange.endpoint == "chat/completions", lambda: service.masker(exchange)
            )
        extra.filter(choice)
        text = holder.get(key) if holder is not None else None
        out = ""
        if isinstance(text, str):
            exchange.completion_chars += len(text)
            out = masker.feed(text)
        if choice.get("finish_reason") is not None:
            out += masker.flush()
            extra.flush_into(choice)
            holder, key = _content(exchange.endpoint, choice)  # flush_into may have added the delta
            service.count_refusal(exchange, None, holder.get("refusal") if holder is not None else None)
        if holder is not None and (isinstance(text, str) or out):
            holder[key] = out


async def relay(service: ProxyService, exchange: Exchange, upstream: httpx.Response) -> AsyncIterator[bytes]:
    """Relay the upstream's SSE stream, masked, chunk by chunk; charge and audit at the end."""
    maskers: dict[int, StreamMasker] = {}
    extras: dict[int, StreamExtras] = {}
    usage_doc: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    error: str | None = None
    done = False
    deadline = asyncio.get_running_loop().time() + service.settings.upstream.total_timeout_s
    try:
        async for line in upstream.aiter_lines():
            if asyncio.get_running_loop().time() > deadline:
                raise httpx.ReadTimeout("total timeout")
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]" or done:
                done = True  # read on to the end: a connection closed mid-body cannot be reused
                continue
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("usage"), dict):
                usage_doc = chunk
            last = chunk
            _filter_chunk(service, exchange, chunk, maskers, extras)
            if not chunk.get("choices") and usage_doc is chunk and not exchange.client_wants_usage:
                continue  # the usage chunk the proxy asked for on its own behalf
            yield _sse(chunk)
        rest = {i: m.flush() for i, m in maskers.items()}
        chat = exchange.endpoint == "chat/completions"
        choices = []
        for i, t in rest.items():  # the upstream ended without a finish_reason: emit what the tails still held
            choice: dict[str, Any] = {"index": i, **({"delta": {"content": t}} if chat else {"text": t})}
            choice["finish_reason"] = None
            if (i in extras and extras[i].flush_into(choice)) or t:
                choices.append(choice)
        if choices:
            yield _sse({k: last[k] for k in ("id", "object", "created", "model") if k in last} | {"choices": choices})
        yield b"data: [DONE]\n\n"
    except (httpx.HTTPError, ValueError) as exc:
        error = type(exc).__name__
        code, status = ("upstream_timeout", 504) if isinstance(exc, httpx.TimeoutException) else ("upstream_error", 502)
        service.metrics.upstream_errors.labels(code).inc()
        yield _sse(
            {
                "error": {
                    "message": "the upstream stream failed; the answer is incomplete",
                    "type": "api_error",
                    "param": None,
                    "code": code,
                    "status": status,
                }
            }
        )
    finally:
        usage = usage_from(usage_doc or {}, exchange.prompt_chars, exchange.completion_chars)
        all_maskers = [*maskers.values(), *(m for e in extras.values() for m in e.maskers())]
        # Shielded: a client that hangs up mid-stream is still charged and audited (finish runs exactly once).
        settle = asyncio.ensure_future(_finish(service, exchange, usage, all_maskers, error))
        try:
            await service.upstream.release(upstream)
        finally:
            await asyncio.shield(settle)


def _may_manage(caller: Principal) -> None:
    if not caller.can(Permission.QUARANTINE):
        raise ApiError(403, "forbidden", f"{caller.username} may not manage the proxy (needs role deployer or admin)")


def _admin_routes(app: FastAPI) -> None:
    """``/v1/mlwarden/...``: the holds playbooks put (cut-off clients, quarantined routes, the upstream switch)."""

    @app.get("/v1/mlwarden/holds", tags=["admin"], summary="Current cut-offs, quarantines and upstream switch")
    async def holds(service: ServiceDep, caller: Caller) -> dict[str, Any]:
        _may_manage(caller)
        try:
            return await run_in_threadpool(service.controls.holds_snapshot)
        except StateUnavailableError:
            raise ApiError(503, "state_unavailable", "the shared state store is unavailable") from None

    @app.delete("/v1/mlwarden/holds/{kind}/{name:path}", tags=["admin"], summary="Lift a hold (audited)")
    async def lift(kind: str, name: str, service: ServiceDep, caller: Caller) -> dict[str, Any]:
        _may_manage(caller)
        if kind not in KINDS:
            raise ApiError(404, "not_found", f"no kind of hold {kind!r} (kinds: {', '.join(KINDS)})")
        try:
            doc = await run_in_threadpool(service.controls.lift, kind, name, caller)
        except StateUnavailableError:
            raise ApiError(503, "state_unavailable", "the shared state store is unavailable") from None
        if doc is None:
            raise ApiError(404, "not_held", f"no {kind} hold on {name!r}")
        return {"lifted": {"kind": kind, "name": name, **doc}}

    @app.get("/v1/mlwarden/monitor", tags=["admin"], summary="The traffic monitor's state per route")
    async def monitor(service: ServiceDep, caller: Caller) -> dict[str, Any]:
        _may_manage(caller)
        if service.monitor is None:
            return {"enabled": False}
        alerts = [a.to_dict() for a in service.monitor.recent_alerts()]
        return {"enabled": True, **service.monitor.snapshot(), "alerts": alerts}


def _routes(app: FastAPI) -> None:
    for endpoint in ENDPOINTS:

        async def route(request: Request, service: ServiceDep, caller: Caller, _endpoint: str = endpoint) -> Response:
            return await handle(service, caller, _endpoint, request)

        app.add_api_route(
            f"/v1/{endpoint}", route, methods=["POST"], tags=["proxy"], summary=f"POST /v1/{endpoint} through the guard"
        )


def create_proxy_app(service: ProxyService, *, metrics_token: str | None = None) -> FastAPI:
    """The HTTP app over ``service`` (``mlwarden serve --upstream`` runs it with uvicorn).

    Args:
        service: the proxy service.
        metrics_token: serve ``GET /metrics`` to scrapers sending ``Authorization: Bearer <token>``.
    """
    token = check_metrics_token(metrics_token)
    app = FastAPI(title="mlwarden LLM proxy", version=__version__, description=__doc__ or "")
    app.state.service = service
    errors.install(app)

    async def api_error(_request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ApiError):
            raise RuntimeError("internal invariant broken: isinstance(exc, ApiError)")
        return openai_error(exc.status, exc.code, str(exc))

    app.add_exception_handler(ApiError, api_error)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "upstream": service.name, "mlwarden": __version__}

    if token is not None:
        app.include_router(_metrics_router(token))
    _routes(app)
    _admin_routes(app)
    app.add_middleware(errors.CatchAll)
    app.add_middleware(
        BodyLimit, limits=Limits(max_body_bytes=service.policy.limits.max_body_bytes, max_upload_bytes=1)
    )
    return app
