"""FastAPI dependencies: the registry behind the app, and the authenticated caller of each request.

Authentication is the only thing the API decides about a caller: it turns the bearer token into a
:class:`~mlwarden.registry.roles.Principal` with :meth:`Registry.authenticate`. Whether that principal may do
what it asks is decided by the service method the endpoint calls — the API never checks roles itself, so the
CLI and the API can never disagree.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mlwarden.api.errors import CHALLENGE, CHALLENGE_INVALID, ApiError
from mlwarden.api.limits import Limits
from mlwarden.registry.roles import Principal
from mlwarden.registry.service import Registry

#: Longest ``Authorization`` value worth hashing; real tokens are 47 characters.
MAX_TOKEN_LENGTH = 256

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token issued by an admin (`POST /v1/users/{name}/tokens` or the CLI): "
    "`Authorization: Bearer mlw_...`",
)


def get_registry(request: Request) -> Registry:
    """The registry the app was created over."""
    registry: Registry = request.app.state.registry
    return registry


def get_limits(request: Request) -> Limits:
    """The app's limits."""
    limits: Limits = request.app.state.limits
    return limits


def authenticate(
    registry: Annotated[Registry, Depends(get_registry)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``.

    Raises:
        ApiError: 401 when the header is missing or not a bearer token.
        AuthError: 401 (from the service) when the token is unknown, expired or revoked, or the user disabled.
    """
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthenticated", "missing bearer token (Authorization: Bearer mlw_...)", CHALLENGE)
    token = credentials.credentials.strip()
    if len(token) > MAX_TOKEN_LENGTH:
        raise ApiError(401, "unauthenticated", "invalid token", CHALLENGE_INVALID)
    return registry.authenticate(token)


RegistryDep = Annotated[Registry, Depends(get_registry)]
Actor = Annotated[Principal, Depends(authenticate)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
