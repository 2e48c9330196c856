"""safetensors: strict validation of the header, without the safetensors library and without the data.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of UTF-8 JSON + a data section. It carries no
code, so the risk is not execution but *ambiguity*: a header that one loader accepts and another reads
differently (duplicate keys, overlapping tensors, bytes hidden in gaps or after the last tensor) is how
payloads and parser bugs hide in "safe" files. The checks follow the reference implementation
(``huggingface/safetensors``, ``safetensors/src/tensor.rs``: ``read_metadata`` and
``Metadata::validate``), which sorts tensors by ``data_offsets`` and requires them to tile the data
section exactly — so a gap, an overlap or trailing bytes is rejected there, and reported here.

Only the header is read; the tensor bytes never are (their size comes from the file size).
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from typing import TYPE_CHECKING, Any

from mlwarden.artifacts.artifact import skip
from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Rule, Severity, rule
from mlwarden.scan.static.base import Handler

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

_MALFORMED = (
    "A loader's behaviour on a malformed safetensors file is undefined: the reference "
    "implementation rejects it, other readers may accept it and read something else."
)
_FIX = "Re-export the tensors with the safetensors library from a trusted source; do not load this file."

HEADER_INVALID = rule(
    "MLW-ST-001",
    "Malformed safetensors header",
    Severity.MEDIUM,
    cwe=20,
    description="The header length, encoding or JSON is invalid (length past the end of the file, not "
    "UTF-8, not a JSON object, duplicate keys, NaN/Infinity). " + _MALFORMED,
    remediation=_FIX,
)
TENSOR_INVALID = rule(
    "MLW-ST-002",
    "Invalid safetensors tensor entry",
    Severity.MEDIUM,
    cwe=20,
    description="A tensor entry has an unknown dtype, a bad shape or data_offsets, missing keys, or a "
    "byte size that does not match shape x dtype. " + _MALFORMED,
    remediation=_FIX,
)
LAYOUT_INVALID = rule(
    "MLW-ST-003",
    "Invalid safetensors data layout",
    Severity.MEDIUM,
    cwe=20,
    description="Tensors overlap, leave gaps, run past the end of the file, or the file has bytes after "
    "the last tensor. The reference loader requires the tensors to cover the data section exactly; unread "
    "bytes are a place to hide a payload for another tool. " + _MALFORMED,
    remediation=_FIX,
)
METADATA_INVALID = rule(
    "MLW-ST-004",
    "Invalid safetensors __metadata__",
    Severity.MEDIUM,
    cwe=20,
    description="__metadata__ must map strings to strings. " + _MALFORMED,
    remediation=_FIX,
)
EXTRA_FIELDS = rule(
    "MLW-ST-005",
    "Unexpected fields in a safetensors tensor entry",
    Severity.LOW,
    cwe=None,
    description="A tensor entry has keys besides dtype, shape and data_offsets. The reference loader "
    "ignores them (so they cannot change what is loaded), but no writer produces them.",
    remediation="Check which tool wrote the file.",
)
SUMMARY = rule(
    "MLW-ST-006",
    "safetensors header",
    Severity.INFO,
    cwe=None,
    description="The header is valid: tensor count, dtypes and metadata keys.",
    remediation="None needed.",
)

#: dtype -> size in bits (safetensors/src/tensor.rs ``Dtype::bitsize``, incl. the MX and FNUZ types).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
REFERENCE_MAX_HEADER = 100_000_000  # MAX_HEADER_SIZE of the reference implementation
_U64 = 2**64
_MAX_REASONS = 10


class _Problems:
    """Problems per rule, each with the first byte offset it concerns."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[Rule, list[str], int]] = {}

    def add(self, r: Rule, reason: str, offset: int) -> None:
        entry = self.items.setdefault(r.id, (r, [], offset))
        entry[1].append(reason)

    def report(self, artifact: Artifact, ctx: ScanContext) -> None:
        for r, reasons, offset in self.items.values():
            more = f" (+{len(reasons) - _MAX_REASONS} more)" if len(reasons) > _MAX_REASONS else ""
            ctx.report(
                r.finding(
                    artifact.location(offset),
                    "; ".join(reasons[:_MAX_REASONS]) + more,
                    reasons=reasons[:50],
                    count=len(reasons),
                )
            )


def _pairs_hook(duplicates: list[str]) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: Counter[str] = Counter(k for k, _ in pairs)
        duplicates.extend(k for k, c in seen.items() if c > 1)
        return dict(pairs)

    return hook


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64


class SafetensorsHandler(Handler):
    """Validate a safetensors header as strictly as the reference loader (and a little more)."""

    formats = (Format.SAFETENSORS,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Read the length prefix and the JSON header only, and validate them against the file size."""
        with artifact.open() as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                ctx.report(
                    HEADER_INVALID.finding(
                        artifact.location(0), f"file is {len(prefix)} bytes, shorter than the 8-byte header length"
                    )
                )
                return
            (n,) = struct.unpack("<Q", prefix)
            if n > ctx.limits.max_header_size:
                raise LimitExceeded(
                    "max_header_size", f"safetensors header of {n} bytes > {ctx.limits.max_header_size}"
                )
            raw = fh.read(n)
            data_len = (artifact.size - 8 - len(raw)) if artifact.size is not None else skip(fh, _U64)
        if len(raw) < n:
            ctx.report(
                HEADER_INVALID.finding(
                    artifact.location(0),
                    f"header length {n} runs past the end of the file ({len(raw)} header bytes present)",
                    header_length=n,
                )
            )
            return
        problems = _Problems()
        if n > REFERENCE_MAX_HEADER:
            problems.add(
                HEADER_INVALID, f"header length {n} exceeds the reference loader's limit {REFERENCE_MAX_HEADER}", 0
            )
        header = self._parse(raw, problems)
        if header is not None:
            self._validate(header, n, data_len, problems)
        if problems.items:
            problems.report(artifact, ctx)
        elif header is not None:
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            dtypes = sorted(Counter(v["dtype"] for v in tensors.values()).items())
            meta = sorted(header.get("__metadata__") or {})
            ctx.report(
                SUMMARY.finding(
                    artifact.location(8),
                    f"{len(tensors)} tensors, dtypes {dict(dtypes)}, metadata keys {meta[:20]}",
                    tensors=len(tensors),
                    metadata_keys=meta[:50],
                )
            )

    @staticmethod
    def _parse(raw: bytes, problems: _Problems) -> dict[str, Any] | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add(HEADER_INVALID, f"header is not UTF-8 (byte {8 + exc.start})", 8 + exc.start)
            return None
        duplicates: list[str] = []
        constants: list[str] = []

        def constant(name: str) -> float:
            constants.append(name)
            return math.nan

        try:
            header = json.loads(text, object_pairs_hook=_pairs_hook(duplicates), parse_constant=constant)
        except ValueError as exc:
            problems.add(HEADER_INVALID, f"header is not valid JSON: {exc}", 8)
            return None
        except RecursionError:
            problems.add(HEADER_INVALID, "header JSON is nested too deeply", 8)
            return None
        if duplicates:
            problems.add(
                HEADER_INVALID,
                f"duplicate JSON keys {sorted(set(duplicates))[:10]} (parsers disagree on which value wins)",
                8,
            )
        if constants:
            problems.add(HEADER_INVALID, f"non-standard JSON constants {sorted(set(constants))}", 8)
        if not isinstance(header, dict):
            problems.add(HEADER_INVALID, f"header is a JSON {type(header).__name__}, not an object", 8)
            return None
        return header

    @staticmethod
    def _validate(header: dict[str, Any], n: int, data_len: int, problems: _Problems) -> None:
        data_start = 8 + n
        meta = header.get("__metadata__")
        if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            problems.add(METADATA_INVALID, "__metadata__ is not a mapping of strings to strings", 8)
        spans: list[tuple[int, int, str]] = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(info, dict):
                problems.add(TENSOR_INVALID, f"{name!r}: entry is a {type(info).__name__}, not an object", 8)
                continue
            missing = {"dtype", "shape", "data_offsets"} - set(info)
            if missing:
                problems.add(TENSOR_INVALID, f"{name!r}: missing {sorted(missing)}", 8)
                continue
            extra = set(info) - {"dtype", "shape", "data_offsets"}
            if extra:
                problems.add(EXTRA_FIELDS, f"{name!r}: unexpected keys {sorted(extra)[:5]}", 8)
            dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
            if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
                problems.add(TENSOR_INVALID, f"{name!r}: unknown dtype {dtype!r}", 8)
                dtype = None
            if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
                problems.add(
                    TENSOR_INVALID, f"{name!r}: shape {str(shape)[:60]} is not a list of non-negative integers", 8
                )
                shape = None
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
                problems.add(
                    TENSOR_INVALID,
                    f"{name!r}: data_offsets {str(offsets)[:60]} is not [begin, end] of non-negative integers",
                    8,
                )
                continue
            begin, end = offsets
            if end < begin:
                problems.add(TENSOR_INVALID, f"{name!r}: data_offsets end {end} < begin {begin}", data_start + begin)
                continue
            spans.append((begin, end, name))
            if dtype is not None and shape is not None:
                bits = math.prod(shape) * DTYPE_BITS[dtype]
                if bits >= 8 * _U64:
                    problems.add(TENSOR_INVALID, f"{name!r}: shape {shape} overflows", data_start + begin)
                elif bits % 8:
                    problems.add(
                        TENSOR_INVALID,
                        f"{name!r}: {dtype} x {shape} is not a whole number of bytes",
                        data_start + begin,
                    )
                elif end - begin != bits // 8:
                    problems.add(
                        TENSOR_INVALID,
                        f"{name!r}: {end - begin} bytes for {dtype} {shape}, which needs {bits // 8}",
                        data_start + begin,
                    )
        SafetensorsHandler._layout(spans, data_start, data_len, problems)

    @staticmethod
    def _layout(spans: list[tuple[int, int, str]], data_start: int, data_len: int, problems: _Problems) -> None:
        spans.sort()
        cursor, previous = 0, None
        for begin, end, name in spans:
            if begin > cursor:
                problems.add(
                    LAYOUT_INVALID,
                    f"gap of {begin - cursor} unreferenced bytes before {name!r} (data bytes {cursor}..{begin})",
                    data_start + cursor,
                )
            elif begin < cursor:
                problems.add(
                    LAYOUT_INVALID,
                    f"{name!r} [{begin}, {end}) overlaps {previous!r} (ends at {cursor})",
                    data_start + begin,
                )
            if end >= cursor:
                cursor, previous = end, name
        if cursor > data_len:
            problems.add(
                LAYOUT_INVALID,
                f"tensors need {cursor} data bytes but the file has {data_len} (truncated)",
                data_start + data_len,
            )
        elif cursor < data_len:
            problems.add(
                LAYOUT_INVALID, f"{data_len - cursor} trailing bytes after the last tensor", data_start + cursor
            )
