"""The whole lifecycle through HTTP, with separate users per role, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import Users, assert_error, bearer, make_model, upload


def _version(client: TestClient, headers: dict[str, str], name: str, version: int) -> dict:  # type: ignore[type-arg]
    response = client.get(f"/v1/models/{name}/versions/{version}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _ready(client: TestClient, users: Users, path: Path, name: str = "fraud") -> int:
    """Upload (submitter), scan (submitter) and approve (approver); the version number."""
    created = upload(client, name, path, users.submitter)
    assert created.status_code == 201, created.text
    number = created.json()["version"]
    scanned = client.post(
        f"/v1/models/{name}/versions/{number}/scan", json={"modes": ["static"]}, headers=users.submitter
    )
    assert scanned.status_code == 200, scanned.text
    approved = client.post(
        f"/v1/models/{name}/versions/{number}/approve", json={"comment": "looks fine"}, headers=users.approver
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "approved"
    return int(number)


def test_register_scan_approve_deploy_rollback(client: TestClient, users: Users, tmp_path: Path) -> None:
    first = make_model(tmp_path / "weights.npy", seed=1)
    created = upload(client, "fraud", first, users.submitter, framework="numpy", description="v1")
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["model"], body["version"], body["ref"], body["state"]) == ("fraud", 1, "fraud:1", "received")
    assert body["submitted_by"] == "alice"
    assert body["framework"] == "numpy"
    assert body["description"] == "v1"
    expected = hashlib.sha256(first.read_bytes()).hexdigest()
    assert body["files"] == [
        {"path": "weights.npy", "algorithm": "sha256", "digest": expected, "size": first.stat().st_size}
    ]
    assert body["digest"].startswith("sha256:")

    scanned = client.post("/v1/models/fraud/versions/1/scan", json={"modes": ["static"]}, headers=users.submitter)
    assert scanned.status_code == 200, scanned.text
    assert scanned.json()["state"] == "scanned"
    assert "scan_report" in {a["kind"] for a in scanned.json()["attachments"]}

    # alice only submits: approving needs the approver role (the service's role check).
    own = assert_error(client.post("/v1/models/fraud/versions/1/approve", headers=users.submitter), 403, "forbidden")
    assert "needs role approver" in own["message"]
    assert _version(client, users.viewer, "fraud", 1)["state"] == "scanned"

    approved = client.post("/v1/models/fraud/versions/1/approve", json={"comment": "ok"}, headers=users.approver)
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "approved"

    deployed = client.post("/v1/models/fraud/versions/1/deploy", json={"alias": "production"}, headers=users.deployer)
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["state"] == "deployed"
    assert deployed.json()["aliases"] == ["production"]
    for path in ("/v1/models/fraud/aliases/production", "/v1/resolve/fraud@production", "/v1/resolve/fraud:1"):
        resolved = client.get(path, headers=users.viewer)
        assert resolved.status_code == 200, resolved.text
        assert (resolved.json()["version"], resolved.json()["digest"]) == (1, body["digest"])

    second = _ready(client, users, make_model(tmp_path / "weights-2.npy", seed=2))
    assert second == 2
    moved = client.post("/v1/models/fraud/versions/2/deploy", json={"alias": "production"}, headers=users.deployer)
    assert moved.status_code == 200, moved.text
    assert client.get("/v1/resolve/fraud@production", headers=users.viewer).json()["version"] == 2
    assert _version(client, users.viewer, "fraud", 1)["state"] == "approved"

    rolled = client.post("/v1/models/fraud/aliases/production/rollback", headers=users.deployer)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == 1
    assert client.get("/v1/resolve/fraud@production", headers=users.viewer).json()["version"] == 1
    assert _version(client, users.viewer, "fraud", 2)["state"] == "rolled_back"

    listed = client.get("/v1/models", headers=users.viewer).json()
    assert [(m["name"], m["versions"], m["latest"], m["aliases"]) for m in listed] == [
        ("fraud", 2, 2, {"production": 1})
    ]
    versions = client.get("/v1/models/fraud/versions", headers=users.viewer).json()
    assert [(v["version"], v["state"]) for v in versions] == [(1, "deployed"), (2, "rolled_back")]


def test_audit_records_every_action_and_refusal(client: TestClient, users: Users, model_file: Path) -> None:
    _ready(client, users, model_file)
    assert client.post("/v1/models/fraud/versions/1/approve", headers=users.submitter).status_code == 403
    entries = client.get("/v1/audit", params={"limit": 1000}, headers=users.viewer)
    assert entries.status_code == 200, entries.text
    records = entries.json()
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs, reverse=True), "newest first"
    by_action = {(r["actor"], r["action"], r["allowed"]) for r in records}
    assert {("alice", "register", True), ("alice", "scan", True), ("bob", "approve", True)} <= by_action
    assert ("alice", "approve", False) in by_action
    approve = next(r for r in records if r["action"] == "approve" and r["allowed"])
    assert (approve["from_state"], approve["to_state"], approve["subject"]) == ("scanned", "approved", "model:fraud:1")

    page = client.get("/v1/audit", params={"limit": 2}, headers=users.viewer).json()
    assert [r["seq"] for r in page] == seqs[:2]
    older = client.get("/v1/audit", params={"limit": 2, "before": page[-1]["seq"]}, headers=users.viewer).json()
    assert [r["seq"] for r in older] == seqs[2:4]

    assert_error(client.get("/v1/audit/checkpoint", headers=users.viewer), 404, "not_found")
    signed = client.post("/v1/audit/checkpoint", headers=users.viewer)
    assert signed.status_code == 201, signed.text
    checkpoint = signed.json()
    assert checkpoint["tree_size"] == len(records)
    assert len(bytes.fromhex(checkpoint["root_hash"])) == 32
    assert checkpoint["key_id"] in checkpoint["text"]
    assert client.get("/v1/audit/checkpoint", headers=users.viewer).json() == checkpoint
    # Role refusals on the audit log: only an authenticated caller with a role reads it.
    assert_error(client.get("/v1/audit"), 401, "unauthenticated")


def test_bom_is_the_stored_cyclonedx_document(client: TestClient, users: Users, model_file: Path) -> None:
    created = upload(client, "fraud", model_file, users.submitter, framework="numpy")
    assert created.status_code == 201, created.text
    response = client.get("/v1/models/fraud/versions/1/bom", headers=users.viewer)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/vnd.cyclonedx+json")
    bom = json.loads(response.content)
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.6")
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert digest in response.text
    stored = next(a for a in created.json()["attachments"] if a["kind"] == "bom")
    assert hashlib.sha256(response.content).hexdigest() == stored["digest"]


def test_quarantine_then_release(client: TestClient, users: Users, model_file: Path) -> None:
    _ready(client, users, model_file)
    assert (
        client.post("/v1/models/fraud/versions/1/deploy", json={"alias": "staging"}, headers=users.deployer).status_code
        == 200
    )
    quarantined = client.post(
        "/v1/models/fraud/versions/1/quarantine", json={"reason": "drift alert"}, headers=users.deployer
    )
    assert quarantined.status_code == 200, quarantined.text
    assert quarantined.json()["state"] == "quarantined"
    again = client.post("/v1/models/fraud/versions/1/deploy", json={"alias": "production"}, headers=users.deployer)
    assert_error(again, 409, "invalid_transition")
    # Releasing is an approver's call, not the deployer's.
    assert_error(client.post("/v1/models/fraud/versions/1/release", headers=users.deployer), 403, "forbidden")
    released = client.post(
        "/v1/models/fraud/versions/1/release", json={"comment": "false alarm"}, headers=users.approver
    )
    assert released.status_code == 200, released.text
    assert released.json()["state"] in ("approved", "deployed")


def test_folder_model_upload(client: TestClient, users: Users, tmp_path: Path) -> None:
    parts = {"config.json": b'{"layers": 2}', "weights/part-1.bin": b"\x00" * 3000, "weights/part-2.bin": b"\x01" * 5}
    files = [("model", (name, data, "application/octet-stream")) for name, data in parts.items()]
    created = client.post("/v1/models/folder-model/versions", files=files, headers=users.submitter)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["is_file"] is False
    assert sorted((f["path"], f["digest"], f["size"]) for f in body["files"]) == sorted(
        (name, hashlib.sha256(data).hexdigest(), len(data)) for name, data in parts.items()
    )


@pytest.mark.parametrize("roles", [["submitter", "approver"], ["admin"]])
def test_nobody_approves_their_own_submission(
    client: TestClient, users: Users, model_file: Path, roles: list[str]
) -> None:
    assert client.post("/v1/users", json={"username": "carol", "roles": roles}, headers=users.admin).status_code == 201
    carol = bearer(client.post("/v1/users/carol/tokens", json={}, headers=users.admin).json()["token"])
    assert upload(client, "fraud", model_file, carol).status_code == 201
    assert client.post("/v1/models/fraud/versions/1/scan", json={"modes": ["static"]}, headers=carol).status_code == 200
    refused = assert_error(client.post("/v1/models/fraud/versions/1/approve", headers=carol), 403, "forbidden")
    assert "separation of duties" in refused["message"]
    assert _version(client, users.viewer, "fraud", 1)["state"] == "scanned"
    audit = client.get("/v1/audit", headers=users.viewer).json()
    assert any(e["actor"] == "carol" and e["action"] == "approve" and not e["allowed"] for e in audit)
    approved = client.post("/v1/models/fraud/versions/1/approve", headers=users.approver)
    assert approved.status_code == 200, approved.text


def test_retire_over_http(client: TestClient, users: Users, model_file: Path, registry) -> None:  # type: ignore[no-untyped-def]
    _ready(client, users, model_file)
    version = client.get("/v1/models/fraud/versions/1", headers=users.viewer).json()
    blob = registry.blobs.path(version["files"][0]["digest"])
    assert blob.exists()
    assert_error(
        client.post("/v1/models/fraud/versions/1/retire", json={"mode": "delete"}, headers=users.deployer),
        403,
        "forbidden",
    )
    archive = client.post("/v1/models/fraud/versions/1/retire", json={"mode": "archive"}, headers=users.admin)
    assert "archive mode is not configured" in assert_error(archive, 422, "invalid_input")["message"]
    assert_error(client.post("/v1/models/fraud/versions/1/retire", json={"mode": "shred"}, headers=users.admin), 422,
                 "invalid_input")  # fmt: skip
    retired = client.post(
        "/v1/models/fraud/versions/1/retire", json={"mode": "delete", "reason": "superseded"}, headers=users.admin
    )
    assert retired.status_code == 200, retired.text
    body = retired.json()
    assert body["version"]["state"] == "retired"
    assert version["files"][0]["digest"] in {item["sha256"] for item in body["items"]}
    assert not blob.exists()
    again = client.post("/v1/models/fraud/versions/1/deploy", json={"alias": "production"}, headers=users.deployer)
    assert_error(again, 409, "invalid_transition")
