"""SARIF 2.1.0 output, shaped for GitHub code scanning.

GitHub reads a subset of SARIF (https://docs.github.com/code-security/code-scanning/integrating-with-
code-scanning/sarif-support-for-code-scanning): rule metadata in ``runs[0].tool.driver.rules`` with a
numeric ``security-severity`` and CWE tags, results pointing at repository-relative paths under
``%SRCROOT%``, and ``partialFingerprints`` so that one problem keeps one alert across runs.

Model files are binary and most findings sit inside archive members, so:

* the physical location is always the file on disk (the only thing a repository browser can show);
* ``region.byteOffset`` is given only when the offset is in that file itself (a finding in the top
  level of a pickle), never for an offset inside a decompressed member, which would point at the
  wrong bytes;
* the member chain is named in the message and as a ``logicalLocation``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from mlwarden.core.findings import Confidence, Finding, Rule, Severity, catalogue
from mlwarden.report import clean, stack_of, truncate
from mlwarden.report.jsonfmt import TOOL_NAME, dumps, dynamic_dict, suppression_use_dict, timestamp
from mlwarden.scan.remote import is_remote
from mlwarden.scan.result import ScanReport

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
# TODO(lead): replace with the project's public home once it has one.
INFORMATION_URI = "https://github.com/mlwarden/mlwarden"
SRCROOT = "%SRCROOT%"

#: GitHub maps security-severity to critical (>= 9.0), high (7.0-8.9), medium (4.0-6.9), low (0.1-3.9).
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}
LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
PRECISION = {Confidence.HIGH: "high", Confidence.MEDIUM: "medium", Confidence.LOW: "low"}

_MESSAGE_EVIDENCE = 1_000  # characters of evidence quoted in a result message (the JSON report has all)


def artifact_location(path: str, root: Path | None = None) -> dict[str, str]:
    """The SARIF ``artifactLocation`` of an on-disk path: relative to ``%SRCROOT%`` whenever possible.

    Args:
        path: the path as scanned (relative to the working directory, or absolute).
        root: the source root (default: the current directory); absolute paths under it are made
            relative so that GitHub can match them to repository files.
    """
    if is_remote(path):  # a remote object (docs/remote.md): its URL, already without credentials
        return {"uri": path}
    pure = PurePath(path)
    if pure.is_absolute():
        pure = _relative_to_root(Path(path), Path(root) if root is not None else Path.cwd())
    if pure.is_absolute():
        return {"uri": Path(pure).as_uri()}
    posix = pure.as_posix()
    while posix.startswith("./"):
        posix = posix[2:]
    return {"uri": quote(posix, safe="/-._~"), "uriBaseId": SRCROOT}


def _relative_to_root(path: Path, root: Path) -> PurePath:
    """``path`` relative to ``root`` if it lies below it (lexically, or once symlinks are resolved)."""
    for p, r in (
        (Path(os.path.normpath(path)), Path(os.path.normpath(root.absolute()))),
        (path.resolve(), root.resolve()),
    ):
        if p.is_relative_to(r):
            return p.relative_to(r)
    return path


def _camel(title: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", title)
    return "".join(w[:1].upper() + w[1:] for w in words) or "Rule"


def _rule_metadata(rule_ids: Iterable[str]) -> dict[str, Rule]:
    """Rules from the catalogue; handlers are imported only if a reported rule is not declared yet.

    Scans may run in worker processes, so the rendering process may not have imported the handler
    that declared a rule. Importing them is best effort: a finding carries enough to describe itself.
    """
    wanted = set(rule_ids)
    known = catalogue()
    if wanted - known.keys():
        from mlwarden.artifacts.sniff import Format
        from mlwarden.scan.static.base import handler_for

        for fmt in Format:  # one by one: a handler that fails to import must not hide the others
            try:
                handler_for(fmt)
            except Exception:  # noqa: BLE001, S112 - the report must still be written
                continue
        known = catalogue()
    return {rid: known[rid] for rid in wanted if rid in known}


def _rule_descriptor(rule_id: str, findings: list[Finding], meta: Rule | None) -> dict[str, Any]:
    first = findings[0]
    title = meta.title if meta else first.title
    description = (meta.description if meta else "") or title
    remediation = meta.remediation if meta else first.remediation
    cwe = meta.cwe if meta else first.cwe
    # The effective severity is the policy's (findings carry overrides); fall back to the default.
    severity = max(f.severity for f in findings)
    confidence = meta.confidence if meta else first.confidence
    tags = ["security", "ml-model"]
    if cwe is not None:
        tags.append(f"external/cwe/cwe-{cwe}")
    return {
        "id": rule_id,
        "name": _camel(title),
        "shortDescription": {"text": title},
        "fullDescription": {"text": description},
        "help": {
            "text": f"{description}\n\nRemediation: {remediation}",
            "markdown": f"{description}\n\n**Remediation:** {remediation}",
        },
        "defaultConfiguration": {"level": LEVEL[severity]},
        "properties": {
            "tags": tags,
            "security-severity": SECURITY_SEVERITY[severity],
            "precision": PRECISION[confidence],
            "problem.severity": "recommendation" if severity <= Severity.LOW else LEVEL[severity],
        },
    }


def _fingerprint(finding: Finding, occurrence: int) -> str:
    """Stable across runs: rule, location chain and evidence, not the byte offset (which moves on edits)."""
    key = "\x1f".join((finding.rule_id, *finding.location.chain, finding.evidence, str(occurrence)))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _message(finding: Finding) -> str:
    loc = finding.location
    text = f"{finding.title} ({finding.severity.name})"
    if loc.member:
        text += f" in archive member {loc.member}"
    if loc.offset is not None:
        text += f" at byte {loc.offset}"
    if loc.phase:
        text += f" during {loc.phase}"
    text += "."
    if finding.evidence:
        text += f" Evidence: {truncate(finding.evidence, _MESSAGE_EVIDENCE)}"
    return _plain_message(text)


def _error_text(path: str, error: str) -> str:
    return error if error.startswith(path) else f"could not scan {path}: {error}"


def _plain_message(text: str) -> str:
    """A SARIF plain-text message: control characters made visible, brackets escaped (SARIF 3.11.6).

    Unescaped ``[text](n)`` would be read as an embedded link by viewers; evidence is hostile text.
    """
    return clean(text, newlines=True).replace("[", "\\[").replace("]", "\\]")


def _result(finding: Finding, rule_index: int, occurrence: int, root: Path | None) -> dict[str, Any]:
    loc = finding.location
    physical: dict[str, Any] = {"artifactLocation": artifact_location(loc.path, root)}
    if loc.offset is not None and len(loc.chain) == 1:
        physical["region"] = {"byteOffset": loc.offset}
    location: dict[str, Any] = {"physicalLocation": physical}
    if loc.member:
        location["logicalLocations"] = [
            {
                "name": loc.chain[-1],
                "fullyQualifiedName": " ▸ ".join(loc.chain),
                "kind": "resource",
            }
        ]
    properties: dict[str, Any] = {
        "chain": list(loc.chain),
        "confidence": str(finding.confidence),
        "severity": str(finding.severity),
    }
    if loc.offset is not None:
        properties["offset"] = loc.offset
    if loc.phase:
        properties["phase"] = loc.phase
    events = finding.detail("events")
    if isinstance(events, tuple | list):
        properties["events"] = [str(e) for e in events]
    result: dict[str, Any] = {
        "ruleId": finding.rule_id,
        "ruleIndex": rule_index,
        "level": LEVEL[finding.severity],
        "message": {"text": _message(finding)},
        "locations": [location],
        "partialFingerprints": {"mlwardenFinding/v1": _fingerprint(finding, occurrence)},
        "properties": properties,
    }
    stack = stack_of(finding)
    if stack:
        result["stacks"] = [_stack(stack, loc.phase)]
    return result


def _suppressions(finding: Finding) -> list[dict[str, Any]]:
    """SARIF ``suppressions`` (3.35): an accepted, external (file or registry) suppression, or none.

    Viewers such as GitHub code scanning show a result with an ``accepted`` suppression as suppressed.
    """
    s = finding.suppressed
    if s is None:
        return []
    properties: dict[str, Any] = {"reviewer": s.reviewer, "expires": s.expires.isoformat(), "source": s.source}
    properties["digest" if s.digest is not None else "path"] = s.digest if s.digest is not None else s.path
    return [{"kind": "external", "status": "accepted", "justification": s.reason, "properties": properties}]


def _stack(frames: list[str], phase: str | None) -> dict[str, Any]:
    """A SARIF ``stack`` (3.44) from the Python frames a dynamic finding captured, innermost first.

    The frames are ``file:line function`` inside the sandbox, not repository files, so they are given as
    messages rather than physical locations (a viewer must not try to open them).
    """
    text = "Python stack when the event happened" + (f" (phase {phase})" if phase else "")
    return {
        "message": {"text": _plain_message(text)},
        "frames": [{"location": {"message": {"text": _plain_message(frame)}}} for frame in reversed(frames)],
    }


def to_dict(report: ScanReport, *, root: Path | None = None) -> dict[str, Any]:
    """The SARIF log as JSON data."""
    by_rule: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_rule.setdefault(f.rule_id, []).append(f)
    rule_ids = sorted(by_rule)
    meta = _rule_metadata(rule_ids)
    rules = [_rule_descriptor(rid, by_rule[rid], meta.get(rid)) for rid in rule_ids]
    index = {rid: i for i, rid in enumerate(rule_ids)}

    seen: Counter[tuple[str, ...]] = Counter()
    results = []
    for f in report.findings:
        key = (f.rule_id, *f.location.chain, f.evidence)
        result = _result(f, index[f.rule_id], seen[key], root)
        if report.suppressions:  # present (empty when not suppressed) only when suppressions were given (3.27.23)
            result["suppressions"] = _suppressions(f)
        results.append(result)
        seen[key] += 1

    notifications = [
        {
            "level": "error",
            "message": {"text": _plain_message(_error_text(r.path, r.error or "unknown error"))},
            "locations": [{"physicalLocation": {"artifactLocation": artifact_location(r.path, root)}}],
            "descriptor": {"id": "MLW-SCAN-ERROR"},
        }
        for r in report.errors
    ]
    notifications += [
        {"level": "warning", "message": {"text": _plain_message(text)}, "descriptor": {"id": "MLW-SUPPRESSION"}}
        for text in report.suppression_warnings
    ]
    invocation: dict[str, Any] = {
        "executionSuccessful": not report.errors,
        "exitCode": report.exit_code(),
        "startTimeUtc": timestamp(report.started_at),
        "endTimeUtc": timestamp(report.started_at + timedelta(seconds=report.duration)),
    }
    if notifications:
        invocation["toolExecutionNotifications"] = notifications

    run_properties: dict[str, Any] = {"fail_on": str(report.fail_on), "modes": list(report.modes)}
    timelines = [{"path": r.path, **d} for r in report.files if (d := dynamic_dict(r)) is not None]
    if timelines:  # the per-phase timeline of every dynamically analysed file, as in the JSON report
        run_properties["dynamic"] = timelines
    if report.suppressions:  # what every reviewed suppression did, as in the JSON report
        run_properties["suppressions"] = [suppression_use_dict(u) for u in report.suppressions]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL_NAME,
                        "version": report.tool_version,
                        "informationUri": INFORMATION_URI,
                        "rules": rules,
                    }
                },
                "invocations": [invocation],
                "results": results,
                "columnKind": "unicodeCodePoints",
                "properties": run_properties,
            }
        ],
    }


def render(report: ScanReport, *, color: bool = False, verbose: bool = False) -> str:
    """Serialise the SARIF log (``color`` and ``verbose`` do not apply and are ignored)."""
    del color, verbose
    return dumps(to_dict(report))
