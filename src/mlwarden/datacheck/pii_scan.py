"""Personal data in a dataset: the guard's validated detectors over every text column, cell by cell.

The detectors are :mod:`mlwarden.guard.pii`'s (Luhn for cards, mod-97 for IBANs, SSA rules for SSNs, issuers'
token prefixes, …), so a dataset and a model's outputs are judged by the same rules. Reports carry counts and
the detectors' masked evidence, never a raw value.

Speed comes from shortcuts that do not change the answer. Each distinct cell value of a chunk is scanned once
(categorical columns repeat). The distinct values are joined into one byte string, cells separated by NUL
(Arrow joins them without a Python object per cell), and about twenty *prefilters* run over the whole string in
the regex engine's C loop, each starting with a literal so that the engine scans for it at memory speed. Each is a
necessary condition of one or more detectors — for cards thirteen digits in a row or four-digit groups on a
*digits view* (digits → ``0``, small letters and most punctuation dropped: a quarter of the bytes), for e-mail
``@``, for keyword secrets a fragment of the keyword in the lower-cased bytes (see :data:`PREFILTERS`). Hits are
mapped back to cells by binary search over the cell offsets, and only those cells go through ``find`` with the
detectors their hits name. No prefilter can match a NUL, so a value split over two cells is never joined into one
candidate (and ``find`` itself only ever sees one cell). Cells holding a decimal digit of another script run the
detectors whose patterns take one, and cells holding one of the four non-ASCII characters Python's
case-insensitive matching folds to an ASCII letter (``İ ı ſ K``) the keyword detectors (:data:`EXOTIC`).
``tests/datacheck/test_pii_fast.py`` checks the result against every detector on every cell
(:func:`scan_every_cell`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlwarden.datacheck.model import Rate
from mlwarden.guard.pii import DETECTORS, Match, PiiConfig, find

#: The detectors the prefilters below were derived from; any other registered detector disables the shortcut.
COVERED = frozenset(
    "credit_card iban us_ssn email phone ipv4 ipv6 aws_access_key_id github_token gitlab_token slack_token "
    "stripe_key private_key jwt aws_secret_key generic_secret".split()
)


def _table(mapping: dict[bytes, bytes]) -> bytes:
    table = bytearray(range(256))
    for sources, target in mapping.items():
        for c in sources:
            table[c] = target[0]
    return bytes(table)


_DIGITS, _UPPER = b"0123456789", bytes(range(65, 91))
#: The digits view keeps digits (→ ``0``), capitals (→ ``A``), space (→ ``_``), ``-.()+@:`` and the NUL separator,
#: plus ``,/`` which no candidate holds but which keep numbers apart, and drops every other byte (small letters
#: above all): about a quarter of prose. Dropping bytes can only join more text into a candidate, never split one,
#: so a hit stays a necessary condition.
DIGITS_TABLE = _table({_DIGITS: b"0", _UPPER: b"A", b" ": b"_"})
DIGITS_DROP = bytes(sorted(set(range(256)) - set(_DIGITS + _UPPER + b" -.()+@:,/\x00")))

_SSN_DIGITS, _SSN_WORD = "us_ssn:digits", "us_ssn:keyword"  # a bare or spaced SSN needs both in its cell
_NEEDS = {_SSN_DIGITS: _SSN_WORD}  # a pass for this label is skipped if no cell has the other one
_KEYWORDS = ("aws_secret_key", "generic_secret")

#: (view, pattern, what a hit allows). Views: ``digits`` (see :data:`DIGITS_TABLE`), ``raw`` (the UTF-8 bytes),
#: ``lower`` (ASCII letters lower-cased). Every pattern starts with a literal, which the regex engine scans for at
#: memory speed; none can match a NUL.
PREFILTERS: tuple[tuple[str, re.Pattern[bytes], tuple[str, ...]], ...] = tuple(
    (view, re.compile(pattern), labels)
    for view, pattern, labels in (
        # cards: 13-19 digits in a row, or 4-digit groups (4-4-4-1+, 4-6-5, 4-6-4) split by one kind of separator
        ("digits", rb"0000(?:0{9}|_0000_0000_0|-0000-0000-0|_000000_0000|-000000-0000)", ("credit_card",)),
        # SSNs: dashed stand alone; bare or spaced need "ssn" / "social security" in the same cell
        ("digits", rb"-00-0000", ("us_ssn",)),
        ("lower", rb"s(?:sn|ocial)", (_SSN_WORD,)),
        ("digits", rb"000(?:_00_|00)0000", (_SSN_DIGITS,)),  # runs only if a keyword was seen: see _NEEDS
        # phones: "+" and 8+ digits; (415) 555-2671; 415-555-2671; 01 23 45 67 89; UK 020 7946 0958. The dotted
        # NANP form (415.555.2671) shares IPv4's ".d{1,3}." (a dotted quad's second number).
        ("digits", rb"\+0[0_.()-]{7}", ("phone",)),
        ("digits", rb"\(000\)", ("phone",)),
        ("digits", rb"-000-", ("phone",)),
        ("raw", rb"0[1-9](?:\d{1,3} \d{3,4} \d{3,4}|([ .])\d\d(?:\1\d\d){3})", ("phone",)),  # the detector's own
        ("digits", rb"\.0{1,3}\.", ("ipv4", "phone")),
        ("digits", rb":[0A]{0,4}:", ("ipv6",)),  # two colons with at most four hex digits between
        ("digits", rb"AA00[_A0]{10}", ("iban",)),
        ("digits", rb"@", ("email",)),
        ("digits", rb"A(?:AAA[A0]{16}|0A[A0]{17})", ("aws_access_key_id",)),  # AKIA…, A3T…: 20 capitals/digits
        # ghp_…, github_pat_…, sk_live_…, whsec_… all hold "_" and 16 more token characters
        ("raw", rb"_[A-Za-z0-9_]{16}", ("github_token", "stripe_key")),
        ("raw", rb"-(?:[A-Za-z0-9_-]{20}|----BEGIN )", ("gitlab_token", "private_key")),  # glpat-…, PEM armour
        ("raw", rb"x(?:ox[abprs]|app)-", ("slack_token",)),
        # a JWT's middle part, or ".slack." of a Slack webhook URL, without their small letters and "_"
        ("digits", rb"\.[0A-]*\.", ("jwt", "slack_token")),
        # keywords, each found by a fragment whose first letter is rare: to-ken/key, pass/pwd, se-cret/credential
        ("lower", rb"ke[ny]", ("generic_secret",)),
        ("lower", rb"p(?:ass|wd)", ("generic_secret",)),
        ("lower", rb"c(?:ret|redential)", _KEYWORDS),
        ("lower", rb"bearer", ("generic_secret",)),
        ("lower", rb"aws", ("aws_secret_key",)),
    )
)  # fmt: skip


#: Non-ASCII characters the detectors' patterns accept where a prefilter only looks for ASCII: decimal digits of
#: other scripts (``\d`` is Unicode-aware) and the four characters case-insensitive matching folds to an ASCII
#: letter (``İ ı ſ K``, which only the keyword and context patterns use). A cell holding one runs these detectors.
EXOTIC = {
    r"\d": ("credit_card", "iban", "us_ssn", "phone", "ipv4", "ipv6"),
    r"(?i:[a-z])": ("us_ssn", "aws_secret_key", "generic_secret"),
}


@functools.cache
def exotic(kind: str) -> re.Pattern[bytes]:
    r"""UTF-8 of the non-ASCII characters ``re.fullmatch(kind, c)`` accepts, as a byte trie.

    The characters come from this Python's own ``re`` (its Unicode tables), once per process and only when a chunk
    is not ASCII (a scan of every code point, about 0.2 s). As a trie, the engine jumps from lead byte to lead byte,
    so text in other scripts costs little.
    """
    every = "".join(chr(c) for c in range(0x80, sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    trie: dict[int, Any] = {}
    for char in set(re.findall(kind, every)):
        node = trie
        for byte in char.encode():
            node = node.setdefault(byte, {})
    return re.compile(_trie_pattern(trie).encode("ascii"))


def _trie_pattern(node: dict[int, Any]) -> str:
    leaves = sorted(b for b, child in node.items() if not child)
    branches = [f"\\x{b:02x}{_group(_trie_pattern(child))}" for b, child in sorted(node.items()) if child]
    if leaves:
        branches.append("[" + "".join(f"\\x{b:02x}" for b in leaves) + "]")
    return "|".join(branches)


def _group(pattern: str) -> str:
    return f"(?:{pattern})" if "|" in pattern else pattern


@dataclass(frozen=True, slots=True)
class Joined:
    """Cells joined by NUL into one UTF-8 byte string; cell ``i`` is ``data[starts[i]:starts[i] + sizes[i]]``."""

    data: bytes
    starts: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, cells: Sequence[str]) -> Joined:
        """Join Python strings (lone surrogates survive as ``surrogatepass`` bytes)."""
        encoded = [c.encode("utf-8", "surrogatepass") for c in cells]
        sizes = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        return cls(b"\x00".join(encoded), _starts(sizes), sizes)

    @classmethod
    def of_values(cls, values: Any) -> Joined:
        """Join an index or array of strings; Arrow-backed ones without building a Python string per cell."""
        try:
            import pyarrow as pa
            import pyarrow.compute as pc
        except ImportError:  # pragma: no cover - pandas' default string storage needs pyarrow
            return cls.of([str(v) for v in values])
        arrow = getattr(getattr(values, "dtype", None), "storage", None) == "pyarrow"
        if not arrow or len(values) == 0:
            return cls.of([str(v) for v in values])
        array = pa.array(values)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        array = array.cast(pa.large_string())
        if array.null_count:
            return cls.of([str(v) for v in values])
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
        lists = pa.LargeListArray.from_arrays(pa.array([0, len(array)], pa.int64()), array)
        data = pc.binary_join(lists, pa.scalar("\x00", pa.large_string()))[0].as_buffer().to_pybytes()
        sizes = np.diff(offsets)
        return cls(data, _starts(sizes), sizes)

    def cell(self, i: int) -> str:
        """Cell ``i`` as the string it was."""
        start = int(self.starts[i])
        return self.data[start : start + int(self.sizes[i])].decode("utf-8", "surrogatepass")

    def owners(self, positions: list[int] | np.ndarray) -> np.ndarray:
        """The distinct cells holding these byte positions."""
        return np.unique(np.searchsorted(self.starts, np.asarray(positions, dtype=np.int64), side="right") - 1)


def _starts(sizes: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1] + 1, out=starts[1:])
    return starts


def prefiltered(joined: Joined) -> dict[int, set[str]]:
    """For each cell a prefilter fires in: the detectors that can match in it (no other detector can)."""
    if not len(joined.sizes):
        return {}
    found: dict[int, set[str]] = defaultdict(set)
    views: dict[str, tuple[bytes, np.ndarray]] = {}
    seen: set[str] = set()
    for view, pattern, labels in PREFILTERS:
        if all(label in _NEEDS and _NEEDS[label] not in seen for label in labels):
            continue
        if view not in views:
            views[view] = _view(joined, view)
        text, starts = views[view]
        positions = [m.start() for m in pattern.finditer(text)]
        if positions:
            cells = np.searchsorted(starts, np.asarray(positions, dtype=np.int64), side="right") - 1
            for i in np.unique(cells).tolist():
                found[i].update(labels)
            seen.update(labels)
    for kind, detectors in EXOTIC.items() if not joined.data.isascii() else ():
        positions = [m.start() for m in exotic(kind).finditer(joined.data)]
        if positions:
            for i in joined.owners(positions).tolist():
                found[i].update(detectors)
    out = {}
    for i in sorted(found):
        names = found[i]
        if _SSN_DIGITS in names and _SSN_WORD in names:
            names.add("us_ssn")
        names -= {_SSN_DIGITS, _SSN_WORD}
        if names:
            out[i] = names
    return out


def _view(joined: Joined, view: str) -> tuple[bytes, np.ndarray]:
    """One view of the joined cells and where each cell starts in it."""
    data = joined.data
    if view == "lower":
        return data.lower(), joined.starts
    if view == "raw":
        return data, joined.starts
    text = data.translate(DIGITS_TABLE, DIGITS_DROP)
    nul = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 0)
    if len(nul) != len(joined.sizes) - 1:  # a cell holds a NUL of its own: drop it (no digits-view candidate has one)
        ends = (joined.starts + joined.sizes).tolist()
        cells = (data[start:end].replace(b"\x00", b"") for start, end in zip(joined.starts.tolist(), ends, strict=True))
        text = b"\x00".join(cells).translate(DIGITS_TABLE, DIGITS_DROP)
        nul = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 0)
    return text, np.concatenate(([0], nul + 1))


def triggered(cells: Sequence[str]) -> dict[int, set[str]]:
    """For each cell in which a prefilter fires: the detectors that can match in it (no other detector can)."""
    return prefiltered(Joined.of(cells))


def shortcut_applies(config: PiiConfig) -> bool:
    """Whether the prefilters cover every detector ``config`` runs."""
    return set(DETECTORS) <= COVERED and config.detectors is None


def scan_joined(joined: Joined, config: PiiConfig) -> dict[int, list[Match]]:
    """Matches per cell index, for the cells that have any (the same as ``find`` on every cell).

    A cell runs only the detectors its prefilters name: a detector that cannot match changes nothing, not even
    which of two overlapping matches wins.
    """
    found: dict[int, list[Match]] = {}
    if not shortcut_applies(config):
        return scan_every_cell([joined.cell(i) for i in range(len(joined.sizes))], config)
    configs: dict[frozenset[str], PiiConfig] = {}
    for i, names in prefiltered(joined).items():
        key = frozenset(names)
        if key not in configs:
            configs[key] = dataclasses.replace(config, detectors=tuple(sorted(key)))
        matches = find(joined.cell(i), configs[key])
        if matches:
            found[i] = matches
    return found


def scan_cells(cells: Sequence[str], config: PiiConfig) -> dict[int, list[Match]]:
    """Matches per cell index, for the cells that have any (the same as :func:`scan_every_cell`)."""
    if not shortcut_applies(config):
        return scan_every_cell(cells, config)
    return scan_joined(Joined.of(cells), config)


def scan_every_cell(cells: Sequence[str], config: PiiConfig) -> dict[int, list[Match]]:
    """The reference: every detector on every cell."""
    found = {}
    for i, cell in enumerate(cells):
        matches = find(cell, config)
        if matches:
            found[i] = matches
    return found


@dataclass
class _ColumnTally:
    rows_with_pii: int = 0
    matches: Counter[str] = field(default_factory=Counter)
    rows_by_detector: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    first_rows: list[int] = field(default_factory=list)


class PiiScan:
    """Accumulates PII counts over the chunks of a dataset, per column and detector."""

    def __init__(self, columns: Sequence[str], *, examples: int = 3, max_rows_listed: int = 20) -> None:
        self.columns = list(columns)
        self.examples = examples
        self.max_rows_listed = max_rows_listed
        self.config = PiiConfig(max_chars=2**62)
        self.rows = 0
        self.bytes = 0
        self.tally = {c: _ColumnTally() for c in self.columns}

    def add(self, frame: pd.DataFrame) -> None:
        """Scan one normalised chunk."""
        self.rows += len(frame)
        for column in self.columns:
            codes, uniques = pd.factorize(frame[column], sort=False)
            joined = Joined.of_values(uniques)
            repeats = np.bincount(codes[codes >= 0], minlength=len(joined.sizes))
            self.bytes += int(joined.sizes @ repeats) if len(repeats) else 0
            found = scan_joined(joined, self.config)
            if found:
                self._tally(self.tally[column], found, codes, repeats, frame.index)

    def _tally(
        self, tally: _ColumnTally, found: dict[int, list[Match]], codes: np.ndarray, repeats: np.ndarray, index: Any
    ) -> None:
        for i, matches in found.items():
            n = int(repeats[i])
            tally.rows_with_pii += n
            for kind in {m.detector for m in matches}:
                tally.rows_by_detector[kind] += n
            for m in matches:
                tally.matches[m.detector] += n
                listed = tally.examples[m.detector]
                if len(listed) < self.examples and m.evidence_masked not in listed:
                    listed.append(m.evidence_masked)
        if len(tally.first_rows) < self.max_rows_listed or index[0] < tally.first_rows[-1]:
            hits = np.flatnonzero(np.isin(codes, np.fromiter(found, dtype=np.int64, count=len(found))))
            rows = [int(r) for r in index[hits[: self.max_rows_listed]]]
            tally.first_rows = sorted(set(tally.first_rows) | set(rows))[: self.max_rows_listed]

    def metrics(self) -> dict[str, Any]:
        """Per column: rows with PII (rate, Wilson interval), matches and rows per detector, masked examples."""
        columns = {}
        totals: Counter[str] = Counter()
        for column, t in self.tally.items():
            totals.update(t.matches)
            columns[column] = {
                "rows_with_pii": Rate(t.rows_with_pii, self.rows).to_dict(),
                "matches": dict(sorted(t.matches.items())),
                "rows_by_detector": dict(sorted(t.rows_by_detector.items())),
                "examples_masked": {k: list(v) for k, v in sorted(t.examples.items())},
                "first_rows": sorted(t.first_rows),
            }
        return {
            "engine": "mlwarden.guard.pii",
            "columns_scanned": len(self.columns),
            "bytes_scanned": self.bytes,
            "matches": dict(sorted(totals.items())),
            "columns": columns,
        }
