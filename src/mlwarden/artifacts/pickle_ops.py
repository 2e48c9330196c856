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
import math
import pickletools
import re
import struct
from collections.abc import Callable
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


class ReaderLimit(PickleFormatError):  # noqa: N818 - a condition reported as a finding
    """The scanner stops at ``offset`` where the unpickler would read on (a bound of the scanner's own)."""


class ReadersDiffer(PickleFormatError):  # noqa: N818 - a condition reported as a finding
    """CPython's two unpicklers (``_pickle`` and ``pickle.py``) read the bytes at ``offset`` differently."""


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
    """One decoded opcode, with its argument as the C unpickler reads it."""

    name: str
    arg: Any
    pos: int
    differs: str | None = None  # how pickle.py would read this opcode differently, if it would


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
            raise ReaderLimit(pos, f"line argument longer than the scanner's {MAX_LINE}-byte bound")


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


_SPACE = b" \t\n\v\f\r"
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_C_FLOAT = re.compile(rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|infinity|nan))")


def _strtol0(s: bytes) -> tuple[int, int, bool]:
    """C ``strtol(s, &end, 0)``: (value, index of end, overflowed). ``end`` is 0 when nothing was converted."""
    i = 0
    while i < len(s) and s[i] in _SPACE:
        i += 1
    neg = i < len(s) and s[i : i + 1] == b"-"
    if i < len(s) and s[i : i + 1] in (b"+", b"-"):
        i += 1
    base, digits = 10, b"0123456789"
    if s[i : i + 2].lower() == b"0x" and s[i + 2 : i + 3] and s[i + 2 : i + 3].lower() in b"0123456789abcdef":
        base, digits, i = 16, b"0123456789abcdefABCDEF", i + 2
    elif s[i : i + 1] == b"0":
        base, digits = 8, b"01234567"
    j = i
    while j < len(s) and s[j] in digits:
        j += 1
    if j == i:
        return 0, 0, False
    value = int(s[i:j], base) * (-1 if neg else 1)
    return value, j, not _LONG_MIN <= value <= _LONG_MAX


def _c_string(raw: bytes) -> bytes:
    """The line as C functions see it: ``raw`` plus its newline, cut at the first NUL byte."""
    line = raw + b"\n"
    nul = line.find(b"\x00")
    return line if nul < 0 else line[:nul]


def c_int(raw: bytes) -> int | bool:
    """``INT`` as ``_pickle.c`` reads it: ``strtol`` base 0 (octal ``010`` is 8), else ``PyLong_FromString`` base 0.

    Both stop at a NUL byte, as C strings do. Raises ``ValueError`` where the C unpickler raises.
    """
    if not raw:
        raise ValueError("pickle data was truncated")
    s = _c_string(raw)
    value, end, overflow = _strtol0(s)
    if not overflow and s[end : end + 1] in (b"\n", b""):
        return bool(value) if len(raw) == 2 and value in (0, 1) else value
    return int(s, 0)


def c_long(raw: bytes) -> int:
    """``LONG`` as ``_pickle.c`` reads it: a trailing ``L`` dropped, ``PyLong_FromString`` base 0 up to a NUL."""
    if not raw:
        raise ValueError("pickle data was truncated")
    return int(_c_string(raw[:-1] if raw.endswith(b"L") else raw), 0)


def c_index(raw: bytes) -> int:
    """``GET``/``PUT`` indexes as ``_pickle.c`` reads them (base 10, up to a NUL)."""
    if not raw:
        raise ValueError("pickle data was truncated")
    return int(_c_string(raw), 10)


def py_int(raw: bytes) -> int | bool:
    """``INT`` as ``pickle.py`` reads it."""
    if raw == b"00":
        return False
    if raw == b"01":
        return True
    return int(raw, 0)


def c_float(raw: bytes) -> float:
    """``FLOAT`` as ``_pickle.c`` reads it (``PyOS_string_to_double``: no spaces or underscores; overflow errors)."""
    text = _c_string(raw).rstrip(b"\n")
    if not raw or not _C_FLOAT.fullmatch(text):
        raise ValueError("could not convert string to float")
    value = float(text)
    if math.isinf(value) and b"n" not in raw.lower():
        raise OverflowError("float too large")
    return value


def _differs(c_value: Any, c_error: Exception | None, py: Callable[[], Any]) -> str | None:
    """How pickle.py's reading differs from the C one (None if it does not)."""
    try:
        py_value = py()
    except (ValueError, OverflowError) as exc:
        return None if c_error is not None else f"pickle.py refuses it ({exc}); _pickle reads {c_value!r}"
    if c_error is not None:
        return f"_pickle refuses it ({c_error}); pickle.py reads {py_value!r}"
    same = type(py_value) is type(c_value) and (py_value == c_value or (py_value != py_value and c_value != c_value))
    return None if same else f"_pickle reads {c_value!r}, pickle.py reads {py_value!r}"


def _text_number(name: str, raw: bytes, pos: int) -> tuple[Any, str | None]:
    """Read INT / LONG / FLOAT / GET / PUT text arguments as C does, noting where pickle.py differs."""
    c_reader: Callable[[], Any]
    py_reader: Callable[[], Any]
    if name == "INT":
        c_reader, py_reader = (lambda: c_int(raw)), (lambda: py_int(raw))
    elif name == "LONG":
        c_reader, py_reader = (lambda: c_long(raw)), (lambda: int(raw[:-1] if raw.endswith(b"L") else raw, 0))
    elif name == "FLOAT":
        c_reader, py_reader = (lambda: c_float(raw)), (lambda: float(raw))
    else:  # GET / PUT: base 10
        c_reader, py_reader = (lambda: c_index(raw)), (lambda: int(raw))
    try:
        value, error = c_reader(), None
    except (ValueError, OverflowError) as exc:
        value, error = None, exc
    differs = _differs(value, error, py_reader)
    if error is not None:
        if differs:
            raise ReadersDiffer(pos, f"{name} argument {raw[:40]!r}: {differs}")
        raise PickleFormatError(pos, f"invalid {name} literal {raw[:40]!r}")
    return value, (f"{name} argument {raw[:40]!r}: {differs}" if differs else None)


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


def read_op(stream: BinaryIO, pos: int) -> Op | None:  # noqa: C901 - one branch per pickletools argument type
    """Read one opcode and its argument at ``pos`` (the stream's position); ``None`` at end of data."""
    code = stream.read(1)
    if not code:
        return None
    info = CODE2OP.get(code[0])
    if info is None:
        raise PickleFormatError(pos, f"unknown opcode {code!r}")
    name = info.name
    arg: Any = None
    differs: str | None = None
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
    elif argtype in ("decimalnl_short", "decimalnl_long", "floatnl"):
        arg, differs = _text_number(name, _readline(stream, pos), pos)
    elif argtype == "stringnl":
        arg = _py2_str(_string_line(stream, pos))
    elif argtype == "unicodestringnl":
        try:
            arg = _readline(stream, pos).decode("raw-unicode-escape")
        except UnicodeDecodeError as exc:
            raise PickleFormatError(pos, f"invalid UNICODE argument: {exc.reason}") from None
    else:  # pragma: no cover - the opcode table is fixed per Python version
        raise PickleFormatError(pos, f"unsupported argument type {argtype}")
    return Op(name, arg, pos, differs)


_IDENT_OPS = {"GLOBAL", "INST"}
_CALLABLE_SOURCES = {"STACK_GLOBAL", "EXT1", "EXT2", "EXT4"}
#: Opcodes a sniff decodes before deciding "pickle" by default (a long valid opcode stream is a pickle).
SNIFF_OPS = 100_000


def looks_like_pickle(head: bytes) -> bool:
    """Whether ``head`` (a window of something never unpickled as a whole, e.g. a tensor storage) hides a pickle.

    Only an import decides: a valid opcode prefix that reaches ``GLOBAL``/``INST`` with importable names or a
    ``STACK_GLOBAL`` of two strings is a pickle that calls something if a loader ever reads it. Random tensor
    bytes decode as a few valid opcodes about once in 5,000 storages; without an import they run nothing.
    :func:`stream_is_pickle` decides for files a loader does unpickle, and is what format sniffing uses.
    """
    import io

    return _decide(io.BytesIO(head), len(head))


def stream_is_pickle(stream: BinaryIO) -> bool:
    """Whether an unpickler reading ``stream`` from its position would import anything or read a whole pickle.

    Decided by decoding the opcode stream from its first byte with the C unpickler's stack rules — not from a
    header or a window an argument can outrun: a pickle may start with any opcode (junk pushed and popped before
    ``PROTO``), and ``PROTO``/``FRAME`` may appear anywhere. A prefix that reaches an import (``GLOBAL``/``INST``
    with importable names, ``STACK_GLOBAL``, ``EXT*``) is a pickle whatever follows, because the unpickler runs
    what precedes an error.
    """
    return _decide(stream, None)


def _decide(stream: BinaryIO, window: int | None) -> bool:
    count = 0
    stack = _StackShape()
    imports_only = window is not None
    while count < SNIFF_OPS:
        pos = stream.tell()
        try:
            op = read_op(stream, pos)
        except (ReaderLimit, ReadersDiffer):
            return not imports_only  # a loader reads on where the scanner (or pickle.py) stops: analyse it
        except PickleFormatError:
            return not imports_only and count >= 8 and stack.ok  # a malformed pickle (nothing imported first)
        if op is None:
            return not imports_only and count >= 8
        count += 1
        if op.name == "STACK_GLOBAL" and stack.top_strings():
            return True  # imports module/name strings the C unpickler accepts
        if not stack.apply(op):
            return False  # pops what was never pushed: random bytes, not a pickle (e.g. b"l." in tensor data)
        if op.name == "STOP":
            return not imports_only and count >= 2 and (stack.complete() or count >= 8)
        if op.name in _IDENT_OPS:
            module, name = op.arg
            return _is_dotted_ident(module) and _is_dotted_ident(name)
        if op.name == "PROTO" and not 0 <= op.arg <= 5:
            return False
    return not imports_only


_STR_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)


class _StackShape:
    """Tracks the stack's shape as the C unpickler checks it: items between marks, and which items are strings.

    Stack effects are pickletools' declarations, except ``POP``: on an empty frame the C unpickler (and
    ``pickle.py``) pops the MARK instead, so ``(0`` is valid. Items are only told apart as strings or not (memo
    included), which is what ``STACK_GLOBAL`` requires of its operands.
    """

    def __init__(self) -> None:
        self.items: list[bool] = []  # True: a str
        self.marks: list[int] = []
        self.memo: dict[Any, bool] = {}
        self.ok = True

    @property
    def depth(self) -> int:
        """Items above the innermost mark."""
        return len(self.items) - (self.marks[-1] if self.marks else 0)

    def top_strings(self) -> bool:
        """Whether the two topmost items (above the innermost mark) are strings."""
        return self.depth >= 2 and self.items[-1] and self.items[-2]

    def apply(self, op: Op) -> bool:
        """Apply the opcode's stack effect; False if it would pop more than is there (or read a missing memo)."""
        self.ok = self._apply(op)
        return self.ok

    def _apply(self, op: Op) -> bool:
        name = op.name
        if name == "POP" and self.depth == 0:
            if not self.marks:
                return False
            self.marks.pop()
            return True
        if name in ("GET", "BINGET", "LONG_BINGET"):
            if op.arg not in self.memo:
                return False
            self.items.append(self.memo[op.arg])
            return True
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if self.depth == 0:
                return False
            self.memo[op.arg if name != "MEMOIZE" else len(self.memo)] = self.items[-1]
            return True
        if name == "DUP":
            if self.depth == 0:
                return False
            self.items.append(self.items[-1])
            return True
        info = _BY_NAME[name]
        before = info.stack_before
        if pickletools.markobject in before:
            below = before.index(pickletools.markobject)
            if not self.marks:
                return False
            del self.items[self.marks.pop() :]
            if self.depth < below:
                return False
            del self.items[len(self.items) - below :]
        else:
            if self.depth < len(before):
                return False
            del self.items[len(self.items) - len(before) :]
        for item in info.stack_after:
            if item is pickletools.markobject:
                self.marks.append(len(self.items))
            else:
                self.items.append(name in _STR_OPS)
        return True

    def complete(self) -> bool:
        """A whole pickle leaves nothing behind after STOP popped its one result."""
        return not self.items and not self.marks


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
