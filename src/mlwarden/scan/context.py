"""The scan context: limits, recursion and fail-closed error handling shared by every handler.

One context serves one top-level file. Handlers report findings to it and hand contained artifacts
back through :meth:`ScanContext.descend`, which sniffs them, enforces depth, size and time limits, and
turns any failure into a finding — a file that could not be fully analysed is never reported clean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format, sniff
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Confidence, Finding, Severity, rule
from mlwarden.core.policy import Limits, Policy

INCOMPLETE = rule(
    "MLW-GEN-001",
    "Analysis incomplete: a limit was reached",
    Severity.MEDIUM,
    cwe=400,
    description="A size, depth, count or time limit stopped the analysis before the whole artifact was "
    "read. The unread part may hold anything, so the artifact is not considered clean.",
    remediation="Inspect the artifact by hand, or raise the limit in the policy ([limits]) if the file is "
    "legitimately this large or deep.",
)
ANALYSIS_ERROR = rule(
    "MLW-GEN-002",
    "Analysis failed",
    Severity.MEDIUM,
    cwe=20,
    description="The handler for this format raised an unexpected error. Fail closed: the artifact is "
    "not considered clean.",
    remediation="Report the file to the mlwarden maintainers; do not load it until it has been analysed.",
)
UNRECOGNISED = rule(
    "MLW-GEN-003",
    "Unrecognised content",
    Severity.INFO,
    cwe=None,
    description="The content matched no format mlwarden analyses; it was not analysed further.",
    remediation="If this file is loaded by your model code, check which loader reads it.",
    confidence=Confidence.MEDIUM,
)
DEPENDENCY_MISSING = rule(
    "MLW-GEN-004",
    "Analysis needs an optional dependency",
    Severity.MEDIUM,
    cwe=None,
    description="Full analysis of this format needs an optional package that is not installed, so the "
    "artifact was only partly analysed.",
    remediation="Install the extra named in the evidence (e.g. pip install 'mlwarden[keras]') and scan again.",
)
EMPTY = rule(
    "MLW-GEN-005",
    "Empty file",
    Severity.INFO,
    cwe=None,
    description="The artifact has no content.",
    remediation="None needed.",
)


class MissingDependency(Exception):  # noqa: N818 - signal raised by handlers
    """Raised by a handler that needs an optional package; the context reports MLW-GEN-004."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed (pip install 'mlwarden[{extra}]')")


@dataclass
class ScanContext:
    """State for scanning one top-level file."""

    policy: Policy
    started: float = field(default_factory=time.monotonic)
    findings: list[Finding] = field(default_factory=list)
    formats: list[tuple[tuple[str, ...], Format]] = field(default_factory=list)
    uncompressed_bytes: int = 0

    @property
    def limits(self) -> Limits:
        """The policy's limits."""
        return self.policy.limits

    def report(self, finding: Finding) -> None:
        """Record a finding."""
        self.findings.append(finding)

    def check_time(self) -> None:
        """Raise :class:`LimitExceeded` once the per-file time budget is spent."""
        elapsed = time.monotonic() - self.started
        if elapsed > self.limits.timeout_seconds:
            raise LimitExceeded("timeout_seconds", f"analysis took longer than {self.limits.timeout_seconds}s")

    def account(self, nbytes: int) -> None:
        """Count decompressed bytes against ``max_total_uncompressed``."""
        self.uncompressed_bytes += nbytes
        if self.uncompressed_bytes > self.limits.max_total_uncompressed:
            raise LimitExceeded(
                "max_total_uncompressed",
                f"more than {self.limits.max_total_uncompressed} bytes decompressed from one file",
            )

    def descend(self, artifact: Artifact, fmt: Format | None = None) -> Format:
        """Sniff and analyse ``artifact`` with the handler of its format, failing closed.

        Returns the format that was detected (handlers use it, e.g. to know a member was a pickle).
        """
        from mlwarden.scan.static.base import handler_for

        if artifact.depth > self.limits.max_depth:
            self.report(
                INCOMPLETE.finding(
                    artifact.location(),
                    f"nesting depth {artifact.depth} > max_depth {self.limits.max_depth}",
                    limit="max_depth",
                )
            )
            return Format.UNKNOWN
        try:
            self.check_time()
            fmt = fmt or sniff(artifact)
            self.formats.append((artifact.chain, fmt))
            if fmt is Format.EMPTY:
                self.report(EMPTY.finding(artifact.location(), "0 bytes"))
                return fmt
            handler = handler_for(fmt)
            if handler is None and fmt in (Format.TEXT, Format.JSON):
                return fmt  # plain text and JSON data (version files, metadata): no loader executes them
            if handler is None:
                self.report(
                    UNRECOGNISED.finding(artifact.location(), f"detected content type: {fmt.value}", format=fmt.value)
                )
                return fmt
            handler.scan(artifact, self)
        except LimitExceeded as exc:
            self.report(INCOMPLETE.finding(artifact.location(), str(exc), limit=exc.limit))
        except MissingDependency as exc:
            self.report(DEPENDENCY_MISSING.finding(artifact.location(), str(exc)))
        except RecursionError:
            self.report(
                INCOMPLETE.finding(artifact.location(), "structure nested too deeply to analyse", limit="recursion")
            )
        except MemoryError:
            self.report(INCOMPLETE.finding(artifact.location(), "ran out of memory while analysing", limit="memory"))
        except Exception as exc:  # noqa: BLE001 - fail closed on anything a handler did not expect
            self.report(
                ANALYSIS_ERROR.finding(artifact.location(), f"{type(exc).__name__}: {exc}"[:500], format=str(fmt))
            )
        return fmt or Format.UNKNOWN
