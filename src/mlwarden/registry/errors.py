"""Errors of the registry service: each one is an :class:`MlwardenError` with a one-line message and an HTTP status.

The CLI prints the message and exits 2 (1 for a refused gate); the HTTP API maps ``http_status`` to the response
code, so both front ends tell the caller the same thing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from mlwarden.core.errors import MlwardenError

if TYPE_CHECKING:
    from mlwarden.registry.gates import GateCheck

__all__ = [
    "AuthError",
    "BadInput",
    "Conflict",
    "GateRefused",
    "InvalidTransition",
    "NotFound",
    "PermissionDenied",
    "RegistryError",
    "StorageError",
    "scrub_paths",
]

#: Absolute paths of the server's private working files: staged blobs and HTTP uploads (their folder names are
#: random, but they tell any reader of a 422 or of the audit log where the registry lives).
_PRIVATE_PATH = re.compile(
    r"(?:[A-Za-z]:)?[/\\][^\s'\"]*?(?:blobs[/\\]tmp|mlwarden-upload-|mlwarden-serve-)[^\s'\":,;)]*"
)


def scrub_paths(text: str) -> str:
    """``text`` with the server's staging and upload paths replaced by the file's own name (or ``<staged>``)."""

    def short(match: re.Match[str]) -> str:
        path = match.group(0).rstrip(".")
        tail = path[len(path.rstrip("/\\")) :]
        name = re.split(r"[/\\]", path.rstrip("/\\"))[-1]
        hidden = "blobs" in path and ("tmp/" in path or "tmp\\" in path)
        upload_dir = re.search(r"mlwarden-(?:upload|serve)-[^/\\]*$", path.rstrip("/\\")) is not None
        return ("<staged>" if hidden or upload_dir or not name else name) + tail + match.group(0)[len(path) :]

    return _PRIVATE_PATH.sub(short, text)


class RegistryError(MlwardenError):
    """Base of every registry refusal; ``http_status`` is what the HTTP API answers with."""

    http_status: ClassVar[int] = 400


class AuthError(RegistryError):
    """The caller could not be identified: unknown, expired or revoked token, disabled user, failed bootstrap."""

    http_status = 401


class PermissionDenied(RegistryError):  # noqa: N818 - the name says what happened, as HTTP does
    """The caller is known but none of their roles grants the action.

    Attributes:
        permission: the permission that was needed (e.g. ``"approve"``).
        roles_needed: the roles that would grant it, so the message says whom to ask.
    """

    http_status = 403

    def __init__(self, message: str, *, permission: str = "", roles_needed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.permission = permission
        self.roles_needed = roles_needed


class NotFound(RegistryError):  # noqa: N818
    """No such model, version, alias, user or token."""

    http_status = 404


class InvalidTransition(RegistryError):  # noqa: N818
    """The version's lifecycle state does not allow the action (e.g. deploying a version that is only scanned)."""

    http_status = 409


class Conflict(RegistryError):  # noqa: N818
    """The name is taken (user, model) or a concurrent writer won a race that retrying could not settle."""

    http_status = 409


class BadInput(RegistryError):  # noqa: N818
    """A malformed argument: a bad name, reference, role, duration, or a file that cannot be read."""

    http_status = 422


class GateRefused(RegistryError):  # noqa: N818
    """A policy gate refused a transition.

    Attributes:
        gate: ``"approve"`` or ``"deploy"``.
        subject: the version reference (``fraud:3``).
        failed: every failed check, in evaluation order; the message names each rule and why.
    """

    http_status = 409

    def __init__(self, gate: str, subject: str, failed: tuple[GateCheck, ...]) -> None:
        self.gate = gate
        self.subject = subject
        self.failed = failed
        rules = "; ".join(f"{check.rule}: {check.detail}" for check in failed)
        super().__init__(f"gate {gate!r} refused {subject}: {len(failed)} rule(s) failed: {rules}")


class StorageError(RegistryError):
    """The blob store cannot be read or written, or a stored blob no longer matches its digest."""

    http_status = 500
