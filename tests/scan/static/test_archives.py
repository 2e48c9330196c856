"""Zip/tar walking: lenient like the loaders, strict about limits, loud about anomalies."""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from mlwarden.core.findings import Severity
from mlwarden.core.policy import Limits, Policy
from tests.conftest import failing, rule_ids, scan_bytes, scan_one

EVIL = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _torch_zip(tmp_path: Path, extra: dict[str, bytes] | None = None, prefix: str = "archive") -> bytes:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    members = {}
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src:
        for info in src.infolist():
            name = prefix + info.filename[info.filename.index("/") :]
            members[name] = src.read(info)
    members.update(extra or {})
    return _zip(members)


def test_benign_torch_zip_is_clean(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, _torch_zip(tmp_path), "model.pt")
    assert not failing(result)
    assert "pickle" in {fmt for _, fmt in result.formats}


@pytest.mark.parametrize("member", ["weirdname/extra/evil.bin", "weirdname/data/99", "weirdname/.data/notes.txt"])
def test_pickle_hidden_in_an_extra_torch_member(tmp_path: Path, member: str) -> None:
    data = _torch_zip(tmp_path, {member: EVIL}, prefix="weirdname")
    result = scan_bytes(tmp_path, data, "model.txt")
    [finding] = failing(result)
    assert finding.location.chain[-1] == member
    assert finding.detail("global") == "os.system"


def _patch_flags(data: bytes, flag: int) -> bytes:
    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = out.find(sig)
        while i != -1:
            struct.pack_into("<H", out, i + off, struct.unpack_from("<H", out, i + off)[0] | flag)
            i = out.find(sig, i + 4)
    return bytes(out)


@pytest.mark.parametrize("flag", [0x1, 0x20, 0x40, 0x8])
def test_odd_flag_bits_do_not_hide_members(tmp_path: Path, flag: int) -> None:
    # CVE-2025-1945 (picklescan): flag bits make zipfile refuse the member; PyTorch still loads it.
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        data = _patch_flags(_zip({"archive/data.pkl": EVIL}, method), flag)
        result = scan_bytes(tmp_path, data)
        assert "os.system" in {f.detail("global") for f in failing(result)}, (flag, method)


def test_wrong_crc_does_not_hide_member(tmp_path: Path) -> None:
    # CVE-2025-10156 (picklescan): CRC mismatch makes zipfile raise on read; PyTorch does not check.
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        data = bytearray(_zip({"archive/data.pkl": EVIL}, method))
        i = data.find(b"PK\x01\x02")
        struct.pack_into("<I", data, i + 16, 0xDEADBEEF)
        j = data.find(b"PK\x03\x04")
        struct.pack_into("<I", data, j + 14, 0xDEADBEEF)
        result = scan_bytes(tmp_path, bytes(data))
        assert "os.system" in {f.detail("global") for f in failing(result)}


def test_corrupt_member_before_data_pkl_does_not_end_the_walk(tmp_path: Path) -> None:
    # modelscan #354: a broken first entry made the whole zip "clean".
    data = bytearray(_zip({"archive/aaa": b"x" * 100, "archive/data.pkl": EVIL}, zipfile.ZIP_DEFLATED))
    j = data.find(b"PK\x03\x04")
    data[j + 30 + len("archive/aaa") : j + 30 + len("archive/aaa") + 4] = b"\xff\xff\xff\xff"  # garbage deflate
    result = scan_bytes(tmp_path, bytes(data))
    assert "os.system" in {f.detail("global") for f in failing(result)}


def test_broken_central_directory_recovers_from_local_headers(tmp_path: Path) -> None:
    data = _zip({"data.pkl": EVIL})
    cut = data[: data.find(b"PK\x01\x02")]  # central directory and end record gone
    result = scan_bytes(tmp_path, cut)
    ids = rule_ids(result)
    assert "MLW-ARC-007" in ids
    assert "MLW-PKL-100" in ids


@pytest.mark.parametrize("name", ["../../evil.pkl", "/etc/cron.d/evil", "C:/evil.pkl", "a/../../b.pkl"])
def test_path_traversal_member_names(tmp_path: Path, name: str) -> None:
    result = scan_bytes(tmp_path, _zip({name: b"harmless"}))
    [finding] = [f for f in result.findings if f.rule_id == "MLW-ARC-001"]
    assert finding.severity is Severity.HIGH
    assert name in finding.evidence


def test_zip_symlink_member(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    assert "MLW-ARC-002" in rule_ids(scan_bytes(tmp_path, buf.getvalue()))


def test_tar_links_devices_and_members(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, target in (
            ("ok", tarfile.SYMTYPE, "weights.bin"),
            ("out", tarfile.SYMTYPE, "/etc/passwd"),
            ("hard", tarfile.LNKTYPE, "../../x"),
            ("dev", tarfile.CHRTYPE, ""),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
        info = tarfile.TarInfo("model/data.pkl")
        info.size = len(EVIL)
        tar.addfile(info, io.BytesIO(EVIL))
    result = scan_bytes(tmp_path, buf.getvalue(), "model.tar")
    links = [f for f in result.findings if f.rule_id == "MLW-ARC-002"]
    assert len(links) == 4
    assert {f.severity for f in links if "/etc/passwd" in f.evidence or "../../x" in f.evidence} == {Severity.HIGH}
    assert "os.system" in {f.detail("global") for f in failing(result)}


def test_nested_archives_keep_the_whole_chain(tmp_path: Path) -> None:
    inner_zip = _zip({"archive/data.pkl": EVIL}, zipfile.ZIP_DEFLATED)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("models/model.pt")
        info.size = len(inner_zip)
        tar.addfile(info, io.BytesIO(inner_zip))
    p = tmp_path / "bundle.tar.gz"
    p.write_bytes(gzip.compress(buf.getvalue()))
    [finding] = failing(scan_one(p))
    assert finding.location.chain == (str(p), "<gzip>", "models/model.pt", "archive/data.pkl")


def test_depth_limit(tmp_path: Path) -> None:
    data = EVIL
    for i in range(6):
        data = _zip({f"layer{i}.zip" if i else "data.pkl": data})
    result = scan_bytes(tmp_path, data, policy=Policy(limits=Limits(max_depth=3)))
    assert [f.detail("limit") for f in failing(result)] == ["max_depth"]
    assert "MLW-PKL-100" in rule_ids(scan_bytes(tmp_path, data))  # the default limit reaches it


def test_compression_bomb_member_is_not_expanded(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("bomb.bin", b"\x00" * (200 << 20))
    result = scan_bytes(tmp_path, buf.getvalue())
    [finding] = failing(result)
    assert finding.rule_id == "MLW-ARC-003"


def test_gzip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    # A pickle announcing 100 MB of bytes, all zeros, gzip-compressed to ~100 KB: skipping the argument
    # decompresses it, which must stop at max_member_size.
    body = b"\x80\x04\x8e" + struct.pack("<Q", 100 << 20) + b"\x00" * (100 << 20) + b"\x85."
    data = gzip.compress(body, compresslevel=9)
    result = scan_bytes(tmp_path, data, policy=Policy(limits=Limits(max_member_size=8 << 20)))
    assert [f.detail("limit") for f in failing(result)] == ["max_member_size"]


def test_member_count_limit(tmp_path: Path) -> None:
    data = _zip({f"f{i}.txt": b"x" for i in range(50)})
    result = scan_bytes(tmp_path, data, policy=Policy(limits=Limits(max_members=10)))
    assert [f.detail("limit") for f in failing(result)] == ["max_members"]


def test_seven_zip_is_reported_not_ignored(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 40, "model.bin")
    [finding] = failing(result)
    assert finding.rule_id == "MLW-ARC-010"


def test_truncated_gzip_keeps_the_payload_finding(tmp_path: Path) -> None:
    import os

    body = EVIL[:-1] + b"0\x8e" + struct.pack("<Q", 200_000) + os.urandom(200_000) + b"."
    data = gzip.compress(body)[:-1000]
    result = scan_bytes(tmp_path, data)
    assert "MLW-PKL-100" in rule_ids(result)
    assert "MLW-CMP-001" in rule_ids(result)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_lz4_and_zstd_layers(tmp_path: Path, codec: str) -> None:
    if codec == "lz4":
        lz4_frame = pytest.importorskip("lz4.frame")
        data = lz4_frame.compress(EVIL)
    else:
        zstandard = pytest.importorskip("zstandard")
        data = zstandard.ZstdCompressor().compress(EVIL)
    [finding] = failing(scan_bytes(tmp_path, data))
    assert finding.detail("global") == "os.system"
    assert finding.location.chain[1] == f"<{codec}>"


def _checkpoint_with_storage(tmp_path: Path, content: bytes) -> Path:
    """A real torch zip checkpoint whose first tensor storage is replaced by ``content`` (same member name)."""
    import io
    import zipfile

    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    source = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = tmp_path / "ckpt.pt"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data/0"):
                data = content
            target.writestr(info.filename, data)
    return out


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("8002183cf0ec94bd"),  # PROTO 2, then no valid opcode: seen in a real RAdam checkpoint
        bytes.fromhex("6c2e16bc0c57493a795b1dbeddd4eabc"),  # b"l." : LIST without a MARK, then STOP
        b"(." + bytes(14),  # MARK then STOP: leaves a mark behind
    ],
)
def test_tensor_bytes_that_merely_start_like_a_pickle_are_data(tmp_path: Path, raw: bytes) -> None:
    result = scan_one(_checkpoint_with_storage(tmp_path, raw))
    assert not any(f.rule_id.startswith("MLW-PKL") for f in result.findings), result.findings


def test_a_real_pickle_hidden_in_a_storage_is_still_analysed(tmp_path: Path) -> None:
    import pickle

    payload = pickle.dumps(os_system_canary(tmp_path), protocol=2)
    result = scan_one(_checkpoint_with_storage(tmp_path, payload))
    assert any(f.rule_id.startswith("MLW-PKL") and f.severity >= Severity.HIGH for f in result.findings)


class os_system_canary:  # noqa: N801 - reads as what it builds
    """Pickles as ``os.system("touch <tmp>/canary")``; only ever scanned here."""

    def __init__(self, tmp_path: Path) -> None:
        self.command = f"touch {tmp_path / 'canary'}"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (self.command,)


def test_member_names_with_the_display_separator_keep_their_chain(tmp_path: Path) -> None:
    # Chains are typed end to end: a member named with " ▸ " must not split into two links (it chose the framework).
    import zipfile

    from mlwarden.loader.safe import detect_framework

    path = tmp_path / "model.bin"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a ▸ b/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("a ▸ b/version", b"3\n")
    result = scan_one(path)
    assert ((str(path), "a ▸ b/data.pkl"), "pickle") in result.formats
    assert detect_framework(path, result) == "torch"
