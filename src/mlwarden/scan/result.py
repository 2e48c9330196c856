"""Scan results: per-file outcomes and the report that aggregates them against a policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mlwarden.core.findings import Finding, Severity
from mlwarden.core.suppressions import SuppressionUse


@dataclass(frozen=True, slots=True)
class RemoteProvenance:
    """Exactly what was read of a remote object (``docs/remote.md``), so a result can be reproduced.

    ``etag`` / ``version_id`` / ``last_modified`` are the store's own pins (for ``hf://`` files ``etag`` is the
    Hub's blob id), ``commit`` the Hub commit the ``revision`` resolved to, ``sha256`` the content digest the store
    declares (Hub LFS files). ``read_digest`` is the SHA-256 over the sorted ``"start end sha256"`` lines of the
    ranges fetched; ``bytes_read`` / ``requests`` count them.
    """

    url: str
    etag: str | None = None
    version_id: str | None = None
    last_modified: str | None = None
    revision: str | None = None
    commit: str | None = None
    sha256: str | None = None
    bytes_read: int = 0
    requests: int = 0
    read_digest: str | None = None
    cached_sha256: str | None = None  # dynamic analysis: SHA-256 of the downloaded copy that ran (remote_cache.py)


@dataclass(frozen=True, slots=True)
class FileResult:
    """What happened to one top-level file.

    ``error`` is set only when the file could not be scanned at all (unreadable, vanished); a file that
    was read but could not be fully analysed has findings instead.
    """

    path: str
    size: int | None
    formats: tuple[tuple[tuple[str, ...], str], ...]  # (location chain, format) for every layer: typed, never split
    findings: tuple[Finding, ...]
    duration: float
    error: str | None = None
    framework: str | None = None  # the framework the dynamic engine loaded it with (None: not run)
    timeline: tuple[tuple[str, str, float, int], ...] = ()  # (phase, status, seconds, events) per phase
    remote: RemoteProvenance | None = None  # set for a remote object (URL): what exactly was read

    @property
    def max_severity(self) -> Severity | None:
        """The worst severity among the findings, or ``None`` when there are none."""
        return max((f.severity for f in self.findings), default=None)


@dataclass(frozen=True, slots=True)
class ScanReport:
    """The outcome of one scan run."""

    files: tuple[FileResult, ...]
    fail_on: Severity
    started_at: datetime
    duration: float
    tool_version: str
    modes: tuple[str, ...] = field(default=("static",))
    #: What each reviewed suppression did (empty when no suppressions were given); see core/suppressions.py.
    suppressions: tuple[SuppressionUse, ...] = ()

    @property
    def findings(self) -> tuple[Finding, ...]:
        """All findings of all files, in file order."""
        return tuple(f for r in self.files for f in r.findings)

    @property
    def errors(self) -> tuple[FileResult, ...]:
        """Files that could not be scanned at all."""
        return tuple(r for r in self.files if r.error is not None)

    @property
    def failing(self) -> tuple[Finding, ...]:
        """Findings at or above the failing severity that no reviewed suppression accepts."""
        return tuple(f for f in self.findings if f.severity >= self.fail_on and f.suppressed is None)

    @property
    def suppressed(self) -> tuple[Finding, ...]:
        """Findings a reviewed suppression accepts (still reported, not counted toward the verdict)."""
        return tuple(f for f in self.findings if f.suppressed is not None)

    @property
    def suppression_warnings(self) -> tuple[str, ...]:
        """One line per suppression that expired or matched nothing."""
        return tuple(w for u in self.suppressions if (w := u.warning()) is not None)

    def exit_code(self) -> int:
        """0 nothing at or above ``fail_on``; 1 findings at or above it; 2 a file could not be scanned."""
        if self.errors:
            return 2
        return 1 if self.failing else 0

    def counts(self) -> dict[str, int]:
        """Number of findings per severity name (every severity present, zero included)."""
        out = {str(s): 0 for s in Severity}
        for f in self.findings:
            out[str(f.severity)] += 1
        return out
