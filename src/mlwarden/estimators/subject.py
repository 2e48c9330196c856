"""The :class:`Subject`: a loaded classifier with probabilities, labels, losses and an ART estimator.

Frameworks and what the tests get from them:

============  ================================================  ============================================
framework     loaded as (by ``mlwarden.load``)                   ART estimator
============  ================================================  ============================================
``sklearn``   an estimator with ``predict_proba``/``predict``   ``SklearnClassifier`` (white box for the
                                                                linear models and SVC ART has gradients for)
``torch``     a ``torch.nn.Module`` or TorchScript module       ``PyTorchClassifier`` (white box, CPU)
``onnx``      an ``onnx.ModelProto``, run with onnxruntime      ``BlackBoxClassifier``
``keras``     a Keras model                                     ``BlackBoxClassifier``
============  ================================================  ============================================

A model's classes are indices ``0 … n_classes-1``; :meth:`Subject.encode` maps the data's labels onto them
(through ``classes_`` for scikit-learn, as integers otherwise) and refuses labels the model does not know.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlwarden.core.errors import UsageError
from mlwarden.estimators._art import import_art

import_art()  # before any `art` import: ART resets logging at import (mlwarden.estimators._art)

FRAMEWORKS = ("sklearn", "torch", "onnx", "keras")
#: Rows per prediction call by framework: scikit-learn pays a fixed cost per call (a forest's ~3 ms), so it gets
#: large batches; networks get batches whose activations stay small.
BATCH = {"sklearn": 65_536, "onnx": 4096, "torch": 1024, "keras": 256}
#: Probabilities below this are clipped before a logarithm (losses stay finite).
EPS = 1e-12


class EstimatorError(UsageError):
    """The model cannot be tested as asked: not a classifier, wrong input shape, unknown labels."""


@dataclass(slots=True)
class Subject:
    """A classifier under test.

    Attributes:
        framework: one of :data:`FRAMEWORKS`.
        model: the loaded object (for onnx, the ``onnxruntime.InferenceSession``).
        n_classes: number of output classes.
        input_shape: the shape of one sample (without the batch dimension).
        path: where it was loaded from (``<memory>`` for an object given directly).
        digest: ``sha256:<hex>`` of the model's bytes (empty for an object given directly).
        classes: the model's class labels in output order (scikit-learn's ``classes_``; ``0 … n-1`` otherwise).
        batch_size: rows per prediction call (0: the framework's default, :data:`BATCH`).
    """

    framework: str
    model: Any
    n_classes: int
    input_shape: tuple[int, ...]
    path: str = "<memory>"
    digest: str = ""
    classes: tuple[Any, ...] = ()
    batch_size: int = 0
    _predict: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    @property
    def differentiable(self) -> bool:
        """Whether ART can compute loss gradients for it (white-box attacks, MIFace, Neural Cleanse)."""
        if self.framework == "torch":
            return True
        if self.framework == "sklearn":
            from art.estimators.classification.scikitlearn import ScikitlearnLogisticRegression, ScikitlearnSVC

            return isinstance(self.art_classifier(), ScikitlearnLogisticRegression | ScikitlearnSVC)
        return False

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, ``(len(x), n_classes)`` float64, computed in batches of :attr:`batch_size`."""
        x = np.asarray(x)
        if len(x) == 0:
            return np.zeros((0, self.n_classes))
        fn = self._predict or _predictor(self.framework, self.model, self.n_classes)
        self._predict = fn
        step = self.batch_size or BATCH.get(self.framework, 256)
        parts = [fn(x[i : i + step]) for i in range(0, len(x), step)]
        out = np.concatenate(parts).astype(np.float64, copy=False)
        if out.ndim != 2 or out.shape[1] != self.n_classes:
            raise EstimatorError(f"the model returned shape {out.shape}, expected (n, {self.n_classes})")
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class indices."""
        return self.predict_proba(x).argmax(axis=1)

    def loss(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-sample cross-entropy ``-log p(y|x)`` (``y`` as class indices)."""
        p = self.predict_proba(x)
        return -np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """The data's labels as the model's class indices.

        Raises:
            EstimatorError: a label the model has no output for.
        """
        labels = np.asarray(labels)
        index = {_key(c): i for i, c in enumerate(self.classes)}
        out = np.empty(len(labels), dtype=np.int64)
        for i, value in enumerate(labels.tolist()):
            hit = index.get(_key(value))
            if hit is None:
                known = ", ".join(map(str, self.classes[:10]))
                raise EstimatorError(f"label {value!r} (row {i}) is not one of the model's classes ({known})")
            out[i] = hit
        return out

    def art_classifier(self, clip_values: tuple[float, float] | None = None) -> Any:
        """The Adversarial Robustness Toolbox estimator for this model (a new one per call)."""
        if self.framework == "torch":
            import torch
            from art.estimators.classification import PyTorchClassifier

            return PyTorchClassifier(
                model=self.model,
                loss=torch.nn.CrossEntropyLoss(),
                input_shape=self.input_shape,
                nb_classes=self.n_classes,
                clip_values=clip_values,
                device_type="cpu",
            )
        if self.framework == "sklearn":
            from art.estimators.classification import SklearnClassifier

            return SklearnClassifier(model=self.model, clip_values=clip_values)
        from art.estimators.classification import BlackBoxClassifier

        return BlackBoxClassifier(
            predict_fn=self.predict_proba,
            input_shape=self.input_shape,
            nb_classes=self.n_classes,
            clip_values=clip_values,
        )

    def torch_module(self) -> Any:
        """The ``torch.nn.Module`` (for activations and gradients).

        Raises:
            EstimatorError: not a PyTorch model.
        """
        if self.framework != "torch":
            raise EstimatorError(f"this needs a PyTorch model; the model is {self.framework}")
        return self.model


def _key(value: Any) -> Any:
    """Labels compare by value across types: ``1``, ``1.0``, ``"1"`` and ``np.int64(1)`` are one class."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | float | np.integer | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _softmax_if_needed(out: np.ndarray) -> np.ndarray:
    """Outputs that already are probabilities are kept; logits go through a softmax."""
    if out.ndim == 2 and np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        return out
    shifted = out - out.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _predictor(framework: str, model: Any, n_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    if framework == "sklearn":
        return _sklearn_predictor(model, n_classes)
    if framework == "torch":
        import torch

        def torch_predict(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = model(torch.as_tensor(np.asarray(x, dtype=np.float32)))
            return _softmax_if_needed(out.detach().cpu().numpy().astype(np.float64))

        return torch_predict
    if framework == "onnx":
        return _onnx_predictor(model, n_classes)
    if framework == "keras":
        return lambda x: _softmax_if_needed(np.asarray(model.predict(np.asarray(x, np.float32), verbose=0), np.float64))
    raise EstimatorError(f"unknown framework {framework!r}")


def _sklearn_predictor(model: Any, n_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    if hasattr(model, "predict_proba"):
        return lambda x: np.asarray(model.predict_proba(x), dtype=np.float64)
    classes = list(model.classes_)

    def hard(x: np.ndarray) -> np.ndarray:
        # No probabilities: the prediction as a one-hot vector (confidence-based attacks then see 0/1 only).
        out = np.zeros((len(x), n_classes))
        out[np.arange(len(x)), [classes.index(p) for p in model.predict(x)]] = 1.0
        return out

    return hard


def _onnx_predictor(session: Any, n_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise EstimatorError(f"the ONNX model has {len(inputs)} inputs; model tests need one input tensor")
    name = inputs[0].name
    dtype = np.float64 if "double" in inputs[0].type else np.float32

    def run(x: np.ndarray) -> np.ndarray:
        outputs = session.run(None, {name: np.asarray(x, dtype=dtype)})
        for out in outputs:  # a probability tensor, or scikit-learn-onnx's list of {class: probability}
            if isinstance(out, list) and out and isinstance(out[0], dict):
                keys = sorted(out[0])
                return np.array([[row[k] for k in keys] for row in out], dtype=np.float64)
            arr = np.asarray(out)
            if arr.ndim == 2 and arr.shape[1] == n_classes and arr.dtype.kind == "f":
                return _softmax_if_needed(arr.astype(np.float64))
        raise EstimatorError(f"no ONNX output has shape (n, {n_classes}) floats (class scores)")

    return run


def subject_from_object(
    model: Any, sample: np.ndarray, *, path: str = "<memory>", digest: str = "", batch_size: int = 0
) -> Subject:
    """Wrap an already loaded model; ``sample`` (a few rows of the test data) fixes shapes and class count.

    Raises:
        EstimatorError: not a classifier mlwarden can test, or it rejects the sample.
    """
    sample = np.asarray(sample)
    if sample.ndim < 2 or len(sample) == 0:
        raise EstimatorError("the data must have at least one row and one feature")
    shape = tuple(int(d) for d in sample.shape[1:])
    framework = _framework_of(model)
    if framework == "sklearn":
        if not hasattr(model, "classes_"):
            raise EstimatorError(f"{type(model).__name__} is not a fitted scikit-learn classifier (no classes_)")
        classes = tuple(model.classes_.tolist())
        subject = Subject("sklearn", model, len(classes), shape, path, digest, classes, batch_size)
    elif framework == "onnx":
        subject = _onnx_subject(model, sample, shape, path, digest, batch_size)
    else:
        if framework == "torch":
            model.eval()
        probe = Subject(framework, model, 0, shape, path, digest, (), batch_size)
        out = _call_raw(framework, model, sample[:2])
        if out.ndim != 2 or out.shape[1] < 2:
            raise EstimatorError(f"the model's output has shape {out.shape}; a classifier returns (n, classes ≥ 2)")
        probe.n_classes = int(out.shape[1])
        probe.classes = tuple(range(probe.n_classes))
        subject = probe
    subject.predict_proba(sample[:2])  # fail here, with a clear error, not in the middle of a test
    return subject


def _call_raw(framework: str, model: Any, x: np.ndarray) -> np.ndarray:
    try:
        if framework == "torch":
            import torch

            with torch.no_grad():
                return np.asarray(model(torch.as_tensor(np.asarray(x, dtype=np.float32))).detach().cpu().numpy())
        return np.asarray(model.predict(np.asarray(x, np.float32), verbose=0))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise EstimatorError(f"the model rejects data of shape {x.shape}: {str(exc)[:300]}") from None


def _onnx_subject(proto: Any, sample: np.ndarray, shape: tuple[int, ...], path: str, digest: str, bs: int) -> Subject:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EstimatorError("testing ONNX models needs onnxruntime: pip install 'mlwarden[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for invalid graphs
        raise EstimatorError(f"onnxruntime cannot run the model: {str(exc)[:300]}") from None
    try:
        outputs = session.run(None, {session.get_inputs()[0].name: np.asarray(sample[:2], dtype=np.float32)})
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors (wrong shape, wrong type) are untyped
        raise EstimatorError(f"the ONNX model rejects data of shape {sample.shape}: {str(exc)[:300]}") from None
    for out in outputs:  # the class count: the width of the first class-score output
        if isinstance(out, list) and out and isinstance(out[0], dict):
            classes = tuple(sorted(out[0]))
            return Subject("onnx", session, len(classes), shape, path, digest, classes, bs)
        arr = np.asarray(out)
        if arr.ndim == 2 and arr.shape[1] >= 2 and arr.dtype.kind == "f":
            return Subject("onnx", session, int(arr.shape[1]), shape, path, digest, tuple(range(arr.shape[1])), bs)
    raise EstimatorError("no ONNX output looks like class scores (a 2-D float tensor or a list of class maps)")


def _framework_of(model: Any) -> str:
    module = type(model).__module__
    if module.startswith("onnx"):
        return "onnx"
    if module.startswith(("keras", "tf_keras", "tensorflow")):
        return "keras"
    try:
        import torch

        if isinstance(model, torch.nn.Module | torch.jit.ScriptModule):
            return "torch"
    except ImportError:
        pass
    if hasattr(model, "fit") and (hasattr(model, "predict_proba") or hasattr(model, "predict")):
        return "sklearn"
    raise EstimatorError(
        f"a {type(model).__module__}.{type(model).__name__} is not a classifier mlwarden can test "
        f"(scikit-learn, PyTorch modules, ONNX or Keras; a state dict has no architecture)"
    )


def load_subject(
    path: Path | str,
    sample: np.ndarray,
    *,
    policy: Any = None,
    dynamic: bool = True,
    framework: str | None = None,
    batch_size: int = 0,
) -> Subject:
    """Scan and load the model at ``path`` with :func:`mlwarden.load`, then wrap it (see :func:`subject_from_object`).

    Raises:
        UnsafeModelError: the analysis refused the model (nothing was loaded).
        SandboxUnavailable: ``dynamic`` and no sandbox.
        EstimatorError: loaded, but not a classifier mlwarden can test on this data.
    """
    from mlwarden.integrity.hashing import hash_model
    from mlwarden.loader import load

    digest = hash_model(Path(path)).digest
    model = load(path, framework, policy, dynamic=dynamic)
    return subject_from_object(model, sample, path=str(path), digest=f"sha256:{digest}", batch_size=batch_size)
