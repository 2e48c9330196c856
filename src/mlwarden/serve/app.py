"""The guard's HTTP face: a FastAPI app over one :class:`~mlwarden.serve.service.GuardService`.

Endpoints: ``POST /v1/models/{name}/predict``, ``GET /v1/models/{name}`` (what is served), ``GET
/v1/models/{name}/monitor`` (the monitor's state), ``GET /healthz`` and the OpenAPI document at ``/openapi.json``
with docs at ``/docs``. ``GET /metrics`` (Prometheus) names the model, its version and digest, so it is on this
app only behind a metrics token; :func:`create_metrics_app` serves it on a listener of its own (``mlwarden serve
--metrics-port``). Errors share the registry API's shape
``{"error": {"code", "message"}}`` and its handlers: no traceback ever reaches a client, body sizes are
enforced while the bytes arrive (413), malformed JSON is a 422 that never echoes the input.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlwarden._version import __version__
from mlwarden.core.errors import UsageError
from mlwarden.http import errors
from mlwarden.http.auth import MAX_TOKEN_LENGTH, bearer
from mlwarden.http.errors import CHALLENGE, CHALLENGE_INVALID, ApiError
from mlwarden.http.limits import BodyLimit, Limits
from mlwarden.http.responses import errors as error_responses
from mlwarden.registry.errors import AuthError
from mlwarden.registry.roles import Permission, Principal
from mlwarden.serve.monitor_link import MonitorLink
from mlwarden.serve.requests import PredictRequest, PredictResponse, handle_predict, settle_async
from mlwarden.serve.service import GuardService


async def get_service(request: Request) -> GuardService:
    """The service the app was created over."""
    service: GuardService = request.app.state.service
    return service


ServiceDep = Annotated[GuardService, Depends(get_service)]


async def authenticate(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>`` (a registry token; cached for ``token_cache_s``).

    ``async`` on purpose, like :func:`predict`: the work is CPU-bound Python, which threads cannot run in parallel
    anyway, and a hop to the thread pool and back per request cost a third of the service's throughput
    (measured with benchmarks/guard_load.py). A cache miss asks the registry (a write: the token's last use) in
    the thread pool, so a busy database never stalls the loop.
    """
    if credentials is None or not credentials.credentials:
        service.metrics.rejections.labels(service.name, "unauthenticated").inc()
        raise ApiError(401, "unauthenticated", "missing bearer token (Authorization: Bearer mlw_...)", CHALLENGE)
    token = credentials.credentials.strip()
    if len(token) > MAX_TOKEN_LENGTH:
        service.metrics.rejections.labels(service.name, "unauthenticated").inc()
        raise ApiError(401, "unauthenticated", "invalid token", CHALLENGE_INVALID)
    try:
        cached = service.tokens.cached(token)
        if cached is not None:
            return cached
        return await run_in_threadpool(service.tokens.authenticate, token)  # a registry write: off the loop
    except AuthError:
        service.metrics.rejections.labels(service.name, "unauthenticated").inc()
        raise


Caller = Annotated[Principal, Depends(authenticate)]


async def fast_predict(request: Request) -> Response | None:
    """Answer a well-formed predict request from a cached caller without FastAPI's dependency machinery.

    Resolving the endpoint's dependencies (service, bearer scheme, token, body) took about a tenth of the guard's
    CPU per request. This does what they do for the common case — ``Authorization: Bearer`` with a token in the
    cache, a ``Content-Type: application/json`` body that parses and validates — and returns ``None`` for
    anything else (no or unknown token, another content type, malformed JSON, an invalid body), which then
    takes the regular route with its exact errors. The request itself is answered by the same code either way
    (:func:`_answer`).
    """
    headers = request.headers
    authorization = headers.get("authorization")
    if not authorization or headers.get("content-type") != "application/json":
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    service: GuardService = request.app.state.service
    caller = service.tokens.cached(token)
    if caller is None:
        return None
    try:
        body = await request.body()  # kept by the request: the regular route reads the same bytes again
    except StarletteHTTPException:  # e.g. the body limit's 413, as the regular route lets it through
        raise
    except Exception as exc:  # e.g. the client went away: the regular route's answer
        raise HTTPException(400, "There was an error parsing the body") from exc
    try:
        payload = PredictRequest.model_validate(json.loads(body))
    except (ValueError, ValidationError):  # the regular route answers with its 422
        return None
    return await _answer(service, caller, request.path_params["name"], payload.model_dump(exclude_none=True))


class _PredictRoute(APIRoute):
    """The predict route: :func:`fast_predict` first, FastAPI's handler for whatever it leaves."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler behind :func:`fast_predict`."""
        regular = super().get_route_handler()

        async def handler(request: Request) -> Response:
            answer = await fast_predict(request)
            return answer if answer is not None else await regular(request)

        return handler


async def _answer(service: GuardService, caller: Principal, name: str, payload: Mapping[str, Any]) -> JSONResponse:
    reply = handle_predict(service, caller, name, payload)
    if reply.audit is not None:  # written before the reply, never by the event loop itself
        reply = await settle_async(service, reply)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers or None)


predict_router = APIRouter(route_class=_PredictRoute)
router = APIRouter()


@predict_router.post(
    "/v1/models/{name}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses={
        **error_responses(401, 403, 404, 413, 422, 503),
        429: {"description": "Rate limited or extraction suspected (see Retry-After)"},
        500: {"description": "The model failed (a reference id, no details)"},
    },
    tags=["predict"],
    summary="Predict through the guard",
)
async def predict(name: str, body: PredictRequest, service: ServiceDep, caller: Caller) -> JSONResponse:
    """Validate, check, predict, filter, audit: see ``docs/guard.md`` for each step and its status code."""
    return await _answer(service, caller, name, body.model_dump(exclude_none=True))


@router.get(
    "/v1/models/{name}", tags=["predict"], summary="The served version", responses=error_responses(401, 403, 404)
)
def served(name: str, service: ServiceDep, caller: Caller) -> dict[str, Any]:
    """Which version is served, since when, its digest and signature state, and the input it takes."""
    _may_read(service, caller, name)
    current = service.current
    servable = current.servable
    return {
        "model": current.info.model,
        "version": current.info.version,
        "ref": current.info.ref,
        "digest": current.info.digest,
        "state": current.info.state.value,
        "loaded_at": current.loaded_at,
        "signed": current.signature_bundle is not None,
        "input": {
            "kind": servable.input_kind,
            "n_features": servable.n_features,
            "feature_names": list(servable.feature_names) if servable.feature_names else None,
            "max_rows": service.policy.input.max_rows,
        },
        "classes": [str(c) for c in servable.classes] if servable.classes else None,
        "halted": service.halted,
    }


@router.get(
    "/v1/models/{name}/monitor", tags=["monitor"], summary="Monitor state", responses=error_responses(401, 403, 404)
)
def monitor_state(name: str, service: ServiceDep, caller: Caller) -> dict[str, Any]:
    """Window sizes, the last drift report, control chart states and recent alerts."""
    _may_read(service, caller, name)
    monitor = service.monitor
    if isinstance(monitor, MonitorLink):  # the monitor runs in its own process: ask it
        return monitor.snapshot(50)
    snapshot = dict(monitor.snapshot())
    snapshot["recent_alerts"] = [a.to_dict() for a in monitor.recent_alerts(50)]
    return snapshot


def _may_read(service: GuardService, caller: Principal, name: str) -> None:
    if name != service.name:
        raise ApiError(404, "not_found", f"this service serves {service.name!r}, not {name!r}")
    if not caller.can(Permission.READ) or not caller.within(f"model:{service.current.info.ref}"):
        raise ApiError(403, "forbidden", f"{caller.username} may not read {service.current.info.ref}")


health = APIRouter(tags=["health"])


@health.get("/healthz", summary="Health check")
def healthz(service: ServiceDep) -> JSONResponse:
    """200 while a verified version is served; 503 when the registry stopped it (quarantined, retired)."""
    current = service.current
    body = {"status": "ok", "model": current.info.model, "version": current.info.version, "mlwarden": __version__}
    if service.halted:
        body.update(status="halted", reason=service.halted)
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)


#: Shortest metrics token accepted (a guessable one would put the model's identity back in the open).
MIN_METRICS_TOKEN = 16


def check_metrics_token(token: str | None) -> str | None:
    """``token`` stripped, or ``None``; raises :class:`UsageError` when it is too short to be a secret."""
    if token is None or not token.strip():
        return None
    token = token.strip()
    if len(token) < MIN_METRICS_TOKEN or len(token) > MAX_TOKEN_LENGTH:
        raise UsageError(f"a metrics token has {MIN_METRICS_TOKEN} to {MAX_TOKEN_LENGTH} characters")
    return token


def _metrics_router(token: str | None) -> APIRouter:
    """``GET /metrics``, requiring ``Authorization: Bearer <token>`` when ``token`` is set."""

    async def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> None:
        if token is None:
            return
        given = (credentials.credentials if credentials is not None else "").strip().encode("utf-8", "replace")
        if not hmac.compare_digest(given, token.encode("utf-8")):  # constant time: the token is a secret
            raise ApiError(401, "unauthenticated", "the metrics token is missing or wrong", CHALLENGE_INVALID)

    router = APIRouter(tags=["health"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=[Depends(authorize)],
        responses=error_responses(401),
    )
    def metrics(service: ServiceDep) -> Response:
        """Requests, decisions, check outcomes, latency, drift statistics, control charts, alerts, playbook steps."""
        body = generate_latest(service.metrics.registry) + service.extra_metrics()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router


def create_metrics_app(service: GuardService, *, token: str | None = None) -> FastAPI:
    """Only ``GET /metrics`` of ``service``, for a listener of its own (e.g. on an internal address).

    Args:
        service: the guard service whose metrics are served.
        token: when set, scrapers must send ``Authorization: Bearer <token>``.
    """
    app = FastAPI(title=f"mlwarden guard metrics: {service.name}", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.service = service
    errors.install(app)
    app.include_router(_metrics_router(check_metrics_token(token)))
    app.add_middleware(errors.CatchAll)
    app.add_middleware(BodyLimit, limits=Limits(max_body_bytes=1024, max_upload_bytes=1))
    return app


def create_guard_app(service: GuardService, *, metrics_token: str | None = None) -> FastAPI:
    """The HTTP app over ``service`` (serve it with uvicorn; ``mlwarden serve`` does).

    Args:
        service: the guard service.
        metrics_token: serve ``GET /metrics`` here too, to scrapers sending ``Authorization: Bearer <token>``.
            Without it this app has no ``/metrics``: the series name the model, its version and digest, which
            an anonymous client must not learn (serve them with :func:`create_metrics_app` instead).
    """
    metrics_token = check_metrics_token(metrics_token)
    app = FastAPI(
        title=f"mlwarden guard: {service.name}",
        version=__version__,
        description="A deployed model behind mlwarden's guard: every request is authenticated with a registry "
        "token, rate limited, validated against the model's signature and its approval baseline, screened for "
        "adversarial, out-of-distribution and extraction patterns, and its answer filtered for PII; every "
        "decision is audited. Authenticate with `Authorization: Bearer mlw_...`.",
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
    )
    app.state.service = service
    errors.install(app)
    app.include_router(health)
    if metrics_token is not None:
        app.include_router(_metrics_router(metrics_token))
    app.include_router(predict_router)
    app.include_router(router)
    limits = Limits(max_body_bytes=service.policy.limits.max_body_bytes, max_upload_bytes=1)
    app.add_middleware(errors.CatchAll)
    app.add_middleware(BodyLimit, limits=limits)
    return app
