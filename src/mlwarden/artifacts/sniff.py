"""Identify an artifact's format from its content — magic bytes and structure, never its name.

File names lie (a ``.safetensors`` that is really a pickle, a pickle called ``weights.txt``), so the
name is never consulted. Each sniffer looks only at ``artifact.head`` unless it needs a little more
structure (protobuf models), and the first match in :data:`_ORDER` wins.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from enum import StrEnum

from mlwarden.artifacts.artifact import Artifact


class Format(StrEnum):
    """Content types mlwarden knows. Values are stable (they appear in JSON reports)."""

    PICKLE = "pickle"
    ZIP = "zip"
    TAR = "tar"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    LZMA = "lzma"
    ZLIB = "zlib"
    JOBLIB_ZF = "joblib-zlib"
    LZ4 = "lz4"
    ZSTD = "zstd"
    SEVENZIP = "7z"
    RAR = "rar"
    NUMPY = "numpy"
    SAFETENSORS = "safetensors"
    GGUF = "gguf"
    HDF5 = "hdf5"
    ONNX = "onnx"
    SAVEDMODEL = "tf-savedmodel"
    KERAS_CONFIG = "keras-config"
    HF_CONFIG = "hf-config"
    HF_TOKENIZER_CONFIG = "hf-tokenizer-config"
    XGBOOST_JSON = "xgboost-json"
    XGBOOST_UBJ = "xgboost-ubj"
    LIGHTGBM_TEXT = "lightgbm-text"
    JSON = "json"
    TEMPLATE = "jinja-template"
    PYTHON_SOURCE = "python-source"
    TEXT = "text"
    EMPTY = "empty"
    UNKNOWN = "unknown"


def _magic(head: bytes) -> Format | None:
    table: list[tuple[bytes, Format]] = [
        (b"PK\x03\x04", Format.ZIP),
        (b"PK\x05\x06", Format.ZIP),  # empty zip
        (b"PK\x07\x08", Format.ZIP),  # spanned-archive marker before the first local header
        (b"\x1f\x8b", Format.GZIP),
        (b"BZh", Format.BZIP2),
        (b"\xfd7zXZ\x00", Format.XZ),
        (b"\x04\x22\x4d\x18", Format.LZ4),
        (b"\x28\xb5\x2f\xfd", Format.ZSTD),
        (b"7z\xbc\xaf\x27\x1c", Format.SEVENZIP),
        (b"Rar!\x1a\x07", Format.RAR),
        (b"\x93NUMPY", Format.NUMPY),
        (b"GGUF", Format.GGUF),
        (b"\x89HDF\r\n\x1a\n", Format.HDF5),
        (b"ZF0x", Format.JOBLIB_ZF),
    ]
    for magic, fmt in table:
        if head.startswith(magic):
            return fmt
    if len(head) >= 262 and head[257:262] == b"ustar":
        return Format.TAR
    if _lzma_alone(head):
        return Format.LZMA
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0 and _inflates(head):
        return Format.ZLIB
    return None


def _inflates(head: bytes) -> bool:
    """A two-byte zlib header is common in random data; require the start to actually decompress."""
    try:
        zlib.decompressobj().decompress(head[:4096], 1024)
    except zlib.error:
        return False
    return True


def _lzma_alone(head: bytes) -> bool:
    """Raw LZMA ("alone", joblib's ``lzma`` compressor): properties byte, 2^n dictionary, size or -1."""
    if len(head) < 13 or head[0] >= 225:
        return False
    (dict_size,) = struct.unpack("<I", head[1:5])
    (usize,) = struct.unpack("<Q", head[5:13])
    low = dict_size & (dict_size - 1)  # xz-utils writes 2^n or 2^n + 2^(n-1)
    plausible_dict = 4096 <= dict_size <= 1 << 30 and (low == 0 or low & (low - 1) == 0)
    return head[0] == 0x5D and plausible_dict and (usize == (1 << 64) - 1 or usize < 1 << 48)


def _safetensors(head: bytes, size: int | None) -> Format | None:
    if len(head) < 10:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or (size is not None and 8 + n > size):
        return None
    if head[8:].lstrip(b" \t\r\n")[:1] == b"{":  # the reference loader accepts leading JSON whitespace
        return Format.SAFETENSORS
    return None


def _is_tar(head: bytes) -> bool:
    """Old (pre-POSIX) tar headers have no magic; validate the header checksum instead."""
    if len(head) < 512:
        return False
    block = head[:512]
    try:
        stored = int(block[148:156].split(b"\x00", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return stored == computed and block[0] != 0


def _text(head: bytes) -> str | None:
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The head may cut a multi-byte character at its end.
        if exc.start >= len(head) - 4:
            return head[: exc.start].decode("utf-8", "strict")
        return None


def _json_kind(artifact: Artifact, text: str) -> Format:
    import json

    obj = None
    if artifact.size is not None and artifact.size <= len(artifact.head):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
    if isinstance(obj, dict):
        keys = set(obj)
        if "learner" in keys and "version" in keys:
            return Format.XGBOOST_JSON
        if "chat_template" in keys or "tokenizer_class" in keys:
            return Format.HF_TOKENIZER_CONFIG
        if "class_name" in keys and "config" in keys:
            return Format.KERAS_CONFIG
        if keys & {"auto_map", "architectures", "model_type", "_name_or_path"}:
            return Format.HF_CONFIG
        return Format.JSON
    # Too large to parse from the head: decide from the leading keys.
    snippet = text[:4096]
    if '"learner"' in snippet:
        return Format.XGBOOST_JSON
    if any(k in text for k in ('"chat_template"', '"tokenizer_class"', '"added_tokens_decoder"')):
        return Format.HF_TOKENIZER_CONFIG
    if '"class_name"' in snippet and '"config"' in snippet:
        return Format.KERAS_CONFIG
    if any(k in text for k in ('"auto_map"', '"architectures"', '"model_type"')):
        return Format.HF_CONFIG
    return Format.JSON


def _textual(artifact: Artifact) -> Format | None:
    text = _text(artifact.head)
    if text is None:
        return None
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        return Format.TEXT
    if stripped.startswith(("{{", "{%", "{#")):
        return Format.TEMPLATE
    if stripped[0] in "{[":
        return _json_kind(artifact, stripped)
    if stripped.startswith("tree\nversion=") or stripped.startswith("tree\r\nversion="):
        return Format.LIGHTGBM_TEXT
    if "{%" in text or "{{" in text:
        return Format.TEMPLATE
    return None


def _ubj(head: bytes) -> Format | None:
    if head[:1] == b"{" and head[1:2] in (b"i", b"U", b"I", b"l", b"L") and b"learner" in head[:64]:
        return Format.XGBOOST_UBJ
    return None


def _pickle(artifact: Artifact) -> Format | None:
    """A pickle, decided by decoding the opcode stream from byte 0 as the unpickler would.

    Not by a header: a pickle may start with any opcode (``PROTO`` is optional and may come after pushed-and-popped
    junk), and a protocol-0 argument can be longer than any sniffing window, so a file larger than its head is
    decoded from its stream.
    """
    import io

    from mlwarden.artifacts.pickle_ops import CODE2OP, stream_is_pickle

    head = artifact.head
    if not head or head[0] not in CODE2OP:
        return None
    if head[0] == 0x80 and len(head) > 1 and head[1] <= 5:
        return Format.PICKLE
    if artifact.size is not None and artifact.size <= len(head):
        return Format.PICKLE if stream_is_pickle(io.BytesIO(head)) else None
    with artifact.open() as fh:
        return Format.PICKLE if stream_is_pickle(fh) else None


def _protobuf(artifact: Artifact) -> Format | None:
    from mlwarden.artifacts.protobuf import sniff_protobuf_model

    return sniff_protobuf_model(artifact)


def _python_source(head: bytes) -> Format | None:
    text = _text(head)
    if text is None:
        return None
    markers = ("import ", "from ", "def ", "class ")
    lines = [ln for ln in text.splitlines()[:200] if ln and not ln.startswith("#")]
    if lines and sum(ln.startswith(markers) for ln in lines) >= 2:
        return Format.PYTHON_SOURCE
    return None


def sniff(artifact: Artifact) -> Format:
    """Return the format of ``artifact`` by content."""
    head = artifact.head
    if not head:
        return Format.EMPTY
    steps: list[Callable[[], Format | None]] = [
        lambda: _magic(head),
        lambda: _safetensors(head, artifact.size),
        lambda: _ubj(head),
        lambda: _pickle(artifact),
        lambda: Format.TAR if _is_tar(head) else None,
        lambda: _textual(artifact),
        lambda: _protobuf(artifact),
        lambda: _python_source(head),
    ]
    for step in steps:
        fmt = step()
        if fmt is not None:
            return fmt
    if _text(head) is not None:
        return Format.TEXT
    return Format.ZIP if _zip_by_end_record(artifact) else Format.UNKNOWN


def _zip_by_end_record(artifact: Artifact) -> bool:
    """Zip readers find archives from the end record, so data prepended to a zip does not hide it."""
    if artifact.size is None or artifact.size < 22:
        return False
    with artifact.open() as fh:
        fh.seek(max(0, artifact.size - 65_557))
        tail = fh.read()
    i = tail.rfind(b"PK\x05\x06")
    return i != -1 and len(tail) - i >= 22
