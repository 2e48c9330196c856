"""SARIF 2.1.0 output: valid against the official OASIS schema, and shaped as GitHub code scanning expects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mlwarden.core.findings import Location, Severity
from mlwarden.report import render
from mlwarden.report.sarif import artifact_location, to_dict
from mlwarden.scan.context import INCOMPLETE
from mlwarden.scan.result import FileResult
from tests.report.test_render import (
    GLOBAL_RULE,
    ODD_RULE,
    ROOT,
    STACK,
    SUSPECT_RULE,
    clean_file,
    dynamic_report,
    make_report,
    sample_report,
    single,
)

SARIF_SCHEMA = ROOT / "tests" / "data" / "sarif-schema-2.1.0.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)  # the draft the schema declares
    cls.check_schema(schema)
    return cls(schema)


def sarif(report: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(render(report, "sarif"))
    return data


def results(report: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = sarif(report)["runs"][0]["results"]
    return out


@pytest.mark.parametrize("name", ["sample", "empty", "clean", "error-only", "dynamic"])
def test_output_validates_against_official_schema(name: str, validator: jsonschema.protocols.Validator) -> None:
    report = {
        "sample": sample_report(),
        "empty": make_report(()),
        "clean": make_report((clean_file(),)),
        "error-only": make_report((FileResult("x.bin", None, (), (), 0.0, error="x.bin: gone"),)),
        "dynamic": dynamic_report(),
    }[name]
    data = sarif(report)
    errors = sorted(validator.iter_errors(data), key=str)
    assert not errors, errors[0].message if errors else ""
    assert data["version"] == "2.1.0"


def test_schema_file_is_the_oasis_one(validator: jsonschema.protocols.Validator) -> None:
    schema = validator.schema
    assert type(validator) is jsonschema.Draft4Validator  # what the errata-01 schema declares
    assert schema["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    assert not validator.is_valid({"version": "2.1.0", "runs": [{"results": []}]})  # tool is required


@pytest.mark.parametrize(
    ("severity", "level", "score"),
    [
        (Severity.CRITICAL, "error", "9.5"),
        (Severity.HIGH, "error", "8.0"),
        (Severity.MEDIUM, "warning", "5.5"),
        (Severity.LOW, "note", "3.0"),
        (Severity.INFO, "note", "0.0"),
    ],
)
def test_level_and_security_severity_mapping(severity: Severity, level: str, score: str) -> None:
    finding = GLOBAL_RULE.finding(Location(("a.pkl",), 1), evidence="x", severity=severity)
    data = sarif(single(finding))
    run = data["runs"][0]
    assert run["results"][0]["level"] == level
    rule = run["tool"]["driver"]["rules"][0]
    assert rule["properties"]["security-severity"] == score
    assert rule["defaultConfiguration"]["level"] == level


def test_driver_and_rules() -> None:
    run = sarif(sample_report())["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "mlwarden"
    assert driver["version"] == "0.1.0"
    assert driver["informationUri"].startswith("https://")
    ids = [r["id"] for r in driver["rules"]]
    assert ids == sorted(ids) == ["MLW-TST-001", "MLW-TST-002", "MLW-TST-003", "MLW-TST-004"]
    crit = driver["rules"][0]
    assert crit["name"] == "DangerousGlobalImported"
    assert crit["shortDescription"]["text"] == "Dangerous global imported"
    assert "security" in crit["properties"]["tags"]
    assert "external/cwe/cwe-502" in crit["properties"]["tags"]
    assert crit["properties"]["precision"] == "high"
    assert "re-export the weights" in crit["help"]["text"]
    no_cwe = driver["rules"][1]
    assert not any(t.startswith("external/cwe") for t in no_cwe["properties"]["tags"])
    assert no_cwe["properties"]["precision"] == "medium"
    for result in run["results"]:
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]


def test_rule_metadata_comes_from_the_catalogue() -> None:
    finding = INCOMPLETE.finding(
        Location(("big.pkl",), 10), evidence="limit hit", message="Analysis incomplete: max_pickle_opcodes"
    )
    rule = sarif(single(finding))["runs"][0]["tool"]["driver"]["rules"][0]
    assert rule["id"] == "MLW-GEN-001"
    assert rule["shortDescription"]["text"] == INCOMPLETE.title  # not the per-finding message
    assert rule["fullDescription"]["text"] == INCOMPLETE.description
    assert "external/cwe/cwe-400" in rule["properties"]["tags"]


def test_policy_override_is_reflected_in_rule_severity() -> None:
    finding = INCOMPLETE.finding(Location(("big.pkl",)), evidence="x", severity=Severity.CRITICAL)
    run = sarif(single(finding))["runs"][0]
    assert run["tool"]["driver"]["rules"][0]["properties"]["security-severity"] == "9.5"
    assert run["results"][0]["level"] == "error"


def test_top_level_offset_becomes_byte_region() -> None:
    result = results(single(GLOBAL_RULE.finding(Location(("a.pkl",), 42), evidence="x")))[0]
    physical = result["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "a.pkl", "uriBaseId": "%SRCROOT%"}
    assert physical["region"] == {"byteOffset": 42}
    assert "logicalLocations" not in result["locations"][0]


def test_archive_member_is_named_not_given_a_wrong_region() -> None:
    result = results(sample_report())[0]
    loc = result["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "models/model.pt"
    assert "region" not in loc["physicalLocation"]  # offset 123 is inside data.pkl, not model.pt
    assert loc["logicalLocations"][0]["fullyQualifiedName"] == "models/model.pt ▸ archive/data.pkl"
    assert "archive member archive/data.pkl at byte 123" in result["message"]["text"]
    assert result["properties"]["offset"] == 123
    assert result["properties"]["chain"] == ["models/model.pt", "archive/data.pkl"]


def test_finding_without_offset_has_no_region() -> None:
    result = results(sample_report())[2]  # LOW finding, offset None, phase set
    assert result["ruleId"] == "MLW-TST-002"
    assert "region" not in result["locations"][0]["physicalLocation"]
    assert "during disassembly" in result["message"]["text"]


def test_uris(tmp_path: Path) -> None:
    assert artifact_location("./models/a b.pkl") == {"uri": "models/a%20b.pkl", "uriBaseId": "%SRCROOT%"}
    inside = tmp_path / "repo" / "m.pkl"
    assert artifact_location(str(inside), root=tmp_path) == {"uri": "repo/m.pkl", "uriBaseId": "%SRCROOT%"}
    outside = artifact_location(str(inside), root=tmp_path / "elsewhere")
    assert outside == {"uri": inside.as_uri()}
    assert "uriBaseId" not in outside


def test_fingerprints_are_stable_and_distinct() -> None:
    def fp(offset: int, evidence: str = "os.system") -> str:
        r = results(single(GLOBAL_RULE.finding(Location(("a.pkl",), offset), evidence=evidence)))[0]
        value: str = r["partialFingerprints"]["mlwardenFinding/v1"]
        return value

    assert fp(10) == fp(500)  # bytes moved, same problem, same alert
    assert fp(10) != fp(10, "posix.system")
    twice = make_report(
        (
            FileResult(
                "a.pkl",
                1,
                (),
                (
                    GLOBAL_RULE.finding(Location(("a.pkl",), 1), evidence="os.system"),
                    GLOBAL_RULE.finding(Location(("a.pkl",), 9), evidence="os.system"),
                ),
                0.0,
            ),
        )
    )
    prints = [r["partialFingerprints"]["mlwardenFinding/v1"] for r in results(twice)]
    assert len(set(prints)) == 2


def test_unscannable_files_make_execution_unsuccessful() -> None:
    invocation = sarif(sample_report())["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert invocation["exitCode"] == 2
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error"
    assert note["message"]["text"] == "secret/unreadable.bin: Permission denied"
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "secret/unreadable.bin"
    assert invocation["startTimeUtc"] == "2025-01-02T03:04:05Z"
    assert invocation["endTimeUtc"] == "2025-01-02T03:04:17.500000Z"


def test_successful_run() -> None:
    invocation = sarif(make_report((clean_file(),)))["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is True
    assert "toolExecutionNotifications" not in invocation


def test_message_is_plain_text_safe() -> None:
    evidence = "[click](1) \x1b[31m" + "y" * 5000
    finding = SUSPECT_RULE.finding(Location(("t.json",), 3), evidence=evidence)
    text = results(single(finding))[0]["message"]["text"]
    assert "\\[click\\](1)" in text
    assert "\x1b" not in text
    assert "more characters" in text  # message truncated; the JSON report keeps all of it
    assert len(text) < 1500


def test_rules_only_for_reported_findings() -> None:
    data = to_dict(make_report((clean_file(),)))
    assert data["runs"][0]["tool"]["driver"]["rules"] == []
    assert data["runs"][0]["results"] == []
    assert ODD_RULE.id not in json.dumps(data)


def test_dynamic_finding_has_phase_events_and_a_sarif_stack() -> None:
    result = results(dynamic_report())[0]
    assert result["ruleId"] == "MLW-TST-005"
    assert result["properties"]["phase"] == "deserialize"
    assert result["properties"]["events"][0] == "process.exec:/bin/sh -c touch /tmp/canary"
    assert "during deserialize" in result["message"]["text"]
    (stack,) = result["stacks"]
    frames = [f["location"]["message"]["text"] for f in stack["frames"]]
    assert frames == list(reversed(STACK))  # SARIF lists the innermost frame first
    assert "phase deserialize" in stack["message"]["text"]
    assert "stacks" not in results(sample_report())[0]


def test_timeline_in_the_run_property_bag() -> None:
    run = sarif(dynamic_report())["runs"][0]
    assert run["properties"]["modes"] == ["static", "dynamic"]
    timelines = {t["path"]: t for t in run["properties"]["dynamic"]}
    assert set(timelines) == {"evil.pkl", "good.pt", "model.onnx"}
    assert timelines["evil.pkl"]["framework"] == "pickle"
    assert timelines["evil.pkl"]["phases"][1] == {
        "name": "deserialize",
        "status": "error",
        "seconds": 0.02,
        "events": 3,
    }
    assert timelines["model.onnx"]["phases"] == []
    assert [t["path"] for t in sarif(sample_report())["runs"][0]["properties"]["dynamic"]] == ["models/model.pt"]
    assert "dynamic" not in sarif(make_report((clean_file(),)))["runs"][0]["properties"]
