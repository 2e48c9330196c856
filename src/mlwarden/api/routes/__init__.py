"""The API's routers, one per area: models and versions, lifecycle actions, users/tokens/audit."""

from __future__ import annotations

from typing import Any

from mlwarden.api.schemas import ErrorBody

_DESCRIPTIONS = {
    401: "missing, unknown, expired or revoked token",
    403: "the caller's roles do not allow this",
    404: "no such model, version, alias, user or token",
    409: "the version's state does not allow this, a policy gate refused it, or a name is taken",
    413: "the request body is larger than the configured limit",
    415: "the body is not of the expected media type",
    422: "malformed request: bad JSON, a missing or invalid field, an invalid name",
    503: "the registry database is unavailable",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses an endpoint can answer (every one has :class:`ErrorBody`)."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}
