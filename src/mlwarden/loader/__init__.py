"""The enforcing safe loader: load a model only after analysing exactly the bytes that are loaded.

``mlwarden.load(path)`` copies the model into a private directory (hashing it), scans the copy statically
and in the sandbox, raises :class:`UnsafeModelError` with the findings if any reaches the policy's failing
severity, and otherwise loads the copy — pickle-family formats through a restricted unpickler that admits
only allowlisted globals. See ``docs/loader.md``.
"""

from __future__ import annotations

from mlwarden.core.errors import UnsafeModelError
from mlwarden.loader.restricted import RestrictedUnpickler, pickle_module, restricted_load, restricted_loads
from mlwarden.loader.safe import detect_framework, load

__all__ = [
    "RestrictedUnpickler",
    "UnsafeModelError",
    "detect_framework",
    "load",
    "pickle_module",
    "restricted_load",
    "restricted_loads",
]
