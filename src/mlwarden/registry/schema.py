"""Imports every table module so that ``Base.metadata`` holds the whole schema (Alembic and tests use it)."""

from __future__ import annotations

from mlwarden.registry import models  # noqa: F401
from mlwarden.registry.audit import tables  # noqa: F401
from mlwarden.registry.db import Base

__all__ = ["Base"]
