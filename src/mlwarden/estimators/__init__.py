"""A model under test: loaded only through :func:`mlwarden.load`, with one interface over its framework.

Model tests and the backdoor data check never load a model themselves: :func:`load_subject` scans the file
(statically and, by default, in the sandbox), loads it with the safe loader and wraps what came back —
a scikit-learn estimator, a ``torch.nn.Module`` (a pickled module of ``torch.nn`` classes, or TorchScript), an
ONNX graph (run with onnxruntime, black box) or a Keras model (black box) — in a :class:`Subject` that predicts
probabilities and builds the matching Adversarial Robustness Toolbox estimator.
"""

from __future__ import annotations

from mlwarden.estimators.subject import FRAMEWORKS, EstimatorError, Subject, load_subject, subject_from_object

__all__ = ["FRAMEWORKS", "EstimatorError", "Subject", "load_subject", "subject_from_object"]
