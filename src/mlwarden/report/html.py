"""A single self-contained HTML report: inline CSS, one tiny optional script, no external assets.

The file is meant to be attached to a CI run or mailed around, so it must open anywhere and be safe to
open: every value is HTML-escaped (evidence comes from hostile files), and a Content-Security-Policy
that allows only this file's own style sheet and script (by hash) means that even an escaping mistake
could not run injected script or fetch anything. Without JavaScript the report is complete; the
script only adds severity filter toggles.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

from mlwarden.core.findings import Finding, Severity
from mlwarden.report import clean, format_duration, stack_of, timeline_line, truncate, verdict, where
from mlwarden.report.jsonfmt import timestamp
from mlwarden.scan.result import FileResult, ScanReport

EVIDENCE_LIMIT = 4_000  # characters of evidence shown per finding (the JSON report has it all)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:1rem 1.5rem;color:#1d2330;background:#fff}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
header{display:flex;align-items:center;gap:1rem;border-bottom:2px solid #e3e6ec;padding-bottom:.6rem}
.verdict{font-weight:700;padding:.2rem .7rem;border-radius:4px;color:#fff}
.v-PASS{background:#1a7f37}.v-FAIL{background:#cf222e}.v-ERROR{background:#8250df}
table{border-collapse:collapse;width:100%;margin:.3rem 0 1rem}
th,td{border:1px solid #e3e6ec;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}table.summary{width:auto}table.summary th{width:12rem}
.sev{font-weight:700;font-size:.8rem;padding:.1rem .4rem;border-radius:3px;white-space:nowrap}
.sev-critical .sev{background:#82071e;color:#fff}.sev-high .sev{background:#cf222e;color:#fff}
.sev-medium .sev{background:#d4a72c;color:#000}.sev-low .sev{background:#54aeff;color:#000}
.sev-info .sev{background:#d0d7de;color:#000}
code,.evidence{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}
.evidence{white-space:pre-wrap;word-break:break-all;margin:0;max-height:16rem;overflow:auto}
.muted{color:#656d76}.error{color:#8250df}
details.file{border:1px solid #e3e6ec;border-radius:6px;margin:.5rem 0;padding:.2rem .6rem}
details.file>summary{cursor:pointer;font-weight:600;word-break:break-all}
.filters{display:none;gap:1rem;margin:.5rem 0}.js .filters{display:flex}
.hide-critical tr.sev-critical,.hide-high tr.sev-high,.hide-medium tr.sev-medium,
.hide-low tr.sev-low,.hide-info tr.sev-info{display:none}
ul.clean{columns:2;font-family:ui-monospace,monospace;font-size:.85rem}
table.timeline{width:auto;font-size:.85rem}.st-ok{color:#1a7f37}.st-bad{color:#cf222e;font-weight:600}
tr.suppressed td{background:#f6f8fa}.supp{color:#1a7f37;font-weight:600}.warn{color:#9a6700}
""".strip()

_JS = """
document.body.classList.add('js');
document.querySelectorAll('.filters input').forEach(function(box){
  box.addEventListener('change',function(){
    document.body.classList.toggle('hide-'+box.value,!box.checked);});});
""".strip()


def _sha256(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()


_CSP = f"default-src 'none'; style-src '{_sha256(_CSS)}'; script-src '{_sha256(_JS)}'; form-action 'none'"


def _e(text: object, *, newlines: bool = False) -> str:
    """Escape for HTML text and attribute values, with control characters made visible."""
    return escape(clean(str(text), newlines=newlines), quote=True)


def _summary(report: ScanReport) -> str:
    counts = report.counts()
    sev_cells = " ".join(
        f'<span class="sev-{s}"><span class="sev">{s.name}</span> {counts[str(s)]}</span>'
        for s in sorted(Severity, reverse=True)
    )
    rows = [
        ("Files scanned", str(len(report.files))),
        ("Files with findings", str(sum(1 for r in report.files if r.findings))),
        ("Findings", sev_cells),
        ("Errors", f"{len(report.errors)} file(s) could not be scanned" if report.errors else "0"),
        ("Fail on", f"{_e(report.fail_on)} and above ({len(report.failing)} finding(s))"),
        *(
            [("Suppressed", f"{len(report.suppressed)} finding(s) accepted by reviewed suppressions")]
            if report.suppressions
            else []
        ),
        ("Verdict", f'<span class="verdict v-{verdict(report)}">{verdict(report)}</span>'),
        ("Started", _e(timestamp(report.started_at))),
        ("Duration", _e(format_duration(report.duration))),
        ("Tool", f"mlwarden {_e(report.tool_version)} ({_e(', '.join(report.modes))})"),
    ]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _timeline(result: FileResult) -> str:
    """A small table of the dynamic run's phases (status, time, events), or nothing when none ran."""
    if result.framework is None and not result.timeline:
        return ""
    caption = f'<p class="muted">Dynamic analysis ({_e(result.framework or "unknown")})'
    if not result.timeline:
        return caption + ": not run.</p>"
    rows = "".join(
        f'<tr><td>{_e(name)}</td><td class="{"st-ok" if status == "ok" else "st-bad"}">{_e(status)}</td>'
        f"<td>{_e(format_duration(max(seconds, 0.0)))}</td><td>{events}</td></tr>"
        for name, status, seconds, events in result.timeline
    )
    return (
        f'{caption}</p><table class="timeline"><thead><tr><th>Phase</th><th>Status</th><th>Time</th>'
        f"<th>Events</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _finding_row(f: Finding) -> str:
    cwe = f"CWE-{f.cwe}" if f.cwe is not None else ""
    evidence = _e(truncate(f.evidence, EVIDENCE_LIMIT), newlines=True) if f.evidence else ""
    stack = "\n".join(stack_of(f))
    stack_block = f'<pre class="evidence stack muted">stack:\n{_e(stack, newlines=True)}</pre>' if stack else ""
    accepted = f.suppressed
    note = (
        f'<br><span class="supp">suppressed</span> by {_e(accepted.reviewer)} until {_e(accepted.expires)}: '
        f"{_e(accepted.reason)}"
        if accepted is not None
        else ""
    )
    return (
        f'<tr class="sev-{f.severity}{" suppressed" if accepted is not None else ""}">'
        f'<td><span class="sev">{f.severity.name}</span></td>'
        f'<td><code>{_e(f.rule_id)}</code><br><span class="muted">{_e(cwe)}</span></td>'
        f'<td>{_e(f.title)}<br><span class="muted">confidence {_e(f.confidence)}</span>{note}</td>'
        f"<td><code>{_e(where(f.location))}</code></td>"
        f'<td><pre class="evidence">{evidence}</pre>{stack_block}</td>'
        f"<td>{_e(f.remediation, newlines=True)}</td></tr>"
    )


def _file_section(index: int, result: FileResult, findings: list[Finding]) -> str:
    formats = ", ".join(dict.fromkeys(fmt for _, fmt in result.formats)) or "unrecognised"
    worst = max(f.severity for f in findings)
    hidden = len(result.findings) - len(findings)
    note = f'<p class="muted">{hidden} info finding(s) not shown (render with verbose).</p>' if hidden else ""
    rows = "".join(_finding_row(f) for f in findings)
    return (
        f'<details class="file" id="file-{index}" open><summary><span class="sev-{worst}">'
        f'<span class="sev">{worst.name}</span></span> {_e(result.path)} '
        f'<span class="muted">— {_e(formats)} — {len(findings)} finding(s)</span></summary>'
        f"{_timeline(result)}<table><thead><tr><th>Severity</th><th>Rule</th><th>Title</th><th>Location</th>"
        f"<th>Evidence</th><th>Remediation</th></tr></thead><tbody>{rows}</tbody></table>{note}</details>"
    )


def render(report: ScanReport, *, color: bool = False, verbose: bool = False) -> str:
    """Render the report as one HTML document (``color`` does not apply and is ignored)."""
    del color
    word = verdict(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>mlwarden report — {word}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<header><h1>mlwarden scan report</h1><span class="verdict v-{word}">{word}</span></header>',
        "<h2>Summary</h2>",
        _summary(report),
    ]
    if report.errors:
        rows = "".join(
            f'<tr><td>{_e(r.path)}</td><td class="error">{_e(r.error or "")}</td></tr>' for r in report.errors
        )
        parts += [
            "<h2>Files that could not be scanned</h2>",
            f"<table><thead><tr><th>File</th><th>Error</th></tr></thead><tbody>{rows}</tbody></table>",
        ]

    if report.suppression_warnings:
        items = "".join(f'<li class="warn">{_e(w)}</li>' for w in report.suppression_warnings)
        parts += ["<h2>Suppression warnings</h2>", f"<ul>{items}</ul>"]

    sections: list[str] = []
    clean_files: list[FileResult] = []
    for i, result in enumerate(report.files):
        if result.error is not None:
            continue
        shown = sorted((f for f in result.findings if verbose or f.severity > Severity.INFO), key=lambda f: -f.severity)
        if shown:
            sections.append(_file_section(i, result, shown))
        else:
            clean_files.append(result)
    parts.append("<h2>Findings</h2>")
    if sections:
        boxes = "".join(
            f'<label><input type="checkbox" value="{s}" checked> {s.name}</label>'
            for s in sorted(Severity, reverse=True)
        )
        parts.append(f'<div class="filters">Show: {boxes}</div>')
        parts += sections
    else:
        parts.append('<p class="muted">No findings to show.</p>')

    if clean_files:
        parts.append("<h2>Files without findings above info</h2>")
        if verbose:
            items = "".join(
                f"<li>{_e(r.path)}"
                + (f'<br><span class="muted">{_e(line)}</span>' if (line := timeline_line(r)) else "")
                + "</li>"
                for r in clean_files
            )
            parts.append(f'<ul class="clean">{items}</ul>')
        else:
            parts.append(f'<p class="muted">{len(clean_files)} file(s); listed in verbose mode.</p>')

    parts += [
        f'<footer class="muted"><p>Generated by mlwarden {_e(report.tool_version)}.</p></footer>',
        f"<script>{_JS}</script></body></html>",
        "",
    ]
    return "\n".join(parts)
