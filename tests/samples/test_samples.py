"""The sample builders themselves: files exist, labels agree, payloads only aim at the canary, nothing runs.

Detection over these samples is tested elsewhere; here no sample is ever loaded. Pickles are only walked
with ``pickletools`` (which reads opcodes and never calls anything).
"""

from __future__ import annotations

import base64
import binascii
import bz2
import gzip
import importlib
import io
import json
import lzma
import pickletools
import re
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

import mlwarden_samples as samples_mod
from mlwarden_samples import Sample, build_all, build_benign, build_malicious, families
from mlwarden_samples.__main__ import DEMO_FAMILIES, main
from mlwarden_samples.malicious_containers import seven_zip
from mlwarden_samples.malicious_formats import patch_zip

# Families that may legitimately build nothing even with their framework installed.
MAY_BE_EMPTY = {"onnx-torch-export"}
# Malicious families with no single dangerous callable to name.
NO_EXPECT = {"onnx-external-traversal", "onnx-custom-domain"}
# Payload strings that are not under the canary dir but are still harmless.
ALLOWED_PATHS = {"/bin/sh"}
# Code objects a sample carries (a Keras Lambda's bytecode) name the builder's own source file: not a target.
KIT = Path(samples_mod.__file__).resolve().parent
TRUNCATED = {"pickle-truncated-tail"}
# Payloads whose target is implicit: a read-only path escape, and logging.config.listen (binds localhost).
NOT_AIMED = {"onnx-external-traversal", "pickle-logging-listen"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Sample]]:
    root = tmp_path_factory.mktemp("corpus")
    canary = tmp_path_factory.mktemp("canary-dir")
    return root, canary, build_all(root, canary)


def by_family(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.family, []).append(s)
    return out


# --- blob and string extraction (parsing only, never loading) -------------------------------------


def _zip_members(data: bytes) -> list[bytes]:
    out = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            start = info.header_offset
            n, m = struct.unpack_from("<HH", data, start + 26)
            raw = data[start + 30 + n + m : start + 30 + n + m + info.compress_size]
            # Raw slices survive the flag/CRC tampering that makes zipfile.read refuse a member.
            out.append(raw if info.compress_type == zipfile.ZIP_STORED else zlib.decompress(raw, -15))
    return out


def _b64(text: bytes) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return b""


def blobs(data: bytes, depth: int = 0) -> list[bytes]:
    """``data`` plus everything decompressed or unpacked from it, recursively."""
    out = [data]
    if depth > 4:
        return out
    inner: list[bytes] = []
    try:
        if data[:2] == b"\x1f\x8b":
            inner = [gzip.decompress(data)]
        elif data[:3] == b"BZh":
            inner = [bz2.decompress(data)]
        elif data[:6] == b"\xfd7zXZ\x00" or data[:1] == b"\x5d":
            inner = [lzma.decompress(data)]
        elif data[:1] == b"\x78":
            inner = [zlib.decompressobj().decompress(data)]
        elif data[:4] == b"PK\x03\x04":
            inner = _zip_members(data)
        elif len(data) > 262 and data[257:262] == b"ustar":
            with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                inner = [tf.extractfile(m).read() for m in tf if m.isfile()]  # type: ignore[union-attr]
                inner += [m.linkname.encode() for m in tf if m.issym() or m.islnk()]
                inner += [m.name.encode() for m in tf]
        elif data[:1] == b"{":  # base64 inside JSON (Keras Lambda bytecode)
            inner = [_b64(s.replace(rb"\n", b"")) for s in re.findall(rb'"([A-Za-z0-9+/=\\n]{40,})"', data)]
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError):
        inner = []
    for b in inner:
        out.extend(blobs(b, depth + 1))
    return out


def sample_bytes(sample: Sample) -> list[bytes]:
    path = sample.path
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out: list[bytes] = []
    for f in files:
        out.extend(blobs(f.read_bytes()))
        out.append(f.name.encode())
    return out


PATH_RE = re.compile(r"(?:^|[\s'\"(=\[,])(/[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)+)")
URL_RE = re.compile(r"\b[a-z]+://([^/\s'\":]+)")


def printable_runs(blob: bytes) -> list[str]:
    return [m.decode("ascii") for m in re.findall(rb"[\x20-\x7e]{6,}", blob)]


# --- pickle stream discovery --------------------------------------------------------------------


def pickle_streams(sample: Sample) -> list[bytes]:
    """The pickle streams a loader of ``sample`` would unpickle (empty for non-pickle formats)."""
    path = sample.path
    if not path.is_file():
        return []
    data = path.read_bytes()
    name = path.name
    if name.endswith((".pkl", ".safetensors")) and data[:1] in (b"\x80", b"c"):
        return [data]
    if name.endswith((".pkl.gz", ".pkl.bz2", ".pkl.xz")):
        return [blobs(data)[1]]
    if name.endswith(".npy"):
        return [data[10 + struct.unpack_from("<H", data, 8)[0] :]] if b"'|O'" in data[:128] else []
    if data[:4] == b"PK\x03\x04" and name.endswith((".pt", ".txt", ".npz")):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
        members = dict(zip(names, _zip_members(data), strict=True))
        picked = [raw for n, raw in members.items() if n.endswith(("data.pkl", "evil.bin"))]
        picked += [
            raw[10 + struct.unpack_from("<H", raw, 8)[0] :]
            for n, raw in members.items()
            if n.endswith(".npy") and b"'|O'" in raw[:128]
        ]
        return picked
    if name.endswith((".bin", ".pt")) and data[:2] == b"\x80\x02":  # legacy: magic, version, sys_info, main
        stream, out = io.BytesIO(data), []
        for _ in range(4):
            start = stream.tell()
            for _op in pickletools.genops(stream):
                pass
            out.append(data[start : stream.tell()])
        return out
    return []


def globals_in(stream: bytes) -> list[str]:
    """``module.name`` of GLOBAL/INST, of STACK_GLOBAL after two string pushes, and of nested pickles."""
    out: list[str] = []
    pushes: list[str | None] = []
    for op, arg, _pos in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):
            out.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(pushes) >= 2 and None not in pushes[-2:]:
            out.append(f"{pushes[-2]}.{pushes[-1]}")
        elif isinstance(arg, bytes) and arg[:1] == b"\x80":
            out += globals_in(arg)
        if op.name != "MEMOIZE":
            pushes.append(arg if isinstance(arg, str) and "UNICODE" in op.name else None)
    return out


# --- tests ------------------------------------------------------------------------------------------


def test_every_family_built_files_where_expected(built: tuple[Path, Path, list[Sample]]) -> None:
    root, _canary, samples = built
    got = by_family(samples)
    assert set(got) | MAY_BE_EMPTY >= set(families()), "every family is importable in the dev venv"
    assert len(got.get("pickle-os-system", [])) == 1
    for s in samples:
        assert s.path.exists()
        assert s.path.resolve().is_relative_to(root / s.label / s.family)
        assert s.label in ("benign", "malicious")
        assert s.description
        if s.path.is_file():
            assert s.path.stat().st_size > 0
        else:
            assert any(p.is_file() for p in s.path.iterdir())
    assert len({s.path for s in samples}) == len(samples), "no two samples share a path"


def test_labels_json_matches_samples(built: tuple[Path, Path, list[Sample]]) -> None:
    root, _canary, samples = built
    labels = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    assert set(labels) == {s.path.relative_to(root).as_posix() for s in samples}
    for s in samples:
        entry = labels[s.path.relative_to(root).as_posix()]
        assert entry == {"label": s.label, "expect": list(s.expect), "note": s.description, "family": s.family}
        if s.label == "benign":
            assert s.expect == ()
        elif s.family not in NO_EXPECT:
            assert s.expect, s.family
            assert all("." in e for e in s.expect), s.family


def test_sizes_are_small(built: tuple[Path, Path, list[Sample]]) -> None:
    root, _canary, _samples = built
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 50 * 2**20


def test_building_never_fires_a_canary(built: tuple[Path, Path, list[Sample]]) -> None:
    root, canary, _samples = built
    assert canary.is_dir()
    assert list(canary.iterdir()) == []
    assert not [p for p in root.rglob("*.canary")]


def test_payloads_only_name_the_canary_dir_or_loopback(built: tuple[Path, Path, list[Sample]]) -> None:
    _root, canary, samples = built
    for s in samples:
        if s.label != "malicious":
            continue
        texts = [t for b in sample_bytes(s) for t in printable_runs(b)]
        for text in texts:
            for host in URL_RE.findall(text):
                assert host == "127.0.0.1", (s.family, text)
            for path in PATH_RE.findall(text):
                allowed = path in ALLOWED_PATHS or Path(path).is_relative_to(canary) or Path(path).is_relative_to(KIT)
                assert allowed, (s.family, text)
        aimed = any(str(canary) in t or "127.0.0.1" in t for t in texts)
        assert aimed or s.family in NOT_AIMED, f"{s.family}: payload names neither target"


def test_benign_samples_carry_no_canary(built: tuple[Path, Path, list[Sample]]) -> None:
    _root, canary, samples = built
    for s in samples:
        if s.label == "benign":
            assert not any(str(canary).encode() in b for b in sample_bytes(s)), s.family


def test_malicious_pickles_are_valid_pickles(built: tuple[Path, Path, list[Sample]]) -> None:
    _root, _canary, samples = built
    checked = 0
    for s in samples:
        if s.label != "malicious":
            continue
        for stream in pickle_streams(s):
            checked += 1
            if s.family in TRUNCATED:
                ops: list[str] = []
                with pytest.raises(ValueError, match="unicodestring4"):
                    ops.extend(op.name for op, _arg, _pos in pickletools.genops(stream))
                assert ops[-1] == "REDUCE"
                assert "GLOBAL" in ops
            else:
                pickletools.dis(stream, out=io.StringIO())  # checks stack and memo use, and STOP at the end
    assert checked >= 60


def _raw_streams(sample: Sample) -> list[bytes]:
    data = sample.path.read_bytes()
    if sample.family == "pickle-trailing-after-stop":
        cut = data.index(b"\x00" * 7)
        return [data[:cut], data[cut + 7 :]]
    if sample.family == "pickle-concatenated":
        first = next(pos for op, _a, pos in pickletools.genops(data) if op.name == "STOP") + 1
        return [data[:first], data[first:]]
    return [data]


def test_malicious_raw_pickles_name_their_expected_globals(built: tuple[Path, Path, list[Sample]]) -> None:
    _root, _canary, samples = built
    checked = 0
    for s in samples:
        if s.label != "malicious" or not s.family.startswith("pickle-") or s.path.suffix != ".pkl":
            continue
        if s.family in TRUNCATED | {"pickle-stack-global-decoys", "pickle-ext1"}:
            continue  # malformed, or resolved through the memo / the extension registry (see description)
        names = [n for stream in _raw_streams(s) for n in globals_in(stream)]
        assert set(s.expect) <= set(names), (s.family, names)
        checked += 1
    assert checked >= 40


def test_named_globals_resolve_to_real_callables(built: tuple[Path, Path, list[Sample]]) -> None:
    """Canaries must point at real gadgets (importing a module is not loading a sample)."""
    _root, _canary, samples = built
    for s in samples:
        if s.label != "malicious" or not s.family.startswith("pickle-") or s.family in TRUNCATED:
            continue
        streams = _raw_streams(s) if s.path.suffix == ".pkl" else []
        for qual in [n for stream in streams for n in globals_in(stream)]:
            if qual.startswith("requests."):
                continue  # deliberately not installed
            module, _, name = qual.replace("__builtin__.", "builtins.", 1).rpartition(".")
            while True:
                try:
                    obj: object = importlib.import_module(module)
                    break
                except ModuleNotFoundError:
                    module, _, head = module.rpartition(".")
                    name = f"{head}.{name}"
            for part in name.split("."):
                obj = getattr(obj, part)
            assert callable(obj), qual


def test_benign_pickle_streams_are_complete(built: tuple[Path, Path, list[Sample]]) -> None:
    _root, _canary, samples = built
    checked = 0
    for s in samples:
        if s.label == "benign":
            for stream in pickle_streams(s):
                pickletools.dis(stream, out=io.StringIO())
                checked += 1
    assert checked >= 30


@pytest.mark.parametrize(
    ("family", "flag", "crc_changed"),
    [
        ("torch-zip-flag-encrypted", 0x1, False),
        ("torch-zip-flag-descriptor", 0x8, False),
        ("torch-zip-flag-patched", 0x20, False),
        ("torch-zip-bad-crc", 0, True),
    ],
)
def test_tampered_zip_headers(
    built: tuple[Path, Path, list[Sample]], family: str, flag: int, crc_changed: bool
) -> None:
    _root, _canary, samples = built
    (sample,) = by_family(samples)[family]
    data = sample.path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("archive/data.pkl")
    (local_flags,) = struct.unpack_from("<H", data, info.header_offset + 6)
    assert info.flag_bits & flag == flag
    assert local_flags & flag == flag
    payload = _zip_members(data)[0]
    assert (binascii.crc32(payload) != info.CRC) is crc_changed


def test_patch_zip_roundtrip() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"alpha")
        zf.writestr("b.txt", b"beta")
    patched = patch_zip(buf.getvalue(), "b.txt", set_flags=0x2, crc_xor=1)
    with zipfile.ZipFile(io.BytesIO(patched)) as zf:
        a, b = zf.getinfo("a.txt"), zf.getinfo("b.txt")
        assert (a.flag_bits & 0x2, b.flag_bits & 0x2) == (0, 0x2)
        assert zf.read("a.txt") == b"alpha"
        with pytest.raises(zipfile.BadZipFile, match="CRC"):
            zf.read("b.txt")


def test_seven_zip_headers_are_consistent() -> None:
    data = seven_zip("data.pkl", b"payload-bytes")
    assert data[:6] == b"7z\xbc\xaf\x27\x1c"
    (start_crc,) = struct.unpack_from("<I", data, 8)
    assert binascii.crc32(data[12:32]) == start_crc
    offset, size, crc = struct.unpack_from("<QQI", data, 12)
    header = data[32 + offset : 32 + offset + size]
    assert binascii.crc32(header) == crc
    assert 32 + offset + size == len(data)
    assert data[32 : 32 + len(b"payload-bytes")] == b"payload-bytes"
    assert "data.pkl".encode("utf-16-le") in header


def test_only_filters_by_name_and_pattern(tmp_path: Path) -> None:
    got = build_malicious(tmp_path, tmp_path / "c", only=["pickle-os-*", "zip-path-traversal"])
    assert {s.family for s in got} == {"pickle-os-system", "zip-path-traversal"}
    assert build_benign(tmp_path, only=["no-such-family"]) == []


def test_missing_framework_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = samples_mod._importable
    monkeypatch.setattr(samples_mod, "_importable", lambda name: name != "torch" and real(name))
    got = build_malicious(tmp_path, tmp_path / "c", only=["torch-zip-data-pkl", "safetensors-pickle"])
    assert [s.family for s in got] == ["safetensors-pickle"]
    assert not (tmp_path / "malicious" / "torch-zip-data-pkl").exists()


def test_raw_pickles_are_deterministic(tmp_path: Path) -> None:
    canary = tmp_path / "c"
    first = build_malicious(tmp_path / "a", canary, only=["pickle-*"])
    second = build_malicious(tmp_path / "b", canary, only=["pickle-*"])
    assert [s.path.read_bytes() for s in first] == [s.path.read_bytes() for s in second]


def test_cli_builds_selection_and_writes_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, canary = tmp_path / "out", tmp_path / "canary"
    assert main([str(out), "--canary-dir", str(canary), "--only", "pickle-os-system,numpy"]) == 0
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    assert {e["family"] for e in labels.values()} == {"pickle-os-system", "numpy"}
    assert labels["malicious/pickle-os-system/model.pkl"]["expect"] == ["os.system"]
    assert str(canary) in (out / "malicious/pickle-os-system/model.pkl").read_text("latin-1")
    assert "1 malicious" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([str(out), "--only", "nope-*"])
    assert exc.value.code == 2


def test_cli_demo_builds_the_demo_subset(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    assert set(DEMO_FAMILIES) <= set(families())
    assert main(["demo", str(out), "--only", "pickle-os-system"]) == 0  # --only still narrows a demo
    assert (out / "malicious/pickle-os-system/model.pkl").is_file()
    assert main(["demo", str(out), "--malicious-only", "--only", "zip-*"]) == 0
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    assert {e["family"] for e in labels.values()} == {"zip-path-traversal", "zip-absolute-name"}
    assert (out / "canary").is_dir()
    assert not list((out / "canary").iterdir())
