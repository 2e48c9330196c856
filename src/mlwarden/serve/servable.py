"""What the guard serves: a loaded model behind one small interface, loaded only through the safe loader.

:class:`Servable` turns a request's rows (a float64 matrix, or texts) into a :class:`Prediction` — class labels
and, for classifiers, class probabilities — and offers the numeric probability function the adversarial and
extraction detectors query (:meth:`Servable.predict_fn`). Adapters: scikit-learn / joblib estimators and
pipelines (tabular or text), TorchScript modules, ONNX graphs through onnxruntime. :func:`load_servable` goes
through :func:`mlwarden.loader.load` and nothing else, so a model is never loaded unsafely to be served.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlwarden.core.errors import UsageError
from mlwarden.guard.model_api import PredictFn, SklearnModel, TorchModel
from mlwarden.serve.fastpath import compile_proba

InputKind = Literal["tabular", "text"]
Output = Literal["logits", "probabilities", "regression"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """The model's answer for a batch.

    Attributes:
        labels: one JSON-able value per row (the predicted class, or the regression value).
        scores: class probabilities ``(n, k)`` for classifiers that have them, else ``None``.
        classes: the class labels in score column order.
    """

    labels: list[Any]
    scores: np.ndarray | None
    classes: tuple[Any, ...] | None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class Servable(ABC):
    """A loaded model, ready to serve (see the module docstring)."""

    framework: str = ""
    input_kind: InputKind = "tabular"
    n_features: int | None = None
    feature_names: tuple[str, ...] | None = None
    classes: tuple[Any, ...] | None = None

    @abstractmethod
    def predict(self, x: np.ndarray | list[str]) -> Prediction:
        """Predict a batch: a float64 ``(n, d)`` array (tabular) or a list of texts."""

    def predict_fn(self) -> PredictFn | None:
        """The numeric probability function for the detectors (``None``: text models, regressors)."""
        return None

    def proba_fns(self) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]] | None:
        """What :meth:`predict_fn` computes on a validated ``(n, d)`` batch, as (cached, uncached) functions.

        The cached one shares results with :meth:`predict` (a request's own rows); the uncached one is for rows
        asked once (the detectors' squeezed and noisy copies). ``None``: the detectors query :meth:`predict_fn`.
        """
        return None


class SklearnServable(Servable):
    """A scikit-learn estimator or pipeline (classifier with or without ``predict_proba``, regressor)."""

    framework = "sklearn"

    def __init__(self, estimator: Any, input_kind: InputKind | None = None) -> None:
        if not callable(getattr(estimator, "predict", None)):
            raise UsageError(f"{type(estimator).__name__} has no predict(); it cannot be served")
        self.estimator = estimator
        self.input_kind = input_kind or _sklearn_kind(estimator)
        n = getattr(estimator, "n_features_in_", None)
        self.n_features = int(n) if n is not None and self.input_kind == "tabular" else None
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names = tuple(str(v) for v in names) if names is not None else None
        classes = getattr(estimator, "classes_", None)
        self.classes = tuple(_plain(c) for c in classes) if classes is not None else None
        self._proba = callable(getattr(estimator, "predict_proba", None)) and self.classes is not None
        self._fast = compile_proba(estimator, self.n_features) if self._proba and self.input_kind == "tabular" else None
        self._memo = RowMemo(self._raw_proba) if self._proba and self.input_kind == "tabular" else None

    def _raw_proba(self, x: Any) -> np.ndarray:
        if self._fast is not None:
            return self._fast(np.asarray(x, dtype=np.float64))
        import sklearn

        # The guard has already refused non-finite input; sklearn's own finiteness scan is then wasted time.
        with sklearn.config_context(assume_finite=True):
            return np.asarray(self.estimator.predict_proba(x), dtype=np.float64)

    def predict(self, x: np.ndarray | list[str]) -> Prediction:  # noqa: D102 - documented on Servable
        if self._proba:
            scores = self._memo(x) if self._memo is not None else self._raw_proba(x)
            if not (self.classes is not None):
                raise RuntimeError("internal invariant broken: self.classes is not None")
            labels = [self.classes[i] for i in scores.argmax(axis=1)]
            return Prediction(labels, scores, self.classes)
        return Prediction([_plain(v) for v in np.asarray(self.estimator.predict(x)).tolist()], None, self.classes)

    def predict_fn(self) -> PredictFn | None:  # noqa: D102 - documented on Servable
        if not self._proba or self.input_kind != "tabular":
            return None
        if not (self._memo is not None):
            raise RuntimeError("internal invariant broken: self._memo is not None")
        # A bare linear model keeps its coefficients (the analytic gradient); a pipeline is query-only.
        return SklearnModel(_Queried(self.estimator, self._memo, linear=not hasattr(self.estimator, "steps")))

    def proba_fns(self) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]] | None:  # noqa: D102
        if self._memo is None:
            return None
        return self._memo, self._raw_proba


class _Queried:
    """The estimator as the detectors see it: ``predict_proba`` through the row memo.

    A bare linear model also keeps its ``coef_`` and ``intercept_``, which the analytic gradient needs.
    """

    def __init__(self, estimator: Any, memo: RowMemo, *, linear: bool) -> None:
        self.predict_proba = memo
        self.classes_ = getattr(estimator, "classes_", None)
        if linear and hasattr(estimator, "coef_") and hasattr(estimator, "intercept_"):
            self.coef_ = estimator.coef_
            self.intercept_ = estimator.intercept_


class RowMemo:
    """Class probabilities of the rows seen last, so one request's answer and its detectors share model calls.

    The adversarial detectors query the model on the request's own rows before the model answers it; with the
    memo, those rows cost one call, not one per detector. Bounded (``size`` rows, least recent evicted); keyed by
    the rows' bytes, so only identical inputs share a result.
    """

    def __init__(self, fn: Callable[[Any], np.ndarray], size: int = 512) -> None:
        self._fn = fn
        self._size = size
        self._rows: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, x: Any) -> np.ndarray:
        """Probabilities of each row of ``x``, calling the model once for the rows not remembered."""
        batch = np.ascontiguousarray(x, dtype=np.float64)
        if batch.ndim != 2:
            return self._fn(batch)
        keys = [row.tobytes() for row in batch]
        with self._lock:
            found = [self._rows.get(k) for k in keys]
        missing = [i for i, hit in enumerate(found) if hit is None]
        if missing:
            fresh = self._fn(batch[missing])
            with self._lock:
                for i, row in zip(missing, fresh, strict=True):
                    found[i] = row
                    self._rows[keys[i]] = row
                while len(self._rows) > self._size:
                    self._rows.popitem(last=False)
        return np.vstack(found)  # type: ignore[arg-type]


def _sklearn_kind(estimator: Any) -> InputKind:
    first = estimator.steps[0][1] if hasattr(estimator, "steps") else estimator
    text_like = ("TfidfVectorizer", "CountVectorizer", "HashingVectorizer")
    return "text" if type(first).__name__ in text_like else "tabular"


class TorchServable(Servable):
    """A TorchScript (or eager) module taking a float32 ``(n, d)`` batch."""

    framework = "torch"

    def __init__(
        self,
        module: Any,
        *,
        output: Output = "logits",
        classes: Sequence[Any] | None = None,
        n_features: int | None = None,
    ) -> None:
        import torch

        self.module = module.eval()
        self.output = output
        self._torch = torch
        self.n_features = n_features if n_features is not None else _first_in_features(module)
        self.classes = tuple(classes) if classes is not None else None
        self._adapter = TorchModel(module, logits=output == "logits") if output != "regression" else None

    def predict(self, x: np.ndarray | list[str]) -> Prediction:  # noqa: D102 - documented on Servable
        batch = np.asarray(x, dtype=np.float64)
        if self._adapter is None:
            with self._torch.no_grad():
                out = self.module(self._torch.as_tensor(batch, dtype=self._torch.float32))
            values = out.double().numpy().reshape(batch.shape[0], -1)
            return Prediction([v[0] if v.size == 1 else v.tolist() for v in values], None, None)
        scores = self._adapter.predict_proba(batch)
        classes = self.classes or tuple(range(scores.shape[1]))
        if len(classes) != scores.shape[1]:
            raise UsageError(f"the model returns {scores.shape[1]} scores but {len(classes)} classes were declared")
        self.classes = classes
        return Prediction([classes[i] for i in scores.argmax(axis=1)], scores, classes)

    def predict_fn(self) -> PredictFn | None:  # noqa: D102 - documented on Servable
        return self._adapter


def _first_in_features(module: Any) -> int | None:
    for sub in module.modules():
        n = getattr(sub, "in_features", None)
        if isinstance(n, int):
            return n
    return None


class OnnxServable(Servable):
    """An ONNX graph run by onnxruntime (CPU, one intra-op thread), one float input tensor."""

    framework = "onnx"

    def __init__(self, model_bytes: bytes, *, output: Output = "logits", classes: Sequence[Any] | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise UsageError(f"the ONNX graph takes {len(inputs)} inputs; the guard serves single-input graphs")
        self._input = inputs[0].name
        shape = inputs[0].shape
        self.n_features = shape[-1] if len(shape) == 2 and isinstance(shape[-1], int) else None
        outputs = self.session.get_outputs()
        named = [o for o in outputs if "prob" in o.name.lower()]
        self._output = (named or outputs)[0].name
        self.output: Output = "probabilities" if named else output
        self.classes = tuple(classes) if classes is not None else None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax of the output when it holds logits)."""
        (out,) = self.session.run([self._output], {self._input: np.asarray(x, dtype=np.float32)})
        values = np.asarray(out, dtype=np.float64).reshape(len(x), -1)
        if self.output == "logits":
            values = np.exp(values - values.max(axis=1, keepdims=True))
            values /= values.sum(axis=1, keepdims=True)
        return values

    def predict(self, x: np.ndarray | list[str]) -> Prediction:  # noqa: D102 - documented on Servable
        batch = np.asarray(x, dtype=np.float64)
        if self.output == "regression":
            (out,) = self.session.run([self._output], {self._input: batch.astype(np.float32)})
            return Prediction(np.asarray(out, dtype=np.float64).reshape(len(batch), -1)[:, 0].tolist(), None, None)
        scores = self.predict_proba(batch)
        classes = self.classes or tuple(range(scores.shape[1]))
        self.classes = classes
        return Prediction([classes[i] for i in scores.argmax(axis=1)], scores, classes)

    def predict_fn(self) -> PredictFn | None:  # noqa: D102 - documented on Servable
        return self if self.output != "regression" else None


def load_servable(
    path: str | os.PathLike[str],
    *,
    framework: str | None = None,
    policy: Any = None,
    dynamic: bool = False,
    input_kind: InputKind | None = None,
    output: Output = "logits",
    classes: Sequence[Any] | None = None,
) -> Servable:
    """Load ``path`` through the safe loader and wrap it for serving.

    Raises:
        UnsafeModelError: the analysis or the restricted unpickler refused the model.
        UsageError: no such file, or what was loaded cannot be served (a state dict, a GGUF file...).
    """
    from mlwarden.loader import load

    loaded = load(Path(path), framework, policy, dynamic=dynamic)
    kind = type(loaded).__module__.split(".")[0]
    if kind == "sklearn" or (callable(getattr(loaded, "predict", None)) and hasattr(loaded, "fit")):
        return SklearnServable(loaded, input_kind)
    if kind == "torch" and callable(getattr(loaded, "forward", None)):
        return TorchServable(loaded, output=output, classes=classes)
    if kind == "onnx" and hasattr(loaded, "SerializeToString"):
        return OnnxServable(loaded.SerializeToString(), output=output, classes=classes)
    raise UsageError(
        f"{Path(path).name} loaded as a {type(loaded).__module__}.{type(loaded).__name__}, which cannot be served: "
        "the guard serves scikit-learn estimators, TorchScript modules and ONNX graphs"
    )
