"""Every failure has the error shape, the right status, and no traceback: 404, 409, 413, 415, 422, 500, 503."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlwarden.api import Limits, create_app
from mlwarden.registry.audit import AuditLog
from mlwarden.registry.db import Database, DatabaseError
from mlwarden.registry.gates import Gates
from mlwarden.registry.service import Registry
from tests.api.conftest import Users, assert_error, make_malicious, upload


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/nope/versions",
        "/v1/models/nope/versions/1",
        "/v1/models/fraud/versions/9",
        "/v1/models/fraud/aliases/production",
        "/v1/resolve/fraud@staging",
        "/v1/models/fraud/versions/9/bom",
    ],
)
def test_unknown_things_are_404(client: TestClient, users: Users, model_file: Path, path: str) -> None:
    assert upload(client, "fraud", model_file, users.submitter).status_code == 201
    assert_error(client.get(path, headers=users.viewer), 404, "not_found")


def test_unknown_route_and_method(client: TestClient, users: Users) -> None:
    assert_error(client.get("/v1/nothing-here", headers=users.viewer), 404, "not_found")
    assert_error(client.delete("/v1/models", headers=users.viewer), 405, "method_not_allowed")


def test_unknown_token_id_and_user_are_404(client: TestClient, users: Users) -> None:
    assert_error(client.delete("/v1/tokens/99999", headers=users.admin), 404, "not_found")
    assert_error(client.post("/v1/users/ghost/tokens", json={}, headers=users.admin), 404, "not_found")


def test_conflicts_and_invalid_transitions_are_409(client: TestClient, users: Users, model_file: Path) -> None:
    again = client.post("/v1/users", json={"username": "alice", "roles": ["viewer"]}, headers=users.admin)
    assert_error(again, 409, "conflict")
    assert upload(client, "fraud", model_file, users.submitter).status_code == 201
    # received -> deployed skips scan and approval.
    deploy = client.post("/v1/models/fraud/versions/1/deploy", json={"alias": "production"}, headers=users.deployer)
    error = assert_error(deploy, 409, "invalid_transition")
    assert "received" in error["message"]
    approve = client.post("/v1/models/fraud/versions/1/approve", headers=users.approver)
    assert_error(approve, 409, "invalid_transition")


def test_gate_refusal_lists_each_failed_rule(client: TestClient, users: Users, tmp_path: Path) -> None:
    bad = make_malicious(tmp_path / "model.pkl")
    assert upload(client, "risky", bad, users.submitter).status_code == 201
    scanned = client.post("/v1/models/risky/versions/1/scan", json={"modes": ["static"]}, headers=users.submitter)
    assert scanned.status_code == 200, scanned.text
    refused = client.post("/v1/models/risky/versions/1/approve", headers=users.approver)
    error = assert_error(refused, 409, "gate_refused")
    assert error["failed"], error
    assert all(set(check) == {"rule", "detail"} for check in error["failed"])
    # The approve gate's fail_on rule: the registry's own scan found something at or above "medium".
    assert "fail_on" in {check["rule"] for check in error["failed"]}
    assert "fail_on" in error["message"]
    assert client.get("/v1/models/risky/versions/1", headers=users.viewer).json()["state"] == "scanned"


def test_deploy_gate_refuses_an_alias_outside_the_allowed_list(
    client: TestClient, users: Users, model_file: Path
) -> None:
    assert upload(client, "fraud", model_file, users.submitter).status_code == 201
    client.post("/v1/models/fraud/versions/1/scan", json={"modes": ["static"]}, headers=users.submitter)
    assert client.post("/v1/models/fraud/versions/1/approve", headers=users.approver).status_code == 200
    refused = client.post("/v1/models/fraud/versions/1/deploy", json={"alias": "canary"}, headers=users.deployer)
    error = assert_error(refused, 409, "gate_refused")
    assert "allowed_aliases" in {check["rule"] for check in error["failed"]}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{"alias": ', "body"),  # malformed JSON
        ("{}", "alias"),  # missing field
        ('{"alias": "production", "force": true}', "force"),  # unknown field
        ('{"alias": 7}', "alias"),  # wrong type
        ('{"alias": "../etc"}', "alias"),  # unsafe name
        ('{"alias": "a..b"}', "alias"),  # refused by the service's name check
        ('["production"]', "body"),  # not an object
    ],
)
def test_bad_json_is_422_naming_the_field(client: TestClient, users: Users, body: str, where: str) -> None:
    response = client.post(
        "/v1/models/fraud/versions/1/deploy",
        content=body,
        headers={**users.deployer, "Content-Type": "application/json"},
    )
    error = assert_error(response, 422, "invalid_input")
    assert any(where in [str(p) for p in problem["location"]] for problem in error["problems"]), error
    assert "production" not in str(error["problems"]) or where == "force", "input values are never echoed"


@pytest.mark.parametrize(
    ("path", "params"),
    [("/v1/models/fraud/versions/0", {}), ("/v1/models/fraud/versions/one", {}), ("/v1/audit", {"limit": 0})],
)
def test_bad_path_or_query_is_422(client: TestClient, users: Users, path: str, params: dict[str, int]) -> None:
    assert_error(client.get(path, params=params, headers=users.viewer), 422, "invalid_input")


@pytest.mark.parametrize("name", ["a..b", "-dash", "x" * 101, "sp ace"])
def test_invalid_model_name_is_422_before_the_upload_is_read(
    client: TestClient, users: Users, model_file: Path, name: str
) -> None:
    assert_error(upload(client, name, model_file, users.submitter), 422, "invalid_input")


def test_invalid_reference_is_422(client: TestClient, users: Users) -> None:
    assert_error(client.get("/v1/resolve/fraud", headers=users.viewer), 422, "invalid_input")


def test_database_outage_is_503_without_details(
    client: TestClient, users: Users, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_args: object, **_kwargs: object) -> None:
        raise DatabaseError("database postgresql+psycopg://mlwarden:***@db.internal:5432/reg is unavailable")

    monkeypatch.setattr(registry, "list_models", down)
    response = client.get("/v1/models", headers=users.viewer)
    assert_error(response, 503, "database_unavailable")
    assert "db.internal" not in response.text


def test_healthz_is_503_when_the_database_is_down(tmp_path: Path) -> None:
    # A PostgreSQL URL on a port nothing listens on: connecting fails at once (no server to reach).
    dead = Database("postgresql+psycopg://nobody@127.0.0.1:9/none", lock_timeout=1)
    registry = Registry(dead, home_dir=tmp_path / "home", gates=Gates(), audit=AuditLog(dead))
    with TestClient(create_app(registry)) as client:
        response = client.get("/healthz")
    error = assert_error(response, 503, "database_unavailable")
    assert "127.0.0.1" not in error["message"]
    assert "nobody" not in response.text


def test_unexpected_errors_are_a_generic_500(
    registry: Registry, users: Users, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internal detail /srv/keys/admin.pem")

    monkeypatch.setattr(registry, "list_models", broken)
    with TestClient(create_app(registry), raise_server_exceptions=False) as client:
        response = client.get("/v1/models", headers=users.viewer)
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in response.text
    assert "RuntimeError" not in response.text
    reference = error["message"].rsplit(" ", 1)[-1].rstrip(")")
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records), "logged server-side"


@pytest.fixture
def small_client(registry: Registry) -> Iterator[TestClient]:
    limits = Limits(max_upload_bytes=4096, max_body_bytes=512)
    with TestClient(create_app(registry, limits=limits)) as client:
        yield client


def test_upload_over_the_limit_is_413_and_registers_nothing(
    small_client: TestClient, users: Users, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00" * 10_000)
    error = assert_error(upload(small_client, "fraud", big, users.submitter), 413, "payload_too_large")
    assert "4 KiB" in error["message"]
    assert small_client.get("/v1/models", headers=users.viewer).json() == []


def test_chunked_upload_is_cut_off_at_the_limit(small_client: TestClient, users: Users) -> None:
    sent = []

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="model"; filename="m.bin"\r\n\r\n'
        for _ in range(100):  # 100 KiB in all, no Content-Length
            sent.append(1)
            yield b"\x00" * 1024
        yield b"\r\n--b--\r\n"

    response = small_client.post(
        "/v1/models/fraud/versions",
        content=body(),
        headers={**users.submitter, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 413, "payload_too_large")
    assert small_client.get("/v1/models", headers=users.viewer).json() == []


def test_json_body_over_the_limit_is_413(small_client: TestClient, users: Users) -> None:
    response = small_client.post(
        "/v1/models/fraud/versions/1/quarantine", json={"reason": "x" * 1000}, headers=users.deployer
    )
    assert_error(response, 413, "payload_too_large")
