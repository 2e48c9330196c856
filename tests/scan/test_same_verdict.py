"""The same verdict every time: a file gives the same findings whichever way it is scanned (issue 12).

Scanned alone (a cold sandbox), in a folder of three or more (the warm pool), with ``jobs=2``, through
``mlwarden.scan()``, through ``mlwarden.load()`` (refused exactly when the scan fails) and through the registry's
scan of its stored copy. Files are real third-party models from ../shared/corpus (benign and malicious), in
static and in static + dynamic mode.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

import mlwarden
from mlwarden.core.errors import UnsafeModelError, UsageError
from mlwarden.core.findings import Finding, Severity
from mlwarden.core.policy import Policy
from mlwarden.scan.engine import scan_paths
from tests.conftest import CORPUS

# One file per loader family, each from a different third-party source.
SAMPLE = (
    "realworld/benign/Iris_Model/model.pkl",  # scikit-learn pickle
    "realworld/benign/numpy/py2-objarr.npy",  # Python 2 object array (lazy codec import while unpickling)
    "realworld/benign/allennlp/basic_classifier__serialization__best.th",  # PyTorch zip
    "realworld/benign/chat_templates/llama-3-instruct.jinja",  # chat template (rendered in the sandbox)
    "realworld/benign/Credit-Card-Fraud/model.h5",  # Keras HDF5 (lazy helper imports when alone)
    "picklescan/data/malicious1_v4.pkl",  # a working payload
)

Key = tuple[str, str, tuple[str, ...]]


def _key(f: Finding) -> Key:
    return (f.rule_id, str(f.severity), f.location.chain[1:])


def _by_file(findings: tuple[Finding, ...] | list[Finding], names: dict[str, str]) -> dict[str, Counter[Key]]:
    out: dict[str, Counter[Key]] = {name: Counter() for name in names.values()}
    for f in findings:
        out[names[Path(f.location.chain[0]).name]][_key(f)] += 1
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("same-verdict")
    for rel in SAMPLE:
        src = CORPUS / rel
        if not src.is_file():
            pytest.fail(f"{src} is missing: ../shared/corpus must be beside the checkout")
        shutil.copy(src, folder / f"{rel.replace('/', '__')}")
    return folder


@pytest.mark.parametrize("modes", [("static",), ("static", "dynamic")], ids=["static", "default"])
def test_same_findings_alone_pooled_parallel_and_through_the_api(sample: Path, modes: tuple[str, ...]) -> None:
    files = sorted(sample.iterdir())
    names = {f.name: f.name for f in files}
    alone = {}
    for f in files:
        report = scan_paths([f], Policy(), modes=modes)
        assert not report.errors, report.errors
        alone[f.name] = _by_file(report.findings, names)[f.name]
    pooled = scan_paths([sample], Policy(), modes=modes)  # six files: the warm pool in dynamic mode
    parallel = scan_paths([sample], Policy(), modes=modes, jobs=2)
    api = mlwarden.scan(sample, dynamic="dynamic" in modes)
    for report in (pooled, parallel, api):
        assert not report.errors, report.errors
        assert _by_file(report.findings, names) == alone
    malicious = next(name for name in names if "malicious1" in name)
    assert any(Severity.parse(k[1]) >= Severity.HIGH for k in alone[malicious])  # and the payload is still detected


def test_load_refuses_exactly_when_the_scan_fails(sample: Path) -> None:
    for f in sorted(sample.iterdir()):
        report = scan_paths([f], Policy(), modes=("static", "dynamic"))
        failing = {_key(x) for x in report.failing}
        try:
            mlwarden.load(f)
        except UnsafeModelError as exc:
            assert failing, f"{f.name}: refused although the scan passes: {exc}"  # noqa: PT017
            assert {_key(x) for x in exc.findings} == failing  # noqa: PT017
        except UsageError:
            assert not failing  # no loader for the content (a template): nothing unsafe hidden behind it
        else:
            assert not failing, f"{f.name}: loaded although the scan fails: {sorted(failing)}"


def test_registry_scan_of_the_stored_copy_agrees(sample: Path, tmp_path: Path) -> None:
    from mlwarden.registry.values import AttachmentKind
    from tests.registry.helpers import ALICE, world

    f = next(p for p in sample.iterdir() if p.name.endswith("model.pkl"))
    alone = scan_paths([f], Policy(), modes=("static", "dynamic"))
    expected: dict[str, dict[str, int]] = {}
    for x in alone.findings:
        per = expected.setdefault(x.rule_id, {})
        per[str(x.severity)] = per.get(str(x.severity), 0) + 1
    with world(f"sqlite:///{tmp_path / 'reg.db'}", tmp_path) as w:
        version = w.registry.register(ALICE, "iris", f, dataset_manifests=[w.manifest])
        scanned = w.registry.scan(ALICE, version.ref, modes=("static", "dynamic"))
        [report] = [a for a in scanned.attachments if a.kind is AttachmentKind.SCAN_REPORT]
        assert report.details["by_rule"] == expected
