"""The human report for a terminal or a CI log, rendered with ``rich``.

Built to stay readable when a scan covers thousands of files: only files with something to say get a
section, clean files are counted (listed one per line with ``verbose``), and the verdict comes last
where a CI log is read. Every string that came out of a scanned file is passed through
:func:`~mlwarden.report.clean` and handed to rich as :class:`~rich.text.Text`, never as markup, so a
hostile member name can neither inject ANSI escapes nor rich ``[style]`` tags.
"""

from __future__ import annotations

from io import StringIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlwarden.core.findings import Finding, Severity
from mlwarden.report import clean, format_duration, stack_of, timeline_line, truncate, verdict, where
from mlwarden.scan.result import FileResult, ScanReport

DEFAULT_WIDTH = 100
EVIDENCE_LIMIT = 300  # characters of evidence shown per finding (the JSON report has it all)
EVIDENCE_LIMIT_VERBOSE = 2_000

SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}
VERDICT_STYLE = {"PASS": "bold green", "FAIL": "bold red", "ERROR": "bold magenta"}


def _shown(result: FileResult, verbose: bool) -> list[Finding]:
    """Findings worth printing, worst first (INFO facts only in verbose mode)."""
    findings = [f for f in result.findings if verbose or f.severity > Severity.INFO]
    return sorted(findings, key=lambda f: -f.severity)


def _formats(result: FileResult) -> str:
    names = list(dict.fromkeys(fmt for _, fmt in result.formats))
    return ", ".join(names) if names else "unrecognised"


def _finding(finding: Finding, verbose: bool) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=8, no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    label = Text(f"{finding.severity.name:<8}", style=SEVERITY_STYLE[finding.severity])
    grid.add_row(label, Text(finding.rule_id, style="bold"), Text(clean(finding.title)))
    grid.add_row("", Text("at", style="dim"), Text(clean(where(finding.location))))
    accepted = finding.suppressed
    if accepted is not None:  # still shown: a reviewed acceptance is not a disappearance
        grid.add_row(
            "",
            Text("suppressed", style="bold green"),
            Text(
                clean(f"by {accepted.reviewer} until {accepted.expires.isoformat()}: {accepted.reason}")
                + (f" ({clean(accepted.source)})" if accepted.source else "")
            ),
        )
    if finding.evidence:
        limit = EVIDENCE_LIMIT_VERBOSE if verbose else EVIDENCE_LIMIT
        grid.add_row("", Text("evidence", style="dim"), Text(clean(truncate(finding.evidence, limit))))
    if verbose:
        extra = f"confidence {finding.confidence}"
        if finding.cwe is not None:
            extra += f" · CWE-{finding.cwe}"
        grid.add_row("", Text("about", style="dim"), Text(extra))
        if finding.remediation:
            grid.add_row("", Text("fix", style="dim"), Text(clean(finding.remediation, newlines=True)))
        stack = stack_of(finding)
        if stack:  # dynamic findings: where in Python the event happened, innermost frame last
            grid.add_row("", Text("stack", style="dim"), Text("\n".join(clean(frame) for frame in stack)))
    return grid


def _timeline(result: FileResult, verbose: bool, indent: str = "") -> Text | None:
    """The compact per-phase line of a dynamically analysed file, phases that did not finish highlighted."""
    line = timeline_line(result, with_events=verbose)
    if line is None:
        return None
    style = "dim" if all(status == "ok" for _, status, _, _ in result.timeline) else "yellow"
    return Text(indent + clean(line), style=style)


def _file_section(console: Console, result: FileResult, findings: list[Finding], verbose: bool) -> None:
    header = Text.assemble((clean(result.path), "bold underline"), ("  " + _formats(result), "dim"))
    console.print(header)
    timeline = _timeline(result, verbose)
    if timeline is not None:
        console.print(timeline, soft_wrap=True)  # one line per file, however long: grep-able in CI logs
    for f in findings:
        console.print(_finding(f, verbose))
    hidden = len(result.findings) - len(findings)
    if hidden:
        console.print(Text(f"         + {hidden} info finding(s) (use --verbose)", style="dim"))
    console.print()


def _summary(report: ScanReport) -> Table:
    counts = report.counts()
    table = Table(title="Summary", title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("Files scanned", str(len(report.files)))
    table.add_row("Files with findings", str(sum(1 for r in report.files if r.findings)))
    per_severity = Text()
    for sev in sorted(Severity, reverse=True):
        n = counts[str(sev)]
        if per_severity:
            per_severity.append("  ")
        per_severity.append(f"{sev.name.lower()} {n}", style=SEVERITY_STYLE[sev] if n else "dim")
    table.add_row("Findings", per_severity)
    errors = len(report.errors)
    table.add_row(
        "Errors",
        Text(f"{errors} file(s) could not be scanned" if errors else "0", style="bold magenta" if errors else ""),
    )
    table.add_row("Analyses", ", ".join(report.modes))
    table.add_row("Fail on", f"{report.fail_on.name.lower()} and above ({len(report.failing)} finding(s))")
    if report.suppressions:
        table.add_row("Suppressed", f"{len(report.suppressed)} finding(s) accepted by reviewed suppressions")
    word = verdict(report)
    table.add_row("Verdict", Text(word, style=VERDICT_STYLE[word]))
    table.add_row("Duration", format_duration(report.duration))
    return table


def render(report: ScanReport, *, color: bool = False, verbose: bool = False, width: int = DEFAULT_WIDTH) -> str:
    """Render the report as text (ANSI-coloured only when ``color`` is true)."""
    buffer = StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        highlight=False,
        emoji=False,
        markup=False,
        legacy_windows=False,
    )
    clean_files: list[FileResult] = []
    for result in report.files:
        if result.error is not None:
            continue
        findings = _shown(result, verbose)
        if findings:
            _file_section(console, result, findings, verbose)
        else:
            clean_files.append(result)

    if clean_files:
        if verbose:
            console.print(
                Text(
                    "Files without findings"
                    if not any(r.findings for r in clean_files)
                    else "Files without findings above info",
                    style="bold",
                )
            )
            for r in clean_files:
                console.print(
                    Text.assemble(
                        "  ", clean(r.path), ("  " + _formats(r), "dim"), ("  " + format_duration(r.duration), "dim")
                    )
                )
                timeline = _timeline(r, verbose, indent="    ")
                if timeline is not None:
                    console.print(timeline, soft_wrap=True)
        else:
            console.print(
                Text(f"{len(clean_files)} file(s) without findings above info not listed (use --verbose)", style="dim")
            )
        console.print()

    if report.errors:
        console.print(Text("Files that could not be scanned", style="bold magenta"))
        for r in report.errors:
            error = r.error or "unknown error"
            line = error if error.startswith(r.path) else f"{r.path}: {error}"
            console.print(Text.assemble("  ", clean(line)))
        console.print()

    if not report.files:
        console.print(Text("No files were scanned.", style="bold"))
        console.print()
    for warning in report.suppression_warnings:
        console.print(Text(f"warning: {clean(warning)}", style="yellow"), soft_wrap=True)
    if report.suppression_warnings:
        console.print()
    console.print(_summary(report))
    text = buffer.getvalue()
    # rich pads table cells to the column width; trailing blanks are noise in logs and diffs.
    return text if color else "\n".join(line.rstrip() for line in text.split("\n"))
