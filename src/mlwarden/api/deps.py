"""FastAPI dependencies: the registry behind the app, and the authenticated caller of each request.

Authentication is the only thing the API decides about a caller: it turns the bearer token into a
:class:`~mlwarden.registry.roles.Principal` with :meth:`Registry.authenticate`. Whether that principal may do
what it asks is decided by the service method the endpoint calls — the API never checks roles itself, so the
CLI and the API can never disagree.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from mlwarden.http.auth import MAX_TOKEN_LENGTH, bearer
from mlwarden.http.errors import CHALLENGE, CHALLENGE_INVALID, ApiError, error_response
from mlwarden.http.limits import Limits
from mlwarden.registry.db import DatabaseError
from mlwarden.registry.errors import AuthError
from mlwarden.registry.roles import Principal
from mlwarden.registry.service import Registry

#: Every path under this prefix needs a token; it is checked before anything reads the request body.
PROTECTED_PREFIX = "/v1/"
#: Seconds a rate-limited client is told to wait.
RETRY_AFTER_S = 60


def get_registry(request: Request) -> Registry:
    """The registry the app was created over."""
    registry: Registry = request.app.state.registry
    return registry


def get_limits(request: Request) -> Limits:
    """The app's limits."""
    limits: Limits = request.app.state.limits
    return limits


class AuthenticateFirst:
    """ASGI middleware: authenticate every ``/v1/`` request before its body is read or parsed.

    A malformed body without a token is a 401, not a 422 (nothing about a request is looked at for an anonymous
    caller), and an upload never streams to disk for one. A client whose failed authentications exceeded the
    registry's limit in the current window gets 429 without a token lookup (:mod:`mlwarden.registry._refusals`).
    The principal is left in ``scope["state"]`` for :func:`authenticate`.
    """

    def __init__(self, app: ASGIApp, registry: Registry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate, then hand on (or answer 401/429/503 at once)."""
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else None
        refusals = self.registry.refusals
        token = _bearer(scope)
        if refusals is not None and refusals.limited(client):
            refusals.record(client, "too many failed authentications")
            headers = {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}
            message = "too many failed authentications from this client: try again later"
            await error_response(429, "too_many_requests", message, headers)(scope, receive, send)
            return
        if not token:
            message = "missing bearer token (Authorization: Bearer mlw_...)"
            response = error_response(401, "unauthenticated", message, {"WWW-Authenticate": CHALLENGE})
        elif len(token) > MAX_TOKEN_LENGTH:
            if refusals is not None:
                refusals.record(client, "invalid token: too long")
            response = error_response(401, "unauthenticated", "invalid token", {"WWW-Authenticate": CHALLENGE_INVALID})
        else:
            try:
                principal = await run_in_threadpool(self.registry.authenticate, token, client=client)
            except AuthError as exc:
                response = error_response(401, "unauthenticated", str(exc), {"WWW-Authenticate": CHALLENGE_INVALID})
            except DatabaseError:
                message = "the registry database is unavailable; try again later"
                response = error_response(503, "database_unavailable", message)
            else:
                scope.setdefault("state", {})["principal"] = principal
                await self.app(scope, receive, send)
                return
        await response(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def authenticate(
    request: Request,
    registry: Annotated[Registry, Depends(get_registry)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>`` (already checked by :class:`AuthenticateFirst`).

    Raises:
        ApiError: 401 when the header is missing or not a bearer token.
        AuthError: 401 (from the service) when the token is unknown, expired or revoked, or the user disabled.
    """
    known = getattr(request.state, "principal", None)
    if isinstance(known, Principal):
        return known
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthenticated", "missing bearer token (Authorization: Bearer mlw_...)", CHALLENGE)
    token = credentials.credentials.strip()
    if len(token) > MAX_TOKEN_LENGTH:
        raise ApiError(401, "unauthenticated", "invalid token", CHALLENGE_INVALID)
    return registry.authenticate(token, client=request.client.host if request.client else None)


RegistryDep = Annotated[Registry, Depends(get_registry)]
Actor = Annotated[Principal, Depends(authenticate)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
