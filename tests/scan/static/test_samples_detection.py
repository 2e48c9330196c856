"""Every sample the project builds: malicious ones fail the default scan, benign ones pass.

The samples are real models made with the real libraries (benign) and harmless canaries (malicious,
touching files under a tmp dir or connecting to 127.0.0.1 if they were ever loaded — they never are).
The allowlist is only as good as the benign models it was tried on, so this is the allowlist's test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.core.findings import Finding, Severity
from mlwarden.core.policy import Policy
from mlwarden.scan.engine import expand, scan_file
from mlwarden_samples import Sample, build_all, families


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Sample]]:
    root = tmp_path_factory.mktemp("samples")
    canary = root / "canary"
    built = build_all(root / "out", canary)
    by_family: dict[str, list[Sample]] = {}
    for s in built:
        by_family.setdefault(s.family, []).append(s)
    by_family["__canary__"] = [Sample(canary, "benign", "__canary__", "canary dir")]
    return by_family


def _findings(sample: Sample) -> list[Finding]:
    out: list[Finding] = []
    for f in expand([sample.path]):
        result = scan_file(f, Policy())
        assert result.error is None, result.error
        out.extend(result.findings)
    return out


@pytest.mark.parametrize("family", families("malicious"))
def test_malicious_family_fails(samples: dict[str, list[Sample]], family: str) -> None:
    if family not in samples:
        pytest.skip(f"{family}: its framework is not installed")
    for sample in samples[family]:
        findings = _findings(sample)
        worst = max((f.severity for f in findings), default=Severity.INFO)
        assert worst >= Severity.MEDIUM, (sample.path, [f.rule_id for f in findings])
        reported = {f.detail("global") for f in findings} | {f.evidence for f in findings}
        # the expected callable (when the sample names one) is named in a finding at its real name
        expected = [e for e in sample.expect if not e.startswith(("keras.", "copyreg."))]
        if expected and any(f.rule_id.startswith("MLW-PKL") for f in findings):
            text = " ".join(str(x) for x in reported)
            assert any(e.split(".")[-1] in text for e in expected), (sample.path, expected, text[:300])


@pytest.mark.parametrize("family", families("benign"))
def test_benign_family_passes(samples: dict[str, list[Sample]], family: str) -> None:
    if family not in samples:
        pytest.skip(f"{family}: its framework is not installed")
    for sample in samples[family]:
        bad = [(f.rule_id, str(f.severity), f.evidence) for f in _findings(sample) if f.severity >= Severity.MEDIUM]
        assert not bad, (sample.path, bad)


def test_no_canary_was_created(samples: dict[str, list[Sample]]) -> None:
    for family in samples:
        if family != "__canary__":
            for s in samples[family]:
                _findings(s)
    canary = samples["__canary__"][0].path
    assert not canary.exists() or not any(Path(canary).iterdir())
