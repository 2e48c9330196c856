"""Uploads over HTTP: signed models through both gates, attachments, malformed forms, staging clean-up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlwarden.api import Limits, create_app
from mlwarden.api.upload import UploadReceiver
from mlwarden.integrity.keys import generate_key_pair
from mlwarden.integrity.signing import sign_model
from mlwarden.registry.db import Database
from mlwarden.registry.service import Registry
from tests.api.conftest import Users, assert_error, make_model, make_users, open_registry

SIGNED_GATES = """
[approve]
scan_required = true
scan_modes = ["static"]
signature_required = true
trusted_keys = ["{key}"]
dataset_manifest_required = false

[deploy]
verify_digest = true
signature_required = true
"""


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "release.key", tmp_path / "release.pub"
    generate_key_pair(private, public)
    return private, public


@pytest.fixture
def signed_registry(database: Database, tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[Registry]:
    registry = open_registry(database, tmp_path / "signed-home", SIGNED_GATES.format(key=keys[1]))
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture
def signed_client(signed_registry: Registry, staging: Path) -> Iterator[TestClient]:
    limits = Limits(max_upload_bytes=1 << 20, upload_dir=staging)
    with TestClient(create_app(signed_registry, limits=limits)) as client:
        yield client


@pytest.fixture
def signed_users(signed_client: TestClient, signed_registry: Registry) -> Users:
    return make_users(signed_client, signed_registry)


def _post_signed(client: TestClient, users: Users, model: Path, signature: Path | None) -> dict:  # type: ignore[type-arg]
    files = [("model", (model.name, model.read_bytes(), "application/octet-stream"))]
    if signature is not None:
        files.append(("signature", (signature.name, signature.read_bytes(), "application/json")))
    created = client.post("/v1/models/fraud/versions", files=files, headers=users.submitter)
    assert created.status_code == 201, created.text
    scanned = client.post("/v1/models/fraud/versions/1/scan", json={"modes": ["static"]}, headers=users.submitter)
    assert scanned.status_code == 200, scanned.text
    return dict(created.json())


def test_signed_model_passes_both_gates(
    signed_client: TestClient, signed_users: Users, keys: tuple[Path, Path], tmp_path: Path, staging: Path
) -> None:
    model = make_model(tmp_path / "weights.npy")
    sign_model(model, keys[0], tmp_path / "weights.sig")
    created = _post_signed(signed_client, signed_users, model, tmp_path / "weights.sig")
    signature = next(a for a in created["attachments"] if a["kind"] == "signature")
    assert signature["filename"] == "weights.sig"
    approved = signed_client.post("/v1/models/fraud/versions/1/approve", headers=signed_users.approver)
    assert approved.status_code == 200, approved.text
    deployed = signed_client.post(
        "/v1/models/fraud/versions/1/deploy", json={"alias": "production"}, headers=signed_users.deployer
    )
    assert deployed.status_code == 200, deployed.text
    downloaded = signed_client.get(
        f"/v1/models/fraud/versions/1/attachments/{signature['id']}", headers=signed_users.viewer
    )
    assert downloaded.status_code == 200
    assert downloaded.content == (tmp_path / "weights.sig").read_bytes()
    assert list(staging.iterdir()) == [], "the staging folder is removed after the request"


def test_unsigned_model_is_refused_naming_the_rule(
    signed_client: TestClient, signed_users: Users, tmp_path: Path
) -> None:
    _post_signed(signed_client, signed_users, make_model(tmp_path / "weights.npy"), None)
    refused = signed_client.post("/v1/models/fraud/versions/1/approve", headers=signed_users.approver)
    error = assert_error(refused, 409, "gate_refused")
    assert "signature_required" in {check["rule"] for check in error["failed"]}


def test_signature_of_other_bytes_is_refused(
    signed_client: TestClient, signed_users: Users, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    signed = make_model(tmp_path / "weights.npy", seed=1)
    sign_model(signed, keys[0], tmp_path / "weights.sig")
    (tmp_path / "other").mkdir()
    other = make_model(tmp_path / "other" / "weights.npy", seed=2)
    files = [
        ("model", (other.name, other.read_bytes(), "application/octet-stream")),
        ("signature", ("weights.sig", (tmp_path / "weights.sig").read_bytes(), "application/json")),
    ]
    refused = signed_client.post("/v1/models/fraud/versions", files=files, headers=signed_users.submitter)
    error = assert_error(refused, 422, "invalid_input")
    assert "signs other bytes" in error["message"]
    assert "mlwarden-upload" not in error["message"]
    assert "/tmp" not in error["message"]


def test_a_bad_signature_file_is_422_without_server_paths(
    signed_client: TestClient, signed_users: Users, tmp_path: Path, staging: Path
) -> None:
    model = make_model(tmp_path / "weights.npy")
    response = signed_client.post(
        "/v1/models/fraud/versions",
        files=[("model", ("weights.npy", model.read_bytes())), ("signature", ("broken.sig", b"{not json"))],
        headers=signed_users.submitter,
    )
    error = assert_error(response, 422, "invalid_input")
    assert "broken.sig" in error["message"]
    assert str(staging) not in response.text
    assert list(staging.iterdir()) == []


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    out = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MODEL = ("model", "m.bin", b"\x00" * 64)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (_multipart([("description", None, b"no model")]), "no model file"),
        (_multipart([MODEL, ("weights", "w.bin", b"1")]), "unknown file field 'weights'"),
        (_multipart([MODEL, ("colour", None, b"red")]), "unknown field 'colour'"),
        (_multipart([MODEL, ("signature", "a.sig", b"{}"), ("signature", "b.sig", b"{}")]), "at most one signature"),
        (_multipart([MODEL, ("model", "m.bin", b"again")]), "sent twice"),
        (_multipart([("model", "a", b"1"), ("model", "a/b", b"2")]), "clashes"),
        (_multipart([("model", "../../etc/cron.d/x", b"1")]), "'..'"),
        (_multipart([("model", "/abs/path", b"1")]), "relative"),
        (_multipart([MODEL, ("framework", None, b"x"), ("framework", None, b"y")]), "given twice"),
        (_multipart([MODEL, ("framework", None, b"\xff\xfe")]), "not UTF-8"),
        (_multipart([MODEL])[: -len(b"--XyZ--\r\n")], "truncated"),
        (b"garbage without any boundary", "malformed multipart body"),
    ],
    ids=[
        "no-model",
        "unknown-file",
        "unknown-field",
        "two-signatures",
        "duplicate",
        "file-vs-folder",
        "traversal",
        "absolute",
        "twice",
        "not-utf8",
        "truncated",
        "garbage",
    ],
)
def test_malformed_uploads_are_422_and_leave_nothing(
    client: TestClient, users: Users, staging: Path, body: bytes, fragment: str
) -> None:
    response = client.post(
        "/v1/models/fraud/versions",
        content=body,
        headers={**users.submitter, "Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    error = assert_error(response, 422, "invalid_input")
    assert fragment in error["message"]
    assert list(staging.iterdir()) == []
    assert client.get("/v1/models", headers=users.viewer).json() == []


def test_traversal_never_writes_outside_the_staging_folder(client: TestClient, users: Users, tmp_path: Path) -> None:
    body = _multipart([("model", "../../escaped.bin", b"pwned")])
    client.post(
        "/v1/models/fraud/versions",
        content=body,
        headers={**users.submitter, "Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert not any(p.name == "escaped.bin" for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data", "text/plain"])
def test_upload_needs_multipart_with_a_boundary(client: TestClient, users: Users, content_type: str) -> None:
    response = client.post(
        "/v1/models/fraud/versions", content=b"{}", headers={**users.submitter, "Content-Type": content_type}
    )
    assert_error(response, 415, "unsupported_media_type")


def test_refused_uploader_is_stopped_before_the_body_and_audited(
    client: TestClient, users: Users, staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_args: object) -> None:
        raise AssertionError("the body of a refused upload was read")

    monkeypatch.setattr(UploadReceiver, "receive", never)
    body = _multipart([("model", "m.bin", b"\x00" * (1 << 20))])
    response = client.post(
        "/v1/models/fraud/versions",
        content=body,
        headers={**users.viewer, "Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    error = assert_error(response, 403, "forbidden")
    assert "register" in error["message"]
    assert list(staging.iterdir()) == []
    audit = client.get("/v1/audit", headers=users.viewer).json()
    assert any(e["actor"] == "vera" and e["action"] == "register" and not e["allowed"] for e in audit)


def test_registry_artifact_limit_is_413_without_server_paths(database: Database, tmp_path: Path, staging: Path) -> None:
    registry = Registry.open(database.url, home=tmp_path / "home", max_artifact_bytes=100)
    try:
        with TestClient(create_app(registry, limits=Limits(upload_dir=staging))) as client:
            users = make_users(client, registry)
            big = make_model(tmp_path / "weights.npy")
            response = client.post(
                "/v1/models/fraud/versions",
                files=[("model", ("weights.npy", big.read_bytes()))],
                headers=users.submitter,
            )
            error = assert_error(response, 413, "payload_too_large")
            assert "fraud/weights.npy" in error["message"]
            assert str(staging) not in response.text
            assert client.get("/v1/models", headers=users.viewer).json() == []
    finally:
        registry.close()
