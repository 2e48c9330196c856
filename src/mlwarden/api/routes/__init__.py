"""The API's routers, one per area: models and versions, lifecycle actions, users/tokens/audit."""

from __future__ import annotations

from mlwarden.http.responses import errors

__all__ = ["errors"]
