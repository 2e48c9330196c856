"""Model tests before approval, on the Adversarial Robustness Toolbox and Fairlearn.

Adversarial robustness, membership and attribute inference, model inversion, backdoor probes and fairness.
See ``docs/model-tests.md``.
"""

from __future__ import annotations

from mlwarden.modeltest.model import (
    SCHEMA_ID,
    TESTS,
    ModelTestError,
    ModelTestOptions,
    ModelTestReport,
    TestContext,
    TestResult,
)

__all__ = ["SCHEMA_ID", "TESTS", "ModelTestError", "ModelTestOptions", "ModelTestReport", "TestContext", "TestResult"]
