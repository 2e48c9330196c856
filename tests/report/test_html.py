"""The HTML report: self-contained, escaped, with a CSP that would stop injected script anyway."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace
from html import unescape
from html.parser import HTMLParser

import pytest

from mlwarden.core.findings import Location
from mlwarden.report import render
from mlwarden.scan.result import FileResult
from tests.report.test_render import (
    GLOBAL_RULE,
    ODD_RULE,
    STACK,
    SUSPECT_RULE,
    XSS,
    clean_file,
    dynamic_report,
    make_report,
    sample_report,
    single,
)

VOID = {"meta", "br", "input", "link", "img", "hr"}


class _Checker(HTMLParser):
    """Records tags and checks nesting, so a broken escape that opens an element shows up."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.problems: list[str] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)
        if self.stack and self.stack[-1] == "style":
            self.styles.append(data)


def parse(html: str) -> _Checker:
    checker = _Checker()
    checker.feed(html)
    checker.close()
    return checker


def _hash(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()


def test_evidence_script_is_escaped() -> None:
    html = render(sample_report(), "html")
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    doc = parse(html)
    assert [t for t, _ in doc.tags].count("script") == 1  # only our own filter script
    assert XSS in "".join(doc.text)  # the reader sees exactly what was in the file


@pytest.mark.parametrize("where", ["path", "member", "title", "evidence", "remediation", "error"])
def test_every_field_is_escaped(where: str) -> None:
    payload = '"><img src=x onerror=alert(1)><script>alert(1)</script>'
    path, member, evidence = "a.pkl", "data.pkl", "x"
    message = None
    if where == "path":
        path = payload
    elif where == "member":
        member = payload
    elif where == "evidence":
        evidence = payload
    elif where == "title":
        message = payload
    finding = GLOBAL_RULE.finding(Location((path, member), 1), evidence=evidence, message=message)
    if where == "remediation":
        finding = replace(finding, remediation=payload)
    files = [FileResult(path, 1, (((path,), "zip"),), (finding,), 0.0)]
    if where == "error":
        files.append(FileResult(payload, None, (), (), 0.0, error=payload))
    doc = parse(render(make_report(tuple(files)), "html", verbose=True))
    assert not doc.problems, doc.problems
    tags = [t for t, _ in doc.tags]
    assert "img" not in tags
    assert tags.count("script") == 1
    assert payload in "".join(doc.text)


def test_self_contained_with_strict_csp() -> None:
    html = render(sample_report(), "html")
    doc = parse(html)
    assert not doc.problems, doc.problems
    assert not doc.stack
    for tag, attrs in doc.tags:
        assert not {"src", "href", "action"} & attrs.keys(), (tag, attrs)
        assert "style" not in attrs  # the CSP forbids inline style attributes
    csp = next(a["content"] for t, a in doc.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp is not None
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    (script,) = doc.scripts
    (style,) = doc.styles
    assert f"script-src '{_hash(script)}'" in csp
    assert f"style-src '{_hash(style)}'" in csp


def test_summary_and_verdict() -> None:
    html = render(sample_report(), "html")
    assert re.search(r"<title>mlwarden report — ERROR</title>", html)
    assert '<span class="verdict v-ERROR">ERROR</span>' in html
    assert "<tr><th>Files scanned</th><td>5</td></tr>" in html
    assert '<span class="sev">CRITICAL</span> 1' in html
    assert "secret/unreadable.bin: Permission denied" in html
    crit = GLOBAL_RULE.finding(Location(("a.pkl",), 0), evidence="x")
    assert '<span class="verdict v-FAIL">FAIL</span>' in render(single(crit), "html")
    assert '<span class="verdict v-PASS">PASS</span>' in render(make_report((clean_file(),)), "html")


def test_findings_table_rows() -> None:
    html = render(sample_report(), "html")
    row = re.search(r'<tr class="sev-critical">.*?</tr>', html)
    assert row
    assert "<code>MLW-TST-001</code>" in row.group()
    assert "CWE-502" in row.group()
    assert "<code>archive/data.pkl @ byte 123</code>" in row.group()
    assert "re-export the weights" in row.group()
    medium = re.search(r'<tr class="sev-medium">.*?</tr>', html)
    assert medium
    assert "confidence low" in medium.group()


def test_info_and_clean_files_only_in_verbose() -> None:
    quiet = render(sample_report(), "html")
    loud = render(sample_report(), "html", verbose=True)
    assert "MLW-TST-003" not in quiet
    assert "MLW-TST-003" in loud
    assert "1 info finding(s) not shown" in quiet
    assert "weights/clean.safetensors" not in quiet
    assert "<li>weights/clean.safetensors</li>" in loud


def test_long_evidence_truncated() -> None:
    html = render(single(ODD_RULE.finding(Location(("a.pkl",), 1), evidence="Z" * 50_000)), "html")
    assert "Z" * 4000 + "… [46,000 more characters]" in html
    assert "Z" * 4001 not in html


def test_control_characters_made_visible() -> None:
    finding = SUSPECT_RULE.finding(Location(("t.json",), 1), evidence="a\x00b\x1b[2Jc\u202ed")
    html = render(single(finding), "html")
    assert "a\\x00b\\x1b[2Jc\\u202ed" in html
    assert "\x00" not in html


def test_empty_report() -> None:
    html = render(make_report(()), "html")
    assert "No findings to show." in html
    assert "<tr><th>Files scanned</th><td>0</td></tr>" in html
    assert not parse(html).problems


def test_timeline_table_in_the_file_section() -> None:
    html = render(dynamic_report(), "html")
    assert not parse(html).problems
    section = re.search(r'<details class="file"[^>]*>.*?</details>', html, re.DOTALL)
    assert section
    assert "Dynamic analysis (pickle)" in section.group()
    table = re.search(r'<table class="timeline">.*?</table>', section.group())
    assert table
    rows = re.findall(
        r"<tr><td>(.*?)</td><td class=\"(st-\w+)\">(.*?)</td><td>(.*?)</td><td>(\d+)</td></tr>", table.group()
    )
    assert rows == [
        ("import", "st-ok", "ok", "0.004 s", "6"),
        ("deserialize", "st-bad", "error", "0.020 s", "3"),
        ("instantiate", "st-bad", "not-finished", "0.000 s", "0"),
    ]
    assert html.index('<table class="timeline">') < html.index("<th>Evidence</th>")


def test_stack_of_dynamic_findings_and_clean_timelines() -> None:
    html = render(dynamic_report(), "html", verbose=True)
    stack = re.search(r'<pre class="evidence stack muted">(.*?)</pre>', html, re.DOTALL)
    assert stack
    assert "&lt;module&gt;" in stack.group(1)  # escaped
    assert unescape(stack.group(1)) == "stack:\n" + "\n".join(STACK)
    assert "[deserialize]" in html
    assert '<li>good.pt<br><span class="muted">dynamic (torch): import ok 1.52s' in html
    assert "dynamic (onnx): not run" in html
    assert "static, dynamic" in html


def test_hostile_timeline_text_is_escaped() -> None:
    forged = FileResult(
        "x.pkl",
        1,
        (),
        (ODD_RULE.finding(Location(("x.pkl",), 0), evidence="e"),),
        0.0,
        framework=XSS,
        timeline=((XSS, XSS, 0.0, 0),),
    )
    html = render(make_report((forged,)), "html")
    assert XSS not in html
    assert not parse(html).problems
