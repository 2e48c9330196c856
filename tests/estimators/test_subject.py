"""The Subject adapter: models loaded only through the safe loader, as one classifier interface per framework."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression

from mlwarden.core.errors import UnsafeModelError
from mlwarden.estimators import EstimatorError, load_subject, subject_from_object

torch.set_num_threads(1)
RNG = np.random.default_rng(0)
X = RNG.uniform(0, 1, size=(40, 6)).astype(np.float32)


def _net(outputs: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, outputs)).eval()


def _softmax(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(torch.tensor(x)), dim=1).numpy()


def test_sklearn_through_joblib(tmp_path: Path) -> None:
    labels = np.where(X[:, 0] > 0.5, "dog", "cat")
    model = LogisticRegression().fit(X, labels)
    joblib.dump(model, tmp_path / "m.joblib")
    subject = load_subject(tmp_path / "m.joblib", X[:4], dynamic=False)
    assert subject.framework == "sklearn"
    assert subject.classes == ("cat", "dog")
    assert subject.differentiable  # ART has gradients for logistic regression
    np.testing.assert_allclose(subject.predict_proba(X), model.predict_proba(X))
    assert subject.encode(np.array(["dog", "cat", "dog"])).tolist() == [1, 0, 1]
    assert subject.digest.startswith("sha256:")
    loss = subject.loss(X[:3], np.array([0, 1, 0]))
    expected = -np.log(model.predict_proba(X[:3])[[0, 1, 2], [0, 1, 0]])
    np.testing.assert_allclose(loss, expected)


def test_torch_module_saved_with_torch_save(tmp_path: Path) -> None:
    net = _net()
    torch.save(net, tmp_path / "net.pt")
    subject = load_subject(tmp_path / "net.pt", X[:4], dynamic=False)
    assert (subject.framework, subject.n_classes, subject.input_shape) == ("torch", 3, (6,))
    assert subject.classes == (0, 1, 2)
    np.testing.assert_allclose(subject.predict_proba(X), _softmax(net, X), atol=1e-6)
    assert subject.differentiable
    assert isinstance(subject.torch_module(), torch.nn.Module)


def test_torchscript(tmp_path: Path) -> None:
    net = _net()
    torch.jit.save(torch.jit.script(net), tmp_path / "net.ts")
    subject = load_subject(tmp_path / "net.ts", X[:4], dynamic=False)
    assert subject.framework == "torch"
    np.testing.assert_allclose(subject.predict_proba(X), _softmax(net, X), atol=1e-6)


def test_onnx_exported_from_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="optional: onnxruntime")
    net = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, and needs no network
        torch.onnx.export(net, (torch.zeros(1, 6),), tmp_path / "net.onnx", input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)  # fmt: skip
    subject = load_subject(tmp_path / "net.onnx", X[:4], dynamic=False)
    assert (subject.framework, subject.n_classes) == ("onnx", 3)
    assert not subject.differentiable  # tested black box
    np.testing.assert_allclose(subject.predict_proba(X), _softmax(net, X), atol=1e-5)
    with pytest.raises(EstimatorError, match="needs a PyTorch model"):
        subject.torch_module()


@pytest.mark.parametrize("value", [1, 1.0, "1", np.int64(1), np.float32(1.0)])
def test_integer_labels_match_across_types(value: Any) -> None:
    subject = subject_from_object(_net(), X[:4])
    assert subject.encode(np.array([value], dtype=object)).tolist() == [1]


def test_unknown_labels_are_refused_with_the_row() -> None:
    subject = subject_from_object(_net(), X[:4])
    with pytest.raises(EstimatorError, match=r"label 7 \(row 1\) is not one of the model's classes"):
        subject.encode(np.array([0, 7]))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (LinearRegression().fit(X, X[:, 0]), "not a fitted scikit-learn classifier"),
        (_net(outputs=1), "a classifier returns (n, classes ≥ 2)"),
        (_net().state_dict(), "a state dict has no architecture"),
    ],
)
def test_what_is_not_a_classifier_is_refused(model: Any, message: str) -> None:
    with pytest.raises(EstimatorError, match=message.replace("(", r"\(").replace(")", r"\)")):
        subject_from_object(model, X[:4])


def test_a_state_dict_file_is_refused_after_a_safe_load(tmp_path: Path) -> None:
    torch.save(_net().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(EstimatorError, match="state dict has no architecture"):
        load_subject(tmp_path / "weights.pt", X[:4], dynamic=False)


def test_wrong_input_width_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EstimatorError, match="rejects data of shape"):
        subject_from_object(_net(), np.zeros((4, 5), dtype=np.float32))


class _Canary:
    """Unpickling calls ``os.system("touch CANARY")`` — it happens only if something loads the pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


class _CanaryOpen:
    """Unpickling calls ``open(CANARY, "w")``, creating the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("canary_class", [_Canary, _CanaryOpen])
@pytest.mark.parametrize("name", ["model.pkl", "model.joblib", "model.pt"])
def test_a_model_the_scanner_refuses_is_never_loaded(tmp_path: Path, canary_class: type, name: str) -> None:
    canary = tmp_path / "canary"
    (tmp_path / name).write_bytes(pickle.dumps(canary_class(canary)))
    with pytest.raises(UnsafeModelError):
        load_subject(tmp_path / name, X[:4], dynamic=False)
    assert not canary.exists()
    pickle.loads((tmp_path / name).read_bytes())  # control: the canary is live when something does load it
    assert canary.exists()
