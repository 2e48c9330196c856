"""The values a model test produces: one :class:`TestResult` per test, the :class:`ModelTestReport`.

Like the data checks, a test states what it measured and how (parameters, seed, rows, run time) and gives
numbers with confidence intervals where sampling applies — never pass/fail words; the registry's gates decide
what is acceptable. :meth:`ModelTestReport.to_dict` is the JSON documented in ``docs/model-tests.md``
(schema :data:`SCHEMA_ID`). The metric names the gates read are part of that schema:

``robustness``
    ``clean_accuracy``; ``attacks``: ``[{"attack", "kind", "points": [{"eps", "accuracy", "ci95"}]}]``
``membership``
    ``attacks``: ``[{"attack", "auc", "auc_ci95", "tpr_at_fpr_0.001", "roc": {...}}]``; ``max_auc``
``attribute_inference``
    ``attack_accuracy``, ``baseline_accuracy`` (guessing the most frequent value), ``advantage``
``inversion``
    ``classes`` with reconstructed images (PNG as base64) for the HTML report
``backdoor_probe``
    ``anomaly_index`` per class, ``max_anomaly_index``, ``flagged_classes``; STRIP entropy figures
``fairness``
    ``demographic_parity_difference``, ``equalized_odds_difference``, ``by_group``
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlwarden.core.errors import UsageError
from mlwarden.datacheck.model import json_safe

SCHEMA_ID = "https://mlwarden.dev/model-test/v1"
SCHEMA_VERSION = "1.0"


class ModelTestError(UsageError):
    """A model test cannot run as asked: wrong data, a model of the wrong kind, a missing extra."""


@dataclass(frozen=True, slots=True)
class TestInfo:
    """A registered test: stable id (reports and gates use it), title, the threat it addresses."""

    id: str
    title: str
    threat: str


TESTS: dict[str, TestInfo] = {}


def _test(id: str, title: str, threat: str) -> None:
    TESTS[id] = TestInfo(id, title, threat)


_test("robustness", "Adversarial robustness", "small crafted input changes flip the model's decisions (evasion)")
_test("membership", "Membership inference", "an attacker learns whether a record was in the training set")
_test(
    "attribute_inference",
    "Attribute inference",
    "an attacker recovers a training record's sensitive attribute from the model's answers",
)
_test("inversion", "Model inversion (MIFace)", "an attacker reconstructs what a class looks like from gradients")
_test("backdoor_probe", "Backdoor probe", "a trigger planted in training flips any input to a target class")
_test("fairness", "Fairness", "the model's errors or positive rates differ between groups of a sensitive attribute")


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test's outcome.

    Attributes:
        id: the test's id (see :data:`TESTS`).
        parameters: every setting that changes the numbers.
        seed: the random seed used (``None`` for deterministic tests).
        rows: a mapping of data sizes used (e.g. ``{"test": 500, "train": 1000}``).
        seconds: wall-clock time.
        metrics: the numbers (see the module docstring for the names gates read).
        status: ``ok``, ``skipped`` (not applicable; ``reason`` says why) or ``error`` (could not run: fail
            closed, never reported as clean).
    """

    __test__ = False  # not a pytest test class

    id: str
    parameters: Mapping[str, Any]
    seed: int | None
    rows: Mapping[str, int]
    seconds: float
    metrics: Mapping[str, Any] = field(default_factory=dict)
    status: str = "ok"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        info = TESTS[self.id]
        return {
            "id": self.id,
            "title": info.title,
            "threat": info.threat,
            "status": self.status,
            "reason": self.reason,
            "parameters": dict(self.parameters),
            "seed": self.seed,
            "rows": dict(self.rows),
            "seconds": round(self.seconds, 4),
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True, slots=True)
class DataRef:
    """A data file a test used: path, sha256 (as a dataset manifest records it), rows, label column."""

    path: str
    sha256: str
    rows: int
    label: str | None = None
    sensitive: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"path": self.path, "sha256": self.sha256, "rows": self.rows, "label": self.label,
                "sensitive": self.sensitive}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelTestReport:
    """Every test's result for one model on the given data."""

    __test__ = False

    model_path: str
    model_digest: str
    framework: str
    n_classes: int
    test_data: DataRef
    train_data: DataRef | None
    tests: tuple[TestResult, ...]
    seed: int
    seconds: float
    created_at: str
    tool_version: str

    def test(self, id: str) -> TestResult:
        """The result of test ``id`` (KeyError when it did not run)."""
        for result in self.tests:
            if result.id == id:
                return result
        raise KeyError(id)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (schema :data:`SCHEMA_ID`); ``model_digest`` binds it to the model's bytes."""
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "mlwarden", "version": self.tool_version},
            "created_at": self.created_at,
            "model_digest": self.model_digest,
            "model": {"path": self.model_path, "framework": self.framework, "classes": self.n_classes},
            "data": {"test": self.test_data.to_dict(), "train": self.train_data.to_dict() if self.train_data else None},
            "seed": self.seed,
            "seconds": round(self.seconds, 4),
            "tests": [t.to_dict() for t in self.tests],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON (non-finite numbers become ``null``)."""
        return json.dumps(json_safe(self.to_dict()), indent=2)


@dataclass(frozen=True, slots=True)
class ModelTestOptions:
    """What to test and how; every value that changes a number is echoed in the report.

    Attributes:
        tests: test ids to run (see :data:`TESTS`); tests that do not apply are reported as ``skipped``.
        seed: one seed for every sampled choice (subsets, attack restarts, shadow splits).
        label: the label column of the data (image folders: their sub-folder names).
        sensitive: the sensitive-attribute column (fairness, attribute inference).
        max_rows: at most this many test rows per test (a seeded uniform sample; the report says how many).
        eps: perturbation budgets for the robustness curve, as fractions of the input range (``clip_values``).
        overrides: per-test parameters, ``{"robustness": {"pgd_steps": 20}, ...}``; unknown keys are refused.
    """

    tests: tuple[str, ...] = tuple(TESTS)
    seed: int = 0
    label: str | None = None
    sensitive: str | None = None
    max_rows: int = 1000
    eps: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tests) - TESTS.keys())
        if unknown:
            raise ModelTestError(f"--tests: unknown test(s) {unknown}; known: {sorted(TESTS)}")
        if self.max_rows < 10:
            raise ModelTestError(f"--max-rows must be at least 10, got {self.max_rows}")
        if not self.eps or any(not 0 < e <= 1 for e in self.eps):
            raise ModelTestError(f"--eps: every budget must be within (0, 1] of the input range, got {self.eps}")
        unknown = sorted(set(self.overrides) - TESTS.keys())
        if unknown:
            raise ModelTestError(f"parameters for unknown test(s) {unknown}")

    def params(self, test: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """``defaults`` updated with this test's overrides (an unknown key is refused, not ignored)."""
        given = dict(self.overrides.get(test, {}))
        unknown = sorted(set(given) - defaults.keys())
        if unknown:
            raise ModelTestError(f"{test}: unknown parameter(s) {unknown}; known: {sorted(defaults)}")
        return {**defaults, **given}


@dataclass(slots=True)
class TestContext:
    """What every test function gets: the model, the data as arrays, options.

    ``y_*`` are class indices of the model (:meth:`Subject.encode`); ``s_*`` the sensitive attribute's values
    (``None`` without ``--sensitive``); ``clip_values`` the input range (``(0, 1)`` for images, the data's
    min/max otherwise); ``image`` is True for image data, whose samples are ``(channels, height, width)``.
    A test function has the signature ``def run(ctx: TestContext) -> TestResult`` and raises
    :class:`ModelTestError` (reported as ``status: error``) when it cannot run.
    """

    __test__ = False

    subject: Any  # mlwarden.estimators.Subject
    x_test: Any
    y_test: Any
    options: ModelTestOptions
    x_train: Any = None
    y_train: Any = None
    s_test: Any = None
    s_train: Any = None
    clip_values: tuple[float, float] = (0.0, 1.0)
    image: bool = False
