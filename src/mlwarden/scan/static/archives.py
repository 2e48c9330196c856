"""Zip and tar containers, walked member by member under limits — at least as leniently as loaders.

PyTorch reads zip members by the central directory and ignores general-purpose flag bits, CRCs and
local-header names; scanners that use :mod:`zipfile` as-is crash on such files while the loader
happily runs them. So members are opened here the way the loader opens them: central directory entry,
local header only for the data offset, flags and CRC ignored — and every anomaly is reported.
A member that cannot be read is a finding, never a silent skip, and one bad member never stops the walk.
"""

from __future__ import annotations

import copy
import re
import stat
import struct
import zipfile
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from mlwarden.artifacts.artifact import HEAD_SIZE, SliceReader
from mlwarden.artifacts.pickle_ops import looks_like_pickle
from mlwarden.artifacts.sniff import Format, sniff
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Confidence, Location, Severity, rule
from mlwarden.scan.context import INCOMPLETE
from mlwarden.scan.static.base import Handler

if TYPE_CHECKING:
    import tarfile

    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

UNSAFE_NAME = rule(
    "MLW-ARC-001",
    "Archive member path escapes the extraction folder",
    Severity.HIGH,
    cwe=22,
    description="A member name is absolute or contains '..', so extracting the archive writes outside the "
    "target folder (path traversal, 'zip slip').",
    remediation="Do not extract this archive with a tool that honours member paths; rebuild it from trusted files.",
)
LINK_MEMBER = rule(
    "MLW-ARC-002",
    "Archive member is a link or special file",
    Severity.MEDIUM,
    cwe=59,
    description="A symbolic link, hard link or device member can make extraction read or overwrite files outside "
    "the archive.",
    remediation="Remove links from model archives.",
)
BOMB = rule(
    "MLW-ARC-003",
    "Archive member compression ratio is suspicious",
    Severity.MEDIUM,
    cwe=409,
    description="The member expands to more than [limits].min_bomb_size at a ratio far above what model data "
    "reaches (decompression bomb); it was not decompressed.",
    remediation="Raise [limits].max_compression_ratio or [limits].min_bomb_size if this archive is legitimate.",
)
UNREADABLE = rule(
    "MLW-ARC-004",
    "Archive member could not be read",
    Severity.MEDIUM,
    cwe=20,
    description="The member's data could not be located or decompressed, so it was not analysed; another "
    "reader might still load it.",
    remediation="Inspect the archive by hand.",
)
HEADER_MISMATCH = rule(
    "MLW-ARC-005",
    "Zip headers disagree",
    Severity.LOW,
    cwe=20,
    description="Local header and central directory disagree (name, or flag bits such as 'encrypted' set on data "
    "that is not encrypted): a known trick to crash scanners while PyTorch still loads the member.",
    remediation="Rebuild the archive with a standard tool.",
    confidence=Confidence.HIGH,
)
ENCRYPTED = rule(
    "MLW-ARC-006",
    "Encrypted archive member",
    Severity.LOW,
    cwe=311,
    description="The member is encrypted and its bytes are not a recognisable format, so model loaders (which "
    "ignore encryption) cannot load it either; its content was not analysed.",
    remediation="Decrypt the archive and scan its content.",
)
CENTRAL_DIRECTORY = rule(
    "MLW-ARC-007",
    "Zip central directory unreadable",
    Severity.MEDIUM,
    cwe=20,
    description="The zip's central directory could not be parsed; members were recovered from local headers.",
    remediation="Rebuild the archive; inspect it by hand before loading.",
)
OPAQUE = rule(
    "MLW-ARC-010",
    "Container format not opened",
    Severity.MEDIUM,
    cwe=693,
    description="7z and RAR containers are not opened by mlwarden (nor by model loaders, so a model packed this "
    "way is unpacked by some other tool first); its contents were not analysed.",
    remediation="Unpack the container and scan the extracted files.",
)

_TORCH_STORAGE = re.compile(r"(^|/)data/\d+$")
_TORCHSCRIPT_CODE = re.compile(r"(^|/)code/.+\.py$")
_TORCH_PICKLE = re.compile(r"(^|/)[^/]+\.pkl$")  # data.pkl, constants.pkl: torch.load unpickles them by name
_SMALL_HEAD = 256


def _unsafe(name: str) -> bool:
    n = name.replace("\\", "/")
    return n.startswith("/") or bool(re.match(r"^[A-Za-z]:", n)) or ".." in n.split("/")


def _head(opener: Callable[[], BinaryIO], size: int) -> bytes:
    with opener() as fh:
        return fh.read(size)


class ZipHandler(Handler):
    """Zip archives: PyTorch checkpoints, TorchScript, Keras v3, npz, and plain zips."""

    formats = (Format.ZIP,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Walk every member (central directory first, local headers as a fallback)."""
        try:
            with artifact.open() as fh:
                infos = zipfile.ZipFile(fh).infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            ctx.report(CENTRAL_DIRECTORY.finding(artifact.location(), f"{type(exc).__name__}: {exc}"))
            infos = _local_headers(artifact, ctx)
        if len(infos) > ctx.limits.max_members:
            ctx.report(
                INCOMPLETE.finding(
                    artifact.location(),
                    f"{len(infos)} members, max_members is {ctx.limits.max_members}",
                    limit="max_members",
                )
            )
            infos = infos[: ctx.limits.max_members]
        torch_like = any(i.filename.endswith("data.pkl") for i in infos)
        for info in infos:
            ctx.check_time()
            try:
                self._member(artifact, ctx, info, torch_like)
            except LimitExceeded:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad member must never hide the ones after it
                ctx.report(
                    UNREADABLE.finding(
                        artifact.location(),
                        f"member {info.filename!r}: {type(exc).__name__}: {exc}",
                        member=info.filename,
                    )
                )

    def _member(  # noqa: C901 - each check of one zip member, in the order a loader meets them
        self, artifact: Artifact, ctx: ScanContext, info: zipfile.ZipInfo, torch_like: bool
    ) -> None:
        name = info.filename
        if not name:
            raise ValueError("member without a name")
        loc = Location((*artifact.chain, name))
        if _unsafe(name):
            ctx.report(UNSAFE_NAME.finding(loc, f"member {name!r}", member=name))
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            ctx.report(LINK_MEMBER.finding(loc, f"member {name!r} is a symbolic link", member=name))
            return
        if info.is_dir():
            return
        if info.file_size > ctx.limits.max_member_size:
            ctx.report(
                INCOMPLETE.finding(
                    loc, f"member {name!r} is {info.file_size} bytes uncompressed", limit="max_member_size"
                )
            )
            return
        if info.compress_type != zipfile.ZIP_STORED:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > ctx.limits.max_compression_ratio and info.file_size > ctx.limits.min_bomb_size:
                ctx.report(
                    BOMB.finding(
                        loc,
                        f"member {name!r}: {info.compress_size} -> {info.file_size} bytes (ratio {ratio:.0f})",
                        member=name,
                    )
                )
                return
            ctx.account(info.file_size)
        try:
            data_start, local_name = _data_start(artifact, info)
            if local_name is not None and local_name != info.orig_filename:
                ctx.report(
                    HEADER_MISMATCH.finding(
                        loc,
                        f"central directory says {info.orig_filename!r}, local header says {local_name!r}",
                        member=name,
                    )
                )
            if info.flag_bits & 0x61:
                ctx.report(
                    HEADER_MISMATCH.finding(
                        loc,
                        f"member {name!r} has flag bits 0x{info.flag_bits:x} "
                        "(encryption/patch bits), read as the loader does",
                        member=name,
                    )
                )
            opener = _member_opener(artifact, info, data_start)
            small = torch_like and _TORCH_STORAGE.search(name) is not None
            head = _head(opener, _SMALL_HEAD if small else HEAD_SIZE)
        except LimitExceeded:
            raise
        except Exception as exc:  # noqa: BLE001 - one unreadable member must not end the walk
            ctx.report(UNREADABLE.finding(loc, f"member {name!r}: {type(exc).__name__}: {exc}", member=name))
            return
        child = artifact.child(name, info.file_size, opener, head)
        if small:  # tensor storage: only a hidden pickle or archive would matter; don't sniff the bytes further
            # Random tensor bytes start with b"\x80\x02" about once in 10,000 storages: a PROTO prefix alone is not
            # enough, the opcodes after it must decode with a valid stack shape (torch never unpickles storages).
            proto = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
            if (proto and looks_like_pickle(head[2:])) or looks_like_pickle(head):
                ctx.descend(child, Format.PICKLE)
            elif head.startswith(b"PK"):
                ctx.descend(child, Format.ZIP)
            return
        fmt = sniff(child)
        if fmt is Format.UNKNOWN and info.flag_bits & 0x1:
            ctx.report(ENCRYPTED.finding(child.location(), f"member {name!r} is encrypted", member=name))
            return
        if torch_like and fmt is Format.TEXT and _TORCHSCRIPT_CODE.search(name):
            fmt = Format.PYTHON_SOURCE  # TorchScript code/ members: compiled by torch.jit.load
        elif torch_like and fmt is not Format.PICKLE and _TORCH_PICKLE.search(name):
            fmt = Format.PICKLE  # the loader unpickles these whatever they look like: analyse them as it reads them
        ctx.descend(child, fmt)


def _data_start(artifact: Artifact, info: zipfile.ZipInfo) -> tuple[int, str | None]:
    with artifact.open() as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"no local header at offset {info.header_offset}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        raw_name = fh.read(name_len)
    flags = struct.unpack("<H", local[6:8])[0]
    local_name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    return info.header_offset + 30 + name_len + extra_len, local_name


def _member_opener(artifact: Artifact, info: zipfile.ZipInfo, data_start: int) -> Callable[[], BinaryIO]:
    """An opener reading the member like PyTorch: flags and CRC ignored."""
    if info.compress_type == zipfile.ZIP_STORED:
        size = info.compress_size
        return lambda: SliceReader(artifact.open, data_start, size)  # type: ignore[return-value]
    lenient = copy.copy(info)
    lenient.flag_bits &= ~0x61  # ignore encryption / patched-data / strong-encryption bits, as loaders do

    def opener() -> BinaryIO:
        fh = artifact.open()
        fh.seek(data_start)
        ext = zipfile.ZipExtFile(fh, "r", lenient, None, True)
        ext._expected_crc = None  # type: ignore[attr-defined] # PyTorch does not verify CRCs either
        return ext  # type: ignore[return-value]

    return opener


def _local_headers(artifact: Artifact, ctx: ScanContext) -> list[zipfile.ZipInfo]:
    """Recover members by scanning local file headers (sizes must be present in the local header)."""
    infos: list[zipfile.ZipInfo] = []
    size = artifact.size or 0
    with artifact.open() as fh:
        pos = 0
        while pos + 30 <= size and len(infos) < ctx.limits.max_members:
            fh.seek(pos)
            local = fh.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                break
            (_, _, flags, method, _, _, crc, csize, usize, nlen, elen) = struct.unpack("<4sHHHHHIIIHH", local)
            name = fh.read(nlen).decode("utf-8" if flags & 0x800 else "cp437", "replace")
            info = zipfile.ZipInfo(name)
            info.flag_bits, info.compress_type, info.CRC = flags, method, crc
            info.compress_size, info.file_size, info.header_offset = csize, usize, pos
            infos.append(info)
            if csize == 0 and flags & 0x8:
                break  # sizes only in a trailing data descriptor: cannot find the next header reliably
            pos += 30 + nlen + elen + csize
    return infos


class TarHandler(Handler):
    """Tar archives (compressed layers are removed by the compressed handler first)."""

    formats = (Format.TAR,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Walk every member; regular files are analysed as slices of the archive."""
        import tarfile

        count = 0
        with artifact.open() as fh:
            try:
                tar = tarfile.open(fileobj=fh, mode="r:")
            except tarfile.TarError as exc:
                ctx.report(UNREADABLE.finding(artifact.location(), f"tar header: {exc}"))
                return
            while True:
                ctx.check_time()
                try:
                    member = tar.next()
                except tarfile.TarError as exc:
                    ctx.report(UNREADABLE.finding(artifact.location(), f"after {count} members: {exc}"))
                    return
                if member is None:
                    return
                count += 1
                if count > ctx.limits.max_members:
                    raise LimitExceeded("max_members", f"more than {ctx.limits.max_members} tar members")
                self._member(artifact, ctx, member)
                tar.members = []  # type: ignore[attr-defined] # keep memory flat on archives with many members

    def _member(self, artifact: Artifact, ctx: ScanContext, m: tarfile.TarInfo) -> None:
        loc = Location((*artifact.chain, m.name))
        if _unsafe(m.name):
            ctx.report(UNSAFE_NAME.finding(loc, f"member {m.name!r}", member=m.name))
        if m.issym() or m.islnk():
            target = m.linkname
            sev = Severity.HIGH if _unsafe(target) else None
            ctx.report(LINK_MEMBER.finding(loc, f"member {m.name!r} links to {target!r}", severity=sev, member=m.name))
            return
        if m.isdev() or m.isfifo():
            ctx.report(LINK_MEMBER.finding(loc, f"member {m.name!r} is a device or FIFO", member=m.name))
            return
        if not m.isfile():
            return
        if m.size > ctx.limits.max_member_size:
            ctx.report(INCOMPLETE.finding(loc, f"member {m.name!r} is {m.size} bytes", limit="max_member_size"))
            return
        start, size = m.offset_data, m.size

        def opener(s: int = start, n: int = size) -> BinaryIO:
            return SliceReader(artifact.open, s, n)  # type: ignore[return-value]

        ctx.descend(artifact.child(m.name, size, opener, _head(opener, HEAD_SIZE)))


class OpaqueArchiveHandler(Handler):
    """7z and RAR: reported, never silently skipped."""

    formats = (Format.SEVENZIP, Format.RAR)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Report that the container's content was not analysed."""
        kind = "7z" if artifact.head.startswith(b"7z") else "RAR"
        ctx.report(OPAQUE.finding(artifact.location(), f"{kind} container ({artifact.size} bytes)"))
