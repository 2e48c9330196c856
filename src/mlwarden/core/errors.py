"""Exceptions that cross module boundaries. Each maps to a one-line user-facing message in the CLI."""

from __future__ import annotations


class MlwardenError(Exception):
    """Base class: an error the user can act on. The CLI prints ``str(exc)`` and exits 2."""


class PolicyError(MlwardenError):
    """The policy file is missing, malformed or invalid."""


class UsageError(MlwardenError):
    """Bad arguments (wrong path, unknown format, ...)."""


class LimitExceeded(MlwardenError):  # noqa: N818 - it is a signal, not a bug
    """A configured limit (size, depth, time, count) was reached while analysing an artifact.

    Handlers raise it; the engine turns it into an "analysis incomplete" finding and moves on.
    """

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"{limit} exceeded: {detail}")
        self.limit = limit
        self.detail = detail
