"""Regressions of the security review 2027-01 over HTTP: refusal floods, auth before parsing, overflows, paths.

Items 3 (failed authentication flooded the audit log: one client wrote ~5,500 rows in 10 s) and 6 (huge integer
path parameters gave 500, server paths in 422 bodies and audit reasons, JSON parsed before authentication).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlwarden.registry.service import Registry

from .conftest import Users, assert_error, bearer


def test_2000_bad_tokens_write_a_bounded_number_of_rows_with_the_right_counts(
    client: TestClient, registry: Registry
) -> None:
    before = registry.audit().size()
    statuses: dict[int, int] = {}
    for i in range(2000):
        response = client.get("/v1/models", headers=bearer(f"mlw_{i:043d}"))
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert set(statuses) <= {401, 429}
    assert statuses.get(429, 0) > 0  # the flood is rate limited: no token lookup for the rest of the window
    refusals = registry.refusals
    assert refusals is not None
    refusals.flush()  # the window closes (as it does on its own after 60 s, or at shutdown)
    rows = list(registry.audit().entries(before))
    assert len(rows) <= 4, [(r.action, r.reason) for r in rows]
    summary = [r for r in rows if r.action == "auth.summary"]
    assert len(summary) == 1
    details = summary[0].details
    assert details["total"] == 2000
    counted = {(c["client"], c["reason"]): c["count"] for c in details["counts"]}
    assert counted == {("testclient", "invalid"): statuses[401], ("testclient", "rate_limited"): statuses[429]}
    firsts = [r for r in rows if r.action == "auth"]
    assert {r.details["reason"] for r in firsts} == {"invalid", "rate_limited"}


def test_a_good_token_from_another_client_is_not_rate_limited(client: TestClient, users: Users) -> None:
    for i in range(150):
        client.get("/v1/models", headers=bearer(f"mlw_{i:043d}"))
    other = TestClient(client.app, client=("192.0.2.7", 5000))
    assert other.get("/v1/whoami", headers=users.viewer).status_code == 200
    assert_error(client.get("/v1/whoami", headers=users.viewer), 429, "too_many_requests")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/fraud/versions/99999999999999999999999",
        "/v1/models/fraud/versions/1/attachments/99999999999999999999999",
        "/v1/resolve/fraud:99999999999999999999999",
        "/v1/tokens/99999999999999999999999",
    ],
)
def test_huge_integers_in_paths_are_4xx_not_500(client: TestClient, users: Users, path: str) -> None:
    method = client.delete if path.startswith("/v1/tokens/") else client.get
    response = method(path, headers=users.admin)
    assert response.status_code in (404, 422), response.text
    assert "Traceback" not in response.text


def test_malformed_json_without_a_token_is_401_not_422(client: TestClient) -> None:
    response = client.post("/v1/users", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(response, 401, "unauthenticated")
    response = client.post(
        "/v1/users", content=b"{not json", headers={"Content-Type": "application/json", **bearer("mlw_" + "0" * 43)}
    )
    assert_error(response, 401, "unauthenticated")


def test_server_paths_never_reach_422_bodies_or_the_audit_log(
    client: TestClient, users: Users, registry: Registry, tmp_path: Path
) -> None:
    files = [("model", ("w.npy", b"\x93NUMPY" + b"0" * 100)), ("signature", ("broken.sig", b"{not json"))]
    response = client.post("/v1/models/fraud/versions", files=files, headers=users.submitter)
    error = assert_error(response, 422, "invalid_input")
    for leak in ("mlwarden-upload-", "blobs/tmp", str(tmp_path)):
        assert leak not in response.text
    assert "broken.sig" in error["message"]
    audit = client.get("/v1/audit", params={"limit": 5}, headers=users.viewer)
    assert audit.status_code == 200
    for leak in ("mlwarden-upload-", "blobs/tmp", str(tmp_path)):
        assert leak not in audit.text


@pytest.mark.parametrize("name", ["Alice", "ALICE"])
def test_user_names_differing_only_in_case_are_refused(client: TestClient, users: Users, name: str) -> None:
    response = client.post("/v1/users", json={"username": name, "roles": ["viewer"]}, headers=users.admin)
    assert_error(response, 409, "conflict")
    assert "differs only in case" in response.json()["error"]["message"]


@pytest.mark.parametrize("text", ["release\u202egnp.exe", "zero\u200bwidth", "bell\x07"])
def test_control_and_format_characters_are_refused(client: TestClient, users: Users, text: str) -> None:
    issued = client.post("/v1/users/vera/tokens", json={"name": text}, headers=users.admin)
    assert issued.status_code == 422, issued.text
    assert "U+" in issued.json()["error"]["message"]
