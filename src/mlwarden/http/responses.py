"""The body of every error response and its OpenAPI description, for the registry API and the guard alike."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class FailedCheck(_Response):
    """One rule of a policy gate that refused a transition."""

    rule: str = Field(description="the gate rule's name, e.g. `signature_required`")
    detail: str = Field(description="why it failed")


class FieldProblem(_Response):
    """One problem with the request (a field missing, of the wrong type, out of range)."""

    location: list[str | int] = Field(description="where: `body`, `path`, `query` then the field names")
    message: str
    type: str = Field(description="pydantic's error type, e.g. `missing`, `extra_forbidden`")


class ErrorDetail(_Response):
    """What went wrong: a stable machine-readable code and a one-line message for people."""

    code: str = Field(
        description="unauthenticated, forbidden, not_found, invalid_transition, gate_refused, conflict, "
        "invalid_input, payload_too_large, database_unavailable, internal_error, ..."
    )
    message: str
    failed: list[FailedCheck] | None = Field(default=None, description="gate_refused only: every failed rule")
    problems: list[FieldProblem] | None = Field(default=None, description="invalid_input from validation only")


class ErrorBody(_Response):
    """The body of every error response."""

    error: ErrorDetail


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
