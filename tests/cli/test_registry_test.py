"""`mlwarden registry test`: runs on the stored copy, attaches signed reports, and the approve gate reads them.

Most tests replace ``run_model_tests`` with a fake that records what it was given and returns a report with
planted numbers (a membership AUC of 0.83); the last test runs the real model tests (fairness, membership) on a
small scikit-learn model and checks that the refusal names the AUC the report measured.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlwarden.cli import main as cli
from mlwarden.cli import registry_test_cmd
from mlwarden.integrity.dataset import build_dataset_manifest, dataset_statement
from mlwarden.modeltest.model import DataRef, ModelTestReport, TestResult
from mlwarden.registry._assess import verify_signature
from mlwarden.registry.service import Registry

GATES = """
[approve]
scan_required = false
signature_required = false
dataset_manifest_required = true
model_test_required = true
data_check_required = true
max_membership_auc = {limit}
"""


class Cli:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = f"sqlite:///{root / 'registry.db'}"
        self.home = root / "home"
        self.base = ["--db", self.url, "--home", str(self.home), "--gates", str(root / "gates.toml")]
        self.capsys = capsys
        self.root = root
        self.tokens: dict[str, str] = {}

    def __call__(self, *argv: str, user: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        extra = [*self.base]
        if user is not None:
            token = self.root / f"{user}.token"
            token.write_text(self.tokens[user])
            extra += ["--token-file", str(token)]
        code = cli.main([*argv, *extra])
        out, err = self.capsys.readouterr()
        return code, out, err

    def gates(self, limit: float) -> None:
        (self.root / "gates.toml").write_text(GATES.format(limit=limit))


def _data(root: Path, seed: int, rows: int) -> Path:
    """A CSV with two numeric features, a text group and a label that depends on the first feature."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    group = np.where(rng.random(rows) < 0.5, "a", "b")
    y = (x[:, 0] + 0.3 * rng.normal(size=rows) > 0).astype(int)
    path = root / f"data-{seed}.csv"
    lines = ["x1,x2,g,y", *(f"{a:.5f},{b:.5f},{g},{t}" for (a, b), g, t in zip(x, group, y, strict=True))]
    path.write_text("\n".join(lines) + "\n")
    return path


def _model(root: Path, train: Path) -> Path:
    import joblib
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    frame = pd.read_csv(train)
    model = LogisticRegression().fit(frame[["x1", "x2"]].to_numpy(), frame["y"].to_numpy())
    path = root / "model.joblib"
    joblib.dump(model, path)
    return path


@pytest.fixture
def setup(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.delenv("MLWARDEN_TOKEN", raising=False)
    run = Cli(tmp_path, capsys)
    run.gates(0.6)
    code, out, _ = run("registry", "init", "--admin", "root")
    assert code == 0
    run.tokens["root"] = out.strip().splitlines()[-1]
    for user, role in (("alice", "submitter"), ("bob", "approver"), ("vic", "viewer")):
        assert run("user", "add", user, "--role", role, user="root")[0] == 0
        code, out, _ = run("token", "issue", user, "--expires", "1d", user="root")
        run.tokens[user] = out.strip()
    train = _data(tmp_path, 0, 200)
    _data(tmp_path, 1, 120)  # the held-out test data
    manifest = build_dataset_manifest(train, name="train", source="unit test", license="CC0-1.0")
    (tmp_path / "train.manifest.json").write_text(json.dumps(dataset_statement(manifest)))  # unsigned is enough here
    model = _model(tmp_path, train)
    code, out, err = run(
        "register", "fraud", str(model), "--dataset-manifest", str(tmp_path / "train.manifest.json"), user="alice"
    )
    assert code == 0, err
    run("registry", "scan", "fraud:1", "--static-only", user="alice")  # approval needs the state scanned
    assert run("show", "fraud:1", user="vic")[1].startswith("fraud:1  scanned")
    return run


class FakeTests:
    """Stands in for run_model_tests: records its arguments, reports planted numbers about the given model."""

    def __init__(self, auc: float, status: str = "ok") -> None:
        self.auc, self.status, self.calls = auc, status, []  # type: ignore[var-annotated]

    def __call__(self, model: Path, test: Path, options: Any, **kwargs: Any) -> ModelTestReport:
        from mlwarden.integrity.hashing import hash_model

        self.calls.append((model, test, options, kwargs))
        attacks = [{"attack": "loss_threshold", "auc": self.auc}]
        result = TestResult(
            "membership", {}, options.seed, {"test": 120}, 0.1, {"attacks": attacks, "max_auc": self.auc}, self.status
        )
        return ModelTestReport(
            str(model), f"sha256:{hash_model(model).digest}", "sklearn", 2,
            DataRef(str(test), "00", 120), None, (result,), options.seed, 0.1, "2026-12-05T00:00:00Z", "test",
        )  # fmt: skip


def test_registry_test_attaches_a_signed_report_from_the_stored_copy(
    setup: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = setup
    fake = FakeTests(0.83)
    monkeypatch.setattr(registry_test_cmd, "_model_tests", lambda: fake)
    data = run.root / "data-1.csv"
    code, out, err = run(
        "registry", "test", "fraud:1", "--data", str(data), "--tests", "membership", "--seed", "7", user="alice"
    )
    assert (code, err) == (0, "")
    model, test, options, kwargs = fake.calls[0]
    assert model.is_relative_to(run.home)  # the registry's copy, never the caller's file
    assert model != run.root / "model.joblib"
    assert (test, options.tests, options.seed, kwargs["train"], kwargs["dynamic"]) == (
        data, ("membership",), 7, None, True
    )  # fmt: skip
    assert "model_test #" in out
    assert "(signed)" in out
    assert "membership           ok       max AUC 0.83" in out
    registry = Registry.open(run.url, home=run.home, upgrade=False)
    try:
        principal = registry.authenticate(run.tokens["vic"])
        info = registry.resolve(principal, "fraud:1")
        report = info.attachments[-1]
        data_bytes = registry.attachment_path(principal, "fraud:1", report.id).read_bytes()
        event = list(registry.audit().entries())[-1]
    finally:
        registry.close()
    assert report.details["statuses"] == {"membership": "ok"}
    predicate = verify_signature(data_bytes, report.details["signature"], run.home / "keys" / "registry.pub")
    assert predicate["model_digest"] == info.digest
    assert event.details["reports"][0]["sha256"] == hashlib.sha256(data_bytes).hexdigest()
    assert (event.action, event.actor, event.allowed) == ("test", "alice", True)

    code, _, err = run("approve", "fraud:1", user="bob")
    assert code == 1
    assert "max_membership_auc: membership AUC 0.83 (loss_threshold) > 0.6" in err
    assert "data_check_required: no data check of this version by the registry" in err


def test_registry_test_with_train_data_checks_it_first(setup: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    run = setup
    fake = FakeTests(0.55)
    monkeypatch.setattr(registry_test_cmd, "_model_tests", lambda: fake)
    data, train = run.root / "data-1.csv", run.root / "data-0.csv"
    code, _, err = run("registry", "test", "fraud:1", "--data", str(data), "--train", str(data), user="alice")
    assert code == 2
    assert "is about other data" in err  # the test file is not the training set of the manifest
    assert fake.calls == []  # refused before any model test ran
    code, out, err = run(
        "registry", "test", "fraud:1", "--data", str(data), "--train", str(train), "--label", "y", user="alice"
    )
    assert code == 0, err
    assert "data_check #" in out
    assert fake.calls[0][3]["train"] == train
    assert run("approve", "fraud:1", user="bob")[:2] == (0, "fraud:1: approved\n")


def test_a_test_that_could_not_run_exits_1_and_fails_the_gate(setup: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    run = setup
    monkeypatch.setattr(registry_test_cmd, "_model_tests", lambda: FakeTests(0.5, status="error"))
    code, _, _ = run("registry", "test", "fraud:1", "--data", str(run.root / "data-1.csv"), user="alice")
    assert code == 1
    code, _, err = run("approve", "fraud:1", user="bob")
    assert code == 1
    assert "max_membership_auc: membership status 'error'" in err
    code, _, err = run("registry", "test", "fraud:1", "--data", "x.csv", user="vic")
    assert code == 2
    assert "needs role submitter or admin" in err
    code, _, err = run("registry", "test", "fraud:1", "--data", "x.csv", "--tests", "nope", user="alice")
    assert code == 2
    assert "unknown test(s) ['nope']" in err


def _available(*tests: str) -> list[str]:
    try:
        from mlwarden.modeltest.run import REGISTRY
    except ImportError:
        return []
    return [t for t in tests if importlib.util.find_spec(REGISTRY[t].partition(":")[0]) is not None]


@pytest.mark.skipif(not _available("fairness", "membership"), reason="mlwarden.modeltest.run is not there yet")
def test_end_to_end_with_the_real_model_tests(setup: Cli) -> None:
    run = setup
    tests = _available("fairness", "membership")
    data, train = run.root / "data-1.csv", run.root / "data-0.csv"
    run.gates(0.01)  # no real model has a membership AUC this low: the refusal must name the measured one
    code, out, err = run(
        "registry", "test", "fraud:1", "--data", str(data), "--train", str(train), "--label", "y",
        "--sensitive", "g", "--tests", *tests, "--max-rows", "100", user="alice",
    )  # fmt: skip
    assert code == 0, out + err
    registry = Registry.open(run.url, home=run.home, upgrade=False)
    try:
        principal = registry.authenticate(run.tokens["vic"])
        info = registry.resolve(principal, "fraud:1")
        report = json.loads(registry.attachment_path(principal, "fraud:1", info.attachments[-1].id).read_bytes())
    finally:
        registry.close()
    assert report["model_digest"] == info.digest
    assert {t["id"]: t["status"] for t in report["tests"]} == dict.fromkeys(tests, "ok")
    code, _, err = run("approve", "fraud:1", user="bob")
    if "membership" in tests:
        auc = next(t for t in report["tests"] if t["id"] == "membership")["metrics"]["max_auc"]
        assert 0.3 < auc < 0.9
        assert code == 1
        assert f"max_membership_auc: membership AUC {auc:.4g}" in err
        assert "> 0.01" in err
    if "fairness" in tests:
        fairness = next(t for t in report["tests"] if t["id"] == "fairness")["metrics"]
        assert 0 <= fairness["demographic_parity_difference"] <= 1
