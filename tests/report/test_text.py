"""The text report: what a person reads in a terminal or CI log."""

from __future__ import annotations

import re
import time

from mlwarden.core.findings import Location, Severity
from mlwarden.report import render
from mlwarden.report.text import render as render_text
from mlwarden.scan.result import FileResult
from tests.report.test_render import (
    GLOBAL_RULE,
    ODD_RULE,
    STACK,
    XSS,
    clean_file,
    dynamic_report,
    make_report,
    sample_report,
    single,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summary_value(out: str, label: str) -> str:
    match = re.search(rf"^\s*{label}\s{{2,}}(.+)$", out, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{out}"
    return match.group(1).strip()


def test_finding_shows_severity_rule_title_location_evidence() -> None:
    out = render(sample_report(), "text")
    assert "models/model.pt  zip, pickle" in out
    line = next(ln for ln in out.splitlines() if "MLW-TST-001" in ln)
    assert line.startswith("CRITICAL MLW-TST-001")
    assert "Dangerous global imported" in line
    assert re.search(r"^\s+at\s+archive/data\.pkl @ byte 123$", out, re.MULTILINE)
    assert re.search(r"^\s+evidence\s+os\.system\('echo pwned > /tmp/canary'\)$", out, re.MULTILINE)
    assert re.search(r"^\s+at\s+\[disassembly\]$", out, re.MULTILINE)  # offset None, phase only


def test_findings_are_sorted_worst_first() -> None:
    low = ODD_RULE.finding(Location(("a.pkl",), 1), evidence="low one")
    crit = GLOBAL_RULE.finding(Location(("a.pkl",), 9), evidence="crit one")
    out = render(make_report((FileResult("a.pkl", 1, (), (low, crit), 0.0),)), "text")
    assert out.index("crit one") < out.index("low one")


def test_remediation_cwe_and_info_only_in_verbose() -> None:
    quiet = render(sample_report(), "text")
    loud = render(sample_report(), "text", verbose=True)
    assert "re-export the weights" not in quiet
    assert "re-export the weights" in loud
    assert "CWE-502" in loud
    assert "CWE-502" not in quiet
    assert "MLW-TST-003" not in quiet
    assert "+ 1 info finding(s) (use --verbose)" in quiet
    assert "MLW-TST-003" in loud


def test_clean_files_are_counted_or_listed_in_verbose() -> None:
    quiet = render(sample_report(), "text")
    assert "weights/clean.safetensors" not in quiet
    assert "1 file(s) without findings above info not listed (use --verbose)" in quiet
    loud = render(sample_report(), "text", verbose=True)
    assert re.search(r"^  weights/clean\.safetensors  safetensors  0\.002 s$", loud, re.MULTILINE)


def test_errors_are_always_listed() -> None:
    out = render(sample_report(), "text")
    assert "Files that could not be scanned" in out
    assert "  secret/unreadable.bin: Permission denied" in out
    assert summary_value(out, "Errors") == "1 file(s) could not be scanned"


def test_summary_table() -> None:
    out = render(sample_report(), "text")
    assert out.index("Summary") > out.index("MLW-TST-001")  # verdict last, where CI logs are read
    assert summary_value(out, "Files scanned") == "5"
    assert summary_value(out, "Files with findings") == "3"
    assert summary_value(out, "Findings") == "critical 1  high 0  medium 1  low 1  info 1"
    assert summary_value(out, "Fail on") == "medium and above (2 finding(s))"
    assert summary_value(out, "Verdict") == "ERROR"
    assert summary_value(out, "Duration") == "12.5 s"


def test_verdict_pass_and_fail() -> None:
    assert summary_value(render(make_report((clean_file(),)), "text"), "Verdict") == "PASS"
    crit = GLOBAL_RULE.finding(Location(("a.pkl",), 0), evidence="x")
    assert summary_value(render(single(crit), "text"), "Verdict") == "FAIL"
    low = ODD_RULE.finding(Location(("a.pkl",), 0), evidence="x")
    assert summary_value(render(make_report(single(low).files, Severity.LOW), "text"), "Verdict") == "FAIL"


def test_empty_report() -> None:
    out = render(make_report(()), "text")
    assert "No files were scanned." in out
    assert summary_value(out, "Files scanned") == "0"
    assert summary_value(out, "Verdict") == "PASS"


def test_no_colour_unless_asked() -> None:
    plain = render(sample_report(), "text")
    assert "\x1b" not in plain
    assert not any(line != line.rstrip() for line in plain.splitlines())  # no padding noise
    coloured = render(sample_report(), "text", color=True)
    assert ANSI.search(coloured)
    assert "\x1b[1;37;41mCRITICAL" in coloured  # white on red severity badge


def test_hostile_text_cannot_drive_the_terminal_or_rich() -> None:
    evidence = "os.system \x1b[2J\x1b]0;pwned\x07 [bold red]fake[/bold red] \u202eevil"
    finding = GLOBAL_RULE.finding(Location(("x\x1b[31m.pkl", "a\rb"), 1), evidence=evidence)
    for colour in (False, True):
        out = render(single(finding, path="x\x1b[31m.pkl"), "text", color=colour)
        stripped = ANSI.sub("", out)
        assert "\x1b" not in stripped  # the only escapes are our own colour codes
        assert "\r" not in out
        assert "\x07" not in out
        assert "\u202e" not in out
        assert "\\x1b[2J" in stripped
        assert "\\u202eevil" in stripped
        assert "[bold red]fake[/bold red]" in stripped  # shown literally, not as markup
        assert "x\\x1b[31m.pkl" in stripped
        assert "a\\x0db" in stripped


def test_long_evidence_is_truncated_with_a_count() -> None:
    finding = ODD_RULE.finding(Location(("big.pkl",), 1), evidence=XSS * 1000)
    quiet = render_text(single(finding), width=10_000)
    assert "[24,700 more characters]" in quiet
    loud = render_text(single(finding), verbose=True, width=10_000)
    assert "[23,000 more characters]" in loud


def test_thousands_of_files_stay_short_and_fast() -> None:
    crit = GLOBAL_RULE.finding(Location(("bad.pkl",), 3), evidence="os.system")
    files = tuple(clean_file(f"weights/shard-{i:05d}.safetensors") for i in range(5000))
    report = make_report((*files, FileResult("bad.pkl", 10, (("bad.pkl", "pickle"),), (crit,), 0.0)))
    started = time.monotonic()
    out = render_text(report)
    assert time.monotonic() - started < 10
    assert len(out.splitlines()) < 30
    assert "5000 file(s) without findings above info not listed" in out
    assert summary_value(out, "Files scanned") == "5001"


def test_timeline_line_under_the_file_header() -> None:
    out = render(sample_report(), "text")
    lines = out.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("models/model.pt  zip, pickle"))
    assert lines[header + 1] == "dynamic (torch): import ok 1.52s · deserialize ok 0.01s · instantiate ok · infer ok"
    assert out.count("dynamic (") == 1  # static-only files get no line


def test_dynamic_finding_shows_phase_and_failed_phase() -> None:
    out = render(dynamic_report(), "text")
    assert "dynamic (pickle): import ok · deserialize error 0.02s · instantiate not-finished" in out
    assert re.search(r"^CRITICAL MLW-TST-005 Model started a process while loading$", out, re.MULTILINE)
    assert re.search(r"^\s+at\s+\[deserialize\]$", out, re.MULTILINE)
    assert summary_value(out, "Analyses") == "static, dynamic"
    assert "os.py:42 system" not in out  # the stack is verbose-only
    assert "good.pt" not in out  # clean files are still only counted


def test_verbose_shows_stack_events_and_clean_timelines() -> None:
    out = render_text(dynamic_report(), verbose=True, width=200)
    assert "dynamic (pickle): import ok 6 events · deserialize error 0.02s 3 events" in out
    stack_at = out.index("stack")
    assert [out.index(frame) for frame in STACK] == sorted(out.index(frame) for frame in STACK)
    assert out.index(STACK[0]) > stack_at
    assert re.search(
        r"^  good\.pt  zip  2\.100 s\n    dynamic \(torch\): import ok 1\.52s 41 events", out, re.MULTILINE
    )
    assert "    dynamic (onnx): not run" in out


def test_hostile_phase_status_is_neutralised() -> None:
    forged = FileResult(
        "x.pkl",
        1,
        (),
        (ODD_RULE.finding(Location(("x.pkl",), 0), evidence="e"),),
        0.0,
        framework="pickle",
        timeline=(("import", "ok\x1b[2J[red]x[/red]", 0.0, 0),),
    )
    out = render(make_report((forged,)), "text", color=True)
    assert "\x1b[2J" not in out
    assert "ok\\x1b[2J[red]x[/red]" in ANSI.sub("", out)
