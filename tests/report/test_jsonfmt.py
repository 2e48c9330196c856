"""The JSON report: content, schema conformance (docs/report-schema.json) and a reviewed golden file.

Regenerate the golden file with ``MLWARDEN_REGEN_GOLDEN=1 pytest tests/report/test_jsonfmt.py`` and review
the diff: a change there is a change of the published format (see docs/reports.md on versioning).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mlwarden.core.findings import Location, Severity
from mlwarden.report import render
from mlwarden.report.jsonfmt import SCHEMA_VERSION, to_dict
from mlwarden.scan.result import FileResult
from tests.report.test_render import (
    GLOBAL_RULE,
    INFO_RULE,
    ODD_RULE,
    ROOT,
    STACK,
    TORCH_TIMELINE,
    XSS,
    clean_file,
    dynamic_report,
    make_report,
    sample_report,
    single,
)

SCHEMA_PATH = ROOT / "docs" / "report-schema.json"
GOLDEN = Path(__file__).parent / "golden" / "report.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    assert cls is jsonschema.Draft202012Validator
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def parsed(report: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(render(report, "json"))
    return data


def _reports() -> dict[str, Any]:
    crit = GLOBAL_RULE.finding(Location(("a.pkl",), 0), evidence="x")
    return {
        "sample": sample_report(),
        "empty": make_report(()),
        "clean": make_report((clean_file(), clean_file("b.safetensors"))),
        "failing": single(crit),
        "only-error": make_report((FileResult("x", None, (), (), 0.0, error="x: gone"),)),
        "dynamic": dynamic_report(),
    }


@pytest.mark.parametrize("name", list(_reports()))
def test_reports_validate_against_the_published_schema(name: str, validator: jsonschema.protocols.Validator) -> None:
    data = parsed(_reports()[name])
    errors = sorted(validator.iter_errors(data), key=str)
    assert not errors, errors[0].message if errors else ""


def test_schema_rejects_what_it_should(validator: jsonschema.protocols.Validator) -> None:
    data = parsed(sample_report())
    data["files"][0]["findings"][0]["severity"] = "catastrophic"
    assert not validator.is_valid(data)
    data = parsed(sample_report())
    data["surprise"] = 1  # a new key must come with a schema (and version) update
    assert not validator.is_valid(data)


def test_schema_version_is_documented_and_matches_the_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION == "1.3"
    assert schema["$id"].endswith(":" + SCHEMA_VERSION)
    doc = (ROOT / "docs" / "reports.md").read_text(encoding="utf-8")
    assert f'"schema_version": "{SCHEMA_VERSION}"' in doc
    assert "| 1.1 |" in doc  # the change log names the added field
    assert "`files[].dynamic`" in doc
    assert "| 1.2 |" in doc
    assert "`files[].findings[].suppressed`" in doc
    assert "| 1.3 |" in doc
    assert "`files[].remote`" in doc
    assert "report-schema.json" in doc


def test_header_and_summary() -> None:
    data = parsed(sample_report())
    assert data["schema_version"] == "1.3"
    assert data["tool"] == {"name": "mlwarden", "version": "0.1.0"}
    assert data["started_at"] == "2025-01-02T03:04:05Z"
    assert data["duration"] == 12.5
    assert data["fail_on"] == "medium"
    assert (data["verdict"], data["exit_code"]) == ("ERROR", 2)
    assert data["summary"] == {
        "files": 5,
        "files_with_findings": 3,
        "files_with_errors": 1,
        "findings": 4,
        "failing": 2,
        "suppressed": 0,
        "by_severity": {"critical": 1, "high": 0, "medium": 1, "low": 1, "info": 1},
    }
    assert data["suppressions"] == []


def test_finding_fields() -> None:
    data = parsed(sample_report())
    model = data["files"][0]
    assert model["path"] == "models/model.pt"
    assert model["size"] == 4096
    assert model["formats"][1] == {"location": "models/model.pt ▸ archive/data.pkl", "format": "pickle"}
    assert model["max_severity"] == "critical"
    assert model["error"] is None
    f = model["findings"][0]
    assert f["rule_id"] == "MLW-TST-001"
    assert (f["severity"], f["confidence"], f["cwe"]) == ("critical", "high", 502)
    assert f["location"] == {
        "path": "models/model.pt",
        "chain": ["models/model.pt", "archive/data.pkl"],
        "member": "archive/data.pkl",
        "offset": 123,
        "phase": None,
    }
    assert f["evidence"] == "os.system('echo pwned > /tmp/canary')"
    assert f["remediation"].startswith("Do not load this file")
    assert f["details"] == {"args": ["echo pwned"], "global": "os.system"}


def test_none_offset_cwe_and_phase() -> None:
    f = parsed(sample_report())["files"][1]["findings"][0]
    assert f["cwe"] is None
    assert f["location"]["offset"] is None
    assert f["location"]["member"] is None
    assert f["location"]["phase"] == "disassembly"


def test_error_file() -> None:
    err = parsed(sample_report())["files"][4]
    assert err == {
        "path": "secret/unreadable.bin",
        "size": None,
        "formats": [],
        "duration": 0.0,
        "error": "secret/unreadable.bin: Permission denied",
        "max_severity": None,
        "findings": [],
        "dynamic": None,
    }


def test_evidence_is_never_truncated_or_escaped() -> None:
    long = "A" * 100_000 + XSS + "\x1b[2J"
    f = parsed(single(ODD_RULE.finding(Location(("big.pkl",), 5), evidence=long)))["files"][0]["findings"][0]
    assert f["evidence"] == long


def test_naive_start_time_is_taken_as_utc() -> None:
    report = make_report(())
    naive = type(report)(
        report.files, report.fail_on, report.started_at.replace(tzinfo=None), report.duration, report.tool_version
    )
    assert to_dict(naive)["started_at"] == "2025-01-02T03:04:05Z"


def test_unusual_detail_values_become_json() -> None:
    finding = INFO_RULE.finding(
        Location(("a.bin",)), evidence="", raw=b"\x00\xff", ratio=float("inf"), sev=Severity.HIGH, nested={"k": (1, 2)}
    )
    details = parsed(single(finding))["files"][0]["findings"][0]["details"]
    assert details == {"nested": [["k", [1, 2]]], "ratio": "inf", "raw": "\x00ÿ", "sev": "high"}


def test_dynamic_timeline_per_file() -> None:
    data = parsed(dynamic_report())
    assert data["modes"] == ["static", "dynamic"]
    evil, good, onnx = data["files"]
    assert evil["dynamic"] == {
        "framework": "pickle",
        "phases": [
            {"name": "import", "status": "ok", "seconds": 0.004, "events": 6},
            {"name": "deserialize", "status": "error", "seconds": 0.02, "events": 3},
            {"name": "instantiate", "status": "not-finished", "seconds": 0.0, "events": 0},
        ],
    }
    assert [p["name"] for p in good["dynamic"]["phases"]] == [p[0] for p in TORCH_TIMELINE]
    assert good["dynamic"]["phases"][0]["seconds"] == 1.523
    assert onnx["dynamic"] == {"framework": "onnx", "phases": []}  # chosen, but its loader is not installed
    assert parsed(sample_report())["files"][1]["dynamic"] is None  # static only


def test_dynamic_finding_carries_phase_events_and_stack() -> None:
    f = parsed(dynamic_report())["files"][0]["findings"][0]
    assert f["location"]["phase"] == "deserialize"
    assert f["details"]["phase"] == "deserialize"
    assert f["details"]["events"] == ["process.exec:/bin/sh -c touch /tmp/canary", "file.write:/tmp/canary"]
    assert f["details"]["stack"] == list(STACK)


def test_forged_phase_times_stay_valid_json(validator: jsonschema.protocols.Validator) -> None:
    # Phase records come from inside the sandbox: a hostile model could send NaN or negative times.
    forged = FileResult(
        "x.pkl", 1, (), (), 0.1, framework="pickle", timeline=(("import", "ok", float("nan"), 1), ("x", "?", -5.0, 0))
    )
    out = render(make_report((forged,)), "json")
    data = json.loads(out)
    assert [p["seconds"] for p in data["files"][0]["dynamic"]["phases"]] == [0.0, 0.0]
    assert "NaN" not in out
    assert validator.is_valid(data)


def test_schema_rejects_a_malformed_timeline(validator: jsonschema.protocols.Validator) -> None:
    data = parsed(dynamic_report())
    del data["files"][1]["dynamic"]
    assert not validator.is_valid(data)  # required since 1.1 (null when not run)
    data = parsed(dynamic_report())
    data["files"][1]["dynamic"]["phases"][0]["seconds"] = "fast"
    assert not validator.is_valid(data)


def test_golden_file() -> None:
    out = render(sample_report(), "json")
    if os.environ.get("MLWARDEN_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(out, encoding="utf-8")
    assert GOLDEN.is_file(), "run with MLWARDEN_REGEN_GOLDEN=1 to create the golden file"
    assert out == GOLDEN.read_text(encoding="utf-8")
