"""Frozen values the registry service hands out (never ORM rows), and the version reference syntax.

A reference is ``NAME:VERSION`` (``fraud:3``) or ``NAME@ALIAS`` (``fraud@production``). Names of models, aliases
and users are short, start with a letter or digit and use only ``A-Z a-z 0-9 . _ -``: they appear in paths, URLs
and audit entries, so nothing there may need quoting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from mlwarden.integrity.hashing import FileDigest
from mlwarden.registry.errors import BadInput
from mlwarden.registry.roles import Role
from mlwarden.registry.states import State

__all__ = [
    "AttachmentInfo",
    "AttachmentKind",
    "IssuedToken",
    "ModelInfo",
    "Ref",
    "TokenInfo",
    "UserInfo",
    "EvidenceRef",
    "VersionInfo",
    "check_name",
    "check_text",
    "parse_ref",
]

#: Largest version number (and id) a reference may name: what every database's 32-bit integer holds.
MAX_VERSION = 2**31 - 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid model, alias or user name.

    Raises:
        BadInput: naming ``kind`` and the rule.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise BadInput(
            f"invalid {kind} name {value!r}: use 1-100 characters A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return value


#: Unicode categories never accepted in names or free text: controls, format characters (U+202E RIGHT-TO-LEFT
#: OVERRIDE, zero-width joiners...), private use, surrogates, unassigned code points, line/paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})


def check_text(kind: str, value: str, *, multiline: bool = False, max_length: int = 10_000) -> str:
    """Return ``value`` if it holds no control or format character (bidi overrides, zero-width...).

    Such characters make an audit entry or a listing read differently from what it stores (a name rendered
    right-to-left, an invisible suffix). ``multiline`` free text (reasons, descriptions) may keep newlines and tabs.

    Raises:
        BadInput: naming ``kind`` and the first offending code point.
    """
    import unicodedata

    if not isinstance(value, str):
        raise BadInput(f"invalid {kind}: not text")
    if len(value) > max_length:
        raise BadInput(f"invalid {kind}: longer than {max_length} characters")
    allowed = {"\n", "\t"} if multiline else set()
    for char in value:
        if char not in allowed and unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise BadInput(f"invalid {kind}: it contains the control or format character U+{ord(char):04X}")
    return value


#: The ``format`` of a guard baseline document (``mlwarden baseline capture``); the registry checks only this.
BASELINE_FORMAT = "mlwarden.guard-baseline/1"


class AttachmentKind(StrEnum):
    """What an attachment is; ``bom`` and ``source`` are written by the registry itself at registration."""

    SIGNATURE = "signature"
    DATASET_MANIFEST = "dataset_manifest"
    TRAINING_RECORD = "training_record"
    SCAN_REPORT = "scan_report"
    TEST_REPORT = "test_report"
    BASELINE = "baseline"  # the guard's reference profile and calibrated thresholds, captured at approval
    BOM = "bom"
    MODEL_TEST = "model_test"  # a model-test report (robustness, privacy, fairness...) about this version's bytes
    DATA_CHECK = "data_check"  # a data-check report about a dataset whose manifest is attached to this version
    SOURCE = "source"  # the URL the version was downloaded from, its pins and digests (written at registration)


@dataclass(frozen=True, slots=True)
class Ref:
    """A parsed version reference: ``version`` or ``alias`` is set, never both."""

    model: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.model}:{self.version}" if self.version is not None else f"{self.model}@{self.alias}"


def parse_ref(text: str | Ref) -> Ref:
    """Parse ``NAME:VERSION`` or ``NAME@ALIAS``.

    Raises:
        BadInput: anything else (a bare name is refused: say which version).
    """
    if isinstance(text, Ref):
        return text
    if not isinstance(text, str):
        raise BadInput(f"invalid version reference {text!r}")
    if "@" in text:
        model, _, alias = text.partition("@")
        return Ref(check_name("model", model), alias=check_name("alias", alias))
    model, sep, number = text.rpartition(":")
    if sep and number.isascii() and number.isdigit() and 0 < int(number) <= MAX_VERSION:
        return Ref(check_name("model", model), version=int(number))
    if sep and number.isascii() and number.isdigit() and int(number) > MAX_VERSION:
        raise BadInput(f"invalid version reference {text[:120]!r}: version numbers stop at {MAX_VERSION}")
    raise BadInput(f"invalid version reference {text!r}: expected NAME:VERSION (fraud:3) or NAME@ALIAS (fraud@prod)")


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """One attachment of a version; ``digest`` is the SHA-256 (hex) of its bytes in the blob store."""

    id: int
    kind: AttachmentKind
    filename: str
    digest: str
    size: int
    created_by: str
    created_at: datetime
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class EvidenceRef:
    """One attachment an approval froze: its id, kind and the SHA-256 (hex) of its bytes when approved."""

    id: int
    kind: AttachmentKind
    digest: str


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A version as the service reports it.

    Attributes:
        model: model name.
        version: version number (1, 2, ...).
        state: lifecycle state.
        digest: ``sha256:<hex>``, the :attr:`~mlwarden.integrity.hashing.ModelManifest.digest` of the artifact.
        submitted_by: the user who registered it (approving it is refused to them).
        created_at: registration time (UTC).
        aliases: aliases pointing at it now.
        files: every file of the artifact with its digest.
        attachments: every attachment, oldest first.
        artifact_name: the file or folder name it was registered under.
        is_file: whether the artifact is a single file.
        framework: declared framework (``sklearn``, ``torch``...), if any.
        description: free text given at registration.
        state_changed_at: time of the last state change (UTC).
        evidence: the attachments the last approval (or release) froze, ``None`` before any approval. Deploy,
            serving and :meth:`latest` use exactly these.
    """

    model: str
    version: int
    state: State
    digest: str
    submitted_by: str
    created_at: datetime
    aliases: tuple[str, ...]
    files: tuple[FileDigest, ...]
    attachments: tuple[AttachmentInfo, ...]
    artifact_name: str = ""
    is_file: bool = True
    framework: str | None = None
    description: str = ""
    state_changed_at: datetime | None = None
    evidence: tuple[EvidenceRef, ...] | None = None

    @property
    def ref(self) -> str:
        """``NAME:VERSION``."""
        return f"{self.model}:{self.version}"

    @property
    def total_size(self) -> int:
        """Bytes over every file of the artifact."""
        return sum(f.size for f in self.files)

    @property
    def source(self) -> dict[str, Any] | None:
        """Where the version was downloaded from, or ``None`` when it was registered from local files.

        ``url`` (redacted), ``revision``, ``commit``, ``etag``, ``version_id``, ``sha256``, ``files``: see
        :mod:`mlwarden.registry.source`.
        """
        found = next((a for a in self.attachments if a.kind == AttachmentKind.SOURCE), None)
        return None if found is None else dict(found.details)

    def latest(self, kind: AttachmentKind) -> AttachmentInfo | None:
        """The attachment of ``kind`` in force, or None.

        Before approval: the newest. Once approved: the newest of those the approval froze, and only while its
        digest is still the one approved (an attachment whose row was changed since counts as missing: fail
        closed). Evidence added after an approval never counts until a new approval.
        """
        if self.evidence is None:
            return next((a for a in reversed(self.attachments) if a.kind == kind), None)
        frozen = {e.id: e.digest for e in self.evidence if e.kind == kind}
        for attachment in reversed(self.attachments):
            if attachment.id in frozen:
                return attachment if attachment.digest == frozen[attachment.id] else None
        return None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model with its number of versions and its aliases (alias -> version number)."""

    name: str
    created_at: datetime
    created_by: str
    versions: int
    latest: int | None
    aliases: dict[str, int] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user (never their tokens' secrets)."""

    username: str
    roles: frozenset[Role]
    disabled: bool
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's public facts: id, owner, name, lookup prefix, dates; the secret is never stored."""

    id: int
    username: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token: ``token`` is the plaintext, shown once and stored nowhere."""

    id: int
    username: str
    token: str = field(repr=False)
    expires_at: datetime | None
    scope: str | None = None
