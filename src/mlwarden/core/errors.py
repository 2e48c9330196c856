"""Exceptions that cross module boundaries. Each maps to a one-line user-facing message in the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlwarden.core.findings import Finding


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


class UnsafeModelError(MlwardenError):
    """:func:`mlwarden.load` refused a model: its analysis (or the restricted loader) found something unsafe.

    Attributes:
        findings: the findings that made the model fail (worst first), as :class:`~mlwarden.core.findings.Finding`.
        digest: SHA-256 (hex) of the exact bytes that were analysed (for a folder: of its sorted manifest).
    """

    def __init__(self, message: str, findings: tuple[Finding, ...] = (), digest: str | None = None) -> None:
        super().__init__(message)
        self.findings = findings
        self.digest = digest
