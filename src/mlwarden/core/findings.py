"""The shared vocabulary of judgement: severities, rules and findings.

Everything that judges an artifact produces :class:`Finding` values; everything that reports consumes
them. Findings are frozen so that a report can never be edited after the fact by a later stage.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlwarden.core.suppressions import Suppression


class Severity(enum.IntEnum):
    """How bad a finding is. Ordered, so that ``finding.severity >= policy.fail_on`` reads naturally."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str | Severity) -> Severity:
        """Parse a case-insensitive severity name, raising ``ValueError`` with the valid names."""
        if isinstance(text, Severity):
            return text
        try:
            return cls[str(text).strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown severity {text!r} (expected one of: {names})") from None

    def __str__(self) -> str:
        return self.name.lower()


class Confidence(enum.IntEnum):
    """How sure the check is that the finding is real (not how bad it would be)."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Location:
    """Where a finding sits: the chain of containers down to the member, and a byte offset or phase.

    ``chain[0]`` is the path given on disk; later elements are archive members or decoded layers, e.g.
    ``("model.tar.gz", "<gzip>", "weights/model.pt", "archive/data.pkl")``.
    """

    chain: tuple[str, ...]
    offset: int | None = None
    phase: str | None = None

    @property
    def path(self) -> str:
        """The on-disk path that was scanned."""
        return self.chain[0] if self.chain else ""

    @property
    def member(self) -> str | None:
        """The innermost archive member, if the finding is inside a container."""
        return " ▸ ".join(self.chain[1:]) or None

    def __str__(self) -> str:
        text = " ▸ ".join(self.chain)
        if self.offset is not None:
            text += f" @ byte {self.offset}"
        if self.phase:
            text += f" [{self.phase}]"
        return text


@dataclass(frozen=True, slots=True)
class Rule:
    """Metadata of one check, with a stable ID that reports, policies and suppressions refer to.

    Rules are declared at module level by the handler that owns them (see :func:`rule`), so the
    catalogue documents itself and a policy can change a rule's severity by ID.
    """

    id: str
    title: str
    severity: Severity
    cwe: int | None
    description: str
    remediation: str
    confidence: Confidence = Confidence.HIGH

    def finding(
        self,
        location: Location,
        evidence: str,
        *,
        severity: Severity | None = None,
        confidence: Confidence | None = None,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        **more: Any,
    ) -> Finding:
        """Create a finding of this rule at ``location``.

        Structured details (shown in JSON/SARIF) come as keyword arguments, or as ``details=`` when a key is
        not a valid identifier or clashes with a parameter (``global``).
        """
        details = {**(details or {}), **more}
        return Finding(
            rule_id=self.id,
            title=message or self.title,
            severity=self.severity if severity is None else severity,
            confidence=self.confidence if confidence is None else confidence,
            cwe=self.cwe,
            location=location,
            evidence=evidence,
            remediation=self.remediation,
            details=tuple(sorted((k, _freeze(v)) for k, v in details.items())),
        )


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    return value


@dataclass(frozen=True, slots=True)
class Finding:
    """One judgement about one place in one artifact."""

    rule_id: str
    title: str
    severity: Severity
    confidence: Confidence
    cwe: int | None
    location: Location
    evidence: str
    remediation: str
    details: tuple[tuple[str, Any], ...] = field(default=())
    #: The reviewed suppression that accepts it: still reported, no longer counted toward the verdict.
    suppressed: Suppression | None = None

    def with_severity(self, severity: Severity) -> Finding:
        """A copy with another severity (used when a policy overrides a rule's default)."""
        return replace(self, severity=severity)

    def detail(self, key: str, default: Any = None) -> Any:
        """Look up one structured detail (e.g. ``"global"`` for pickle findings)."""
        for k, v in self.details:
            if k == key:
                return v
        return default


_CATALOGUE: dict[str, Rule] = {}


def rule(
    id: str,
    title: str,
    severity: Severity,
    *,
    cwe: int | None,
    description: str,
    remediation: str,
    confidence: Confidence = Confidence.HIGH,
) -> Rule:
    """Declare a rule and add it to the process-wide catalogue (IDs must be unique)."""
    new = Rule(id, title, severity, cwe, description, remediation, confidence)
    existing = _CATALOGUE.get(id)
    if existing is not None and existing != new:
        raise ValueError(f"rule ID {id} declared twice with different metadata")
    _CATALOGUE[id] = new
    return new


def catalogue() -> dict[str, Rule]:
    """Rules declared so far (handlers are loaded lazily; call ``load_all_handlers`` for all of them)."""
    return dict(_CATALOGUE)
