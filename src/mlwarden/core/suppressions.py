"""Reviewed suppressions: a finding someone looked at and accepted, for a while, without switching its rule off.

A suppression names one rule and one target — the SHA-256 of the top-level file that was reviewed, or a path glob —
with who reviewed it, why, and when the acceptance runs out. It never hides anything: a suppressed finding stays
in every report, marked with the suppression, and only stops counting toward the verdict. An expired suppression
simply stops applying (the finding fails the scan again), and reports list every suppression that is expired or
matched nothing, so the file does not silently rot.

The file (``mlwarden-suppressions.toml``) is meant to be reviewed in pull requests like code::

    # Reviewed suppressions (docs/suppressions.md). Add entries with `mlwarden suppress add`.
    version = 1

    [[suppression]]
    rule = "MLW-PKL-110"
    path = "models/legacy/*.pkl"
    reason = "custom Net class reviewed, see ticket SEC-42"
    reviewer = "alice"
    expires = 2027-03-31

Loading is strict (unknown keys, a bad digest, a missing reason or reviewer are errors), because a typo in a
file that weakens a security check must never go unnoticed. Validating that a rule ID exists needs the rule
catalogue (a later stage), so callers that add entries pass the known IDs in. Appending entries to the file
(keeping what reviewers wrote in it) is :mod:`mlwarden.core.suppressions_edit`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path, PurePath

from mlwarden.core.errors import PolicyError

__all__ = [
    "DEFAULT_FILE",
    "Suppression",
    "SuppressionError",
    "SuppressionUse",
    "check_digest",
    "check_rule_id",
    "check_text",
    "glob_match",
    "load_suppressions",
    "parse_expires",
    "today",
]

#: The file ``mlwarden scan`` and ``mlwarden suppress`` use when none is named (in the current directory).
DEFAULT_FILE = "mlwarden-suppressions.toml"
#: Version of the file layout (the top-level ``version`` key).
FORMAT_VERSION = 1
#: Longest reason or reviewer accepted (a suppression is a note, not a document).
MAX_TEXT = 2_000

_RULE = re.compile(r"MLW-[A-Z0-9]+-[0-9]+")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
_KEYS = {"rule", "digest", "path", "reason", "reviewer", "expires", "added"}


class SuppressionError(PolicyError):
    """A suppressions file or a new suppression is invalid (one line, exit 2 in the CLI)."""


def today() -> date:
    """The current date in UTC (what expiry dates are compared with)."""
    return datetime.now(UTC).date()


@dataclass(frozen=True, slots=True)
class Suppression:
    """One reviewed acceptance of a rule on one file.

    Attributes:
        rule_id: the rule accepted (``MLW-PKL-110``).
        reason: why it is acceptable (shown next to the finding and as the SARIF justification).
        reviewer: who reviewed it.
        expires: the first day it no longer applies (UTC).
        digest: lower-case SHA-256 hex of the top-level file (or, in the registry, of the version).
        path: a glob matched against the scanned file's path (``*`` stays in one folder, ``**`` crosses them).
        source: where it was declared, for messages: ``FILE#N`` or ``registry``.
    """

    rule_id: str
    reason: str
    reviewer: str
    expires: date
    digest: str | None = None
    path: str | None = None
    source: str = ""

    @property
    def target(self) -> str:
        """``sha256:<hex>`` or ``path <glob>``: what the suppression is about."""
        return f"sha256:{self.digest}" if self.digest is not None else f"path {self.path}"

    def expired(self, on: date) -> bool:
        """Whether it no longer applies on ``on`` (it expires at the start of ``expires``)."""
        return on >= self.expires

    def covers(self, rule_id: str, paths: Sequence[str], digest: str | None) -> bool:
        """Whether a finding of ``rule_id`` in a file with these path spellings and digest is its subject.

        Expiry is not considered here (an expired suppression still *matches*; it just no longer applies).
        """
        if rule_id != self.rule_id:
            return False
        if self.digest is not None:
            return digest is not None and digest.lower() == self.digest
        return self.path is not None and any(glob_match(self.path, p) for p in paths)

    def describe(self) -> str:
        """One line for warnings and listings: ``MLW-PKL-110 on path models/*.pkl (FILE#2)``."""
        where = f" ({self.source})" if self.source else ""
        return f"{self.rule_id} on {self.target}{where}"


@dataclass(frozen=True, slots=True)
class SuppressionUse:
    """What one suppression did in one scan: how many findings it matched, and whether it had expired.

    ``status`` is ``applied`` (it suppressed at least one finding), ``expired`` (it matched nothing it could
    suppress because it ran out; the matched findings count again) or ``unused`` (it matched no finding).
    """

    suppression: Suppression
    matched: int
    expired: bool

    @property
    def status(self) -> str:
        """``applied``, ``expired`` or ``unused``."""
        if self.expired:
            return "expired"
        return "applied" if self.matched else "unused"

    def warning(self) -> str | None:
        """The warning a report shows for it, or ``None`` when it applied."""
        s = self.suppression
        if self.expired:
            again = f"; {self.matched} finding(s) it matched count again" if self.matched else ""
            return f"suppression {s.describe()} expired on {s.expires.isoformat()}: no longer applies{again}"
        if not self.matched:
            return f"suppression {s.describe()} matched no finding in this scan"
        return None


# -- validation --------------------------------------------------------------------------------------------------------


def check_rule_id(rule_id: str, known: Collection[str] | None = None) -> str:
    """A rule ID in the catalogue's form (and, when ``known`` is given, one of them).

    Raises:
        SuppressionError: not of the form ``MLW-XXX-NNN``, or unknown.
    """
    text = str(rule_id).strip()
    if not _RULE.fullmatch(text):
        raise SuppressionError(f"rule {rule_id!r} is not a rule ID (like MLW-PKL-110; see `mlwarden rules`)")
    if known is not None and text not in known:
        raise SuppressionError(f"unknown rule {text} (see `mlwarden rules`)")
    return text


def check_digest(digest: str) -> str:
    """64 hexadecimal digits (an optional ``sha256:`` prefix is accepted), returned lower-case.

    Raises:
        SuppressionError: anything else.
    """
    text = str(digest).strip()
    hex_part = text.removeprefix("sha256:")
    if not _HEX64.fullmatch(hex_part):
        raise SuppressionError(f"digest must be 64 hexadecimal digits (SHA-256 of the file), got {digest!r}")
    return hex_part.lower()


def check_text(name: str, value: object) -> str:
    """A non-empty, printable reason or reviewer (newlines and tabs allowed), stripped.

    Raises:
        SuppressionError: empty, not a string, too long, or holding control characters.
    """
    if not isinstance(value, str) or not value.strip():
        raise SuppressionError(f"{name} must not be empty")
    text = value.strip()
    if _CONTROL.search(text):
        raise SuppressionError(f"{name} must not contain control characters")
    if len(text) > MAX_TEXT:
        raise SuppressionError(f"{name} is longer than {MAX_TEXT} characters")
    return text


def check_glob(pattern: object) -> str:
    """A non-empty path glob without control characters.

    Raises:
        SuppressionError: empty or unprintable.
    """
    if not isinstance(pattern, str) or not pattern.strip() or _CONTROL.search(pattern) or "\n" in pattern:
        raise SuppressionError(f"path must be a non-empty glob on one line, got {pattern!r}")
    return pattern.strip()


def parse_expires(value: object) -> date:
    """An ISO date (``YYYY-MM-DD``, a TOML date or a :class:`date`).

    Raises:
        SuppressionError: anything else (a date-time included: suppressions expire on a day).
    """
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise SuppressionError(f"expires must be an ISO date such as 2027-01-31, got {value!r}")


# -- path globs --------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _normal(path: str) -> str:
    posix = PurePath(path).as_posix()
    while posix.startswith("./"):
        posix = posix[2:]
    return posix


def glob_match(pattern: str, path: str) -> bool:
    """Whether ``path`` (POSIX form, without a leading ``./``) matches ``pattern`` as a whole.

    ``*`` and ``?`` never cross a ``/``; ``**`` does (``models/**/*.pkl``, ``**/*.pkl``); ``[abc]`` and ``[!abc]``
    are character classes.
    """
    return _glob_regex(_normal(pattern)).fullmatch(_normal(path)) is not None


def path_spellings(path: str, cwd: Path | None = None) -> tuple[str, ...]:
    """The spellings a path glob is matched against: the path as scanned, and relative to ``cwd`` if below it."""
    spellings = [_normal(path)]
    pure = Path(path)
    if pure.is_absolute():
        base = (cwd or Path.cwd()).absolute()
        for p, b in ((Path(os.path.normpath(pure)), Path(os.path.normpath(base))), (pure.resolve(), base.resolve())):
            if p.is_relative_to(b):
                spellings.append(p.relative_to(b).as_posix())
    return tuple(dict.fromkeys(spellings))


# -- the file ----------------------------------------------------------------------------------------------------------


def _entry(raw: object, where: str, known: Collection[str] | None) -> Suppression:
    if not isinstance(raw, dict):
        raise SuppressionError(f"{where}: a suppression must be a table ([[suppression]])")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise SuppressionError(f"{where}: unknown key(s) {', '.join(unknown)}")
    for key in ("rule", "reason", "reviewer", "expires"):
        if key not in raw:
            raise SuppressionError(f"{where}: missing {key}")
    if ("digest" in raw) == ("path" in raw):
        raise SuppressionError(f"{where}: give exactly one of digest or path")
    try:
        if not isinstance(raw["rule"], str):
            raise SuppressionError(f"rule must be a string, got {raw['rule']!r}")
        if "digest" in raw and not isinstance(raw["digest"], str):
            raise SuppressionError(f"digest must be a string, got {raw['digest']!r}")
        if "added" in raw:
            parse_expires(raw["added"])
        return Suppression(
            rule_id=check_rule_id(raw["rule"], known),
            reason=check_text("reason", raw["reason"]),
            reviewer=check_text("reviewer", raw["reviewer"]),
            expires=parse_expires(raw["expires"]),
            digest=check_digest(raw["digest"]) if "digest" in raw else None,
            path=check_glob(raw["path"]) if "path" in raw else None,
            source=where,
        )
    except SuppressionError as exc:
        raise SuppressionError(f"{where}: {exc}") from None


def parse_suppressions(text: str, name: str = DEFAULT_FILE) -> tuple[Suppression, ...]:
    """Parse the text of a suppressions file (strictly); entries are named ``NAME#N`` (1-based).

    Raises:
        SuppressionError: not TOML, an unknown key, a bad or missing value, an unsupported ``version``.
    """
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuppressionError(f"suppressions file {name} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"version", "suppression"})
    if unknown:
        raise SuppressionError(f"suppressions file {name}: unknown key(s) {', '.join(unknown)}")
    version = data.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise SuppressionError(f"suppressions file {name}: version {version!r} is not supported (expected 1)")
    entries = data.get("suppression", [])
    if not isinstance(entries, list):
        raise SuppressionError(f"suppressions file {name}: suppression must be an array of tables ([[suppression]])")
    return tuple(_entry(raw, f"{name}#{n}", None) for n, raw in enumerate(entries, 1))


def load_suppressions(path: str | os.PathLike[str]) -> tuple[Suppression, ...]:
    """Read and validate a suppressions file.

    Raises:
        SuppressionError: unreadable or invalid (see :func:`parse_suppressions`).
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuppressionError(f"cannot read suppressions file {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SuppressionError(f"suppressions file {source} is not UTF-8 text") from None
    return parse_suppressions(text, str(source))


def new_suppression(
    rule_id: str,
    *,
    reason: str,
    reviewer: str,
    expires: str | date,
    digest: str | None = None,
    path: str | None = None,
    known_rules: Collection[str] | None = None,
    on: date | None = None,
) -> Suppression:
    """Validate a new entry: known rule, exactly one target, non-empty reason and reviewer, expiry in the future.

    Raises:
        SuppressionError: naming the first problem.
    """
    if (digest is None) == (path is None):
        raise SuppressionError("give exactly one of --digest or --path")
    expiry = parse_expires(expires)
    now = on or today()
    if expiry <= now:
        raise SuppressionError(f"expires must be a date in the future (after {now.isoformat()}), got {expiry}")
    return Suppression(
        rule_id=check_rule_id(rule_id, known_rules),
        reason=check_text("reason", reason),
        reviewer=check_text("reviewer", reviewer),
        expires=expiry,
        digest=check_digest(digest) if digest is not None else None,
        path=check_glob(path) if path is not None else None,
    )


def uses(suppressions: Iterable[Suppression], matched: dict[int, int], on: date) -> tuple[SuppressionUse, ...]:
    """One :class:`SuppressionUse` per suppression, in order; ``matched`` maps positions to match counts."""
    return tuple(SuppressionUse(s, matched.get(i, 0), s.expired(on)) for i, s in enumerate(suppressions))
