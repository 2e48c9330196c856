"""A bounded pickle opcode reader.

It decodes opcodes exactly as CPython's unpickler reads them (the opcode table is
:mod:`pickletools`'), with two differences that matter for a scanner: large byte/str arguments are
not read into memory (a :class:`Blob` records where they are, with a preview), and text arguments have a
length bound, so a hostile multi-gigabyte "line" cannot exhaust memory.

The reader is a plain function over a stream rather than a generator, so the emulator can move the
stream between opcodes (joblib writes raw array bytes in the middle of a pickle stream).
"""

from __future__ import annotations

import ast
import codecs
import pickletools
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from mlwarden.artifacts.artifact import skip

#: Byte/str arguments up to this size are kept in memory; larger ones become a :class:`Blob`.
INLINE_LIMIT = 4 * 1024 * 1024
#: Longest newline-terminated argument accepted (protocol 0 text); longer is treated as hostile.
MAX_LINE = 16 * 1024 * 1024

CODE2OP: dict[int, pickletools.OpcodeInfo] = {ord(op.code): op for op in pickletools.opcodes}
_BY_NAME: dict[str, pickletools.OpcodeInfo] = {op.name: op for op in pickletools.opcodes}


class PickleFormatError(Exception):
    """The bytes are not a valid pickle at ``offset`` — the real unpickler would stop there too."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset
        self.message = message


@dataclass(frozen=True, slots=True)
class Blob:
    """A large bytes/str argument left in the stream: where it is, how long, and its first bytes."""

    offset: int
    length: int
    preview: bytes
    is_text: bool

    def __repr__(self) -> str:
        return f"<{self.length} bytes at {self.offset}: {self.preview[:32]!r}…>"


@dataclass(frozen=True, slots=True)
class Op:
    """One decoded opcode."""

    name: str
    arg: Any
    pos: int


def _read_exact(stream: BinaryIO, n: int, pos: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise PickleFormatError(pos, f"truncated {what}: wanted {n} bytes, got {len(data)}")
    return data


def _readline(stream: BinaryIO, pos: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        line = stream.readline(65536)
        if not line:
            raise PickleFormatError(pos, "truncated line argument (no newline before end of data)")
        chunks.append(line)
        total += len(line)
        if line.endswith(b"\n"):
            return b"".join(chunks)[:-1]
        if total > MAX_LINE:
            raise PickleFormatError(pos, f"line argument longer than {MAX_LINE} bytes")


def _sized(stream: BinaryIO, n: int, pos: int, text: bool) -> bytes | Blob:
    if n <= INLINE_LIMIT:
        return _read_exact(stream, n, pos, "argument")
    start = stream.tell() if stream.seekable() else pos
    preview = _read_exact(stream, 256, pos, "argument")
    if skip(stream, n - 256) != n - 256:
        raise PickleFormatError(pos, f"truncated argument: {n} bytes announced")
    return Blob(start, n, preview, text)


def _decode_utf8(raw: bytes | Blob, pos: int) -> str | Blob:
    if isinstance(raw, Blob):
        return raw
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise PickleFormatError(pos, f"invalid UTF-8 in string argument: {exc.reason}") from None


def _names(stream: BinaryIO, pos: int) -> tuple[str, str]:
    out = []
    for _ in range(2):
        raw = _readline(stream, pos)
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise PickleFormatError(pos, "invalid UTF-8 in GLOBAL/INST name") from None
    return out[0], out[1]


def _int_line(stream: BinaryIO, pos: int, long: bool = False) -> int | bool:
    raw = _readline(stream, pos)
    if not long:
        if raw == b"00":
            return False
        if raw == b"01":
            return True
    if long and raw.endswith(b"L"):
        raw = raw[:-1]
    try:
        return int(raw)
    except ValueError:
        raise PickleFormatError(pos, f"invalid integer literal {raw[:40]!r}") from None


def _string_line(stream: BinaryIO, pos: int) -> bytes:
    raw = _readline(stream, pos)
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[:1] in (b"'", b'"'):
        try:
            return codecs.escape_decode(raw[1:-1])[0]
        except ValueError:
            raise PickleFormatError(pos, "invalid escape in STRING argument") from None
    raise PickleFormatError(pos, "STRING argument is not quoted")


def _py2_str(raw: bytes | Blob) -> str | Blob:
    """Python 2 ``str`` opcodes (STRING, BINSTRING, SHORT_BINSTRING) load as ``str`` in Python 3.

    The unpickler decodes them with the caller's encoding (ASCII by default, UTF-8 in torch, latin-1 in
    numpy); latin-1 never fails, so it is the most lenient loader's view and the one to analyse.
    """
    return raw if isinstance(raw, Blob) else raw.decode("latin-1")


def read_op(stream: BinaryIO, pos: int) -> Op | None:
    """Read one opcode and its argument at ``pos`` (the stream's position); ``None`` at end of data."""
    code = stream.read(1)
    if not code:
        return None
    info = CODE2OP.get(code[0])
    if info is None:
        raise PickleFormatError(pos, f"unknown opcode {code!r}")
    name = info.name
    arg: Any = None
    argtype = info.arg.name if info.arg is not None else None
    if argtype is None:
        pass
    elif argtype == "uint1":
        arg = _read_exact(stream, 1, pos, name)[0]
    elif argtype == "uint2":
        arg = struct.unpack("<H", _read_exact(stream, 2, pos, name))[0]
    elif argtype == "int4":
        arg = struct.unpack("<i", _read_exact(stream, 4, pos, name))[0]
    elif argtype == "uint4":
        arg = struct.unpack("<I", _read_exact(stream, 4, pos, name))[0]
    elif argtype == "uint8":
        arg = struct.unpack("<Q", _read_exact(stream, 8, pos, name))[0]
    elif argtype == "float8":
        arg = struct.unpack(">d", _read_exact(stream, 8, pos, name))[0]
    elif argtype in ("long1", "long4"):
        size_fmt, width = ("<B", 1) if argtype == "long1" else ("<i", 4)
        n = struct.unpack(size_fmt, _read_exact(stream, width, pos, name))[0]
        if n < 0:
            raise PickleFormatError(pos, "negative LONG4 length")
        raw = _sized(stream, n, pos, text=False)
        arg = int.from_bytes(raw, "little", signed=True) if isinstance(raw, bytes) else raw
    elif argtype in ("string1", "bytes1", "unicodestring1"):
        n = _read_exact(stream, 1, pos, name)[0]
        raw = _read_exact(stream, n, pos, name)
        arg = _decode_utf8(raw, pos) if argtype == "unicodestring1" else raw
        if argtype == "string1":
            arg = _py2_str(raw)
    elif argtype in ("string4", "bytes4", "unicodestring4"):
        fmt = "<i" if argtype == "string4" else "<I"
        n = struct.unpack(fmt, _read_exact(stream, 4, pos, name))[0]
        if n < 0:
            raise PickleFormatError(pos, "negative BINSTRING length")
        raw = _sized(stream, n, pos, text=argtype == "unicodestring4")
        arg = _decode_utf8(raw, pos) if argtype == "unicodestring4" else raw
        if argtype == "string4":
            arg = _py2_str(raw)
    elif argtype in ("bytes8", "bytearray8", "unicodestring8"):
        n = struct.unpack("<Q", _read_exact(stream, 8, pos, name))[0]
        raw = _sized(stream, n, pos, text=argtype == "unicodestring8")
        arg = _decode_utf8(raw, pos) if argtype == "unicodestring8" else raw
    elif argtype == "stringnl_noescape_pair":
        arg = _names(stream, pos)
    elif argtype == "stringnl_noescape":
        arg = _readline(stream, pos).decode("utf-8", "replace")
    elif argtype == "decimalnl_short":
        arg = _int_line(stream, pos)
    elif argtype == "decimalnl_long":
        arg = _int_line(stream, pos, long=True)
    elif argtype == "stringnl":
        arg = _py2_str(_string_line(stream, pos))
    elif argtype == "unicodestringnl":
        arg = _readline(stream, pos).decode("raw-unicode-escape")
    elif argtype == "floatnl":
        raw = _readline(stream, pos)
        try:
            arg = float(raw)
        except ValueError:
            raise PickleFormatError(pos, f"invalid float literal {raw[:40]!r}") from None
    else:  # pragma: no cover - the opcode table is fixed per Python version
        raise PickleFormatError(pos, f"unsupported argument type {argtype}")
    return Op(name, arg, pos)


_IDENT_OPS = {"GLOBAL", "INST"}


def looks_like_pickle(head: bytes) -> bool:
    """Whether ``head`` starts like a protocol 0/1 pickle (no PROTO opcode to go by).

    Decodes opcodes from the start: the prefix must decode cleanly and either reach STOP, or contain a
    GLOBAL/INST with identifier-like names, or run for many opcodes. Text that merely starts with an
    opcode letter fails within a few bytes.
    """
    import io

    stream = io.BytesIO(head)
    count = 0
    stack = _StackShape()
    while True:
        pos = stream.tell()
        try:
            op = read_op(stream, pos)
        except PickleFormatError:
            # Cut by the end of the head is fine if enough looked valid.
            return pos >= len(head) - 64 and count >= 8
        if op is None:
            return count >= 8
        count += 1
        if not stack.apply(op.name):
            return False  # pops what was never pushed: random bytes, not a pickle (e.g. b"l." in tensor data)
        if op.name == "STOP":
            return count >= 2 and stack.complete()
        if op.name in _IDENT_OPS:
            module, name = op.arg
            if not (_is_dotted_ident(module) and _is_dotted_ident(name)):
                return False
            return True
        if op.name == "PROTO":
            return False  # PROTO is only valid as the first opcode, handled by the caller


class _StackShape:
    """Tracks only the stack's shape (item counts between marks) with pickletools' declared stack effects."""

    def __init__(self) -> None:
        self.depth = 0
        self.marks: list[int] = []

    def apply(self, name: str) -> bool:
        """Apply opcode ``name``'s stack effect; False if it would pop more than is there."""
        import pickletools

        info = _BY_NAME[name]
        before = info.stack_before
        if pickletools.markobject in before:
            below = before.index(pickletools.markobject)
            if not self.marks:
                return False
            self.depth = self.marks.pop()
            if self.depth < below:
                return False
            self.depth -= below
        else:
            if self.depth < len(before):
                return False
            self.depth -= len(before)
        for item in info.stack_after:
            if item is pickletools.markobject:
                self.marks.append(self.depth)
                self.depth = 0
            else:
                self.depth += 1
        return True

    def complete(self) -> bool:
        """A whole pickle leaves nothing behind after STOP popped its one result."""
        return self.depth == 0 and not self.marks


def _is_dotted_ident(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def literal_preview(value: Any, limit: int) -> str:
    """A short, printable rendering of an argument for evidence text."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def parse_npy_header_dict(text: str) -> Any:
    """Parse a numpy header dictionary literal safely (``ast.literal_eval``, never ``eval``)."""
    return ast.literal_eval(text)
