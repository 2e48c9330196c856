"""Model-test and data-check reports in the registry: binding at attach time, `registry test`, and the gates.

The gate tests build report JSON by hand with planted numbers (a membership AUC of 0.83, a parity difference of
0.31...) and check that each rule passes on one side of its threshold, fails on the other, names the number in
its refusal, and fails closed when the test did not run, errored or lacks the number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlwarden.core.errors import PolicyError
from mlwarden.datacheck.model import SCHEMA_ID as DATA_CHECK_SCHEMA
from mlwarden.integrity.errors import VerificationError
from mlwarden.integrity.hashing import FileDigest
from mlwarden.modeltest.model import SCHEMA_ID as MODEL_TEST_SCHEMA
from mlwarden.registry._assess import AssessInput, AssessReport, verify_signature
from mlwarden.registry._evidence import DATA_CHECK_SCHEMA as BOUND_DATA_SCHEMA
from mlwarden.registry._evidence import MODEL_TEST_SCHEMA as BOUND_MODEL_SCHEMA
from mlwarden.registry.errors import BadInput, GateRefused, InvalidTransition, PermissionDenied
from mlwarden.registry.gates import ApproveGate, Evidence, Gates, RobustAccuracy, evaluate_approve, load_gates
from mlwarden.registry.states import State
from mlwarden.registry.values import AttachmentInfo, AttachmentKind, VersionInfo

from .helpers import ALICE, BOB, VIC, World, make_keys, world

DIGEST = "sha256:" + "ab" * 32
NOW = datetime(2026, 12, 1, tzinfo=UTC)


# -- report builders --------------------------------------------------------------------------------------------------


def entry(id: str, metrics: Mapping[str, Any] | None = None, status: str = "ok", reason: str = "") -> dict[str, Any]:
    return {"id": id, "status": status, "reason": reason, "metrics": dict(metrics or {})}


def model_test(digest: str, *tests: dict[str, Any]) -> dict[str, Any]:
    return {"schema": MODEL_TEST_SCHEMA, "model_digest": digest, "tests": list(tests)}


def data_check(sha256: str, *checks: dict[str, Any]) -> dict[str, Any]:
    return {"schema": DATA_CHECK_SCHEMA, "dataset": {"sha256": sha256}, "checks": list(checks)}


def membership(auc: float | None) -> dict[str, Any]:
    attacks = [{"attack": "loss_threshold", "auc": auc}, {"attack": "shadow", "auc": 0.51}]
    return entry("membership", {"attacks": attacks, "max_auc": auc})


def robustness(**by_attack: dict[float, float]) -> dict[str, Any]:
    attacks = [
        {
            "attack": name,
            "kind": "evasion",
            "points": [{"eps": e, "accuracy": a, "ci95": [0, 1]} for e, a in pts.items()],
        }
        for name, pts in by_attack.items()
    ]
    return entry("robustness", {"clean_accuracy": {"accuracy": 0.95}, "attacks": attacks})


def label_issues(count: int, total: int) -> dict[str, Any]:
    return entry("label_issues", {"issues": {"count": count, "total": total, "rate": count / total, "ci95": [0, 1]}})


# -- gate evaluation on hand-built versions ---------------------------------------------------------------------------


def _version(tmp_path: Path, reports: list[tuple[AttachmentKind, dict[str, Any], str]]) -> Evidence:
    """A version with the given (kind, JSON, source) attachments stored under ``tmp_path``, oldest first."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    attachments, paths = [], {}
    for number, (kind, doc, source) in enumerate(reports, start=1):
        data = json.dumps(doc).encode()
        path = tmp_path / f"report-{number}.json"
        path.write_bytes(data)
        details = {"source": source, "digest": DIGEST}
        info = AttachmentInfo(
            number, kind, path.name, hashlib.sha256(data).hexdigest(), len(data), "alice", NOW, details
        )
        attachments.append(info)
        paths[number] = path
    files = (FileDigest(path="m.pt", digest="ab" * 32, size=1),)
    version = VersionInfo("fraud", 1, State.SCANNED, DIGEST, "alice", NOW, (), files, tuple(attachments))
    return Evidence(version, tmp_path / "m.pt", paths, NOW)


def _only(**rules: Any) -> Gates:
    base = {"scan_required": False, "signature_required": False, "dataset_manifest_required": False}
    return Gates(approve=ApproveGate(**{**base, **rules}))


def _check(tmp_path: Path, gates: Gates, *reports: tuple[AttachmentKind, dict[str, Any], str]) -> tuple[bool, str]:
    result = evaluate_approve(gates, _version(tmp_path, list(reports)))
    assert len(result.checks) == 1, result.checks
    return result.checks[0].passed, result.checks[0].detail


MT, DC, REG = AttachmentKind.MODEL_TEST, AttachmentKind.DATA_CHECK, "registry"
ROBUST = robustness(fgsm={0.01: 0.9, 0.05: 0.7}, pgd={0.01: 0.85, 0.05: 0.42})

CASES = [
    # rule, gate settings, report, passes, detail substring
    ("membership fails", {"max_membership_auc": 0.6}, (MT, model_test(DIGEST, membership(0.83)), REG), False,
     "membership AUC 0.83 (loss_threshold) > 0.6"),
    ("membership passes", {"max_membership_auc": 0.6}, (MT, model_test(DIGEST, membership(0.55)), REG), True,
     "membership AUC 0.55 (loss_threshold) <= 0.6"),
    ("robust worst attack", {"min_robust_accuracy": RobustAccuracy(0.05, 0.6)}, (MT, model_test(DIGEST, ROBUST), REG),
     False, "robust accuracy 0.42 at eps 0.05 (pgd) < 0.6"),
    ("robust named attack", {"min_robust_accuracy": RobustAccuracy(0.05, 0.6, "fgsm")},
     (MT, model_test(DIGEST, ROBUST), REG), True, "robust accuracy 0.7 at eps 0.05 (fgsm) >= 0.6"),
    ("robust eps not measured", {"min_robust_accuracy": RobustAccuracy(0.03, 0.1)},
     (MT, model_test(DIGEST, ROBUST), REG), False, "not measured at eps 0.03 (measured: 0.01, 0.05)"),
    ("robust attack not run", {"min_robust_accuracy": RobustAccuracy(0.05, 0.1, "cw")},
     (MT, model_test(DIGEST, ROBUST), REG), False, "attack 'cw' was not run (measured: fgsm, pgd)"),
    ("parity fails", {"max_demographic_parity_difference": 0.1},
     (MT, model_test(DIGEST, entry("fairness", {"demographic_parity_difference": 0.31})), REG), False,
     "demographic parity difference 0.31 > 0.1"),
    ("parity passes", {"max_demographic_parity_difference": 0.1},
     (MT, model_test(DIGEST, entry("fairness", {"demographic_parity_difference": 0.04})), REG), True,
     "demographic parity difference 0.04 <= 0.1"),
    ("odds fails", {"max_equalized_odds_difference": 0.1},
     (MT, model_test(DIGEST, entry("fairness", {"equalized_odds_difference": 0.2})), REG), False,
     "equalized odds difference 0.2 > 0.1"),
    ("odds passes", {"max_equalized_odds_difference": 0.1},
     (MT, model_test(DIGEST, entry("fairness", {"equalized_odds_difference": 0.05})), REG), True,
     "equalized odds difference 0.05 <= 0.1"),
    ("backdoor fails", {"max_backdoor_anomaly_index": 2.0},
     (MT, model_test(DIGEST, entry("backdoor_probe", {"max_anomaly_index": 3.5})), REG), False,
     "backdoor anomaly index 3.5 > 2"),
    ("backdoor passes", {"max_backdoor_anomaly_index": 2.0},
     (MT, model_test(DIGEST, entry("backdoor_probe", {"max_anomaly_index": 1.2})), REG), True,
     "backdoor anomaly index 1.2 <= 2"),
    ("label issues fail", {"max_label_issue_rate": 0.05}, (DC, data_check("cd", label_issues(12, 100)), REG), False,
     "label issue rate 0.12 (12 of 100, 95% CI 0-1) > 0.05"),
    ("label issues pass", {"max_label_issue_rate": 0.05}, (DC, data_check("cd", label_issues(1, 100)), REG), True,
     "label issue rate 0.01 (1 of 100"),
    ("pii found", {"no_personal_data": True},
     (DC, data_check("cd", entry("pii", {"matches": {"email": 3, "phone": 0, "iban": 1}})), REG), False,
     "personal data found: 3 email, 1 iban"),
    ("no pii", {"no_personal_data": True},
     (DC, data_check("cd", entry("pii", {"matches": {"email": 0, "phone": 0}})), REG), True,
     "no personal data found (2 detector(s)"),
    ("model test present", {"model_test_required": True}, (MT, model_test(DIGEST, membership(0.9)), REG), True,
     "model test report #1"),
    ("model test errored", {"model_test_required": True},
     (MT, model_test(DIGEST, membership(0.5), entry("fairness", status="error", reason="fairlearn missing")), REG),
     False, "could not run (fail closed): fairness: fairlearn missing"),
    ("data check present", {"data_check_required": True}, (DC, data_check("cd", label_issues(1, 10)), REG), True,
     "data check report #1"),
    ("data check errored", {"data_check_required": True},
     (DC, data_check("cd", entry("outliers", status="error", reason="no numeric column")), REG), False,
     "outliers: no numeric column"),
    ("uploaded report does not count", {"model_test_required": True},
     (MT, model_test(DIGEST, membership(0.5)), "attached"), False,
     "no model test of this version by the registry (attached reports do not count)"),
    ("status error fails closed", {"max_membership_auc": 0.6},
     (MT, model_test(DIGEST, entry("membership", status="error", reason="needs --train")), REG), False,
     "membership status 'error' in model test report #1: needs --train (fail closed)"),
    ("skipped fails closed", {"max_demographic_parity_difference": 0.1},
     (MT, model_test(DIGEST, entry("fairness", status="skipped", reason="no --sensitive")), REG), False,
     "fairness status 'skipped'"),
    ("test not run", {"max_membership_auc": 0.6}, (MT, model_test(DIGEST, entry("fairness", {})), REG), False,
     "model test report #1 did not run membership"),
    ("non-finite number fails closed", {"max_membership_auc": 0.6}, (MT, model_test(DIGEST, membership(None)), REG),
     False, "lacks the number this rule reads"),
    ("no report at all", {"no_personal_data": True}, (MT, model_test(DIGEST, membership(0.5)), REG), False,
     "no data check of this version by the registry: pii is needed"),
]  # fmt: skip


@pytest.mark.parametrize(("rules", "report", "passes", "detail"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_gate_passes_and_fails_on_its_number(
    tmp_path: Path, rules: dict[str, Any], report: tuple[AttachmentKind, dict[str, Any], str], passes: bool, detail: str
) -> None:
    passed, said = _check(tmp_path, _only(**rules), report)
    assert passed is passes, said
    assert detail in said


def test_the_newest_registry_run_report_counts(tmp_path: Path) -> None:
    gates = _only(max_membership_auc=0.6)
    older = (MT, model_test(DIGEST, membership(0.55)), REG)
    newer = (MT, model_test(DIGEST, membership(0.83)), REG)
    uploaded = (MT, model_test(DIGEST, membership(0.1)), "attached")
    assert _check(tmp_path / "a", gates, older, newer, uploaded)[0] is False
    assert _check(tmp_path / "b", gates, newer, older)[0] is True


def test_a_report_altered_in_the_blob_store_fails_closed(tmp_path: Path) -> None:
    evidence = _version(tmp_path, [(MT, model_test(DIGEST, membership(0.83)), REG)])
    evidence.attachment_paths[1].write_text(json.dumps(model_test(DIGEST, membership(0.2))))
    check = evaluate_approve(_only(max_membership_auc=0.6), evidence).checks[0]
    assert not check.passed
    assert "missing or altered" in check.detail


def test_default_gates_check_no_model_test(tmp_path: Path) -> None:
    result = evaluate_approve(Gates(), _version(tmp_path, []))
    assert not {c.rule for c in result.checks} & {"model_test_required", "data_check_required", "max_membership_auc"}


def test_gates_toml_accepts_the_new_keys_strictly(tmp_path: Path) -> None:
    good = tmp_path / "gates.toml"
    good.write_text(
        "[approve]\nmodel_test_required = true\nmax_membership_auc = 0.6\nno_personal_data = true\n"
        'min_robust_accuracy = {eps = 0.05, accuracy = 0.6, attack = "pgd"}\nmax_label_issue_rate = 0.05\n'
    )
    approve = load_gates(good).approve
    assert approve.min_robust_accuracy == RobustAccuracy(0.05, 0.6, "pgd")
    assert (approve.max_membership_auc, approve.no_personal_data, approve.data_check_required) == (0.6, True, False)
    for bad, named in (
        ("min_robust_accuracy = {eps = 0.05, accuracy = 0.6, attak = 'pgd'}", "attak"),
        ("min_robust_accuracy = {eps = 0.05}", "accuracy"),
        ("min_robust_accuracy = {eps = 2.0, accuracy = 0.6}", "eps must be within"),
        ("max_membership_auc = 1.5", "max_membership_auc must be within [0, 1]"),
        ("max_backdoor_anomaly_index = -1", "at least 0"),
        ("max_membership_aux = 0.5", "max_membership_aux"),
    ):
        path = tmp_path / "bad.toml"
        path.write_text(f"[approve]\n{bad}\n")
        with pytest.raises(PolicyError, match="invalid") as caught:
            load_gates(path)
        assert named in str(caught.value)


def test_the_registry_layer_knows_the_report_schemas() -> None:
    assert (BOUND_MODEL_SCHEMA, BOUND_DATA_SCHEMA) == (MODEL_TEST_SCHEMA, DATA_CHECK_SCHEMA)


# -- the registry: attach binding and `test` -------------------------------------------------------------------------


@pytest.fixture
def w(db_url: str, tmp_path: Path) -> Iterator[World]:
    with world(db_url, tmp_path) as built:
        yield built


def _file(w: World, doc: dict[str, Any], name: str) -> Path:
    path = w.root / name
    path.write_text(json.dumps(doc))
    return path


def _train_csv(w: World) -> Path:
    return w.root / "dataset" / "data" / "train.csv"  # the one file of the World's dataset manifest


def step(kind: AttachmentKind, build: Any, seen: list[AssessInput] | None = None) -> Any:
    def run(given: AssessInput) -> AssessReport:
        if seen is not None:
            seen.append(given)
        return AssessReport(kind, json.dumps(build(given.version.digest)).encode())

    return run


def test_a_model_test_about_another_model_is_refused_when_attached(w: World) -> None:
    v = w.register()
    other = w.register(seed=1)
    with pytest.raises(BadInput, match="is about another model"):
        w.registry.attach(ALICE, v.ref, "model_test", _file(w, model_test(other.digest, membership(0.5)), "mt.json"))
    with pytest.raises(BadInput, match="names no model digest"):
        w.registry.attach(ALICE, v.ref, "model_test", _file(w, model_test("", membership(0.5)), "mt.json"))
    with pytest.raises(BadInput, match="expected 'https://mlwarden.dev/model-test/v1'"):
        w.registry.attach(ALICE, v.ref, "model_test", _file(w, {"model_digest": v.digest}, "mt.json"))
    info = w.registry.attach(ALICE, v.ref, "model_test", _file(w, model_test(v.digest, membership(0.5)), "mt.json"))
    attached = info.attachments[-1]
    assert (attached.kind, attached.details) == (AttachmentKind.MODEL_TEST, {"source": "attached"})
    assert len(info.attachments) == len(v.attachments) + 1


def test_a_data_check_must_be_about_an_attached_dataset(w: World) -> None:
    v = w.register()
    train = _train_csv(w)
    file_sha = hashlib.sha256(train.read_bytes()).hexdigest()
    report = _file(w, data_check("ef" * 32, label_issues(0, 2)), "dc-other.json")
    with pytest.raises(BadInput, match="is about other data"):
        w.registry.attach(ALICE, v.ref, "data_check", report)
    ok = _file(w, data_check(f"sha256:{file_sha}", label_issues(0, 2)), "dc.json")
    info = w.registry.attach(ALICE, v.ref, "data_check", ok)
    assert info.attachments[-1].kind is AttachmentKind.DATA_CHECK
    bare = w.registry.register(ALICE, "plain", w.model(seed=2)[0])  # no dataset manifest
    with pytest.raises(BadInput, match="no dataset manifest is attached to this version"):
        w.registry.attach(ALICE, bare.ref, "data_check", ok)


def test_registry_test_runs_on_the_stored_copy_and_signs_and_audits(w: World) -> None:
    v = w.register()
    keys = make_keys(w.root / "registry-keys", "registry")
    seen: list[AssessInput] = []
    file_sha = hashlib.sha256(_train_csv(w).read_bytes()).hexdigest()
    steps = [
        step(DC, lambda _digest: data_check(file_sha, label_issues(1, 50)), seen),
        step(MT, lambda digest: model_test(digest, membership(0.55), entry("fairness", status="error", reason="x"))),
    ]
    info = w.registry.test(ALICE, v.ref, steps, signing_key=keys.private)
    assert info.state is State.RECEIVED
    stored = seen[0].artifact
    assert stored.is_relative_to(w.root / "home")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == v.digest.removeprefix("sha256:")
    dc, mt = info.attachments[-2:]
    assert (dc.kind, mt.kind) == (DC, MT)
    assert mt.details["source"] == "registry"
    assert mt.details["statuses"] == {"membership": "ok", "fairness": "error"}
    assert dc.details["scope"] == "file:train/train.csv"
    report = w.registry.attachment_path(VIC, v.ref, mt.id).read_bytes()
    predicate = verify_signature(report, mt.details["signature"], keys.public)
    assert (predicate["model_digest"], predicate["kind"]) == (v.digest, "model_test")
    with pytest.raises(VerificationError, match="other bytes"):
        verify_signature(report + b" ", mt.details["signature"], keys.public)
    event = list(w.registry.audit().entries())[-1]
    assert (event.action, event.allowed, event.actor) == ("test", True, "alice")
    assert event.digests["model_test#2"] == f"sha256:{mt.digest}"
    reports = event.details["reports"]
    assert reports[1] == {"kind": "model_test", "sha256": mt.digest, "signed": True,
                          "statuses": {"membership": "ok", "fairness": "error"}}  # fmt: skip


def test_registry_test_refuses_other_bytes_and_other_data_and_attaches_nothing(w: World) -> None:
    v = w.register()
    other = w.register(seed=1)
    wrong_model = [step(MT, lambda _digest: model_test(other.digest, membership(0.5)))]
    with pytest.raises(BadInput, match="is about another model"):
        w.registry.test(ALICE, v.ref, wrong_model)
    ran: list[AssessInput] = []
    wrong_data = [step(DC, lambda _d: data_check("12" * 32)), step(MT, lambda d: model_test(d), ran)]
    with pytest.raises(BadInput, match="is about other data"):
        w.registry.test(ALICE, v.ref, wrong_data)
    assert ran == []  # the model tests never started
    assert w.registry.resolve(VIC, v.ref).attachments == v.attachments
    refused = list(w.registry.audit().entries())[-1]
    assert (refused.action, refused.allowed) == ("test", False)
    with pytest.raises(PermissionDenied, match="submitter"):
        w.registry.test(VIC, v.ref, wrong_model)


def test_registry_test_is_refused_once_approved(w: World) -> None:
    v = w.approved()
    with pytest.raises(InvalidTransition, match="before approval only"):
        w.registry.test(ALICE, v.ref, [step(MT, lambda d: model_test(d, membership(0.5)))])


@pytest.mark.parametrize(("auc", "approved"), [(0.83, False), (0.55, True)])
def test_approval_reads_the_registry_run_membership_auc(
    db_url: str, tmp_path: Path, auc: float, approved: bool
) -> None:
    with world(db_url, tmp_path, max_membership_auc=0.6, model_test_required=True) as w:
        v = w.register()
        w.registry.scan(ALICE, v.ref, modes=("static",))
        w.registry.attach(ALICE, v.ref, "model_test", _file(w, model_test(v.digest, membership(0.1)), "up.json"))
        w.registry.test(ALICE, v.ref, [step(MT, lambda d: model_test(d, membership(auc)))])
        if approved:
            assert w.registry.approve(BOB, v.ref).state is State.APPROVED
            return
        with pytest.raises(GateRefused) as refused:
            w.registry.approve(BOB, v.ref)
        assert [(c.rule, c.detail) for c in refused.value.failed] == [
            ("max_membership_auc", "membership AUC 0.83 (loss_threshold) > 0.6")
        ]
