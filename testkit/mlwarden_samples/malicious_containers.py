"""Malicious containers: nesting, path traversal, absolute and symlinked members, and opaque archive formats.

These attack the walker rather than a format handler: an extractor that trusts member names writes
outside its folder, a scanner that stops at the first archive level misses the payload, and a format
the scanner cannot open (7z, RAR) must be reported rather than passed.
"""

from __future__ import annotations

import binascii
import io
import struct
import tarfile
import zipfile
from pathlib import Path

from mlwarden_samples import BuildContext, Made, register
from mlwarden_samples.malicious_pickle import os_system

SYSTEM = ("os.system",)
_MTIME = 1_700_000_000


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
    tf.addfile(info, io.BytesIO(data))


@register("malicious", "nested-archive")
def _nested(ctx: BuildContext, folder: Path) -> list[Made]:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("weights/README.txt", "weights\n")
        zf.writestr("weights/data.pkl", os_system(ctx, "nested-archive"))
    path = folder / "bundle.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        _tar_add(tf, "bundle/config.json", b'{"name": "bundle"}\n')
        _tar_add(tf, "bundle/weights.zip", inner.getvalue())
    return [Made(path, "tar.gz containing a zip containing an os.system pickle", SYSTEM)]


@register("malicious", "zip-path-traversal")
def _zip_traversal(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/config.json", '{"name": "model"}\n')
        zf.writestr(zipfile.ZipInfo("../../evil.pkl"), os_system(ctx, "zip-path-traversal"))
    return [Made(path, "zip with a member named ../../evil.pkl (an os.system pickle)", SYSTEM)]


@register("malicious", "zip-absolute-name")
def _zip_absolute(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/config.json", '{"name": "model"}\n')
        absolute = zipfile.ZipInfo(str(ctx.canary_dir / "abs-evil.pkl"))
        zf.writestr(absolute, os_system(ctx, "zip-absolute-name"))
    return [Made(path, "zip with an absolute member name (inside the canary dir) holding an os.system pickle", SYSTEM)]


@register("malicious", "tar-symlink")
def _tar_symlink(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _tar_add(tf, "model/config.json", b'{"name": "model"}\n')
        link = tarfile.TarInfo("model/weights.pkl")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, str(ctx.canary_dir / "symlink-target"), _MTIME
        tf.addfile(link)
        # Extracting this through the link above would write outside the extraction folder.
        _tar_add(tf, "model/weights.pkl", os_system(ctx, "tar-symlink"))
    return [Made(path, "tar whose member is a symlink to an absolute path, then a file written through it", SYSTEM)]


@register("malicious", "tar-path-traversal")
def _tar_traversal(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        _tar_add(tf, "model/config.json", b'{"name": "model"}\n')
        _tar_add(tf, "../../evil.pkl", os_system(ctx, "tar-path-traversal"))
    return [Made(path, "tar.gz with a member named ../../evil.pkl (an os.system pickle)", SYSTEM)]


def _num7z(value: int) -> bytes:
    """7z variable-length NUMBER (enough for values below 2**21)."""
    if value < 0x80:
        return bytes([value])
    if value < 0x4000:
        return bytes([0x80 | (value >> 8), value & 0xFF])
    if value < 0x200000:
        return bytes([0xC0 | (value >> 16), value & 0xFF, (value >> 8) & 0xFF])
    raise ValueError("value too large for this minimal 7z writer")


def seven_zip(name: str, data: bytes) -> bytes:
    """A minimal one-file 7z archive using the Copy (stored) coder, written by hand (no 7z library)."""
    size = _num7z(len(data))
    utf16 = name.encode("utf-16-le") + b"\x00\x00"
    header = (
        b"\x01"  # kHeader
        b"\x04"  # kMainStreamsInfo
        b"\x06\x00\x01\x09" + size + b"\x00"  # kPackInfo: pos 0, 1 stream, kSize, kEnd
        b"\x07\x0b\x01\x00\x01\x01\x00\x0c" + size + b"\x00"  # kUnPackInfo: 1 folder, Copy coder
        b"\x00"  # kEnd (streams)
        b"\x05\x01\x11" + _num7z(len(utf16) + 1) + b"\x00" + utf16 + b"\x00"  # kFilesInfo: kName
        b"\x00"
    )  # kEnd (header)
    start = struct.pack("<QQI", len(data), len(header), binascii.crc32(header))
    return b"7z\xbc\xaf\x27\x1c\x00\x04" + struct.pack("<I", binascii.crc32(start)) + start + data + header


@register("malicious", "opaque-7z")
def _seven_zip(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.7z"
    path.write_bytes(seven_zip("data.pkl", os_system(ctx, "opaque-7z")))
    return [
        Made(
            path,
            "7z archive (stored) holding an os.system pickle; must at least be reported as an opaque container",
            SYSTEM,
        )
    ]


@register("malicious", "opaque-rar")
def _rar(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.rar"
    # RAR 5 signature, then an (unparsed) body carrying the payload bytes: only the signature is real.
    path.write_bytes(b"Rar!\x1a\x07\x01\x00" + b"\x00" * 8 + os_system(ctx, "opaque-rar"))
    return [
        Made(
            path,
            "RAR 5 signature followed by an os.system pickle; an opaque container that cannot be shown safe",
            SYSTEM,
        )
    ]
