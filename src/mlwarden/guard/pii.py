"""Detectors of personal data and secrets in model outputs, validated by checksums where they exist.

Each detector is a small registered unit (stable id, description, example) that proposes candidates with
a regular expression and *validates* them before reporting: Luhn for payment cards (ISO/IEC 7812-1),
mod-97 for IBANs (ISO 13616 / ISO 7064), the SSA's area/group/serial rules for US SSNs, the issuers'
documented token prefixes for cloud and SaaS credentials, JSON decoding for JWTs (RFC 7519) and Shannon
entropy for keyword-introduced secrets (the method of truffleHog and detect-secrets). Validation is what
keeps order numbers, timestamps and version strings out of redacted outputs.

:func:`find` runs every detector, resolves overlaps (highest confidence, then longest span wins) and
never returns the matched text itself: :attr:`Match.evidence_masked` is safe to log and audit.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from mlwarden.core.errors import LimitExceeded, UsageError

__all__ = ["DETECTORS", "Detector", "Match", "PiiConfig", "RegexDetector", "find", "register"]


@dataclass(frozen=True, slots=True)
class Match:
    """One detected span: ``text[start:end]`` is PII or a secret of kind ``detector``.

    ``evidence_masked`` shows the shape of the value (issuer prefix, last four digits, length) but never
    enough of it to be reused, so the match can go to logs and the audit trail as is.
    """

    detector: str
    start: int
    end: int
    confidence: float
    evidence_masked: str


@dataclass(frozen=True, slots=True)
class PiiConfig:
    """Which detectors run and within which limits.

    Attributes:
        max_chars: inputs longer than this raise :class:`LimitExceeded` (the guard then blocks: fail closed).
        detectors: ids to run; ``None`` runs every registered detector.
        min_confidence: matches below this confidence are dropped.
        entropy_threshold: bits per character a keyword-introduced value needs to count as a secret.
    """

    max_chars: int = 1_000_000
    detectors: tuple[str, ...] | None = None
    min_confidence: float = 0.0
    entropy_threshold: float = 3.0

    def __post_init__(self) -> None:
        if self.max_chars <= 0:
            raise UsageError(f"PiiConfig.max_chars must be > 0, got {self.max_chars}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise UsageError(f"PiiConfig.min_confidence must be within [0, 1], got {self.min_confidence}")
        if not 0.0 < self.entropy_threshold <= 8.0:
            raise UsageError(f"PiiConfig.entropy_threshold must be within (0, 8], got {self.entropy_threshold}")
        unknown = sorted(set(self.detectors or ()) - DETECTORS.keys())
        if unknown:
            raise UsageError(f"unknown PII detector(s) {unknown}; known: {sorted(DETECTORS)}")


class Detector(ABC):
    """One kind of PII or secret. Subclasses set the metadata and implement :meth:`scan`.

    ``trigger``, when set, is a pattern that every match of the detector contains (a digit, ``@``, the issuer's
    prefix): :func:`find` skips the detector on a text without it. A trigger must be implied by the detector's
    own pattern, never a guess (tests/guard/test_pii_fast_paths.py compares :func:`find` with every detector run).
    """

    id: str
    description: str
    example: str
    trigger: re.Pattern[str] | None = None

    @abstractmethod
    def scan(self, text: str, config: PiiConfig) -> Iterator[Match]:
        """Yield validated matches in ``text`` (overlaps with other detectors are resolved by :func:`find`)."""


#: A validator gets the regex match and the whole text; it returns a confidence, or ``None`` to reject.
Validator = Callable[[re.Match[str], str, PiiConfig], float | None]
Masker = Callable[[str], str]


class RegexDetector(Detector):
    """A detector made of a candidate pattern, a validator and a masker.

    A rejected candidate does not hide a valid one starting inside it: the search resumes one character
    after the rejected candidate's start (candidates are bounded in length, so this stays linear).
    """

    def __init__(
        self,
        id: str,
        description: str,
        example: str,
        pattern: str,
        validate: Validator,
        mask: Masker,
        group: int = 0,
        *,
        trigger: re.Pattern[str] | None = None,
    ) -> None:
        self.id, self.description, self.example = id, description, example
        self.pattern = re.compile(pattern)
        self.validate, self.mask, self.group = validate, mask, group
        self.trigger = trigger

    def scan(self, text: str, config: PiiConfig) -> Iterator[Match]:  # noqa: D102 - documented on Detector
        pos = 0
        while (m := self.pattern.search(text, pos)) is not None:
            confidence = self.validate(m, text, config)
            if confidence is None:
                pos = m.start() + 1
                continue
            start, end = m.span(self.group)
            yield Match(self.id, start, end, confidence, self.mask(text[start:end]))
            pos = max(m.end(), pos + 1)


DETECTORS: dict[str, Detector] = {}

#: Triggers shared by several detectors (one search per text for all of them): a digit, and ``@``.
DIGIT = re.compile(r"\d")
AT_SIGN = re.compile("@")


def register(detector: Detector) -> Detector:
    """Add a detector to the registry (ids are unique and stable: policies and audit records use them)."""
    if detector.id in DETECTORS and DETECTORS[detector.id] is not detector:
        raise ValueError(f"PII detector id {detector.id!r} registered twice")
    DETECTORS[detector.id] = detector
    return detector


def find(text: str, config: PiiConfig | None = None) -> list[Match]:
    """Find PII and secrets in ``text``; overlapping matches keep the most confident, then the longest.

    Raises:
        UsageError: ``text`` is not a string.
        LimitExceeded: ``text`` is longer than ``config.max_chars``.
    """
    config = config or PiiConfig()
    if not isinstance(text, str):
        raise UsageError(f"PII detection needs a str, got {type(text).__name__}")
    if len(text) > config.max_chars:
        raise LimitExceeded("PII input size", f"{len(text)} characters > max_chars={config.max_chars}")
    ids = config.detectors if config.detectors is not None else tuple(DETECTORS)
    present: dict[re.Pattern[str], bool] = {}
    found: list[Match] = []
    for d in ids:
        detector = DETECTORS[d]
        trigger = detector.trigger
        if trigger is not None:
            hit = present.get(trigger)
            if hit is None:
                hit = present[trigger] = trigger.search(text) is not None
            if not hit:
                continue  # no match of this detector can lack its trigger
        found.extend(m for m in detector.scan(text, config) if m.confidence >= config.min_confidence)
    return resolve_overlaps(found)


def resolve_overlaps(matches: Iterable[Match]) -> list[Match]:
    """Keep a non-overlapping subset: highest confidence first, then the longest span, then the earliest.

    Kept spans are disjoint and sorted, so one binary search per candidate finds its only possible neighbours.
    """
    starts: list[int] = []
    kept: list[Match] = []
    for m in sorted(matches, key=lambda m: (-m.confidence, -(m.end - m.start), m.start, m.detector)):
        i = bisect.bisect_right(starts, m.start)
        if (i > 0 and kept[i - 1].end > m.start) or (i < len(kept) and kept[i].start < m.end):
            continue
        starts.insert(i, m.start)
        kept.insert(i, m)
    return kept


# --- masking ---------------------------------------------------------------------------------------------------


_ASCII_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ASCII_ALNUM_TO_STAR = str.maketrans(dict.fromkeys(_ASCII_ALNUM, "*"))


def mask_keep(value: str, keep_start: int = 0, keep_end: int = 0) -> str:
    """Replace letters and digits with ``*``, keeping separators and the given number of leading/trailing chars."""
    n = len(value)
    middle_end = max(keep_start, n - keep_end)
    middle = value[keep_start:middle_end]
    if middle.isascii():  # the common case, in C: for ASCII, isalnum() is exactly [0-9A-Za-z]
        middle = middle.translate(_ASCII_ALNUM_TO_STAR)
    else:
        middle = "".join("*" if c.isalnum() else c for c in middle)
    return value[:keep_start] + middle + value[middle_end:]


def mask_secret(prefix_len: int) -> Masker:
    """A masker keeping a token's documented prefix (public, and useful evidence) and its length."""
    return lambda v: f"{v[:prefix_len]}{'*' * min(8, max(len(v) - prefix_len, 0))}… ({len(v)} chars)"


def _mask_email(value: str) -> str:
    local, _, domain = value.partition("@")
    tld = domain.rsplit(".", 1)[-1]
    return f"{local[:1]}***@***.{tld}"


# --- payment cards: issuer prefixes (ISO/IEC 7812, issuers' published ranges) and Luhn -------------------------

# (lowest prefix, highest prefix, allowed lengths)
_CARD_ISSUERS: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (6011, 6011, frozenset(range(16, 20))),  # Discover
    (644, 649, frozenset(range(16, 20))),
    (65, 65, frozenset(range(16, 20))),
    (62, 62, frozenset(range(16, 20))),  # UnionPay (incl. Discover co-brand 622126-622925)
    (300, 305, frozenset(range(14, 20))),  # Diners Club
    (36, 36, frozenset(range(14, 20))),
    (38, 39, frozenset(range(16, 20))),
    (3528, 3589, frozenset(range(16, 20))),  # JCB
    (2200, 2204, frozenset(range(16, 20))),  # Mir
    (5018, 5018, frozenset(range(13, 20))),  # Maestro
    (5020, 5020, frozenset(range(13, 20))),
    (5038, 5038, frozenset(range(13, 20))),
    (5893, 5893, frozenset(range(13, 20))),
    (6304, 6304, frozenset(range(13, 20))),
    (6759, 6763, frozenset(range(13, 20))),
)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of ISO/IEC 7812-1: every card number's last digit is this checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer_ok(digits: str) -> bool:
    """Whether the number starts with a known issuer prefix and has a length that issuer uses."""
    for low, high, lengths in _CARD_ISSUERS:
        prefix = int(digits[: len(str(low))])
        if low <= prefix <= high and len(digits) in lengths:
            return True
    return False


def card_confidence(raw: str) -> float | None:
    """Confidence that ``raw`` (digits, optionally grouped by one kind of separator) is a card number."""
    digits = re.sub(r"[ -]", "", raw)
    seps = set(re.findall(r"[ -]", raw))
    if not 13 <= len(digits) <= 19 or len(seps) > 1 or not card_issuer_ok(digits) or not luhn_valid(digits):
        return None
    if not seps:
        return 0.9
    groups = [len(g) for g in re.split(r"[ -]", raw)]
    four_groups = all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4
    return 0.95 if four_groups or groups in ([4, 6, 5], [4, 6, 4]) else None


def _mask_card(value: str) -> str:
    digits_seen = sum(c.isdigit() for c in value)
    out, count = [], 0
    for c in value:
        if c.isdigit():
            count += 1
            out.append(c if count > digits_seen - 4 else "*")
        else:
            out.append(c)
    return "".join(out)


class CardDetector(Detector):
    """Payment cards, found as runs of whole digit groups so that the scan stays linear in the text size.

    A card neither starts nor ends inside a group of digits, so candidates are 1 to 5 consecutive groups
    of a digit run (``"1234 4111 1111 1111 1111"`` still yields the card after the first group).
    """

    id = "credit_card"
    description = "Payment card number: issuer prefix and length, Luhn checksum, consistent 4-digit grouping"
    example = "4111 1111 1111 1111"
    trigger = DIGIT
    _run = re.compile(r"\d+(?:[ -]\d+)*")
    _group = re.compile(r"\d+")

    def scan(self, text: str, config: PiiConfig) -> Iterator[Match]:
        for run in self._run.finditer(text):
            if run.end() - run.start() < 13:  # fewer than 13 characters hold fewer than 13 digits: no card
                continue
            groups = [g.span() for g in self._group.finditer(text, run.start(), run.end())]
            i = 0
            while i < len(groups):
                for j in range(min(i + 4, len(groups) - 1), i - 1, -1):  # the longest valid candidate wins
                    start, end = groups[i][0], groups[j][1]
                    n_digits = end - start - (j - i)
                    confidence = card_confidence(text[start:end]) if 13 <= n_digits <= 19 else None
                    if confidence is not None:
                        yield Match(self.id, start, end, confidence, _mask_card(text[start:end]))
                        i = j
                        break
                i += 1


register(CardDetector())

# --- IBAN: country length table (SWIFT IBAN registry) and ISO 7064 mod 97-10 ------------------------------------

IBAN_LENGTHS: dict[str, int] = dict(
    AD=24, AE=23, AL=28, AT=20, AZ=28, BA=20, BE=16, BG=22, BH=22, BI=27, BR=29, BY=28, CH=21, CR=22, CY=28,
    CZ=24, DE=22, DJ=27, DK=18, DO=28, EE=20, EG=29, ES=24, FI=18, FK=18, FO=18, FR=27, GB=22, GE=22, GI=23,
    GL=18, GR=27, GT=28, HR=21, HU=28, IE=22, IL=23, IQ=23, IS=26, IT=27, JO=30, KW=30, KZ=20, LB=28, LC=32,
    LI=21, LT=20, LU=20, LV=21, LY=25, MC=27, MD=24, ME=22, MK=19, MN=20, MR=27, MT=31, MU=30, NI=28, NL=18,
    NO=15, OM=23, PK=24, PL=28, PS=29, PT=25, QA=29, RO=24, RS=22, RU=33, SA=24, SC=31, SD=18, SE=24, SI=19,
    SK=24, SM=27, SO=23, ST=25, SV=28, TL=23, TN=24, TR=26, UA=29, VA=22, VG=24, XK=20, YE=30,
)  # fmt: skip


def iban_valid(iban: str) -> bool:
    """Country length and the ISO 7064 mod 97-10 check of ISO 13616 (a valid IBAN leaves remainder 1)."""
    iban = iban.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _validate_iban(m: re.Match[str], text: str, config: PiiConfig) -> float | None:
    compact = m.group().replace(" ", "")
    length = IBAN_LENGTHS.get(compact[:2])
    if length is None or len(compact) < length:
        return None
    # The pattern may run into a following word; an IBAN ends exactly at its country's length.
    return 0.95 if len(compact) == length and iban_valid(compact) else None


register(
    RegexDetector(
        "iban",
        "International Bank Account Number: country length table and mod-97 check digits",
        "GB82 WEST 1234 5698 7654 32",
        r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{10,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?![A-Za-z0-9])",
        _validate_iban,
        lambda v: mask_keep(v, keep_start=2, keep_end=2),
        trigger=DIGIT,
    )
)

# --- US Social Security Number (SSA: area 001-665, 667-899; group 01-99; serial 0001-9999) ---------------------

_SSN_CONTEXT = re.compile(r"(?i)\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|#))?)\W{0,5}$")
_SSN_PUBLICISED = frozenset({"078051120", "219099999"})  # printed in wallets and advertisements, never issued


def _validate_ssn(m: re.Match[str], text: str, config: PiiConfig) -> float | None:
    area, sep, group, serial = m.group(1), m.group(2), m.group(3), m.group(4)
    if area in ("000", "666") or area >= "900" or group == "00" or serial == "0000":
        return None
    if area + group + serial in _SSN_PUBLICISED:
        return None
    in_context = _SSN_CONTEXT.search(text, max(0, m.start() - 30), m.start()) is not None
    if sep == "-":
        return 0.9 if in_context else 0.8
    return 0.8 if in_context else None  # bare or space-separated 9 digits only after "SSN"/"social security"


register(
    RegexDetector(
        "us_ssn",
        "US Social Security Number (dashed, or bare/spaced after an SSN keyword); SSA validity rules",
        "123-45-6789",
        r"(?<![\d-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\d-])",
        _validate_ssn,
        lambda v: mask_keep(v, keep_end=4),
        trigger=DIGIT,
    )
)

# --- e-mail addresses (RFC 5321 dot-atom subset, as mail clients accept them) ----------------------------------


def _validate_email(m: re.Match[str], text: str, config: PiiConfig) -> float | None:
    local = m.group(1)
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return None
    return 0.9


register(
    RegexDetector(
        "email",
        "E-mail address (dot-atom local part, DNS domain with an alphabetic TLD)",
        "jane.doe@example.com",
        r"(?<![\w.%+-])([A-Za-z0-9._%+-]{1,64})@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])",
        _validate_email,
        _mask_email,
        trigger=AT_SIGN,
    )
)

# --- phone numbers: E.164 with a "+", and national formats with their usual separators only --------------------

_PHONE = (
    r"(?<![\w+.-])(?:"
    r"\+[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,6}"  # E.164, optionally grouped
    r"|\([2-9]\d{2}\) ?[2-9]\d{2}-\d{4}"  # NANP (415) 555-2671
    r"|[2-9]\d{2}([-.])[2-9]\d{2}\1\d{4}"  # NANP 415-555-2671 / 415.555.2671
    r"|0[1-9](?:([ .])\d{2})(?:\2\d{2}){3}"  # France 01 23 45 67 89
    r"|0[1-9]\d{1,3} \d{3,4} \d{3,4}"  # UK 020 7946 0958, 0161 496 0000
    r")(?![\w-]|[ .-]?\d)"
)


def _validate_phone(m: re.Match[str], text: str, config: PiiConfig) -> float | None:
    value = m.group()
    digits = sum(map(str.isdigit, value))
    if value.startswith("+"):
        return 0.85 if 8 <= digits <= 15 else None
    return 0.7 if 10 <= digits <= 11 else None


register(
    RegexDetector(
        "phone",
        "Phone number: E.164 (+ and 8-15 digits) or NANP/French/UK national format with separators",
        "+44 20 7946 0958",
        _PHONE,
        _validate_phone,
        lambda v: mask_keep(v, keep_end=2),
        trigger=DIGIT,
    )
)

# --- IP addresses (validated by the standard library's parser) -------------------------------------------------

_VERSION_CONTEXT = re.compile(r"(?i)\b(?:version|ver\.?|release|v)\s*$")


def _validate_ipv4(m: re.Match[str], text: str, config: PiiConfig) -> float | None:
    if _VERSION_CONTEXT.search(text, max(0, m.start() - 12), m.start()):
        return None  # "version 1.2.3.4" is a version string, not an address
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return None
    return 0.75


def _validate_ipv6(m: re.Match[str], text: str, config: PiiConfig) -> float | None:
    value = m.group()
    if sum(1 for part in re.split(r"[:.]", value) if part) < 3:
        return None  # "a::b" is far more often C++ or a ratio than an address
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return 0.8


register(
    RegexDetector(
        "ipv4",
        "IPv4 address in dotted-quad form (not version strings)",
        "203.0.113.42",
        r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)",
        _validate_ipv4,
        lambda v: v.rsplit(".", 1)[0].split(".", 1)[0] + ".*.*.*",
        trigger=DIGIT,
    )
)
register(
    RegexDetector(
        "ipv6",
        "IPv6 address (full, compressed or with an embedded IPv4 tail)",
        "2001:db8::8a2e:370:7334",
        r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\w)",
        _validate_ipv6,
        lambda v: v.split(":", 1)[0] + ":****",
        trigger=re.compile(":"),
    )
)

# The credential detectors register themselves on import; they live beside this module to keep files small.
from mlwarden.guard import pii_secrets as _pii_secrets  # noqa: E402, F401
