"""Every failure becomes ``{"error": {"code", "message"}}`` with the right status, and nothing else leaks.

* Registry refusals carry their HTTP status (:attr:`RegistryError.http_status`); the code names the class.
* A policy gate's refusal lists each failed rule (``failed: [{"rule", "detail"}]``), so a client can show it.
* Validation errors (pydantic, malformed JSON) are 422 with the location of each problem but never the input
  value: a mistyped token pasted in the wrong field must not be echoed back into logs and proxies.
* A database outage is 503 with a generic message (the URL and driver text stay in the server log).
* A tampered audit log is 500 ``audit_tampered`` with its message; other audit failures are internal errors.
* Anything unexpected is 500 ``internal_error`` with a reference id; the traceback goes to the server log only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlwarden.core.errors import LimitExceeded, MlwardenError
from mlwarden.registry.audit.errors import AuditError, TamperedError
from mlwarden.registry.db import DatabaseError
from mlwarden.registry.errors import (
    AuthError,
    BadInput,
    Conflict,
    GateRefused,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    RegistryError,
    scrub_paths,
)

log = logging.getLogger("mlwarden.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: ``WWW-Authenticate`` of a request without credentials (RFC 6750 §3: no error code then).
CHALLENGE = 'Bearer realm="mlwarden"'
#: ``WWW-Authenticate`` of a request whose token was refused.
CHALLENGE_INVALID = 'Bearer realm="mlwarden", error="invalid_token"'

_CODES: dict[type[RegistryError], str] = {
    AuthError: "unauthenticated",
    PermissionDenied: "forbidden",
    NotFound: "not_found",
    InvalidTransition: "invalid_transition",
    GateRefused: "gate_refused",
    Conflict: "conflict",
    BadInput: "invalid_input",
}
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    503: "database_unavailable",
}


class ApiError(MlwardenError):
    """A refusal decided by the API layer itself (upload limits, malformed multipart), with its status and code."""

    def __init__(self, status: int, code: str, message: str, challenge: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.challenge = challenge


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The one shape of every error body."""
    detail: dict[str, Any] = {"code": code, "message": scrub_paths(message)}
    detail.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


def _registry_error(request: Request, exc: Exception) -> JSONResponse:
    if not (isinstance(exc, RegistryError)):
        raise RuntimeError("internal invariant broken: isinstance(exc, RegistryError)")
    if exc.http_status >= 500:
        # A server-side failure (e.g. the blob store): its message names server paths; the client gets a reference.
        reference = uuid.uuid4().hex[:12]
        log.error("%s %s during %s %s: %s", type(exc).__name__, reference, request.method, request.url.path, exc)
        return error_response(exc.http_status, "internal_error", f"internal error (reference {reference})")
    code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), "bad_request")
    headers = {"WWW-Authenticate": CHALLENGE_INVALID} if isinstance(exc, AuthError) else None
    failed = None
    if isinstance(exc, GateRefused):
        failed = [{"rule": check.rule, "detail": check.detail} for check in exc.failed]
    return error_response(exc.http_status, code, str(exc), headers, failed=failed)


def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    if not (isinstance(exc, ApiError)):
        raise RuntimeError("internal invariant broken: isinstance(exc, ApiError)")
    headers = {"WWW-Authenticate": exc.challenge} if exc.challenge else None
    return error_response(exc.status, exc.code, str(exc), headers)


def _database_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable during %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "database_unavailable", "the registry database is unavailable; try again later")


def _audit_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, TamperedError):
        # Not a secret and not the caller's fault: the log no longer matches its own hashes. Say so loudly.
        log.critical("audit log tampering detected during %s %s: %s", request.method, request.url.path, exc)
        return error_response(500, "audit_tampered", str(exc))
    reference = uuid.uuid4().hex[:12]
    log.error("audit error %s during %s %s: %s", reference, request.method, request.url.path, exc)
    return error_response(500, "internal_error", f"internal error (reference {reference})")


def _limit_exceeded(_request: Request, exc: Exception) -> JSONResponse:
    # The registry's own limits (e.g. max_artifact_bytes) refuse what was sent as too large.
    return error_response(413, "payload_too_large", str(exc))


def _mlwarden_error(_request: Request, exc: Exception) -> JSONResponse:
    # Integrity and scan errors (a truncated signature bundle, an unreadable model) are about what the caller sent:
    # their messages are one actionable line written for users.
    return error_response(422, "invalid_input", str(exc))


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    if not (isinstance(exc, RequestValidationError)):
        raise RuntimeError("internal invariant broken: isinstance(exc, RequestValidationError)")
    problems = [
        {
            "location": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
            "message": scrub_paths(str(e.get("msg", ""))),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ]
    first = problems[0] if problems else {"location": [], "message": "invalid request"}
    where = ".".join(str(p) for p in first["location"])
    message = f"invalid request: {where}: {first['message']}" if where else f"invalid request: {first['message']}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    return error_response(422, "invalid_input", message, problems=problems)


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    if not (isinstance(exc, StarletteHTTPException)):
        raise RuntimeError("internal invariant broken: isinstance(exc, StarletteHTTPException)")
    code = _STATUS_CODES.get(exc.status_code, "error")
    try:
        default = HTTPStatus(exc.status_code).phrase.lower()
    except ValueError:
        default = "error"
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else default
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, message, headers)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app`` (the most specific class wins, whatever the order)."""
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DatabaseError, _database_error)
    app.add_exception_handler(AuditError, _audit_error)
    app.add_exception_handler(LimitExceeded, _limit_exceeded)
    app.add_exception_handler(MlwardenError, _mlwarden_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class CatchAll:
    """ASGI middleware: an unexpected exception becomes a generic 500 and one log line with a reference id.

    It sits inside Starlette's own error middleware, which would otherwise answer with plain text and log the
    traceback a second time; here the client gets the reference to quote and the server log gets the traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; on an exception before the response started, answer 500 instead."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            reference = uuid.uuid4().hex[:12]
            log.exception("internal error %s during %s %s", reference, scope.get("method"), scope.get("path"))
            if started:
                raise
            response = error_response(500, "internal_error", f"internal error (reference {reference})")
            await response(scope, receive, send)
