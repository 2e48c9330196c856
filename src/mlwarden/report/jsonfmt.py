"""The JSON report: a complete, versioned, machine-readable copy of a :class:`ScanReport`.

The layout is described by ``docs/report-schema.json`` and its versioning rules by ``docs/reports.md``.
Nothing is truncated or hidden here (unlike the text and HTML reports): a consumer that wants less can
filter, but cannot recover what a renderer dropped.
"""

from __future__ import annotations

import enum
import json
import re
from datetime import UTC, datetime
from typing import Any

from mlwarden.core.findings import Finding, Severity
from mlwarden.core.suppressions import Suppression, SuppressionUse
from mlwarden.report import verdict
from mlwarden.scan.result import FileResult, ScanReport

#: Version of the JSON layout, not of the tool. Bump the minor number when fields are added, the major
#: number when a field is removed, renamed or changes meaning (see docs/reports.md).
SCHEMA_VERSION = "1.3"
TOOL_NAME = "mlwarden"

_SURROGATE = re.compile("[\ud800-\udfff]")


def timestamp(moment: datetime) -> str:
    """RFC 3339 / ISO 8601 in UTC with a ``Z`` suffix (naive datetimes are taken to be UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """Turn a frozen detail value back into JSON data; unknown types become their ``str``."""
    if isinstance(value, enum.Enum):  # before int: Severity is an IntEnum, and "high" beats 3
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, tuple | list | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def finding_dict(finding: Finding) -> dict[str, Any]:
    """One finding as JSON data (the ``finding`` definition of the schema)."""
    loc = finding.location
    return {
        "rule_id": finding.rule_id,
        "title": finding.title,
        "severity": str(finding.severity),
        "confidence": str(finding.confidence),
        "cwe": finding.cwe,
        "location": {
            "path": loc.path,
            "chain": list(loc.chain),
            "member": loc.member,
            "offset": loc.offset,
            "phase": loc.phase,
        },
        "evidence": finding.evidence,
        "remediation": finding.remediation,
        "details": {str(k): _plain(v) for k, v in finding.details},
        "suppressed": None if finding.suppressed is None else suppression_dict(finding.suppressed),
    }


def suppression_dict(s: Suppression) -> dict[str, Any]:
    """A reviewed suppression as JSON data (the ``suppression`` definition of the schema)."""
    return {
        "rule_id": s.rule_id,
        "digest": s.digest,
        "path": s.path,
        "reason": s.reason,
        "reviewer": s.reviewer,
        "expires": s.expires.isoformat(),
        "source": s.source,
    }


def suppression_use_dict(use: SuppressionUse) -> dict[str, Any]:
    """What one suppression did in the scan (``suppressions[]`` of the schema)."""
    return {**suppression_dict(use.suppression), "status": use.status, "matched": use.matched}


def dynamic_dict(result: FileResult) -> dict[str, Any] | None:
    """The dynamic run of one file (the ``dynamic`` definition of the schema), or ``None`` when none ran.

    ``phases`` is empty when a framework was chosen but its loader is not installed here.
    """
    if result.framework is None and not result.timeline:
        return None
    return {
        "framework": result.framework,
        "phases": [
            {"name": name, "status": status, "seconds": _seconds(seconds), "events": events}
            for name, status, seconds, events in result.timeline
        ],
    }


def _seconds(value: float) -> float:
    """Phase times come from inside the sandbox (a hostile model can forge them): finite and >= 0 only."""
    return round(value, 6) if isinstance(value, int | float) and 0 <= value < float("inf") else 0.0


def remote_dict(result: FileResult) -> dict[str, Any] | None:
    """What exactly was read of a remote object (the ``remote`` definition of the schema; docs/remote.md)."""
    r = result.remote
    if r is None:
        return None
    out: dict[str, Any] = {
        "url": r.url,
        "etag": r.etag,
        "version_id": r.version_id,
        "last_modified": r.last_modified,
        "revision": r.revision,
        "commit": r.commit,
        "sha256": r.sha256,
        "bytes_read": r.bytes_read,
        "requests": r.requests,
        "read_digest": r.read_digest,
    }
    if r.cached_sha256 is not None:  # only after dynamic analysis of a downloaded copy (docs/remote.md)
        out["cached_sha256"] = r.cached_sha256
    return out


def file_dict(result: FileResult) -> dict[str, Any]:
    """One scanned file as JSON data (the ``file`` definition of the schema); ``remote`` only for a remote object."""
    worst = result.max_severity
    out = {
        "path": result.path,
        "size": result.size,
        "formats": [{"location": " ▸ ".join(chain), "format": fmt} for chain, fmt in result.formats],
        "duration": round(result.duration, 6),
        "error": result.error,
        "max_severity": None if worst is None else str(worst),
        "findings": [finding_dict(f) for f in result.findings],
        "dynamic": dynamic_dict(result),
    }
    if result.remote is not None:
        out["remote"] = remote_dict(result)
    return out


def to_dict(report: ScanReport) -> dict[str, Any]:
    """The whole report as JSON data, ready for :func:`json.dumps`."""
    counts = report.counts()
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": report.tool_version},
        "started_at": timestamp(report.started_at),
        "duration": round(report.duration, 6),
        "modes": list(report.modes),
        "fail_on": str(report.fail_on),
        "verdict": verdict(report),
        "exit_code": report.exit_code(),
        "summary": {
            "files": len(report.files),
            "files_with_findings": sum(1 for r in report.files if r.findings),
            "files_with_errors": len(report.errors),
            "findings": sum(counts.values()),
            "failing": len(report.failing),
            "suppressed": len(report.suppressed),
            "by_severity": {str(s): counts[str(s)] for s in sorted(Severity, reverse=True)},
        },
        "files": [file_dict(r) for r in report.files],
        "suppressions": [suppression_use_dict(u) for u in report.suppressions],
    }


def render(report: ScanReport, *, color: bool = False, verbose: bool = False) -> str:
    """Serialise the report (``color`` and ``verbose`` are accepted for a uniform API and ignored)."""
    del color, verbose
    return dumps(to_dict(report))


def dumps(data: Any) -> str:
    r"""Indented UTF-8 JSON that can always be written out, whatever strings a hostile file produced.

    Lone surrogates (undecodable bytes kept with ``surrogateescape``) cannot be encoded as UTF-8;
    JSON can still carry them as ``\uXXXX`` escapes, and they only ever occur inside strings.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
