"""Fixtures of the HTTP API tests: a real Registry (SQLite and PostgreSQL), users with tokens, a client.

The database fixtures come from tests/registry/conftest.py, so every API test runs on both databases.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mlwarden.api import Limits, create_app
from mlwarden.registry.audit import CheckpointSigner
from mlwarden.registry.db import Database
from mlwarden.registry.service import Registry
from tests.registry.conftest import database, db_url  # noqa: F401 - fixtures used by name

#: Approve needs a clean static scan by the registry; deploy re-hashes the stored bytes. No signature is
#: required here (signing has its own tests); the gate-refusal tests turn rules on explicitly.
GATES = """
[approve]
scan_required = true
scan_modes = ["static"]
fail_on = "medium"
signature_required = false
dataset_manifest_required = false

[deploy]
verify_digest = true
signature_required = false
allowed_aliases = ["staging", "production"]
"""


@dataclass(frozen=True)
class Users:
    """Bearer headers of one user per role (the admin bootstrapped, the others created over HTTP)."""

    admin: dict[str, str]
    submitter: dict[str, str]
    approver: dict[str, str]
    deployer: dict[str, str]
    viewer: dict[str, str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def open_registry(db: Database, home: Path, gates: str = GATES) -> Registry:
    """A registry over ``db`` with ``gates`` and a fresh audit checkpoint key, all beside ``home``."""
    gates_file = home.parent / f"{home.name}-gates.toml"
    gates_file.write_text(gates, encoding="utf-8")
    signer = CheckpointSigner.generate(home.parent / f"{home.name}-audit.key")
    return Registry.open(db.url, home=home, gates=gates_file, audit_signer=signer)


@pytest.fixture
def registry(database: Database, tmp_path: Path) -> Iterator[Registry]:  # noqa: F811 - the imported fixture
    reg = open_registry(database, tmp_path / "home")
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    """Where the app stages uploads (empty again after every request)."""
    folder = tmp_path / "staging"
    folder.mkdir()
    return folder


@pytest.fixture
def client(registry: Registry, staging: Path) -> Iterator[TestClient]:
    limits = Limits(max_upload_bytes=8 << 20, upload_dir=staging)
    with TestClient(create_app(registry, limits=limits)) as test_client:
        yield test_client


@pytest.fixture
def users(client: TestClient, registry: Registry) -> Users:
    return make_users(client, registry)


def make_users(client: TestClient, registry: Registry) -> Users:
    """Bootstrap ``root`` (admin), then create alice, bob, dave and vera with a token each over HTTP."""
    admin = bearer(registry.bootstrap("root").token)
    headers = {}
    for name, role in (("alice", "submitter"), ("bob", "approver"), ("dave", "deployer"), ("vera", "viewer")):
        created = client.post("/v1/users", json={"username": name, "roles": [role]}, headers=admin)
        assert created.status_code == 201, created.text
        issued = client.post(f"/v1/users/{name}/tokens", json={"name": "test"}, headers=admin)
        assert issued.status_code == 201, issued.text
        headers[role] = bearer(issued.json()["token"])
    return Users(admin=admin, **headers)


def make_model(path: Path, seed: int = 0) -> Path:
    """A small benign model: a NumPy array of weights (no pickled objects)."""
    np.save(path, np.random.default_rng(seed).standard_normal((16, 8)).astype(np.float32), allow_pickle=False)
    return path


def make_malicious(path: Path) -> Path:
    """A pickle that would call ``os.system`` when loaded (it is only scanned here, never loaded)."""

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return os.system, ("true",)

    path.write_bytes(pickle.dumps(Payload(), protocol=2))
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return make_model(tmp_path / "weights.npy")


def upload(client: TestClient, name: str, path: Path, headers: dict[str, str], **form: str):  # type: ignore[no-untyped-def]
    with path.open("rb") as handle:
        return client.post(
            f"/v1/models/{name}/versions",
            files=[("model", (path.name, handle, "application/octet-stream"))],
            data=form,
            headers=headers,
        )


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """The response is the API's error shape with ``status`` and ``code``, and leaks no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    return body["error"]
