"""Authentication (401), role refusals from the service (403), and tokens issued and revoked over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import Users, assert_error, bearer, upload


def test_healthz_needs_no_token(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["database"] == "ok"


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="mlwarden"'),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, 'Bearer realm="mlwarden"'),
        ({"Authorization": "Bearer "}, 'Bearer realm="mlwarden"'),
        ({"Authorization": "Bearer mlw_" + "A" * 43}, 'Bearer realm="mlwarden", error="invalid_token"'),
        ({"Authorization": "Bearer not-a-token"}, 'Bearer realm="mlwarden", error="invalid_token"'),
        ({"Authorization": "Bearer " + "x" * 5000}, 'Bearer realm="mlwarden", error="invalid_token"'),
    ],
    ids=["none", "basic", "empty", "unknown", "malformed", "huge"],
)
def test_requests_without_a_valid_token_are_401(
    client: TestClient, users: Users, headers: dict[str, str], challenge: str
) -> None:
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/models/fraud/versions/1/approve"), ("GET", "/v1/audit")):
        response = client.request(method, path, headers=headers)
        assert_error(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == challenge


def test_revoked_token_is_refused_from_the_next_request(client: TestClient, users: Users) -> None:
    issued = client.post("/v1/users/vera/tokens", json={"name": "laptop", "expires_in_days": 1}, headers=users.admin)
    assert issued.status_code == 201
    assert issued.headers["cache-control"] == "no-store"
    token = issued.json()
    assert token["token"].startswith("mlw_")
    assert token["username"] == "vera"
    assert token["expires_at"]
    assert client.get("/v1/whoami", headers=bearer(token["token"])).json()["username"] == "vera"

    listed = client.get("/v1/tokens", params={"username": "vera"}, headers=users.admin)
    assert listed.status_code == 200
    assert token["id"] in {t["id"] for t in listed.json()}
    assert token["token"] not in listed.text, "a listing never shows a secret"

    revoked = client.delete(f"/v1/tokens/{token['id']}", headers=users.admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["id"] == token["id"]
    assert revoked.json()["revoked_at"]
    assert_error(client.get("/v1/whoami", headers=bearer(token["token"])), 401, "unauthenticated")
    # vera's other token (from the fixture) still works.
    assert client.get("/v1/whoami", headers=users.viewer).status_code == 200


def test_disabled_user_loses_access(client: TestClient, users: Users) -> None:
    disabled = client.post("/v1/users/vera/disable", headers=users.admin)
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["disabled"] is True
    assert_error(client.get("/v1/models", headers=users.viewer), 401, "unauthenticated")


def test_whoami_reports_roles(client: TestClient, users: Users) -> None:
    me = client.get("/v1/whoami", headers=users.approver).json()
    assert (me["username"], me["roles"]) == ("bob", ["approver"])
    assert isinstance(me["token_id"], int)


@pytest.mark.parametrize(
    ("who", "method", "path", "body"),
    [
        ("viewer", "POST", "/v1/users", {"username": "mallory", "roles": ["admin"]}),
        ("submitter", "POST", "/v1/users/alice/tokens", {"name": "more"}),
        ("deployer", "PUT", "/v1/users/dave/roles", {"roles": ["admin"]}),
        ("approver", "DELETE", "/v1/tokens/1", None),
        ("viewer", "POST", "/v1/models/fraud/versions/1/scan", None),
        ("submitter", "POST", "/v1/models/fraud/versions/1/deploy", {"alias": "production"}),
        ("approver", "POST", "/v1/models/fraud/aliases/production/rollback", None),
        ("viewer", "POST", "/v1/models/fraud/versions/1/quarantine", {"reason": "because"}),
    ],
)
def test_roles_are_enforced_by_the_service(
    client: TestClient,
    users: Users,
    model_file: Path,
    who: str,
    method: str,
    path: str,
    body: dict | None,  # type: ignore[type-arg]
) -> None:
    assert upload(client, "fraud", model_file, users.submitter).status_code == 201
    response = client.request(method, path, json=body, headers=getattr(users, who))
    error = assert_error(response, 403, "forbidden")
    assert "needs role" in error["message"]


def test_viewer_cannot_upload(client: TestClient, users: Users, model_file: Path) -> None:
    assert_error(upload(client, "fraud", model_file, users.viewer), 403, "forbidden")
    assert client.get("/v1/models", headers=users.viewer).json() == []


def test_users_revoke_their_own_tokens_only(client: TestClient, users: Users) -> None:
    mine = client.get("/v1/tokens", headers=users.viewer).json()
    assert {t["username"] for t in mine} == {"vera"}
    others = client.get("/v1/tokens", params={"username": "root"}, headers=users.viewer)
    assert_error(others, 403, "forbidden")
    root_token = client.get("/v1/tokens", params={"username": "root"}, headers=users.admin).json()[0]["id"]
    assert_error(client.delete(f"/v1/tokens/{root_token}", headers=users.viewer), 403, "forbidden")
    assert client.delete(f"/v1/tokens/{mine[0]['id']}", headers=users.viewer).status_code == 200
    assert_error(client.get("/v1/whoami", headers=users.viewer), 401, "unauthenticated")


def test_admin_lists_users(client: TestClient, users: Users) -> None:
    listed = client.get("/v1/users", headers=users.admin)
    assert listed.status_code == 200
    assert {(u["username"], tuple(u["roles"])) for u in listed.json()} == {
        ("root", ("admin",)),
        ("alice", ("submitter",)),
        ("bob", ("approver",)),
        ("dave", ("deployer",)),
        ("vera", ("viewer",)),
    }
    assert_error(client.get("/v1/users", headers=users.viewer), 403, "forbidden")


def test_admin_manages_roles(client: TestClient, users: Users) -> None:
    updated = client.put("/v1/users/vera/roles", json={"roles": ["viewer", "approver"]}, headers=users.admin)
    assert updated.status_code == 200, updated.text
    assert updated.json()["roles"] == ["approver", "viewer"]
    assert client.get("/v1/whoami", headers=users.viewer).json()["roles"] == ["approver", "viewer"]


def test_scoped_tokens_stay_inside_their_model(client: TestClient, users: Users, model_file: Path) -> None:
    issued = client.post("/v1/users/alice/tokens", json={"scope": "model:fraud"}, headers=users.admin)
    assert issued.status_code == 201, issued.text
    assert issued.json()["scope"] == "model:fraud"
    scoped = bearer(issued.json()["token"])
    assert upload(client, "fraud", model_file, scoped).status_code == 201
    assert_error(upload(client, "churn", model_file, scoped), 403, "forbidden")
    assert_error(client.get("/v1/audit", headers=scoped), 403, "forbidden")
    assert_error(client.get("/v1/models", headers=scoped), 403, "forbidden")
    bad = client.post("/v1/users/alice/tokens", json={"scope": "user:root"}, headers=users.admin)
    assert_error(bad, 422, "invalid_input")
