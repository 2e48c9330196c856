"""Gradient-boosted tree models saved natively: XGBoost JSON / UBJSON and LightGBM text.

These formats are data only — XGBoost's ``load_model`` and LightGBM's ``Booster(model_file=...)``
parse numbers and strings, they never import or call anything named in the file — so a valid file is
benign and gets an INFO summary. (The same models saved with pickle or joblib are *not* benign; those
are sniffed as pickles and judged there.) What is checked here is only that the file really is the
structure it claims to be, so a mislabelled or damaged file is not waved through: a corrupt one is LOW
(the loader fails, nothing runs).
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, BinaryIO

from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Severity, rule
from mlwarden.scan.static.base import Handler

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

MALFORMED = rule(
    "MLW-TREE-001",
    "Malformed tree-model file",
    Severity.LOW,
    cwe=20,
    description="The file does not have the structure of the tree-model format it was identified as. "
    "The loader fails on it (the format is data only, so nothing runs), but it was not what it claims.",
    remediation="Re-export the model from its source.",
)
SUMMARY = rule(
    "MLW-TREE-002",
    "Tree model (data-only format)",
    Severity.INFO,
    cwe=None,
    description="A native XGBoost or LightGBM model file: numbers and strings only, no code is loaded.",
    remediation="None needed.",
)

_MAX_DEPTH = 64
_FIXED = {b"i": 1, b"U": 1, b"I": 2, b"l": 4, b"L": 8, b"d": 4, b"D": 8, b"C": 1}
_INTS = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q"}
_EMPTY = {b"Z", b"N", b"T", b"F"}


class _Bad(Exception):  # noqa: N818 - internal signal
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


class _Ubj:
    """Walk UBJSON (draft 12, as written by XGBoost) without building it; typed arrays are skipped."""

    def __init__(self, fh: BinaryIO, size: int | None, ctx: ScanContext) -> None:
        self.fh, self.size, self.ctx = fh, size, ctx
        self.pos = 0
        self.values = 0

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise _Bad(self.pos, f"truncated: needed {n} bytes at offset {self.pos}")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if self.size is not None and self.pos + n > self.size:
            raise _Bad(self.pos, f"typed array of {n} bytes runs past the end of the file")
        if self.fh.seekable():
            self.fh.seek(n, 1)
            self.pos += n
        else:
            while n > 0:
                chunk = self.read(min(n, 1 << 20))
                n -= len(chunk)

    def length(self, marker: bytes | None = None) -> int:
        marker = marker or self.read(1)
        if marker not in _INTS:
            raise _Bad(self.pos - 1, f"expected an integer length, found marker {marker!r}")
        (n,) = struct.unpack(_INTS[marker], self.read(_FIXED[marker]))
        if n < 0:
            raise _Bad(self.pos, f"negative length {n}")
        return int(n)

    def key(self, marker: bytes | None = None) -> str:
        n = self.length(marker)
        if self.size is not None and self.pos + n > self.size:
            raise _Bad(self.pos, f"key of {n} bytes runs past the end of the file")
        if n > 4096:
            self.skip(n)
            return ""
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, marker: bytes, depth: int) -> None:
        self.values += 1
        if self.values % 65536 == 0:
            self.ctx.check_time()
        if marker in _EMPTY:
            return
        if marker in _FIXED:
            self.skip(_FIXED[marker])
        elif marker in (b"S", b"H"):
            self.skip(self.length())
        elif marker in (b"[", b"{"):
            self.container(marker == b"{", depth + 1)
        else:
            raise _Bad(self.pos - 1, f"unknown UBJSON marker {marker!r}")

    def container(self, is_object: bool, depth: int) -> list[str]:
        if depth > _MAX_DEPTH:
            raise _Bad(self.pos, f"containers nested deeper than {_MAX_DEPTH}")
        keys: list[str] = []
        marker = self.read(1)
        vtype: bytes | None = None
        if marker == b"$":
            vtype = self.read(1)
            marker = self.read(1)
            if marker != b"#":
                raise _Bad(self.pos - 1, "typed container without a count")
        if marker == b"#":
            count = self.length()
            if vtype in _FIXED and not is_object:
                self.skip(count * _FIXED[vtype])
                return keys
            for _ in range(count):
                if is_object:
                    keys.append(self.key())
                self.value(vtype or self.read(1), depth)
            return keys
        close = b"}" if is_object else b"]"
        while marker != close:
            if marker == b"N":
                marker = self.read(1)
                continue
            if is_object:
                keys.append(self.key(marker))
                marker = self.read(1)
            self.value(marker, depth)
            marker = self.read(1)
        return keys


class TreeModelHandler(Handler):
    """Structural validation of native XGBoost (JSON, UBJSON) and LightGBM (text) models."""

    formats = (Format.XGBOOST_JSON, Format.XGBOOST_UBJ, Format.LIGHTGBM_TEXT)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Validate the structure; a valid model gets an INFO summary, a corrupt one a LOW finding."""
        try:
            if artifact.head[:1] == b"{" and artifact.head[1:2] in _INTS:
                summary = self._ubj(artifact, ctx)
            elif artifact.head.lstrip()[:1] == b"{":
                summary = self._json(artifact, ctx)
            else:
                summary = self._lightgbm(artifact, ctx)
        except _Bad as exc:
            ctx.report(MALFORMED.finding(artifact.location(exc.offset), exc.reason))
            return
        ctx.report(SUMMARY.finding(artifact.location(), summary))

    @staticmethod
    def _ubj(artifact: Artifact, ctx: ScanContext) -> str:
        with artifact.open() as fh:
            walker = _Ubj(fh, artifact.size, ctx)
            walker.read(1)
            keys = walker.container(True, 1)
            if fh.read(1):
                raise _Bad(walker.pos, "bytes after the end of the UBJSON document")
        if "learner" not in keys or "version" not in keys:
            raise _Bad(0, f"top-level keys {keys[:10]} lack 'learner'/'version'")
        return f"XGBoost UBJSON model ({walker.values} values)"

    @staticmethod
    def _json(artifact: Artifact, ctx: ScanContext) -> str:
        if artifact.size is not None and artifact.size > ctx.limits.max_text_size:
            return (
                f"XGBoost JSON model of {artifact.size} bytes (larger than max_text_size: structure "
                "not validated; the format is data only)"
            )
        with artifact.open() as fh:
            raw = fh.read(ctx.limits.max_text_size + 1)
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise _Bad(0, f"not valid JSON: {str(exc)[:200]}") from None
        if not (
            isinstance(obj, dict) and isinstance(obj.get("learner"), dict) and isinstance(obj.get("version"), list)
        ):
            raise _Bad(0, "not an XGBoost model (no 'learner' object / 'version' list)")
        version = ".".join(str(v) for v in obj["version"][:3])
        return f"XGBoost JSON model (written by XGBoost {version})"

    @staticmethod
    def _lightgbm(artifact: Artifact, ctx: ScanContext) -> str:
        trees, version, end_seen, pos = 0, None, False, 0
        with artifact.open() as fh:
            first = fh.readline(64).strip()
            if first != b"tree":
                raise _Bad(0, "first line is not 'tree'")
            pos = len(first)
            for n, line in enumerate(iter(lambda: fh.readline(1 << 20), b"")):
                if n % 65536 == 0:
                    ctx.check_time()
                stripped = line.strip()
                if stripped.startswith(b"version=") and version is None:
                    version = stripped[8:].decode("ascii", errors="replace")
                elif stripped.startswith(b"Tree="):
                    trees += 1
                elif stripped == b"end of trees":
                    end_seen = True
                pos += len(line)
        if version is None:
            raise _Bad(0, "no 'version=' line in the LightGBM header")
        if not end_seen:
            raise _Bad(pos, f"no 'end of trees' line after {trees} trees (truncated?)")
        return f"LightGBM text model {version} with {trees} trees"
