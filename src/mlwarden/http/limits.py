"""Request size limits, enforced as the bytes arrive (never after buffering a whole body).

A declared ``Content-Length`` above the limit is refused before anything is read; a body without one (chunked)
or lying about it is cut off the moment the count passes the limit. Uploads get a large limit, every other
request a small one: a JSON body of a few hundred bytes never needs megabytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException

from mlwarden.http.errors import ASGIApp, Message, Receive, Scope, Send, error_response

GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10
#: Paths that accept a model upload (the large limit applies to POSTs there).
UPLOAD_PATH = re.compile(r"^/v1/models/[^/]+/versions/?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Limits of the HTTP API; every one is configurable (``mlwarden api serve --max-upload ...``).

    Attributes:
        max_upload_bytes: whole multipart body of a model upload (model files plus attachments).
        max_body_bytes: any other request body (JSON).
        max_upload_files: file parts in one upload (a folder model sends one part per file).
        max_field_bytes: one text field of an upload (``framework``, ``description``).
        upload_dir: where uploads are staged before the registry copies them (default: the system's temp dir);
            put it on the same disk as the blob store with room for one upload per concurrent request.
        audit_page_max: most audit entries one ``GET /v1/audit`` returns.
    """

    max_upload_bytes: int = 2 * GiB
    max_body_bytes: int = 1 * MiB
    max_upload_files: int = 10_000
    max_field_bytes: int = 64 * KiB
    upload_dir: Path | None = None
    audit_page_max: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_body_bytes", "max_upload_files", "max_field_bytes", "audit_page_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def body_limit(self, method: str, path: str) -> int:
        """The byte limit of a request's body."""
        if method == "POST" and UPLOAD_PATH.match(path):
            return self.max_upload_bytes
        return self.max_body_bytes


def too_large(limit: int) -> HTTPException:
    """The 413 raised when a body passes ``limit`` (an HTTPException, so FastAPI's body reader lets it through)."""
    return HTTPException(413, f"request body larger than the limit of {describe_size(limit)}")


def describe_size(size: int) -> str:
    """``2 GiB``, ``1 MiB``, ``512 bytes``: limits as people write them."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def parse_size(text: str) -> int:
    """``2GiB``, ``500MiB``, ``64KiB``, ``1G``, ``1048576``: a size for a command-line option.

    Raises:
        ValueError: anything else, or a size below one byte.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 2GiB, 500MiB, 1048576)")
    value = int(match.group(1)) * {"": 1, "K": KiB, "M": MiB, "G": GiB}[match.group(2).upper()]
    if value < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return value


class BodyLimit:
    """ASGI middleware applying :meth:`Limits.body_limit` to every HTTP request."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an oversized declared length at once; count the bytes of everything else."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.body_limit(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            exc = too_large(limit)
            # Connection: close — we will not read the body, so the connection cannot be reused.
            response = error_response(413, "payload_too_large", str(exc.detail), {"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
