"""Errors of the integrity stage: bad model paths, unusable key files, signatures that do not verify."""

from __future__ import annotations

from collections.abc import Iterable

from mlwarden.core.errors import MlwardenError


class ModelPathError(MlwardenError):
    """A model path cannot be hashed: missing, unreadable, a symbolic link or a special file inside it."""


class KeyFileError(MlwardenError):
    """A key or certificate file cannot be used: missing, not PEM, wrong password, unsupported key type."""


class VerificationError(MlwardenError):
    """A signature (or the model it covers) does not verify.

    Attributes:
        problems: every problem found, one line each ("file changed: ...", "signature does not verify ...").
            The message is the first problem plus a count, so the CLI's one-line error stays one line.
    """

    def __init__(self, problems: str | Iterable[str]) -> None:
        items = (problems,) if isinstance(problems, str) else tuple(problems)
        if not items:
            items = ("verification failed",)
        self.problems: tuple[str, ...] = items
        more = f" (and {len(items) - 1} more problem(s))" if len(items) > 1 else ""
        super().__init__(items[0] + more)
