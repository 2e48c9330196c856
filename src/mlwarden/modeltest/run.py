"""Run the model tests: read the data, load the model only through the safe loader, run each test guarded.

:func:`run_model_tests` is the whole flow behind ``mlwarden model test``; :func:`run_on_subject` runs the tests
on a model and arrays already in memory (tests, benchmarks, the registry's gates). Test functions are found
through :data:`REGISTRY` (``id → "module:function"``) and imported only when asked for. A test that cannot run
— its module missing, an optional package missing, an error inside ART — is reported with ``status: error``
and its reason: never dropped, never reported as clean.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlwarden._version import __version__
from mlwarden.core.errors import MlwardenError, UnsafeModelError
from mlwarden.modeltest.data import TestData, read_data
from mlwarden.modeltest.model import ModelTestError, ModelTestOptions, ModelTestReport, TestContext, TestResult

REGISTRY: dict[str, str] = {
    "robustness": "mlwarden.modeltest.robustness:run",
    "membership": "mlwarden.modeltest.privacy:membership",
    "attribute_inference": "mlwarden.modeltest.privacy:attribute_inference",
    "inversion": "mlwarden.modeltest.privacy:inversion",
    "backdoor_probe": "mlwarden.modeltest.backdoor:probe",
    "fairness": "mlwarden.modeltest.fairness:run",
}
#: The optional packages (the ``assess`` extra) each test needs.
NEEDS: dict[str, tuple[str, ...]] = {
    "robustness": ("art",),
    "membership": ("art",),
    "attribute_inference": ("art",),
    "inversion": ("art",),
    "backdoor_probe": ("art",),
    "fairness": ("fairlearn",),
}
INSTALL_HINT = "pip install 'mlwarden[assess]'"
#: Errors a test may raise that mean "could not run" (ART raises TypeError subclasses and plain RuntimeErrors).
GUARDED = (MlwardenError, ValueError, TypeError, ArithmeticError, MemoryError, ImportError, RuntimeError,
           AttributeError, IndexError, KeyError)  # fmt: skip


def require_extras(tests: tuple[str, ...]) -> None:
    """Raise one clear error when a package of the ``assess`` extra the chosen tests need is missing."""
    missing = []
    for package in dict.fromkeys(p for t in tests for p in NEEDS.get(t, ())):
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ModelTestError(f"model tests need {', '.join(missing)} (the assess extra): {INSTALL_HINT}")


def run_model_tests(
    model: Path | str,
    test: Path | str,
    options: ModelTestOptions | None = None,
    *,
    train: Path | str | None = None,
    policy: Any = None,
    dynamic: bool = True,
) -> ModelTestReport:
    """Test the model at ``model`` on the data at ``test`` (and ``train``, for the privacy tests).

    The model is scanned and loaded only by :func:`mlwarden.estimators.load_subject`: a model the analysis
    refuses is never loaded.

    Raises:
        UnsafeModelError: the scan refused the model (nothing was loaded).
        ModelTestError: data or options a model test cannot use, or a missing optional package.
        DataCheckError: missing or unreadable data.
        EstimatorError: not a classifier mlwarden can test, or labels the model does not know.
    """
    from mlwarden.estimators import load_subject

    options = options or ModelTestOptions()
    started = time.perf_counter()
    require_extras(options.tests)
    test_data = _read(test, options, "--data")
    train_data = _read(train, options, "--train") if train is not None else None
    if train_data is not None and train_data.x.shape[1:] != test_data.x.shape[1:]:
        raise ModelTestError(
            f"--train: its samples have shape {train_data.x.shape[1:]}, the test data's {test_data.x.shape[1:]}"
        )
    subject = load_subject(model, test_data.x[:8], policy=policy, dynamic=dynamic)
    results = run_on_subject(
        subject,
        test_data.x,
        _labels(test_data),
        options,
        x_train=train_data.x if train_data else None,
        y_train=_labels(train_data) if train_data else None,
        s_test=test_data.sensitive,
        s_train=train_data.sensitive if train_data else None,
        image=test_data.image,
    )
    return ModelTestReport(
        model_path=str(model),
        model_digest=subject.digest,
        framework=subject.framework,
        n_classes=subject.n_classes,
        test_data=test_data.ref(),
        train_data=train_data.ref() if train_data else None,
        tests=results,
        seed=options.seed,
        seconds=time.perf_counter() - started,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        tool_version=__version__,
    )


def _read(path: Path | str, options: ModelTestOptions, option: str) -> TestData:
    data = read_data(path, options.label, options.sensitive)
    if data.y is None:
        raise ModelTestError(f"{option}: model tests need the true labels: name the label column with --label")
    return data


def _labels(data: TestData) -> np.ndarray:
    if data.y is None:  # pragma: no cover - _read refuses unlabelled data
        raise ModelTestError(f"{data.path}: no labels")
    return data.y


def build_context(
    subject: Any,
    x_test: np.ndarray,
    y_test: np.ndarray,
    options: ModelTestOptions,
    *,
    x_train: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
    s_test: np.ndarray | None = None,
    s_train: np.ndarray | None = None,
    image: bool = False,
    clip_values: tuple[float, float] | None = None,
) -> TestContext:
    """The :class:`TestContext`: labels encoded as the model's class indices, the input range decided.

    ``clip_values`` defaults to ``(0, 1)`` for images and to the data's (test and training) minimum and maximum
    otherwise.

    Raises:
        EstimatorError: a label the model has no output for.
        ModelTestError: arrays of mismatched lengths.
    """
    x_test = np.asarray(x_test, dtype=np.float32)
    x_tr = None if x_train is None else np.asarray(x_train, dtype=np.float32)
    for name, x, y in (("test", x_test, y_test), ("train", x_tr, y_train)):
        if x is not None and (y is None or len(y) != len(x)):
            raise ModelTestError(f"{name} data: {len(x)} rows but {'no' if y is None else len(y)} labels")
    if clip_values is None:
        if image:
            clip_values = (0.0, 1.0)
        else:
            both = x_test if x_tr is None else np.concatenate([x_test.reshape(len(x_test), -1),
                                                                  x_tr.reshape(len(x_tr), -1)])  # fmt: skip
            clip_values = (float(np.min(both)), float(np.max(both)))
    return TestContext(
        subject=subject,
        x_test=x_test,
        y_test=subject.encode(y_test),
        options=options,
        x_train=x_tr,
        y_train=None if y_train is None else subject.encode(y_train),
        s_test=None if s_test is None else np.asarray(s_test),
        s_train=None if s_train is None else np.asarray(s_train),
        clip_values=clip_values,
        image=image,
    )


def run_on_subject(
    subject: Any, x_test: np.ndarray, y_test: np.ndarray, options: ModelTestOptions, **context: Any
) -> tuple[TestResult, ...]:
    """Run ``options.tests`` on a loaded :class:`~mlwarden.estimators.Subject` and arrays in memory.

    ``y_test`` (and ``y_train``) are the data's labels, encoded here with :meth:`Subject.encode`; ``context``
    takes the keyword arguments of :func:`build_context`.
    """
    ctx = build_context(subject, x_test, y_test, options, **context)
    return tuple(run_test(test, ctx) for test in options.tests)


def run_test(test: str, ctx: TestContext) -> TestResult:
    """Run one registered test, guarded: a failure becomes a result with ``status: error`` and the reason."""
    started = time.perf_counter()
    try:
        function = _function(test)
        result = function(ctx)
        if not isinstance(result, TestResult) or result.id != test:
            raise ModelTestError(f"the test function returned {type(result).__name__}, not a {test} TestResult")
        return result
    except UnsafeModelError:
        raise
    except ImportError as exc:
        reason = _import_reason(test, exc)
    except GUARDED as exc:
        reason = str(exc) if isinstance(exc, MlwardenError) else f"{type(exc).__name__}: {str(exc)[:500]}"
    rows = {"test": len(ctx.x_test)} | ({"train": len(ctx.x_train)} if ctx.x_train is not None else {})
    return TestResult(test, {}, ctx.options.seed, rows, time.perf_counter() - started, status="error", reason=reason)


def _function(test: str) -> Callable[[TestContext], TestResult]:
    module_name, _, name = REGISTRY[test].partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, name, None)
    if not callable(function):
        raise ModelTestError(f"{test} is not available in this version ({module_name} has no {name})")
    return function


def _import_reason(test: str, exc: ImportError) -> str:
    module = REGISTRY[test].partition(":")[0]
    if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
        return f"{test} is not available in this version (no module {module})"
    return f"{test} needs an optional package ({exc.name or exc}): {INSTALL_HINT}"
