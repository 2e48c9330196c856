"""Suppressed findings in every report format: present, marked, not counted; schemas still validate."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from typing import Any

import jsonschema
import pytest

from mlwarden.core.findings import Location
from mlwarden.core.suppressions import Suppression, SuppressionUse
from mlwarden.report import render
from mlwarden.scan.result import FileResult, ScanReport
from tests.report.test_render import GLOBAL_RULE, ROOT, STARTED, SUSPECT_RULE, XSS

ACCEPTED = Suppression(
    "MLW-TST-004", "template reviewed <b>by hand</b>", "alice", date(2031, 1, 31), path="tokenizer_*.json", source="s#1"
)
LAPSED = Suppression("MLW-TST-001", "was fine", "bob", date(2020, 1, 1), digest="ab" * 32, source="s#2")
UNUSED = Suppression("MLW-TST-001", "old file", "bob", date(2031, 1, 1), path="gone/*.pkl", source="s#3")


def suppressed_report(*, all_suppressed: bool = False) -> ScanReport:
    """A template finding accepted by a path suppression; a critical pickle finding whose suppression expired."""
    xss = SUSPECT_RULE.finding(Location(("tokenizer_config.json", "chat_template"), 7), evidence=XSS)
    crit = GLOBAL_RULE.finding(Location(("a.pkl",), 0), evidence="os.system")
    files = [FileResult("tokenizer_config.json", 300, (), (replace(xss, suppressed=ACCEPTED),), 0.004)]
    if not all_suppressed:
        files.append(FileResult("a.pkl", 30, ((("a.pkl",), "pickle"),), (crit,), 0.001))
    uses = (SuppressionUse(ACCEPTED, 1, False), SuppressionUse(LAPSED, 1, True), SuppressionUse(UNUSED, 0, False))
    return ScanReport(tuple(files), GLOBAL_RULE.severity, STARTED, 1.0, "0.1.0", ("static",), uses)


def test_a_suppressed_finding_does_not_fail_the_report() -> None:
    report = suppressed_report(all_suppressed=True)
    assert report.exit_code() == 0
    assert report.failing == ()
    assert len(report.suppressed) == 1
    report = ScanReport(report.files, SUSPECT_RULE.severity, STARTED, 1.0, "0.1.0")
    assert report.exit_code() == 0
    assert suppressed_report().exit_code() == 1  # the expired one does not protect the critical finding


def test_warnings_for_expired_and_unused() -> None:
    assert suppressed_report().suppression_warnings == (
        "suppression MLW-TST-001 on sha256:" + "ab" * 32 + " (s#2) expired on 2020-01-01: no longer applies; "
        "1 finding(s) it matched count again",
        "suppression MLW-TST-001 on path gone/*.pkl (s#3) matched no finding in this scan",
    )


@pytest.fixture(scope="module")
def json_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((ROOT / "docs" / "report-schema.json").read_text(encoding="utf-8"))
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def sarif_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
    return jsonschema.Draft4Validator(schema)


def _valid(validator: jsonschema.protocols.Validator, data: Any) -> None:
    errors = sorted(validator.iter_errors(data), key=str)
    assert not errors, errors[0].message if errors else ""


def test_json(json_validator: jsonschema.protocols.Validator) -> None:
    data = json.loads(render(suppressed_report(), "json"))
    _valid(json_validator, data)
    accepted, crit = (f for file in data["files"] for f in file["findings"])
    assert accepted["suppressed"] == {
        "rule_id": "MLW-TST-004",
        "digest": None,
        "path": "tokenizer_*.json",
        "reason": "template reviewed <b>by hand</b>",
        "reviewer": "alice",
        "expires": "2031-01-31",
        "source": "s#1",
    }
    assert crit["suppressed"] is None
    assert (data["summary"]["failing"], data["summary"]["suppressed"], data["verdict"]) == (1, 1, "FAIL")
    assert [(u["status"], u["matched"]) for u in data["suppressions"]] == [
        ("applied", 1),
        ("expired", 1),
        ("unused", 0),
    ]


def test_json_schema_rejects_a_malformed_suppression(json_validator: jsonschema.protocols.Validator) -> None:
    data = json.loads(render(suppressed_report(), "json"))
    data["files"][0]["findings"][0]["suppressed"]["reviewer"] = ""
    assert not json_validator.is_valid(data)
    data = json.loads(render(suppressed_report(), "json"))
    data["suppressions"][0]["status"] = "ignored"
    assert not json_validator.is_valid(data)
    data = json.loads(render(suppressed_report(), "json"))
    del data["files"][0]["findings"][0]["suppressed"]  # required since 1.2 (null when not suppressed)
    assert not json_validator.is_valid(data)


def test_sarif(sarif_validator: jsonschema.protocols.Validator) -> None:
    data = json.loads(render(suppressed_report(), "sarif"))
    _valid(sarif_validator, data)
    run = data["runs"][0]
    accepted, crit = run["results"]
    assert accepted["suppressions"] == [
        {
            "kind": "external",
            "status": "accepted",
            "justification": "template reviewed <b>by hand</b>",
            "properties": {"reviewer": "alice", "expires": "2031-01-31", "source": "s#1", "path": "tokenizer_*.json"},
        }
    ]
    assert crit["suppressions"] == []
    assert run["invocations"][0]["exitCode"] == 1
    warnings = run["invocations"][0]["toolExecutionNotifications"]
    assert [n["level"] for n in warnings] == ["warning", "warning"]
    assert "expired on 2020-01-01" in warnings[0]["message"]["text"]
    assert [u["status"] for u in run["properties"]["suppressions"]] == ["applied", "expired", "unused"]


def test_sarif_without_suppressions_is_unchanged() -> None:
    report = replace(suppressed_report(), suppressions=())
    run = json.loads(render(report, "sarif"))["runs"][0]
    assert all("suppressions" not in r for r in run["results"][1:])
    assert "suppressions" not in run["properties"]


def test_text() -> None:
    out = render(suppressed_report(), "text")
    assert "suppressed  by alice until 2031-01-31: template reviewed <b>by hand</b> (s#1)" in out
    assert "Suppressed             1 finding(s) accepted by reviewed suppressions" in out
    assert "warning: suppression MLW-TST-001 on path gone/*.pkl (s#3) matched no finding in this scan" in out
    assert "Verdict                FAIL" in out


def test_html_escapes_and_marks() -> None:
    out = render(suppressed_report(), "html")
    assert '<tr class="sev-medium suppressed">' in out
    assert "template reviewed &lt;b&gt;by hand&lt;/b&gt;" in out
    assert "<b>by hand</b>" not in out
    assert "<h2>Suppression warnings</h2>" in out
