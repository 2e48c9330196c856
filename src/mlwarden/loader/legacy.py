"""Formats older loaders still meet: joblib < 0.10 (``ZF`` zlib files, arrays in companion files) and archives.

joblib 0.8/0.9 wrote a model as a pickle plus one companion file per array (``model.pkl_01.npy``, or
``model.pkl_01.npy.z`` zlib-compressed); the pickle holds ``NDArrayWrapper``/``ZNDArrayWrapper`` objects naming
them. joblib reads those names with ``np.load(..., allow_pickle=True)`` from the pickle's folder. Here a name is
honoured only when it is a plain file name of the same folder (never a path, never ``..``) and the companion is
read with the same restrictions as the model (object arrays through the restricted unpickler).

Archives (``.tar.gz`` of an AllenNLP model, a zip of weights) are opened member by member, never extracted to
paths taken from the archive.
"""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mlwarden.core.errors import LimitExceeded, UsageError
from mlwarden.core.policy import Limits

ZF_MAGIC = b"ZF"
_ZF_HEADER = re.compile(rb"ZF0x([0-9a-fA-F]+)L? *")


def companion_pattern(name: str) -> re.Pattern[str]:
    """File names joblib < 0.10 gives the companions of ``name`` (``name_01.npy``, ``name_01.npy.z``)."""
    return re.compile(re.escape(name) + r"_\d{2,}\.npy(\.z)?")


def read_zfile(fh: IO[bytes], limit: int) -> bytes:
    """Decompress a joblib ``ZF`` file: ``ZF`` + hex length padded with spaces (19 or 20 characters), then zlib.

    The padding width differs between the Python 2 and 3 writers, so the zlib stream is found after the padding
    rather than at a fixed offset. At most ``limit`` bytes are inflated.
    """
    head = fh.read(32)
    m = _ZF_HEADER.match(head)
    if m is None:
        raise UsageError("not a joblib ZF file (bad header)")
    length = int(m.group(1), 16)
    if length > limit:
        raise LimitExceeded("max_member_size", f"joblib ZF payload of {length} bytes exceeds {limit}")
    inflater = zlib.decompressobj()
    out = [inflater.decompress(head[m.end() :], length + 1)]
    size = len(out[0])
    while size <= length and not inflater.eof:
        chunk = fh.read(1 << 20)
        if not chunk:
            break
        piece = inflater.decompress(chunk, length + 1 - size)
        size += len(piece)
        out.append(piece)
    data = b"".join(out)
    if not inflater.eof:
        raise UsageError("joblib ZF payload is truncated (no end of the zlib stream)")
    if len(data) != length:
        raise UsageError(f"joblib ZF payload is {len(data)} bytes, its header says {length}")
    return data


def companion(folder: Path, filename: object) -> Path:
    """The companion file ``filename`` names, if it is a plain name of ``folder`` that exists."""
    if not isinstance(filename, str) or not filename or "/" in filename or "\\" in filename or filename in (".", ".."):
        raise UsageError(f"joblib array wrapper names {filename!r}, which is not a file of the model's folder")
    path = folder / filename
    if not path.is_file() or path.is_symlink():
        raise UsageError(f"joblib array wrapper names {filename!r}, which is missing beside the model")
    return path


def archive_members(path: Path, limits: Limits) -> Iterator[tuple[str, bytes]]:
    """Regular members of a tar (any compression) or zip archive, as (name, bytes), within ``limits``."""
    total = 0
    count = 0

    def account(name: str, size: int) -> None:
        nonlocal total, count
        count += 1
        total += size
        if count > limits.max_members:
            raise LimitExceeded("max_members", f"more than {limits.max_members} members")
        if size > limits.max_member_size or total > limits.max_total_uncompressed:
            raise LimitExceeded("max_member_size", f"member {name!r} takes the archive past its size limits")

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                account(info.filename, info.file_size)
                yield info.filename, zf.read(info)
        return
    try:
        tf = tarfile.open(path, mode="r:*")
    except tarfile.TarError as exc:
        raise UsageError(f"not an archive mlwarden can open: {exc}") from None
    with tf:
        for member in tf:
            if not member.isreg():
                continue  # links, devices and folders carry no model bytes (the analysis reported odd ones)
            account(member.name, member.size)
            fh = tf.extractfile(member)
            if fh is not None:
                yield member.name, fh.read()


def bytes_io(data: bytes) -> IO[bytes]:
    """A binary stream over ``data``."""
    return io.BytesIO(data)
