"""Encrypted retirement archives: round trip, and every kind of damage is detected, never silently accepted."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlwarden.integrity.archive import (
    CHUNK_SIZE,
    MAGIC,
    ArchiveError,
    extract_archive,
    generate_recipient,
    load_identity,
    load_recipient,
    read_archive,
    write_archive,
)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "custodian.key", tmp_path / "keys" / "custodian.pub"
    generate_recipient(private, public)
    return private, public


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "model"
    folder.mkdir()
    contents = {
        "weights.bin": os.urandom(2 * CHUNK_SIZE + 12345),  # spans several chunks
        "config.json": b'{"layers": 3}',
        "empty.txt": b"",
    }
    paths = {}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
        paths[f"model/{name}"] = folder / name
    return paths


def _archive(tmp_path: Path, keys: tuple[Path, Path], files: dict[str, Path]) -> Path:
    out = tmp_path / "retired.mlwarc"
    write_archive(out, files, load_recipient(keys[1]))
    return out


def test_round_trip_returns_every_byte_and_digest(
    tmp_path: Path, keys: tuple[Path, Path], files: dict[str, Path]
) -> None:
    out = tmp_path / "retired.mlwarc"
    summary = write_archive(out, files, load_recipient(keys[1]))
    assert summary.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert {item.name: item.sha256 for item in summary.items} == {
        name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()
    }
    assert out.read_bytes().startswith(MAGIC)
    assert files["model/weights.bin"].read_bytes()[:4096] not in out.read_bytes()  # really encrypted
    restored = dict(read_archive(out, load_identity(keys[0])))
    assert restored == {name: path.read_bytes() for name, path in files.items()}
    written = extract_archive(out, load_identity(keys[0]), tmp_path / "restored")
    assert sorted(p.name for p in written) == ["config.json", "empty.txt", "weights.bin"]
    assert (tmp_path / "restored/model/weights.bin").read_bytes() == files["model/weights.bin"].read_bytes()


def test_private_key_is_owner_only_and_never_overwritten(keys: tuple[Path, Path]) -> None:
    assert keys[0].stat().st_mode & 0o777 == 0o600
    with pytest.raises(ArchiveError, match="refusing to overwrite"):
        generate_recipient(keys[0], keys[1])


def test_wrong_key_is_named(tmp_path: Path, keys: tuple[Path, Path], files: dict[str, Path]) -> None:
    out = _archive(tmp_path, keys, files)
    other = tmp_path / "other.key", tmp_path / "other.pub"
    generate_recipient(*other)
    with pytest.raises(ArchiveError, match="sealed to key .* not to this key"):
        list(read_archive(out, load_identity(other[0])))


@pytest.mark.parametrize("cut", [10, 200, CHUNK_SIZE, 2 * (CHUNK_SIZE + 16) + 100, -1])
def test_truncation_is_detected(tmp_path: Path, keys: tuple[Path, Path], files: dict[str, Path], cut: int) -> None:
    out = _archive(tmp_path, keys, files)
    data = out.read_bytes()
    out.write_bytes(data[:cut])
    with pytest.raises(ArchiveError, match="truncated|tampered|malformed"):
        list(read_archive(out, load_identity(keys[0])))


def test_chunk_boundary_truncation_is_detected(tmp_path: Path, keys: tuple[Path, Path], files: dict[str, Path]) -> None:
    """Dropping whole trailing chunks leaves a stream whose new last chunk lacks the 'last' flag."""
    out = _archive(tmp_path, keys, files)
    data = out.read_bytes()
    header_end = len(MAGIC) + 4 + int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "big")
    out.write_bytes(data[: header_end + CHUNK_SIZE + 16])
    with pytest.raises(ArchiveError, match="truncated"):
        list(read_archive(out, load_identity(keys[0])))


@pytest.mark.parametrize("where", ["header", "body", "swap"])
def test_tampering_is_detected(tmp_path: Path, keys: tuple[Path, Path], files: dict[str, Path], where: str) -> None:
    out = _archive(tmp_path, keys, files)
    data = bytearray(out.read_bytes())
    header_end = len(MAGIC) + 4 + int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "big")
    sealed = CHUNK_SIZE + 16
    if where == "header":  # change the chunk size field's digits without breaking the JSON: still authenticated
        data[header_end - 2] ^= 0x01
    elif where == "body":
        data[header_end + 1000] ^= 0x40
    else:
        first = data[header_end : header_end + sealed]
        data[header_end : header_end + sealed] = data[header_end + sealed : header_end + 2 * sealed]
        data[header_end + sealed : header_end + 2 * sealed] = first
    out.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        list(read_archive(out, load_identity(keys[0])))


def test_not_an_archive_and_bad_keys(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ArchiveError, match="not an mlwarden archive"):
        list(read_archive(junk, load_identity(keys[0])))
    with pytest.raises(ArchiveError, match="not a usable PEM key"):
        load_recipient(junk)
    with pytest.raises(ArchiveError, match="cannot read key"):
        load_identity(tmp_path / "missing.key")
    with pytest.raises(ArchiveError, match="not an X25519 public key"):
        load_recipient(_ec_public(tmp_path))


def test_existing_output_and_failed_write_leave_nothing(
    tmp_path: Path, keys: tuple[Path, Path], files: dict[str, Path]
) -> None:
    out = _archive(tmp_path, keys, files)
    with pytest.raises(ArchiveError, match="already exists"):
        write_archive(out, files, load_recipient(keys[1]))
    second = tmp_path / "second.mlwarc"
    with pytest.raises(ArchiveError, match="not a regular file"):
        write_archive(second, {"dir": tmp_path}, load_recipient(keys[1]))
    assert not second.exists()
    assert not list(tmp_path.glob(".*.partial"))


def _ec_public(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pub"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path
