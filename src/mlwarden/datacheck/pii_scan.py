"""Personal data in a dataset: the guard's validated detectors over every text column, cell by cell.

The detectors are :mod:`mlwarden.guard.pii`'s (Luhn for cards, mod-97 for IBANs, SSA rules for SSNs, issuers'
token prefixes, …), so a dataset and a model's outputs are judged by the same rules. Reports carry counts and
the detectors' masked evidence, never a raw value.

Speed comes from two shortcuts that do not change the answer: each distinct cell value is scanned once per chunk
(categorical columns repeat), and a cell is handed to the detectors only if a cheap byte-level trigger fires in it.
Every trigger is a *necessary* condition of some detector: eight digits with at most three separators between
neighbours (cards, SSNs, phones); a dotted quad (IPv4); two capitals and two digits (IBANs); ``@``; two colons
(IPv6); the token prefixes and secret keywords in lower case. A cell without one cannot match;
``tests/datacheck/test_pii.py`` checks the result against running every detector on every cell.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlwarden.datacheck.model import Rate
from mlwarden.guard.pii import DETECTORS, Match, PiiConfig, find

#: The detectors the triggers below were derived from; any other registered detector disables the shortcut.
COVERED = frozenset(
    "credit_card iban us_ssn email phone ipv4 ipv6 aws_access_key_id github_token gitlab_token slack_token "
    "stripe_key private_key jwt aws_secret_key generic_secret".split()
)

_CLASSES = bytearray(range(256))
for _c in b"0123456789":
    _CLASSES[_c] = ord("0")
for _c in range(ord("A"), ord("Z") + 1):
    _CLASSES[_c] = ord("A")
for _c in range(ord("a"), ord("z") + 1):
    _CLASSES[_c] = ord("a")
for _c in b" ()+-\t":
    _CLASSES[_c] = ord("_")
CLASS_TABLE = bytes(_CLASSES)

_DIGITS = ("credit_card", "us_ssn", "phone")
_TOKENS = ("aws_access_key_id", "github_token", "gitlab_token", "slack_token", "stripe_key", "private_key", "jwt")
_SECRETS = ("aws_secret_key", "generic_secret")

#: Triggers on the byte-class translation (digits → 0, capitals → A, small letters → a, ``()+-``, space and tab
#: → _), each with the detectors it is a necessary condition of.
CLASS_TRIGGERS: tuple[tuple[re.Pattern[bytes], tuple[str, ...]], ...] = (
    (re.compile(rb"0(?:[_.]{0,3}0){7}"), _DIGITS),  # cards (13+ digits), SSNs (9), phones (8+)
    (re.compile(rb"0\.0{1,3}\.0{1,3}\.0"), ("ipv4",)),
    (re.compile(rb"AA00"), ("iban",)),
    (re.compile(rb"@"), ("email",)),
    (re.compile(rb":[0aA]{0,4}:"), ("ipv6",)),
)
#: Triggers on the lower-cased bytes: token prefixes, PEM armour, JWT headers, secret keywords. One pattern per
#: literal prefix: the regex engine scans for a literal prefix at memory speed, not for an alternation.
LITERAL_TRIGGERS: tuple[tuple[re.Pattern[bytes], tuple[str, ...]], ...] = tuple(
    (re.compile(p), _TOKENS + _SECRETS)
    for p in (
        rb"akia", rb"asia", rb"abia", rb"acca", rb"a3t", rb"gh[pousr]_", rb"github_pat_",
        rb"gl(?:pat|dt|rt|cbt|ptt|soat)-", rb"xox[abprs]-", rb"xapp-", rb"hooks\.slack", rb"sk_(?:live|test)_",
        rb"rk_(?:live|test)_", rb"whsec_", rb"-----begin", rb"ey[a-z0-9_-]{8}", rb"pass", rb"pwd", rb"secret",
        rb"token", rb"api[_-]?key", rb"access[_-]?key", rb"auth[_-]?key", rb"credential", rb"bearer", rb"aws",
    )
)  # fmt: skip


def triggered(cells: Sequence[str]) -> dict[int, set[str]]:
    """For each cell in which a trigger fires: the detectors that can match in it (no other detector can)."""
    found: dict[int, set[str]] = {}
    if not cells:
        return found
    encoded = [c.encode("utf-8", "surrogatepass") for c in cells]
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    joined = b"\x00".join(encoded)
    classes, lowered = joined.translate(CLASS_TABLE), joined.lower()
    for text, triggers in ((classes, CLASS_TRIGGERS), (lowered, LITERAL_TRIGGERS)):
        for pattern, detectors in triggers:
            positions = [m.start() for m in pattern.finditer(text)]
            if positions:
                hit = np.searchsorted(starts, np.asarray(positions, dtype=np.int64), side="right") - 1
                for i in np.unique(hit).tolist():
                    found.setdefault(int(i), set()).update(detectors)
    return found


def scan_cells(cells: Sequence[str], config: PiiConfig) -> dict[int, list[Match]]:
    """Matches per cell index, for the cells that have any (the same as ``find`` on every cell).

    A cell runs only the detectors its triggers name: a detector that cannot match changes nothing, not even
    which of two overlapping matches wins.
    """
    found = {}
    if set(DETECTORS) <= COVERED and config.detectors is None:
        configs: dict[frozenset[str], PiiConfig] = {}
        for i, names in triggered(cells).items():
            key = frozenset(names)
            if key not in configs:
                configs[key] = dataclasses.replace(config, detectors=tuple(sorted(key)))
            matches = find(cells[i], configs[key])
            if matches:
                found[i] = matches
        return found
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
            values = [str(u) for u in uniques]
            repeats = np.bincount(codes, minlength=len(values))
            self.bytes += int(
                sum(len(v.encode("utf-8", "surrogatepass")) * int(n) for v, n in zip(values, repeats, strict=True))
            )
            tally = self.tally[column]
            for index, matches in scan_cells(values, self.config).items():
                n = int(repeats[index])
                tally.rows_with_pii += n
                kinds = Counter(m.detector for m in matches)
                for kind, count in kinds.items():
                    tally.matches[kind] += count * n
                    tally.rows_by_detector[kind] += n
                for m in matches:
                    listed = tally.examples[m.detector]
                    if len(listed) < self.examples and m.evidence_masked not in listed:
                        listed.append(m.evidence_masked)
                if len(tally.first_rows) < self.max_rows_listed or frame.index[0] < tally.first_rows[-1]:
                    rows = frame.index[codes == index][: self.max_rows_listed]
                    tally.first_rows = sorted([*tally.first_rows, *(int(r) for r in rows)])[: self.max_rows_listed]

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
