"""The shared peer corpus (picklescan's test files): every malicious sample fails, no benign one does.

Labels come from ../shared/corpus/picklescan/labels.json. Where mlwarden names a global differently
from the label, the reason is written next to it below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlwarden.core.findings import Severity
from tests.conftest import CORPUS, failing, scan_one

ROOT = CORPUS / "picklescan"
LABELS: dict[str, dict] = json.loads((ROOT / "labels.json").read_text()) if (ROOT / "labels.json").exists() else {}

# Python 2 names are reported under the Python 3 names the unpickler actually imports (_compat_pickle).
PY2 = {"__builtin__": "builtins", "httplib": "http.client"}

# Where a label's expected global is not what mlwarden reports, and why that is right.
EXPECT_EXCEPTIONS = {
    "data/malicious1.7z": "7z is not opened (no loader opens it either); reported as MLW-ARC-010 instead",
    "data/malicious19.pkl": "functools.partial is reported through the callable it wraps (torch.serialization.load)",
    "data/sys_module_override_sploit.pkl": "'_rebuild_tensor.unknown' is picklescan's wording; mlwarden reports "
    "the BUILD that rewrites torch._utils (MLW-PKL-113)",
    "data2/keyerror-exploit.pkl": "'unknown.os' is picklescan's wording; mlwarden resolves the real os.system",
}


def _py3(name: str) -> str:
    module, _, attr = name.rpartition(".")
    return f"{PY2.get(module, module)}.{attr}"


pytestmark = pytest.mark.skipif(not LABELS, reason="../shared/corpus is not beside this checkout")


@pytest.mark.parametrize("rel", sorted(k for k, v in LABELS.items() if v["label"] == "malicious"))
def test_malicious_sample_fails_the_scan(rel: str) -> None:
    result = scan_one(ROOT / rel)
    assert result.error is None
    assert failing(result), f"{rel} was not flagged: {[(f.rule_id, f.evidence) for f in result.findings]}"
    if rel in EXPECT_EXCEPTIONS:
        return
    reported = {f.detail("global") for f in result.findings}
    evidence = " ".join(f.evidence for f in result.findings)
    for expected in LABELS[rel]["expect"]:
        name = _py3(expected)
        assert name in reported or name in evidence, f"{rel}: expected {name} among {reported}"


@pytest.mark.parametrize("rel", sorted(k for k, v in LABELS.items() if v["label"] == "benign"))
def test_benign_sample_passes(rel: str) -> None:
    result = scan_one(ROOT / rel)
    assert result.error is None
    assert not failing(result), [(f.rule_id, str(f.severity), f.evidence) for f in result.findings]


def test_truncated_and_malformed_samples_report_both_payload_and_damage() -> None:
    # broken_model.pkl: exec payload first, then an invalid length: the loader runs the payload, then fails.
    result = scan_one(ROOT / "data/broken_model.pkl")
    ids = {f.rule_id: f for f in result.findings}
    assert ids["MLW-PKL-101"].severity is Severity.CRITICAL
    assert "MLW-PKL-120" in ids  # malformed, at the offset where loading stops


def test_corpus_has_both_labels() -> None:
    labels = {v["label"] for v in LABELS.values()}
    assert labels == {"benign", "malicious"}
    assert len(LABELS) == len([p for p in ROOT.rglob("*") if p.is_file() and p.name != "labels.json"])


def test_whole_corpus_directory_scan_exit_code(tmp_path: Path) -> None:
    from mlwarden.scan.engine import scan_paths

    report = scan_paths([ROOT], jobs=2)
    assert len(report.files) == len(LABELS) + 1  # labels.json itself is scanned too (plain JSON)
    assert report.exit_code() == 1
    flagged = {
        Path(r.path).relative_to(ROOT).as_posix()
        for r in report.files
        if r.max_severity is not None and r.max_severity >= Severity.MEDIUM
    }
    assert flagged == {k for k, v in LABELS.items() if v["label"] == "malicious"}
