"""Decompression bombs are large absolute expansions: the ratio limit applies only above ``min_bomb_size``.

Regression: a real sparse ``.npz`` member (7.8 KB compressed -> 2.3 MB, ratio 299) tripped MLW-ARC-003 because the
ratio was checked on anything above 1 MiB.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from mlwarden.core.policy import Limits, MiB, Policy
from tests.conftest import failing, rule_ids, scan_bytes, scan_one

np = pytest.importorskip("numpy")


def _zip_of_zeros(path: Path, name: str, mib: int) -> None:
    """Write a zip whose one deflated member inflates to ``mib`` MiB of zeros, never holding more than 1 MiB.

    After a full flush deflate forgets its history, so the compressed form of each 1 MiB block of zeros is the same
    bytes: the member is that block repeated, then the final (empty) block. Sizes go in a zip64 extra field.
    """
    chunk = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    usize, csize = mib << 20, len(block) * mib + len(tail)
    fname = name.encode()
    extra = struct.pack("<HHQQ", 1, 16, usize, csize)
    sizes = (crc, 0xFFFFFFFF, 0xFFFFFFFF, len(fname), len(extra))
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 8, 0, 0x21, *sizes)
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, 8, 0, 0x21, *sizes, 0, 0, 0, 0, 0)
    with path.open("wb") as fh:
        fh.write(local + fname + extra)
        for _ in range(mib):
            fh.write(block)
        fh.write(tail)
        cd_offset = fh.tell()
        fh.write(central + fname + extra)
        fh.write(
            struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(fname) + len(extra), cd_offset, 0)
        )


def test_sparse_npz_member_of_a_few_megabytes_is_not_a_bomb(tmp_path: Path) -> None:
    sparse = np.zeros(3 * MiB // 8, dtype=np.float64)
    sparse[::50_000] = 1.5
    path = tmp_path / "sparse.npz"
    np.savez_compressed(path, weights=sparse)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("weights.npy")
    assert info.file_size / info.compress_size > Limits().max_compression_ratio  # the ratio alone would trip
    result = scan_one(path)
    assert "MLW-ARC-003" not in rule_ids(result)
    assert failing(result) == []


def test_one_gib_member_is_still_a_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    _zip_of_zeros(path, "arr_0.npy", 1024)
    assert path.stat().st_size < 2 * MiB
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("arr_0.npy").file_size == 1 << 30
        with zf.open("arr_0.npy") as member:
            assert member.read(1 << 16) == bytes(1 << 16)  # a valid deflate stream, not just a lying header
    [finding] = failing(scan_one(path))
    assert finding.rule_id == "MLW-ARC-003"
    assert "1073741824 bytes" in finding.evidence


def test_min_bomb_size_is_a_policy_knob(tmp_path: Path) -> None:
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, zeros=np.zeros(3 * MiB, dtype=np.uint8))
    strict = Policy(limits=Limits(min_bomb_size=1 * MiB))
    assert [f.rule_id for f in failing(scan_one(path, strict))] == ["MLW-ARC-003"]
    assert failing(scan_one(path)) == []


def test_compressed_layer_honours_min_bomb_size(tmp_path: Path) -> None:
    # A pickle announcing 8 MiB of zero bytes, gzipped: skipping the argument inflates it all.
    body = b"\x80\x04\x8e" + struct.pack("<Q", 8 * MiB) + bytes(8 * MiB) + b"\x85."
    data = gzip.compress(body, compresslevel=9)
    assert failing(scan_bytes(tmp_path, data, "model.pkl.gz")) == []
    strict = Policy(limits=Limits(min_bomb_size=1 * MiB))
    limited = failing(scan_bytes(tmp_path, data, "model.pkl.gz", strict))
    assert [f.detail("limit") for f in limited] == ["max_member_size"]


def test_min_bomb_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_bomb_size"):
        Limits(min_bomb_size=0)
