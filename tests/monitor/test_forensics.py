"""Forensics bundles: round trip, and every kind of tampering caught and named."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mlwarden.core.errors import UsageError
from mlwarden.monitor.forensics import ForensicMaterial, ForensicsError, read_members, verify_bundle, write_bundle

KEY = ec.generate_private_key(ec.SECP256R1())


def _material() -> ForensicMaterial:
    records = [
        {"request_id": f"r{i}", "client": "carol", "inputs": [[0.1 * i]], "decision": "allowed"} for i in range(20)
    ]
    alerts = [{"rule": "input-drift", "severity": "critical"}]
    return ForensicMaterial(
        "fraud:2", "sha256:" + "cd" * 32, b'{"mediaType": "x"}', {"limits": {}}, records, alerts, {"requests": 20}
    )


def _rewrite(src: Path, dst: Path, change: dict[str, bytes | None]) -> Path:
    members = read_members(src)
    for name, data in change.items():
        if data is None:
            members.pop(name)
        else:
            members[name] = data
    with tarfile.open(dst, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dst


def test_round_trip_and_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLWARDEN_CANARY_SECRET", "canary-value-9f3b")
    path = write_bundle(_material(), tmp_path, KEY)
    assert path.stat().st_mode & 0o777 == 0o600
    result = verify_bundle(path, KEY.public_key())
    assert set(result.members) >= {
        "manifest.json",
        "records.jsonl",
        "environment.json",
        "process.json",
        "signature.sigstore.json",
        "policy.json",
        "alerts.json",
        "monitor.json",
    }
    members = read_members(path)
    environment = json.loads(members["environment.json"])
    assert "MLWARDEN_CANARY_SECRET" in environment["environment_variable_names"]
    assert b"canary-value-9f3b" not in gzip.decompress(path.read_bytes())  # names only, never values
    assert len(members["records.jsonl"].splitlines()) == 20
    assert json.loads(members["process.json"])["pid"] > 0


@pytest.mark.parametrize("member", ["records.jsonl", "model.json", "environment.json", "signature.sigstore.json"])
def test_a_changed_member_is_named(tmp_path: Path, member: str) -> None:
    path = write_bundle(_material(), tmp_path, KEY)
    forged = _rewrite(path, tmp_path / "forged.tar.gz", {member: b'{"forged": true}\n'})
    with pytest.raises(ForensicsError, match=f"member {member} was changed"):
        verify_bundle(forged, KEY.public_key())


def test_added_removed_truncated_and_wrong_key(tmp_path: Path) -> None:
    path = write_bundle(_material(), tmp_path, KEY)
    with pytest.raises(ForensicsError, match="member extra.txt was added"):
        verify_bundle(_rewrite(path, tmp_path / "a.tar.gz", {"extra.txt": b"x"}), KEY.public_key())
    with pytest.raises(ForensicsError, match="member alerts.json was removed"):
        verify_bundle(_rewrite(path, tmp_path / "b.tar.gz", {"alerts.json": None}), KEY.public_key())
    truncated = tmp_path / "c.tar.gz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ForensicsError, match="not a readable bundle"):
        verify_bundle(truncated, KEY.public_key())
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ForensicsError, match="signature does not verify"):
        verify_bundle(path, other.public_key())
    with pytest.raises(ForensicsError, match="no statement"):
        verify_bundle(_rewrite(path, tmp_path / "d.tar.gz", {"statement.sigstore.json": None}), KEY.public_key())


def test_unsigned_bundles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="must be signed"):
        write_bundle(_material(), tmp_path, None)
