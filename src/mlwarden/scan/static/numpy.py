"""numpy ``.npy`` files (``.npz`` archives are zips whose members come back here).

A numeric array is data; an array of dtype ``object`` is a pickle after the header, loaded by
``numpy.load(allow_pickle=True)`` — that pickle is analysed like any other.
"""

from __future__ import annotations

import struct
from math import prod
from typing import TYPE_CHECKING, Any

from mlwarden.artifacts.pickle_ops import parse_npy_header_dict
from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Confidence, Severity, rule
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.pickle.handler import scan_pickle_stream

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

BAD_HEADER = rule(
    "MLW-NPY-001",
    "numpy header is malformed",
    Severity.LOW,
    cwe=20,
    description="The .npy header cannot be parsed the way numpy parses it, so numpy.load fails on it too.",
    remediation="Obtain an intact copy of the file.",
)
OBJECT_ARRAY = rule(
    "MLW-NPY-002",
    "numpy array of Python objects (pickle)",
    Severity.INFO,
    cwe=502,
    description="The array has dtype object: its data is a pickle, loaded only with allow_pickle=True. The "
    "pickle was analysed; findings about it are reported separately.",
    remediation="Prefer numeric dtypes; never load object arrays from untrusted sources with allow_pickle=True.",
    confidence=Confidence.HIGH,
)
SIZE_MISMATCH = rule(
    "MLW-NPY-003",
    "numpy data size does not match the header",
    Severity.LOW,
    cwe=20,
    description="The bytes after the header are not what shape and dtype announce.",
    remediation="Obtain an intact copy of the file.",
)


def _has_object(descr: Any) -> bool:
    if isinstance(descr, str):
        return "O" in descr.lstrip("<>|=")[:1]
    if isinstance(descr, list):
        return any(_has_object(field[1]) for field in descr if isinstance(field, tuple) and len(field) >= 2)
    return False


def _itemsize(descr: Any) -> int | None:
    if isinstance(descr, str):
        code = descr.lstrip("<>|=")
        kind, digits = code[:1], code[1:]
        if not digits.isdigit():
            return None
        return int(digits) * (4 if kind == "U" else 1)
    if isinstance(descr, list):
        total = 0
        for field in descr:
            if not (isinstance(field, tuple) and len(field) >= 2):
                return None
            size = _itemsize(field[1])
            if size is None:
                return None
            count = prod(field[2]) if len(field) > 2 and isinstance(field[2], tuple) else 1
            total += size * count
        return total
    return None


class NumpyHandler(Handler):
    """``.npy``: header checks, and pickle analysis of object arrays."""

    formats = (Format.NUMPY,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Parse the header with ``ast.literal_eval`` (as numpy does) and analyse object-array pickles."""
        head = artifact.head
        if len(head) < 10:
            ctx.report(BAD_HEADER.finding(artifact.location(0), "file shorter than a .npy preamble"))
            return
        major = head[6]
        if major == 1:
            (hlen,), start = struct.unpack("<H", head[8:10]), 10
        elif major in (2, 3) and len(head) >= 12:
            (hlen,), start = struct.unpack("<I", head[8:12]), 12
        else:
            ctx.report(BAD_HEADER.finding(artifact.location(6), f"unknown format version {major} or short header"))
            return
        if hlen > ctx.limits.max_header_size:
            raise LimitExceeded("max_header_size", f".npy header of {hlen} bytes")
        with artifact.open() as fh:
            fh.seek(start)
            raw = fh.read(hlen)
        try:
            header = parse_npy_header_dict(raw.decode("utf-8" if major == 3 else "latin-1"))
            descr, shape = header["descr"], tuple(header["shape"])
            if not isinstance(header.get("fortran_order"), bool):
                raise ValueError("fortran_order is not a bool")
        except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
            ctx.report(BAD_HEADER.finding(artifact.location(start), f"{type(exc).__name__}: {exc}"[:300]))
            return
        data_start = start + hlen
        if _has_object(descr):
            ctx.report(OBJECT_ARRAY.finding(artifact.location(data_start), f"descr={descr!r} shape={shape!r}"))
            scan_pickle_stream(artifact, ctx, data_start)
            return
        itemsize = _itemsize(descr)
        if itemsize is None or artifact.size is None:
            return
        expected = prod(shape) * itemsize
        actual = artifact.size - data_start
        if actual != expected:
            ctx.report(
                SIZE_MISMATCH.finding(
                    artifact.location(data_start), f"header announces {expected} bytes of data, file has {actual}"
                )
            )
