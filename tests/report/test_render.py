"""The report package: format dispatch, verdicts, shared escaping helpers, edge cases every format handles.

``sample_report`` and friends are imported by the per-format test modules: reports are built directly from
the result dataclasses, no scanning involved, with fixed timestamps so the output is reproducible.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlwarden.core.findings import Confidence, Finding, Location, Rule, Severity
from mlwarden.report import (
    FORMATS,
    clean,
    format_duration,
    phase_summary,
    render,
    stack_of,
    timeline_line,
    truncate,
    verdict,
    where,
)
from mlwarden.scan.result import FileResult, ScanReport

ROOT = Path(__file__).resolve().parents[2]
STARTED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

# Built with Rule(...) rather than rule(...) so that test rules never enter the process-wide catalogue.
GLOBAL_RULE = Rule(
    "MLW-TST-001",
    "Dangerous global imported",
    Severity.CRITICAL,
    502,
    "The pickle imports a callable that executes commands when loaded.",
    "Do not load this file; re-export the weights as safetensors.",
)
ODD_RULE = Rule(
    "MLW-TST-002",
    "Unusual opcode",
    Severity.LOW,
    None,
    "An opcode rarely produced by pickle writers.",
    "Review the producer.",
    Confidence.MEDIUM,
)
INFO_RULE = Rule("MLW-TST-003", "Format detected", Severity.INFO, None, "A fact about the file.", "None needed.")
SUSPECT_RULE = Rule(
    "MLW-TST-004",
    "Suspicious template",
    Severity.MEDIUM,
    94,
    "A template reaches attributes that lead to code execution.",
    "Remove it.",
    Confidence.LOW,
)
DYN_RULE = Rule(
    "MLW-TST-005",
    "Model started a process while loading",
    Severity.CRITICAL,
    78,
    "A phase of loading the model executed a program.",
    "Do not load this model outside a sandbox.",
)
XSS = "<script>alert(1)</script>"
TORCH_TIMELINE = (
    ("import", "ok", 1.523, 41),
    ("deserialize", "ok", 0.012, 7),
    ("instantiate", "ok", 0.0004, 0),
    ("infer", "ok", 0.003, 2),
)
STACK = (
    "/sandbox/model/evil.py:3 <module>",
    "/usr/lib/python3.11/pickle.py:1213 load_reduce",
    "/usr/lib/python3.11/os.py:42 system",
)


def make_report(files: tuple[FileResult, ...], fail_on: Severity = Severity.MEDIUM) -> ScanReport:
    return ScanReport(files, fail_on, STARTED, 12.5, "0.1.0")


def clean_file(path: str = "weights/clean.safetensors") -> FileResult:
    return FileResult(path, 2048, (((path,), "safetensors"),), (), 0.002)


def sample_report() -> ScanReport:
    """One of everything: a member finding, a top-level one, INFO, None offset/cwe, unicode, an error."""
    pt = "models/model.pt"
    member = GLOBAL_RULE.finding(
        Location((pt, "archive/data.pkl"), 123),
        evidence="os.system('echo pwned > /tmp/canary')",
        details={"global": "os.system", "args": ["echo pwned"]},
    )
    info = INFO_RULE.finding(Location((pt,)), evidence="")
    odd = ODD_RULE.finding(Location(("données/modèle ✓.pkl",), None, phase="disassembly"), evidence="opcode PERSID «x»")
    xss = SUSPECT_RULE.finding(Location(("tokenizer_config.json", "chat_template"), 7), evidence=XSS)
    return make_report(
        (
            FileResult(
                pt,
                4096,
                (((pt,), "zip"), ((pt, "archive/data.pkl"), "pickle")),
                (member, info),
                0.031,
                framework="torch",
                timeline=TORCH_TIMELINE,
            ),
            FileResult("données/modèle ✓.pkl", 77, ((("données/modèle ✓.pkl",), "pickle"),), (odd,), 0.001),
            FileResult(
                "tokenizer_config.json", 300, ((("tokenizer_config.json",), "hf-tokenizer-config"),), (xss,), 0.004
            ),
            clean_file(),
            FileResult("secret/unreadable.bin", None, (), (), 0.0, error="secret/unreadable.bin: Permission denied"),
        )
    )


def dynamic_report() -> ScanReport:
    """A static+dynamic scan: a dynamic finding with phase, events and stack; a phase that failed; a clean
    file with a full timeline; a file whose framework is not installed (no phases)."""
    evil = DYN_RULE.finding(
        Location(("evil.pkl",), None, "deserialize"),
        evidence="process.exec /bin/sh -c <touch /tmp/canary>",
        phase="deserialize",
        events=["process.exec:/bin/sh -c touch /tmp/canary", "file.write:/tmp/canary"],
        stack=list(STACK),
    )
    evil_timeline = (
        ("import", "ok", 0.004, 6),
        ("deserialize", "error", 0.02, 3),
        ("instantiate", "not-finished", 0.0, 0),
    )
    files = (
        FileResult(
            "evil.pkl", 60, ((("evil.pkl",), "pickle"),), (evil,), 0.4, framework="pickle", timeline=evil_timeline
        ),
        FileResult("good.pt", 900, ((("good.pt",), "zip"),), (), 2.1, framework="torch", timeline=TORCH_TIMELINE),
        FileResult("model.onnx", 300, ((("model.onnx",), "onnx"),), (), 0.01, framework="onnx"),
    )
    return ScanReport(files, Severity.MEDIUM, STARTED, 3.0, "0.1.0", modes=("static", "dynamic"))


def single(finding: Finding, path: str | None = None) -> ScanReport:
    path = path or finding.location.path
    return make_report((FileResult(path, 10, (((path,), "pickle"),), (finding,), 0.001),))


# -- dispatch -------------------------------------------------------------------------------------------


def test_formats_are_the_four_documented_ones() -> None:
    assert FORMATS == ("text", "json", "sarif", "html")


def test_render_dispatches_to_each_format() -> None:
    report = sample_report()
    assert "Dangerous global imported" in render(report, "text")
    assert json.loads(render(report, "json"))["schema_version"] == "1.3"
    assert json.loads(render(report, "sarif"))["version"] == "2.1.0"
    assert render(report, "html").startswith("<!DOCTYPE html>")


def test_unknown_format_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match="text, json, sarif, html"):
        render(sample_report(), "xml")


def test_formats_are_imported_lazily() -> None:
    code = (
        "import sys\n"
        "from tests.report.test_render import sample_report\n"
        "from mlwarden.report import render\n"
        "render(sample_report(), 'json')\n"
        "print(sorted(m for m in sys.modules if m.startswith('mlwarden.report') or m == 'rich'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = out.stdout.strip()
    assert "mlwarden.report.jsonfmt" in loaded
    assert "mlwarden.report.text" not in loaded
    assert "mlwarden.report.html" not in loaded
    assert "'rich'" not in loaded


# -- verdict --------------------------------------------------------------------------------------------


def test_verdict_pass_fail_error() -> None:
    low = ODD_RULE.finding(Location(("a.pkl",), 1), evidence="x")
    crit = GLOBAL_RULE.finding(Location(("a.pkl",), 1), evidence="x")
    assert verdict(make_report(())) == "PASS"
    assert verdict(single(low)) == "PASS"  # LOW is below the default MEDIUM
    assert verdict(make_report(single(low).files, fail_on=Severity.LOW)) == "FAIL"
    assert verdict(single(crit)) == "FAIL"
    broken = FileResult("gone.pkl", None, (), (), 0.0, error="gone.pkl: vanished")
    assert verdict(make_report((*single(crit).files, broken))) == "ERROR"


# -- helpers --------------------------------------------------------------------------------------------


def test_clean_neutralises_terminal_escapes_bidi_and_surrogates() -> None:
    assert clean("a\x1b[31mred") == "a\\x1b[31mred"
    assert clean("x\u202ey") == "x\\u202ey"
    assert clean("bad\udcffbyte") == "bad\\udcffbyte"
    assert clean("two\nlines") == "two\\nlines"
    assert clean("two\nlines", newlines=True) == "two\nlines"
    assert clean("modèle ✓ 模型") == "modèle ✓ 模型"


def test_truncate_says_how_much_was_cut() -> None:
    assert truncate("short", 10) == "short"
    cut = truncate("x" * 5000, 100)
    assert cut.startswith("x" * 100)
    assert cut.endswith("[4,900 more characters]")


def test_where_describes_member_offset_and_phase() -> None:
    assert where(Location(("m.zip", "a/b.pkl"), 12)) == "a/b.pkl @ byte 12"
    assert where(Location(("m.zip", "<gzip>", "x.pkl"))) == "<gzip> ▸ x.pkl"
    assert where(Location(("m.pkl",), 0)) == "byte 0"
    assert where(Location(("m.pkl",), None, "load")) == "[load]"
    assert where(Location(("m.pkl",))) == "(whole file)"


def test_timeline_line_and_phase_summary() -> None:
    files = dynamic_report().files
    assert timeline_line(sample_report().files[1]) is None  # static only
    assert timeline_line(files[1]) == (
        "dynamic (torch): import ok 1.52s · deserialize ok 0.01s · instantiate ok · infer ok"
    )
    assert timeline_line(files[0], with_events=True) == (
        "dynamic (pickle): import ok 6 events · deserialize error 0.02s 3 events · instantiate not-finished 0 events"
    )
    assert timeline_line(files[2]) == "dynamic (onnx): not run"
    assert phase_summary("infer", "ok", 0.5, 1, with_events=True) == "infer ok 0.50s 1 event"


def test_stack_of_dynamic_findings() -> None:
    assert stack_of(dynamic_report().files[0].findings[0]) == list(STACK)
    assert stack_of(sample_report().files[0].findings[0]) == []


def test_format_duration() -> None:
    assert format_duration(0.0042) == "0.004 s"
    assert format_duration(12.34) == "12.3 s"
    assert format_duration(123.4) == "2 min 03 s"


# -- edge cases, every format -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_report_renders(fmt: str) -> None:
    out = render(make_report(()), fmt)
    if fmt == "json":
        assert json.loads(out)["summary"]["files"] == 0
    elif fmt == "sarif":
        assert json.loads(out)["runs"][0]["results"] == []
    else:
        assert "PASS" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_unicode_paths_and_evidence_survive(fmt: str) -> None:
    out = render(sample_report(), fmt)
    out.encode("utf-8")  # writable as UTF-8
    if fmt == "sarif":  # URIs are percent-encoded; the message keeps the text
        assert "opcode PERSID «x»" in out
        assert "donn%C3%A9es/mod%C3%A8le%20%E2%9C%93.pkl" in out
    else:
        assert "données/modèle ✓.pkl" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_undecodable_bytes_in_evidence_do_not_break_output(fmt: str) -> None:
    bad = ODD_RULE.finding(Location(("x.pkl",), 3), evidence=b"\xff\xfeok".decode("utf-8", "surrogateescape"))
    out = render(single(bad), fmt, verbose=True)
    out.encode("utf-8")
    assert "udcff" in out
