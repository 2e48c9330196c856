"""Compressed layers around formats that need to seek: zip (PyTorch), HDF5 (Keras), protobuf.

A decoder cannot seek from the end or tell the size, so such content is decompressed once into a private temporary
file (bounded by the layer's limit) and analysed from there: a benign `model.pt.gz` must scan like `model.pt`,
and a payload inside must be found as it is without the gzip layer.
"""

from __future__ import annotations

import gzip
import io
import tempfile
import zipfile
from pathlib import Path

import pytest

from mlwarden.core.findings import Severity
from mlwarden.core.policy import Limits, Policy
from mlwarden.scan.engine import scan_file
from mlwarden.scan.result import FileResult


def _gzip(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def _failing(result: FileResult) -> list[str]:
    return [f"{f.rule_id} {f.evidence[:120]}" for f in result.findings if f.severity >= Severity.MEDIUM]


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    return spool


def test_a_benign_torch_checkpoint_in_gzip_scans_like_the_checkpoint(tmp_path: Path, private_tmp: Path) -> None:
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"weight": torch.arange(1000, dtype=torch.float32), "bias": torch.zeros(3)}, buffer)
    plain = tmp_path / "model.pt"
    plain.write_bytes(buffer.getvalue())
    wrapped = scan_file(_gzip(tmp_path / "model.pt.gz", buffer.getvalue()), Policy())
    assert _failing(wrapped) == []
    assert "zip" in {fmt for _, fmt in wrapped.formats}
    assert _failing(scan_file(plain, Policy())) == []
    assert list(private_tmp.iterdir()) == []  # the decompressed copy is gone


def test_a_payload_in_a_gzipped_torch_zip_is_found(tmp_path: Path, private_tmp: Path) -> None:
    canary = tmp_path / "canary"
    payload = b"cos\nsystem\n(S'touch " + str(canary).encode() + b"'\ntR."
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", payload)
        archive.writestr("model/version", "3\n")
    result = scan_file(_gzip(tmp_path / "evil.pt.gz", buffer.getvalue()), Policy())
    assert any(f.rule_id.startswith("MLW-PKL-1") and f.severity >= Severity.HIGH for f in result.findings)
    assert not canary.exists()
    assert list(private_tmp.iterdir()) == []


def test_hdf5_in_gzip_is_read(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    plain = tmp_path / "weights.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("dense/kernel", data=[[1.0, 2.0], [3.0, 4.0]])
        f.attrs["backend"] = "tensorflow"
    result = scan_file(_gzip(tmp_path / "weights.h5.gz", plain.read_bytes()), Policy())
    assert _failing(result) == []
    assert "hdf5" in {fmt for _, fmt in result.formats}


def test_a_bomb_stops_at_the_layer_limit_and_leaves_no_file(tmp_path: Path, private_tmp: Path) -> None:
    bomb = _gzip(tmp_path / "bomb.gz", b"PK\x03\x04" + bytes(8 * 1024 * 1024))
    policy = Policy(limits=Limits(min_bomb_size=1024 * 1024, max_compression_ratio=10))
    result = scan_file(bomb, policy)
    assert any(f.rule_id == "MLW-GEN-001" and "max_member_size" in f.evidence + str(f.details) for f in result.findings)
    assert list(private_tmp.iterdir()) == []
