"""The package's public names: each resolves to its defining module, and importing the package stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mlwarden.registry as registry
from mlwarden.registry import errors, roles, service, states, values

_PROBE = """
import json, sys
import mlwarden.registry
heavy = ("torch", "cyclonedx", "fastapi", "sqlalchemy", "mlwarden.registry.service")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy)))
"""


def test_importing_the_package_loads_no_heavy_module() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("Registry", service),
        ("Principal", roles),
        ("Role", roles),
        ("State", states),
        ("parse_ref", values),
        ("Ref", values),
        *[(n, errors) for n in ("AuthError", "PermissionDenied", "NotFound", "GateRefused", "BadInput", "Conflict")],
    ],
)
def test_public_names_are_the_defining_modules_objects(name: str, home: object) -> None:
    assert getattr(registry, name) is getattr(home, name)
    assert name in registry.__all__
    assert name in dir(registry)


def test_every_exported_name_resolves_and_unknown_names_do_not() -> None:
    assert all(getattr(registry, name) is not None for name in registry.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = registry.Nope
