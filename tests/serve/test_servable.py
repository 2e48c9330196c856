"""What the guard serves: each adapter answers like the original model after the safe-load round trip, and
nothing unsafe or unservable gets through."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch

from mlwarden.core.errors import UnsafeModelError, UsageError
from mlwarden.serve.servable import load_servable
from tests.serve.world import tabular_data


def _sklearn(path: Path) -> tuple[Path, object]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = tabular_data(500, 0)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    joblib.dump(model, path)
    return path, model


def test_sklearn_pipeline_round_trip(tmp_path: Path) -> None:
    path, model = _sklearn(tmp_path / "m.joblib")
    servable = load_servable(path)
    x = tabular_data(50, 1)[0]
    prediction = servable.predict(x)
    assert servable.input_kind == "tabular"
    assert servable.n_features == 8
    assert np.allclose(prediction.scores, model.predict_proba(x))  # type: ignore[attr-defined]
    assert prediction.labels == model.predict(x).tolist()  # type: ignore[attr-defined]
    fn = servable.predict_fn()
    assert fn is not None
    assert np.allclose(fn.predict_proba(x), prediction.scores)
    began = time.perf_counter()
    for row in x:
        servable.predict(row[None])
    per_row_ms = (time.perf_counter() - began) / len(x) * 1000
    assert per_row_ms < 50  # measured about 0.25 ms per single-row predict on the CI machine


def test_regressor_and_text_pipeline(tmp_path: Path) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline

    x, y = tabular_data(100, 2)
    joblib.dump(LinearRegression().fit(x, y.astype(float)), tmp_path / "r.joblib")
    regressor = load_servable(tmp_path / "r.joblib")
    assert regressor.predict(x[:3]).scores is None
    assert regressor.predict_fn() is None
    texts, labels = ["good", "bad", "very good", "very bad"], ["p", "n", "p", "n"]
    joblib.dump(make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, labels), tmp_path / "t.joblib")
    text = load_servable(tmp_path / "t.joblib")
    assert text.input_kind == "text"
    assert text.predict(["good", "bad"]).labels == ["p", "n"]
    assert text.predict_fn() is None


def test_torchscript_round_trip(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "m.pt"))
    servable = load_servable(tmp_path / "m.pt")
    x = tabular_data(20, 3)[0]
    with torch.no_grad():
        expected = torch.softmax(net(torch.tensor(x, dtype=torch.float32)), dim=1).numpy()
    assert servable.n_features == 8
    assert np.allclose(servable.predict(x).scores, expected, atol=1e-6)
    assert servable.predict_fn() is not None


def test_onnx_round_trip(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((8, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.zeros(3, np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    servable = load_servable(tmp_path / "m.onnx")
    x = tabular_data(10, 4)[0]
    logits = x.astype(np.float32) @ weights
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert servable.n_features == 8
    assert np.allclose(servable.predict(x).scores, expected, atol=1e-5)


class _Canary:
    """Unpickling it would create ``path`` (a harmless canary under the test's tmp dir)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Canary(canary), protocol=4))
    with pytest.raises(UnsafeModelError):
        load_servable(tmp_path / "evil.pkl")
    assert not canary.exists()


def test_what_cannot_be_served_is_named(tmp_path: Path) -> None:
    np.save(tmp_path / "weights.npy", np.zeros((4, 4)))
    with pytest.raises(UsageError, match="cannot be served"):
        load_servable(tmp_path / "weights.npy")
    with pytest.raises(UsageError):
        load_servable(tmp_path / "missing.joblib")
