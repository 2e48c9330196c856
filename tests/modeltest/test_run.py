"""The runner: data as arrays, the safe load, lazily registered tests, failures as ``status: error``."""

from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from mlwarden.datacheck.model import DataCheckError
from mlwarden.estimators import EstimatorError, subject_from_object
from mlwarden.modeltest import ModelTestError, ModelTestOptions, TestResult
from mlwarden.modeltest import run as runner
from mlwarden.modeltest.data import read_data
from mlwarden.modeltest.run import build_context, require_extras, run_model_tests, run_on_subject

from .digits import split


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A logistic regression on digits with string labels ("d0"…"d9"), its test CSV and training CSV."""
    root = tmp_path_factory.mktemp("run")
    x_train, y_train, x_test, y_test = split()
    model = LogisticRegression(max_iter=300).fit(x_train, np.char.add("d", y_train.astype(str)))
    with open(root / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    joblib.dump(model, root / "model.joblib")
    out = {"model": root / "model.pkl", "joblib": root / "model.joblib"}
    for name, x, y in (("test", x_test[:300], y_test[:300]), ("train", x_train[:300], y_train[:300])):
        frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(64)])
        frame["digit"] = np.char.add("d", y.astype(str))
        frame.to_csv(root / f"{name}.csv", index=False)
        out[name] = root / f"{name}.csv"
    return out


def test_run_model_tests_binds_the_report_to_the_model_and_data(files: dict[str, Path]) -> None:
    options = ModelTestOptions(tests=("robustness",), label="digit", eps=(0.1,), max_rows=100, seed=2)
    report = run_model_tests(files["model"], files["test"], options, train=files["train"], dynamic=False)
    assert report.model_digest == "sha256:" + _sha256(files["model"])
    assert report.framework == "sklearn"
    assert report.n_classes == 10
    assert report.test_data.sha256 == _sha256(files["test"])
    assert report.test_data.rows == 300
    assert report.train_data is not None
    assert report.train_data.rows == 300
    assert report.seed == 2
    robustness = report.test("robustness")
    assert robustness.status == "ok"
    assert robustness.rows == {"test": 100}
    assert robustness.metrics["clean_accuracy"]["rate"] > 0.85  # string labels were mapped through classes_
    document = report.to_dict()
    assert document["schema"] == "https://mlwarden.dev/model-test/v1"
    assert document["data"]["test"]["label"] == "digit"


def test_the_default_path_scans_in_the_sandbox_and_loads(files: dict[str, Path]) -> None:
    options = ModelTestOptions(tests=("robustness",), label="digit", eps=(0.1,), max_rows=50,
                               overrides={"robustness": {"attacks": ["gaussian_noise"]}})  # fmt: skip
    # dynamic=True. The joblib file: on 2026-12-05 the sandbox began refusing the plain-pickle copy of this model
    # (MLW-DYN-005: six.py's exec at import, reached while unpickling) — reported, not this module's to fix.
    report = run_model_tests(files["joblib"], files["test"], options)
    assert report.test("robustness").status == "ok"
    assert report.model_digest == "sha256:" + _sha256(files["joblib"])


def test_labels_the_model_does_not_know_are_refused(files: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(files["test"])
    frame["digit"] = frame["digit"].str.replace("d", "")  # "3" instead of "d3"
    frame.to_csv(tmp_path / "bare.csv", index=False)
    options = ModelTestOptions(tests=("robustness",), label="digit")
    with pytest.raises(EstimatorError, match="not one of the model's classes"):
        run_model_tests(files["model"], tmp_path / "bare.csv", options, dynamic=False)


def test_unlabelled_data_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelTestError, match="is one of them the label"):
        run_model_tests(files["model"], files["test"], ModelTestOptions(tests=("robustness",)), dynamic=False)
    np.save(tmp_path / "x.npy", np.zeros((5, 64)))
    with pytest.raises(ModelTestError, match="need the true labels"):
        run_model_tests(files["model"], tmp_path / "x.npy", ModelTestOptions(tests=("robustness",)), dynamic=False)


def test_a_missing_assess_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "art", None)  # `import art` now raises ImportError
    with pytest.raises(ModelTestError, match=r"pip install 'mlwarden\[assess\]'"):
        require_extras(("robustness",))
    require_extras(("fairness",))  # fairlearn is there


def _subject_and_data() -> tuple[Any, np.ndarray, np.ndarray]:
    x_train, y_train, x, y = split()
    model = LogisticRegression(max_iter=200).fit(x_train, y_train)
    return subject_from_object(model, x[:4]), x[:200], y[:200]


def test_a_missing_test_module_or_function_is_an_error_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runner.REGISTRY, "membership", "mlwarden.modeltest.not_written_yet:membership")
    monkeypatch.setitem(runner.REGISTRY, "fairness", "mlwarden.modeltest.robustness:no_such_function")
    subject, x, y = _subject_and_data()
    results = run_on_subject(subject, x, y, ModelTestOptions(tests=("membership", "fairness")))
    assert [(r.id, r.status) for r in results] == [("membership", "error"), ("fairness", "error")]
    assert "not available in this version (no module mlwarden.modeltest.not_written_yet)" in results[0].reason
    assert "has no no_such_function" in results[1].reason


def _raising(exc: BaseException) -> Any:
    def run(ctx: Any) -> TestResult:
        raise exc

    return run


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ValueError("bad shape"), "ValueError: bad shape"),
        (ModelTestError("needs --train"), "needs --train"),
        (RuntimeError("mat1 and mat2"), "RuntimeError: mat1 and mat2"),
        (ModuleNotFoundError("No module named 'fairlearn'", name="fairlearn"), "pip install 'mlwarden[assess]'"),
    ],
)
def test_an_exception_in_a_test_becomes_its_reason(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException, reason: str
) -> None:
    module = type(sys)("fake_modeltest")
    module.run = _raising(exc)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_modeltest", module)
    monkeypatch.setitem(runner.REGISTRY, "robustness", "fake_modeltest:run")
    subject, x, y = _subject_and_data()
    (result,) = run_on_subject(subject, x, y, ModelTestOptions(tests=("robustness",), seed=4))
    assert result.status == "error"
    assert reason in result.reason
    assert result.seed == 4
    assert result.rows == {"test": 200}


def test_a_test_returning_the_wrong_thing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = type(sys)("fake_modeltest")
    module.run = lambda ctx: TestResult("fairness", {}, 0, {}, 0.0)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_modeltest", module)
    monkeypatch.setitem(runner.REGISTRY, "robustness", "fake_modeltest:run")
    subject, x, y = _subject_and_data()
    (result,) = run_on_subject(subject, x, y, ModelTestOptions(tests=("robustness",)))
    assert result.status == "error"
    assert "not a robustness TestResult" in result.reason


def test_the_context_encodes_labels_and_takes_the_range_of_both_datasets() -> None:
    subject, x, y = _subject_and_data()
    x_train = np.full((5, 64), 2.0, dtype=np.float32)  # a training maximum above the test data's 1.0
    ctx = build_context(subject, x, y, ModelTestOptions(), x_train=x_train, y_train=y[:5].astype(str))
    assert ctx.clip_values == (0.0, 2.0)
    assert ctx.y_train.tolist() == y[:5].tolist()  # "3" is class 3
    assert build_context(subject, x, y, ModelTestOptions(), image=True).clip_values == (0.0, 1.0)
    with pytest.raises(ModelTestError, match="200 rows but 3 labels"):
        build_context(subject, x, y[:3], ModelTestOptions())


# --- reading the data ---------------------------------------------------------------------------------------------


def test_features_are_the_numeric_columns_a_numeric_sensitive_one_included(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "age": [30, 40, 50], "group": ["x", "y", "x"], "y": [0, 1, 0]})
    frame.drop(columns="group").to_csv(tmp_path / "n.csv", index=False)
    numeric = read_data(tmp_path / "n.csv", "y", "age")
    assert numeric.features == ("a", "age")
    assert numeric.sensitive.tolist() == [30, 40, 50]
    frame.to_csv(tmp_path / "d.csv", index=False)
    text = read_data(tmp_path / "d.csv", "y", "group")
    assert text.features == ("a", "age")  # "group" is only the grouping attribute
    assert text.sensitive.tolist() == ["x", "y", "x"]
    assert text.x.dtype == np.float32
    assert text.x.tolist() == [[1, 30], [2, 40], [3, 50]]
    assert text.sha256 == _sha256(tmp_path / "d.csv")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"a": [1.0, 2.0], "city": ["Leeds", "York"], "y": [0, 1]}), "city (categorical) are not numeric"),
        (pd.DataFrame({"a": [1.0, None], "y": [0, 1]}), "missing or non-numeric values in feature column(s) a"),
        (pd.DataFrame({"y": [0, 1]}), "no numeric feature columns"),
    ],
)
def test_tables_a_model_cannot_take_are_refused(tmp_path: Path, frame: pd.DataFrame, message: str) -> None:
    frame.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ModelTestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_data(tmp_path / "d.csv", "y")


def test_npz_and_a_missing_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(12, dtype=np.float64).reshape(6, 2), labels=np.array([0, 1] * 3))
    data = read_data(tmp_path / "d.npz", "labels")
    assert data.x.shape == (6, 2)
    assert data.y.tolist() == ["0", "1"] * 3
    with pytest.raises(DataCheckError, match="does not exist"):
        read_data(tmp_path / "nope.csv", "y")


def _image(path: Path, pixels: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode).save(path)


def test_image_folders_at_native_size_grey_or_colour(tmp_path: Path) -> None:
    grey = np.arange(48).reshape(6, 8) * 5
    _image(tmp_path / "grey" / "cat" / "a.png", grey, "L")
    _image(tmp_path / "grey" / "dog" / "b.png", 255 - grey, "L")
    data = read_data(tmp_path / "grey")
    assert data.image
    assert data.x.shape == (2, 1, 6, 8)  # (channels, height, width)
    np.testing.assert_allclose(data.x[0, 0], grey / 255, atol=1e-6)
    assert data.y.tolist() == ["cat", "dog"]

    colour = np.zeros((4, 4, 3))
    colour[..., 0] = 255
    _image(tmp_path / "rgb" / "red" / "a.png", colour, "RGB")
    assert read_data(tmp_path / "rgb").x.shape == (1, 3, 4, 4)

    _image(tmp_path / "rgb" / "red" / "b.png", np.zeros((5, 4, 3)), "RGB")
    with pytest.raises(ModelTestError, match="images must share one size"):
        read_data(tmp_path / "rgb")
    with pytest.raises(ModelTestError, match="sub-folder names"):
        read_data(tmp_path / "grey", "kind")
