"""The optional Presidio engine (``--pii-engine presidio``): planted personal data found with exact counts.

Presidio's entity types are reported under the built-in detectors' names where both know the kind:
``EMAIL_ADDRESS`` → ``email``, ``CREDIT_CARD`` → ``credit_card``, ``IBAN_CODE`` → ``iban``, ``PHONE_NUMBER`` →
``phone`` (also ``US_SSN`` → ``us_ssn``, ``IP_ADDRESS`` → ``ipv4``/``ipv6``). No spaCy model is on PyPI, so the
named-entity path is tested with a blank spaCy pipeline whose entity ruler knows a few planted names.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import mlwarden.cli.main as cli
from mlwarden.datacheck import CheckOptions, check_dataset
from mlwarden.datacheck.model import DataCheckError, DataCheckReport
from mlwarden.datacheck.presidio import PresidioScan

from .builders import sentence
from .test_pii import planted

pytest.importorskip("presidio_analyzer")

N_ROWS = 300


@pytest.fixture(scope="module")
def planted_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict[str, int], Path]:
    frame, expected = planted(N_ROWS)
    path = tmp_path_factory.mktemp("presidio") / "d.csv"
    frame.to_csv(path, index=False)
    return frame, expected, path


@pytest.fixture(scope="module")
def reports(planted_data: tuple[pd.DataFrame, dict[str, int], Path]) -> dict[str, DataCheckReport]:
    path = planted_data[2]
    return {e: check_dataset(path, CheckOptions(checks=("pii",), pii_engine=e)) for e in ("builtin", "presidio")}


def test_presidio_finds_planted_pii_with_exact_counts(
    planted_data: tuple[pd.DataFrame, dict[str, int], Path], reports: dict[str, DataCheckReport]
) -> None:
    _, expected, _ = planted_data
    assert min(expected.values()) >= 10  # every type is planted, in columns and in free text
    result = reports["presidio"].check("pii")
    assert result.metrics["matches"] == expected
    columns = result.metrics["columns"]
    assert columns["card"]["matches"] == {"credit_card": expected["credit_card"]}
    assert columns["note"]["rows_by_detector"]["iban"] == expected["iban"]
    assert columns["city"]["matches"] == {}
    assert columns["card"]["rows_with_pii"]["count"] == expected["credit_card"]
    assert result.parameters["engine"] == "presidio"
    assert result.parameters["nlp"] == "none (pattern recognizers only)"
    assert {"CreditCardRecognizer", "IbanRecognizer", "PhoneRecognizer"} <= set(result.parameters["recognizers"])
    assert result.metrics["engine"].startswith("presidio-analyzer ")


def test_builtin_and_presidio_agree_on_the_planted_types(reports: dict[str, DataCheckReport]) -> None:
    builtin, presidio = reports["builtin"].check("pii"), reports["presidio"].check("pii")
    assert builtin.parameters["engine"] == "builtin"
    for column, counts in builtin.metrics["columns"].items():
        assert presidio.metrics["columns"][column]["matches"] == counts["matches"], column
        assert presidio.metrics["columns"][column]["first_rows"] == counts["first_rows"], column
    # the same detectors' maskers: the same masked evidence
    card = builtin.metrics["columns"]["card"]["examples_masked"]
    assert presidio.metrics["columns"]["card"]["examples_masked"] == card


def test_reports_never_hold_raw_values(
    planted_data: tuple[pd.DataFrame, dict[str, int], Path], reports: dict[str, DataCheckReport]
) -> None:
    frame = planted_data[0]
    text = reports["presidio"].to_json()
    raw = [v for v in frame["card"].tolist() + frame["contact"].tolist() if v]
    assert len(raw) > 50
    for value in raw:
        assert value not in text
    masked = reports["presidio"].check("pii").metrics["columns"]["card"]["examples_masked"]["credit_card"]
    assert all(m.startswith("************") and m[-4:] in frame["card"].str[-4:].tolist() for m in masked)


def test_clean_data_has_no_matches(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "city": rng.choice(["Oslo", "Lima", "Pune"], n),
            "note": [sentence(rng, 10) for _ in range(n)],
            "code": [f"SKU-{i:05d}" for i in range(n)],
        }
    )
    frame.to_csv(tmp_path / "d.csv", index=False)
    result = check_dataset(tmp_path / "d.csv", CheckOptions(checks=("pii",), pii_engine="presidio")).check("pii")
    assert result.metrics["matches"] == {}
    assert result.metrics["bytes_scanned"] > 20_000


def test_a_url_inside_an_email_is_one_match() -> None:
    scan = PresidioScan(["t"])
    matches = scan.find("write to jane.doe@example.com or call +44 20 7946 0958 today")
    assert [(m.detector, m.evidence_masked) for m in matches] == [
        ("email", "j***@***.com"),
        ("phone", "+** ** **** **58"),
    ]


def test_email_domains_are_checked_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        calls.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    scan = PresidioScan(["t"])
    found = scan.find("mail a.b@example.co.uk, not a.b@example.invalidtld")
    assert [m.evidence_masked for m in found if m.detector == "email"] == ["a***@***.uk"]  # the unknown TLD is not
    assert calls == []


def test_without_presidio_no_op_engine_the_minimal_engine_gives_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "card 4111 1111 1111 1111, iban GB82 WEST 1234 5698 7654 32, jo@example.org, ip 10.1.2.3"
    expected = PresidioScan(["t"]).find(text)
    assert [m.detector for m in expected] == ["credit_card", "iban", "email", "ipv4"]
    monkeypatch.delattr("presidio_analyzer.nlp_engine.NoOpNlpEngine", raising=False)
    scan = PresidioScan(["t"])
    assert type(scan.analyzer.nlp_engine).__name__ == "MinimalNlpEngine"
    assert scan.find(text) == expected


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pd.DataFrame({"t": ["jo@example.org"]}).to_csv(tmp_path / "d.csv", index=False)
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # `import presidio_analyzer` raises ImportError
    with pytest.raises(DataCheckError, match=r"pip install 'mlwarden\[presidio\]'"):
        check_dataset(tmp_path / "d.csv", CheckOptions(checks=("pii",), pii_engine="presidio"))
    # the default engine does not need it
    assert check_dataset(tmp_path / "d.csv", CheckOptions(checks=("pii",))).check("pii").metrics["matches"] == {
        "email": 1
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pii_engine": "spacy"}, "--pii-engine must be one of"),
        ({"presidio_spacy_model": "en_core_web_sm"}, "needs --pii-engine presidio"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DataCheckError, match=message):
        CheckOptions(**options)


def test_a_missing_spacy_model_is_refused_not_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import spacy.cli

    monkeypatch.setattr(spacy.cli, "download", lambda *a, **k: pytest.fail("tried to download a model"))
    with pytest.raises(DataCheckError, match="not installed"):
        PresidioScan(["t"], spacy_model="xx_not_a_model_sm")


def test_spacy_pipeline_finds_planted_names(tmp_path: Path) -> None:
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    names = ["Ada Lovelace", "Alan Turing", "Grace Hopper"]
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PERSON", "pattern": name} for name in names])
    nlp.to_disk(tmp_path / "pipeline")
    rows = [
        f"met {names[i % 3]} at the {sentence(np.random.default_rng(i), 3)}" if i % 4 == 0 else "nobody"
        for i in range(40)
    ]
    pd.DataFrame({"t": rows}).to_csv(tmp_path / "d.csv", index=False)
    options = CheckOptions(checks=("pii",), pii_engine="presidio", presidio_spacy_model=str(tmp_path / "pipeline"))
    result = check_dataset(tmp_path / "d.csv", options).check("pii")
    assert result.metrics["matches"] == {"PERSON": 10}
    assert result.parameters["nlp"] == f"spacy:{tmp_path / 'pipeline'}"
    assert all(name not in json.dumps(result.metrics) for name in names)


def test_cli_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pd.DataFrame({"t": ["jo@example.org", "none", "card 4111 1111 1111 1111"]}).to_csv(tmp_path / "d.csv", index=False)
    args = ["data", "check", str(tmp_path / "d.csv"), "--checks", "pii", "--pii-engine", "presidio", "-f", "json"]
    assert cli.main(args) == 0
    pii = json.loads(capsys.readouterr().out)["checks"][0]
    assert pii["parameters"]["engine"] == "presidio"
    assert pii["metrics"]["matches"] == {"credit_card": 1, "email": 1}
