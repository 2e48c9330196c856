"""A small, bounded protobuf wire-format reader, and structural sniffing of ONNX and SavedModel files.

Why hand-written: mlwarden's core must not depend on ``onnx`` or ``tensorflow`` (heavy, optional, and
their parsers load whole messages — a multi-gigabyte ``raw_data`` tensor included — into memory). The
wire format is tiny: a message is a sequence of ``tag = (field_number << 3) | wire_type`` varints, each
followed by a varint, a fixed 64-bit or 32-bit value, or a length-prefixed payload. This reader walks
those tags and lengths over a seekable stream, reads only the small fields it is asked for, and *skips*
large length-delimited fields by seeking, so analysing a 2 GB ONNX model reads a few kilobytes of
structure. Every length is checked against the enclosing message, every varint is at most 10 bytes, and
groups (wire types 3/4, deprecated and unused by ONNX and TensorFlow) are rejected as malformed.

Sniffing decides "ONNX ModelProto" or "TensorFlow SavedModel" from the top-level fields alone: every tag
must be well formed, every field must have the wire type the schema gives it, and the fields must tile
the file exactly. Random binary or text fails within the first few bytes.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_MAX_FIELD = (1 << 29) - 1
_CHUNK = 64 * 1024
_TICK_EVERY = 4096
_SPOOL_MEMORY = 64 * 1024 * 1024
_SNIFF_MAX_FIELDS = 100_000

Source = bytes | bytearray | memoryview | BinaryIO


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message (the offset says where it went wrong)."""

    def __init__(self, message: str, offset: int, number: int | None = None) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.offset = offset
        self.number = number  # the field being read, when the error is about a field's extent


@dataclass(frozen=True, slots=True)
class WireField:
    """One field of a message: its number, wire type and where it sits.

    For ``VARINT``/``I64``/``I32`` fields ``value`` is the (unsigned) value; for ``LEN`` fields it is the
    payload length and the payload is ``[data_offset, data_offset + value)`` — not read until asked for.
    """

    number: int
    wire_type: int
    offset: int
    data_offset: int
    value: int

    @property
    def end(self) -> int:
        """Offset just past this field."""
        if self.wire_type == LEN:
            return self.data_offset + self.value
        return self.data_offset + {VARINT: 0, I64: 8, I32: 4}[self.wire_type]


def decode_varint(buf: bytes | memoryview, pos: int, base: int = 0) -> tuple[int, int]:
    """Decode a varint at ``buf[pos:]``; returns ``(value, next_pos)``. ``base`` is for error offsets."""
    result = 0
    shift = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise ProtobufError("truncated varint", base + pos + i)
        byte = buf[pos + i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos + i + 1
        shift += 7
    raise ProtobufError("varint longer than 10 bytes", base + pos)


class WireReader:
    """Iterate the fields of protobuf messages in a buffer or seekable stream without loading payloads.

    Args:
        source: bytes-like, or a seekable binary stream (see :func:`open_seekable`).
        size: total length; required for streams whose size cannot be found by seeking.
        tick: called every few thousand fields (handlers pass ``ctx.check_time``).
    """

    def __init__(self, source: Source, size: int | None = None, tick: Callable[[], None] | None = None) -> None:
        self._mem: memoryview | None = None
        self._fh: BinaryIO | None = None
        if isinstance(source, bytes | bytearray | memoryview):
            self._mem = memoryview(source).cast("B")
            self.size = len(self._mem)
        else:
            self._fh = source
            if size is None:
                size = source.seek(0, io.SEEK_END)
            self.size = size
        self._buf = b""
        self._buf_off = 0
        self._tick = tick
        self.fields_read = 0

    def _window(self, offset: int, n: int) -> bytes | memoryview:
        """Up to ``n`` bytes at ``offset`` (fewer at the end of the data)."""
        if self._mem is not None:
            return self._mem[offset : offset + n]
        rel = offset - self._buf_off
        if 0 <= rel and rel + n <= len(self._buf):
            return memoryview(self._buf)[rel : rel + n]
        if not (self._fh is not None):
            raise RuntimeError("internal invariant broken: self._fh is not None")
        self._fh.seek(offset)
        self._buf = self._fh.read(max(n, _CHUNK))
        self._buf_off = offset
        return memoryview(self._buf)[:n]

    def fields(self, start: int = 0, end: int | None = None) -> Iterator[WireField]:
        """The fields of the message occupying ``[start, end)`` (the whole data by default)."""
        end = self.size if end is None else end
        if end > self.size:
            raise ProtobufError(f"message ends at {end}, past the end of the data ({self.size})", start)
        pos = start
        while pos < end:
            head = self._window(pos, min(20, end - pos))
            tag, i = decode_varint(head, 0, pos)
            number, wire_type = tag >> 3, tag & 7
            if number == 0 or number > _MAX_FIELD:
                raise ProtobufError(f"invalid field number {number}", pos)
            if wire_type in (3, 4):
                raise ProtobufError("groups are not supported", pos)
            if wire_type == VARINT:
                value, j = decode_varint(head, i, pos)
                data_offset = next_pos = pos + j
            elif wire_type == LEN:
                value, j = decode_varint(head, i, pos)
                data_offset = pos + j
                next_pos = data_offset + value
            elif wire_type in (I64, I32):
                width = 8 if wire_type == I64 else 4
                if i + width > len(head):
                    raise ProtobufError("truncated fixed-width value", pos)
                value = int.from_bytes(head[i : i + width], "little")
                data_offset = pos + i
                next_pos = data_offset + width
            else:
                raise ProtobufError(f"invalid wire type {wire_type}", pos)
            if next_pos > end:
                raise ProtobufError(
                    f"field {number} runs past the end of its message ({next_pos} > {end})", pos, number
                )
            self.fields_read += 1
            if self._tick is not None and self.fields_read % _TICK_EVERY == 0:
                self._tick()
            yield WireField(number, wire_type, pos, data_offset, value)
            pos = next_pos

    def message(self, field: WireField) -> Iterator[WireField]:
        """The fields of the sub-message held by a ``LEN`` field."""
        expect(field, LEN)
        return self.fields(field.data_offset, field.end)

    def read(self, field: WireField, limit: int) -> bytes:
        """The payload of a ``LEN`` field, truncated to ``limit`` bytes (callers decide if that matters)."""
        expect(field, LEN)
        n = min(field.value, limit)
        if self._mem is not None:
            return bytes(self._mem[field.data_offset : field.data_offset + n])
        if not (self._fh is not None):
            raise RuntimeError("internal invariant broken: self._fh is not None")
        self._fh.seek(field.data_offset)
        data = self._fh.read(n)
        if len(data) != n:
            raise ProtobufError("truncated payload", field.data_offset)
        return data

    def text(self, field: WireField, limit: int = 4096) -> str:
        """A string field, decoded leniently and truncated to ``limit`` bytes (marked with an ellipsis)."""
        text = self.read(field, limit).decode("utf-8", "replace")
        return text + "…" if field.value > limit else text


def expect(field: WireField, wire_type: int) -> None:
    """Raise :class:`ProtobufError` unless ``field`` has ``wire_type`` (schema mismatch = malformed)."""
    if field.wire_type != wire_type:
        raise ProtobufError(f"field {field.number} has wire type {field.wire_type}, expected {wire_type}", field.offset)


def open_seekable(artifact: Artifact, max_size: int) -> BinaryIO:
    """A seekable stream over ``artifact``: its own stream when seekable, else a bounded spooled copy.

    Raises:
        LimitExceeded: a non-seekable artifact is larger than ``max_size``.
    """
    stream = artifact.open()
    try:
        if stream.seekable():
            return stream
    except (OSError, ValueError):
        pass
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY)
    copied = 0
    with stream:
        while chunk := stream.read(1024 * 1024):
            copied += len(chunk)
            if copied > max_size:
                spool.close()
                raise LimitExceeded("max_member_size", f"protobuf stream longer than {max_size} bytes")
            spool.write(chunk)
    spool.seek(0)
    return spool  # type: ignore[return-value]


# --- sniffing -----------------------------------------------------------------------------------------

# ModelProto fields -> wire type (onnx.proto). Unknown field numbers are tolerated (newer ONNX versions
# add fields) as long as they are well formed; the known ones must match the schema.
_ONNX_MODEL = {1: VARINT, 2: LEN, 3: LEN, 4: LEN, 5: VARINT, 6: LEN, 7: LEN, 8: LEN, 14: LEN, 20: LEN, 25: LEN, 26: LEN}
_ONNX_GRAPH = {1: LEN, 2: LEN, 5: LEN, 10: LEN, 11: LEN, 12: LEN, 13: LEN, 14: LEN, 15: LEN, 16: LEN}
_SAVEDMODEL = {1: VARINT, 2: LEN}
_META_GRAPH = {1: LEN, 2: LEN, 3: LEN, 4: LEN, 5: LEN, 6: LEN, 7: LEN}
# First byte of a file whose first field is one of the above (tag varints < 128 are one byte).
_FIRST_BYTES = frozenset({(n << 3) | w for n, w in _ONNX_MODEL.items() if n < 16} | {0xA2, 0xCA, 0xD2})


def _first_tag_ok(reader: WireReader, field: WireField, schema: dict[int, int]) -> bool:
    """Whether a ``LEN`` payload is empty or starts with a field of ``schema`` (cheap plausibility)."""
    if field.value == 0:
        return True
    first = next(reader.fields(field.data_offset, field.end), None)
    return first is not None and schema.get(first.number) == first.wire_type


def _top_level(artifact: Artifact) -> tuple[WireReader, BinaryIO | None] | None:
    """A reader over the whole content: the head when it is all there, else a seekable stream."""
    head = artifact.head
    size = artifact.size
    if size is not None and size <= len(head):
        return WireReader(head[:size]), None
    if size is None:
        return None
    stream: BinaryIO | None = None
    try:
        stream = artifact.open()
        if not stream.seekable():
            stream.close()
            return None
    except (OSError, ValueError):
        if stream is not None:
            stream.close()
        return None
    return WireReader(stream, size), stream


def sniff_protobuf_model(artifact: Artifact) -> Format | None:
    """Return ``Format.ONNX`` or ``Format.SAVEDMODEL`` when the content is such a protobuf message.

    Only top-level tags and lengths are read (seeking over payloads), so this is cheap even for huge
    files and returns ``None`` within a few bytes for anything that is not a protobuf message.
    """
    head = artifact.head
    if len(head) < 2 or head[0] not in _FIRST_BYTES:
        return None
    # Fast rejection from the head alone: the first field must be well formed.
    try:
        first = next(WireReader(head).fields(0, len(head)), None)
    except ProtobufError as exc:
        if exc.offset != 0 or artifact.size is None or artifact.size <= len(head):
            return None
        first = None  # the first field runs past the head: decide with the stream
    if first is not None and first.number not in _ONNX_MODEL:
        return None
    opened = _top_level(artifact)
    if opened is None:
        return None
    reader, stream = opened
    fields: list[WireField] = []
    try:
        try:
            for field in reader.fields():
                fields.append(field)
                if len(fields) > _SNIFF_MAX_FIELDS:
                    break
        except ProtobufError as exc:
            return _decide_truncated(fields, exc)
        return _decide(reader, fields)
    except (ProtobufError, OSError, ValueError):
        return None
    finally:
        if stream is not None:
            stream.close()


def _decide(reader: WireReader, fields: list[WireField]) -> Format | None:
    numbers = {f.number for f in fields}
    if numbers and numbers <= set(_SAVEDMODEL) and 2 in numbers:
        if all(_SAVEDMODEL[f.number] == f.wire_type for f in fields):
            version = next((f.value for f in fields if f.number == 1), 1)
            metas = [f for f in fields if f.number == 2]
            if version < 1000 and _first_tag_ok(reader, metas[0], _META_GRAPH):
                return Format.SAVEDMODEL
        return None
    graphs = [f for f in fields if f.number == 7]
    if len(graphs) != 1 or not numbers & {1, 8}:
        return None
    if any(f.number in _ONNX_MODEL and _ONNX_MODEL[f.number] != f.wire_type for f in fields):
        return None
    if any(f.number > 64 for f in fields):
        return None
    return Format.ONNX if _first_tag_ok(reader, graphs[0], _ONNX_GRAPH) else None


def _decide_truncated(fields: list[WireField], exc: ProtobufError) -> Format | None:
    """Claim a file cut short (or corrupted) after a convincing start.

    Its handler then reports it as malformed instead of it passing as unrecognised content.
    """
    if exc.number is None or not fields:
        return None
    first = fields[0]
    if first.number != 1 or first.wire_type != VARINT:
        return None
    numbers = {f.number for f in fields} | {exc.number}
    if numbers <= set(_SAVEDMODEL) and first.value == 1 and exc.number == 2:
        return Format.SAVEDMODEL
    conforming = all(_ONNX_MODEL.get(f.number) == f.wire_type for f in fields)
    if conforming and first.value <= 64 and exc.number in _ONNX_MODEL and len(fields) >= 2:
        return Format.ONNX
    return None
