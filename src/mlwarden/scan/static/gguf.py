"""GGUF (llama.cpp): header parsing with hard bounds, and the chat templates it carries.

GGUF holds no code, but its metadata does hold Jinja chat templates (``tokenizer.chat_template`` and
the named ``tokenizer.chat_template.<name>`` variants) that loaders render — non-sandboxed in
llama-cpp-python < 0.2.72 (CVE-2024-34359). The header is parsed here without the ``gguf`` package:
every count and length is checked against the bytes left in the file before anything is read, so a
hostile header cannot make the scanner allocate or loop for long. Numeric arrays (token scores, types)
are skipped, never decoded. The tensor table is checked the way ggml's ``gguf.cpp`` loader checks it
(contiguous, aligned offsets; at most 4 dimensions; rows a multiple of the block size).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, BinaryIO

from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Severity, rule
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.template import analyse_template

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

_MALFORMED = (
    "llama.cpp rejects such a file; other readers may parse it differently, which is how payloads hide from scanners."
)
HEADER_INVALID = rule(
    "MLW-GGUF-001",
    "Malformed GGUF header",
    Severity.MEDIUM,
    cwe=20,
    description="The GGUF header is truncated or inconsistent (unknown version or value type, a count or "
    "length larger than the file, nesting too deep, duplicate keys, invalid alignment). " + _MALFORMED,
    remediation="Re-download or re-convert the model from a trusted source; do not load this file.",
)
TENSORS_INVALID = rule(
    "MLW-GGUF-002",
    "Invalid GGUF tensor table",
    Severity.MEDIUM,
    cwe=20,
    description="A tensor has too many dimensions, a size that is not whole blocks, a duplicate name, or an "
    "offset that is not where ggml expects it (or past the end of the file). " + _MALFORMED,
    remediation="Re-download or re-convert the model from a trusted source; do not load this file.",
)
UNKNOWN_TYPE = rule(
    "MLW-GGUF-003",
    "Unknown GGUF tensor type",
    Severity.LOW,
    cwe=None,
    description="A tensor uses a ggml type this version of mlwarden does not know (perhaps a newer "
    "quantisation), so its size and the layout after it were not checked.",
    remediation="Upgrade mlwarden; check the file with the llama.cpp version that will load it.",
)
SUMMARY = rule(
    "MLW-GGUF-004",
    "GGUF header",
    Severity.INFO,
    cwe=None,
    description="Version, byte order, counts, architecture and the chat templates found.",
    remediation="None needed.",
)

GGUF_MAGIC = b"GGUF"
GGML_MAX_DIMS = 4
_MAX_NESTING = 4  # arrays of arrays; no real model nests deeper than 2
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_STRING, _ARRAY = 8, 9
_INT_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 10: "Q", 11: "q"}
#: ggml type -> (name, elements per block, bytes per block); from ggml.h / gguf-py GGML_QUANT_SIZES.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}


class _Corrupt(Exception):  # noqa: N818 - internal signal
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


class _Reader:
    """Bounded reads over the header: nothing is read past the file or past ``max_header_size``."""

    def __init__(self, fh: BinaryIO, size: int, ctx: ScanContext) -> None:
        self.fh, self.size, self.ctx = fh, size, ctx
        self.pos = 0
        self.endian = "<"
        self.version = 3
        self.steps = 0

    def left(self) -> int:
        return self.size - self.pos

    def _advance(self, n: int, what: str) -> None:
        if n > self.left():
            raise _Corrupt(self.pos, f"{what}: needs {n} bytes, only {self.left()} left in the file")
        self.pos += n
        if self.pos > self.ctx.limits.max_header_size:
            raise LimitExceeded("max_header_size", f"GGUF header larger than {self.ctx.limits.max_header_size}")
        self.steps += 1
        if self.steps % 65536 == 0:
            self.ctx.check_time()

    def read(self, n: int, what: str) -> bytes:
        start = self.pos
        self._advance(n, what)
        data = self.fh.read(n)
        if len(data) != n:
            raise _Corrupt(start, f"{what}: file ended early")
        return data

    def skip(self, n: int, what: str) -> None:
        self._advance(n, what)
        self.fh.seek(self.pos)

    def unpack(self, code: str, what: str) -> Any:
        fmt = self.endian + code
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]

    def count(self, what: str) -> int:
        return int(self.unpack("I" if self.version == 1 else "Q", what))

    def string(self, what: str, keep: bool = True) -> str | None:
        start = self.pos
        n = self.count(f"{what} length")
        if n > self.left():
            raise _Corrupt(start, f"{what}: length {n} is larger than the {self.left()} bytes left")
        if not keep:
            self.skip(n, what)
            return None
        return self.read(n, what).decode("utf-8", errors="replace")


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class GgufHandler(Handler):
    """Parse a GGUF header, check the tensor table, and analyse the chat templates."""

    formats = (Format.GGUF,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Parse the header with bounded reads; a corrupt header is reported with its byte offset."""
        size = artifact.size
        if size is None:
            from mlwarden.artifacts.artifact import skip

            with artifact.open() as probe:
                size = skip(probe, 2**63)
        with artifact.open() as fh:
            reader = _Reader(fh, size, ctx)
            try:
                self._parse(reader, artifact, ctx)
            except _Corrupt as exc:
                ctx.report(HEADER_INVALID.finding(artifact.location(exc.offset), exc.reason))

    def _parse(self, r: _Reader, artifact: Artifact, ctx: ScanContext) -> None:
        if r.read(4, "magic") != GGUF_MAGIC:
            raise _Corrupt(0, "missing GGUF magic")
        raw_version = r.read(4, "version")
        (version,) = struct.unpack("<I", raw_version)
        if version & 0xFFFF == 0:  # the way gguf-py detects a file written on (or for) a big-endian host
            r.endian = ">"
            (version,) = struct.unpack(">I", raw_version)
        if version not in (1, 2, 3):
            raise _Corrupt(4, f"unsupported GGUF version {version} (known: 1, 2, 3)")
        r.version = version
        n_tensors = r.count("tensor count")
        n_kv = r.count("metadata count")
        if n_kv * 13 > r.left():  # key length (8) + 1-byte key + type (4) + at least 1 byte of value
            raise _Corrupt(r.pos, f"metadata count {n_kv} cannot fit in the {r.left()} bytes left")
        if n_tensors * 24 > r.left():
            raise _Corrupt(r.pos, f"tensor count {n_tensors} cannot fit in the {r.left()} bytes left")
        seen: set[str] = set()
        kept: dict[str, Any] = {}
        templates: list[tuple[str, str, int]] = []
        for _ in range(n_kv):
            key_offset = r.pos
            key = r.string("metadata key") or ""
            if key in seen:
                raise _Corrupt(key_offset, f"duplicate metadata key {key!r} (loaders disagree on which wins)")
            seen.add(key)
            vtype = r.unpack("I", f"type of {key!r}")
            is_template = key == "tokenizer.chat_template" or key.startswith("tokenizer.chat_template.")
            value_offset = r.pos
            value = self._value(r, vtype, key, 0, keep=is_template or key.startswith("general."))
            if is_template and isinstance(value, str):
                templates.append((key, value, value_offset))
            elif key.startswith("general.") and value is not None:
                kept[key] = value
        alignment = kept.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise _Corrupt(0, f"general.alignment {alignment!r} is not a power of two")
        for key, template, offset in templates:
            analyse_template(template, artifact, ctx, key, offset)
        self._tensors(r, n_tensors, alignment, artifact, ctx)
        ctx.report(
            SUMMARY.finding(
                artifact.location(0),
                f"GGUF v{version} ({'big' if r.endian == '>' else 'little'}-endian), "
                f"{n_tensors} tensors, {n_kv} metadata keys, architecture "
                f"{kept.get('general.architecture', '?')!r}, chat templates {[k for k, _, _ in templates]}",
                version=version,
                endian="big" if r.endian == ">" else "little",
                tensors=n_tensors,
                metadata=n_kv,
                chat_templates=[k for k, _, _ in templates],
            )
        )

    def _value(self, r: _Reader, vtype: int, key: str, depth: int, keep: bool) -> Any:
        if vtype in _FIXED:
            if keep and vtype in _INT_FORMATS:
                return r.unpack(_INT_FORMATS[vtype], f"value of {key!r}")
            r.skip(_FIXED[vtype], f"value of {key!r}")
            return None
        if vtype == _STRING:
            return r.string(f"value of {key!r}", keep=keep)
        if vtype != _ARRAY:
            raise _Corrupt(r.pos - 4, f"{key!r} has unknown value type {vtype}")
        start = r.pos
        etype = r.unpack("I", f"array type of {key!r}")
        n = r.count(f"array length of {key!r}")
        if etype in _FIXED:
            if n * _FIXED[etype] > r.left():
                raise _Corrupt(start, f"{key!r}: array of {n} items cannot fit in the {r.left()} bytes left")
            r.skip(n * _FIXED[etype], f"array {key!r}")
            return None
        if etype not in (_STRING, _ARRAY):
            raise _Corrupt(start, f"{key!r}: array of unknown value type {etype}")
        if depth + 1 >= _MAX_NESTING:
            raise _Corrupt(start, f"{key!r}: arrays nested deeper than {_MAX_NESTING}")
        if n * 8 > r.left():
            raise _Corrupt(start, f"{key!r}: array of {n} items cannot fit in the {r.left()} bytes left")
        for _ in range(n):
            self._value(r, etype, key, depth + 1, keep=False)
        return None

    def _tensors(self, r: _Reader, n: int, alignment: int, artifact: Artifact, ctx: ScanContext) -> None:
        entries: list[tuple[str, int, int | None, int]] = []  # name, offset, nbytes (None: unknown), pos
        names: set[str] = set()
        problems: list[tuple[int, str]] = []
        unknown: list[str] = []
        for _ in range(n):
            pos = r.pos
            name = r.string("tensor name") or ""
            n_dims = r.unpack("I", f"dimension count of {name!r}")
            if n_dims > GGML_MAX_DIMS:
                raise _Corrupt(pos, f"tensor {name!r} has {n_dims} dimensions (ggml allows {GGML_MAX_DIMS})")
            dim_code = "I" if r.version == 1 else "Q"
            dims = [r.unpack(dim_code, f"dimensions of {name!r}") for _ in range(n_dims)]
            ttype = r.unpack("I", f"type of {name!r}")
            offset = r.unpack("Q", f"offset of {name!r}")
            if name in names:
                problems.append((pos, f"duplicate tensor name {name!r}"))
            names.add(name)
            nbytes: int | None = None
            if ttype not in GGML_TYPES:
                unknown.append(f"{name!r}: type {ttype}")
            else:
                tname, block, type_size = GGML_TYPES[ttype]
                elements = 1
                for d in dims:
                    elements *= d
                if elements >= 2**63:
                    problems.append((pos, f"tensor {name!r} has {elements} elements (overflows int64)"))
                elif dims and dims[0] % block:
                    problems.append(
                        (
                            pos,
                            f"tensor {name!r}: row of {dims[0]} elements is not a multiple of "
                            f"the {tname} block size {block}",
                        )
                    )
                else:
                    nbytes = elements // block * type_size
            entries.append((name, offset, nbytes, pos))
        data_start = _align(r.pos, alignment)
        expected = 0
        for name, offset, nbytes, pos in entries:
            if offset != expected:
                problems.append((pos, f"tensor {name!r} at data offset {offset}, ggml expects {expected}"))
            if nbytes is None:
                break
            end = data_start + offset + nbytes
            if end > r.size:
                problems.append((pos, f"tensor {name!r} ends at byte {end}, past the end of the file ({r.size})"))
            expected = offset + _align(nbytes, alignment)
        if problems:
            reasons = [p[1] for p in problems]
            ctx.report(
                TENSORS_INVALID.finding(
                    artifact.location(problems[0][0]), "; ".join(reasons[:10]), reasons=reasons[:50], count=len(reasons)
                )
            )
        if unknown:
            ctx.report(
                UNKNOWN_TYPE.finding(artifact.location(entries[0][3]), "; ".join(unknown[:10]), count=len(unknown))
            )
