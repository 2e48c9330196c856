"""The gated model registry: versions, their evidence and lifecycle, users, scoped tokens, the audit log.

The public surface is small: open a :class:`Registry`, authenticate a token into a :class:`Principal`, and call
its methods with that principal; every refusal is a :class:`RegistryError` subclass. The names are loaded on
first use (PEP 562), so importing a light module such as :mod:`mlwarden.registry.values` does not pull in the
service and its database layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlwarden.registry.db import DatabaseError
    from mlwarden.registry.errors import (
        AuthError,
        BadInput,
        Conflict,
        GateRefused,
        InvalidTransition,
        NotFound,
        PermissionDenied,
        RegistryError,
        StorageError,
    )
    from mlwarden.registry.roles import Principal, Role
    from mlwarden.registry.service import Registry
    from mlwarden.registry.states import State
    from mlwarden.registry.values import Ref, parse_ref

__all__ = [
    "AuthError",
    "BadInput",
    "Conflict",
    "DatabaseError",
    "GateRefused",
    "InvalidTransition",
    "NotFound",
    "PermissionDenied",
    "Principal",
    "Ref",
    "Registry",
    "RegistryError",
    "Role",
    "State",
    "StorageError",
    "parse_ref",
]

#: Where each public name lives.
_HOMES = {
    "AuthError": "errors",
    "BadInput": "errors",
    "Conflict": "errors",
    "DatabaseError": "db",
    "GateRefused": "errors",
    "InvalidTransition": "errors",
    "NotFound": "errors",
    "PermissionDenied": "errors",
    "Principal": "roles",
    "Ref": "values",
    "Registry": "service",
    "RegistryError": "errors",
    "Role": "roles",
    "State": "states",
    "StorageError": "errors",
    "parse_ref": "values",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
