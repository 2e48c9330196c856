"""The smallest model interface the guard's detectors need: batch class probabilities, optionally input gradients.

Detectors such as feature squeezing (Xu et al., 2018) only query the model, so any object with
``predict_proba`` will do (:class:`PredictFn`). Gradient-based scores need more, so differentiable adapters
also expose ``gradient`` (:class:`DifferentiableFn`). Two adapters cover the frameworks the guard serves first:
:class:`SklearnModel` and :class:`TorchModel` (torch is imported lazily, only when that adapter is used).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from mlwarden.core.errors import UsageError


@runtime_checkable
class PredictFn(Protocol):
    """Anything that maps a batch of inputs ``(n, ...)`` to class probabilities ``(n, k)``."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for each row of ``x``; rows sum to one."""
        ...


@runtime_checkable
class DifferentiableFn(PredictFn, Protocol):
    """A model whose loss can be differentiated with respect to its input."""

    def gradient(self, x: np.ndarray, label: np.ndarray) -> np.ndarray:
        """Gradient of the cross-entropy loss at ``label`` (a column index of ``predict_proba``) w.r.t. ``x``."""
        ...


def as_batch(x: np.ndarray, *, name: str = "x") -> np.ndarray:
    """Return ``x`` as a finite float64 array with a leading batch axis, or raise :class:`UsageError`.

    Why: detectors run on untrusted request data; NaN/inf or an empty batch must be a clear refusal rather than
    a silently meaningless score.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise UsageError(f"{name} must be a non-empty batch of shape (n, ...), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise UsageError(f"{name} contains NaN or infinite values")
    return arr


def is_differentiable(model: object) -> bool:
    """True when ``model`` offers an input gradient (and, for the adapters here, was declared differentiable)."""
    return isinstance(model, DifferentiableFn) and bool(getattr(model, "differentiable", True))


def _labels(label: np.ndarray | int, n: int) -> np.ndarray:
    lab = np.asarray(label, dtype=np.int64).reshape(-1)
    if lab.size == 1 and n > 1:
        lab = np.full(n, int(lab[0]), dtype=np.int64)
    if lab.shape != (n,):
        raise UsageError(f"label must be one integer per row ({n}), got shape {lab.shape}")
    return lab


class SklearnModel:
    """Adapter for a fitted scikit-learn classifier with ``predict_proba``.

    ``gradient`` is analytic for linear softmax/logistic models (``coef_`` and ``intercept_``, e.g.
    ``LogisticRegression``): for a softmax over ``W x + b`` the cross-entropy gradient is ``Wᵀ (p − onehot)``.
    Other estimators are query-only (``differentiable`` is False).
    """

    def __init__(self, estimator: Any) -> None:
        if not callable(getattr(estimator, "predict_proba", None)):
            raise UsageError(f"{type(estimator).__name__} has no predict_proba; the guard needs class probabilities")
        self.estimator = estimator
        coef = getattr(estimator, "coef_", None)
        self.differentiable = coef is not None and getattr(estimator, "intercept_", None) is not None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities from the estimator, as float64 ``(n, k)``."""
        batch = as_batch(x)
        return np.asarray(self.estimator.predict_proba(batch.reshape(batch.shape[0], -1)), dtype=np.float64)

    def gradient(self, x: np.ndarray, label: np.ndarray) -> np.ndarray:
        """Analytic input gradient of the cross-entropy loss for a linear model (raises otherwise)."""
        if not self.differentiable:
            raise UsageError(f"{type(self.estimator).__name__} is not a linear model; no analytic input gradient")
        batch = as_batch(x)
        flat = batch.reshape(batch.shape[0], -1)
        lab = _labels(label, flat.shape[0])
        coef = np.asarray(self.estimator.coef_, dtype=np.float64)
        proba = self.predict_proba(flat)
        if lab.min() < 0 or lab.max() >= proba.shape[1]:
            raise UsageError(f"label must be a column index of predict_proba (0..{proba.shape[1] - 1})")
        idx = lab
        if coef.shape[0] == 1:  # binary logistic: p(class 1) = sigmoid(w·x + b)
            residual = proba[:, 1] - (idx == 1)
            grad = residual[:, None] * coef[0][None, :]
        else:
            onehot = np.zeros_like(proba)
            onehot[np.arange(flat.shape[0]), idx] = 1.0
            grad = (proba - onehot) @ coef
        return grad.reshape(batch.shape)


class TorchModel:
    """Adapter for a ``torch.nn.Module`` returning logits (or probabilities with ``logits=False``).

    Args:
        module: the network; put in eval mode by the adapter.
        differentiable: set False to forbid gradient queries (e.g. a model with non-differentiable
            preprocessing); gradient-based detectors then refuse it.
        logits: whether the module returns logits (softmax is applied) or probabilities already.
    """

    def __init__(self, module: Any, *, differentiable: bool = True, logits: bool = True) -> None:
        import torch  # lazily: only deployments serving torch models need it

        if not isinstance(module, torch.nn.Module):
            raise UsageError(f"TorchModel needs a torch.nn.Module, got {type(module).__name__}")
        self.module = module.eval()
        self.differentiable = differentiable
        self.logits = logits
        self._torch = torch
        params = list(module.parameters())
        self._dtype = params[0].dtype if params else torch.float32

    def _log_proba(self, xt: Any) -> Any:
        out = self.module(xt)
        torch = self._torch
        return torch.log_softmax(out, dim=-1) if self.logits else torch.log(out.clamp_min(1e-12))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities as float64 ``(n, k)``."""
        torch = self._torch
        with torch.no_grad():
            xt = torch.as_tensor(as_batch(x), dtype=self._dtype)
            return self._log_proba(xt).exp().double().numpy()

    def gradient(self, x: np.ndarray, label: np.ndarray) -> np.ndarray:
        """Input gradient of the per-example cross-entropy loss at ``label`` (autograd)."""
        if not self.differentiable:
            raise UsageError("this TorchModel was declared non-differentiable")
        torch = self._torch
        batch = as_batch(x)
        lab = torch.as_tensor(_labels(label, batch.shape[0]))
        xt = torch.as_tensor(batch, dtype=self._dtype).requires_grad_(True)
        loss = torch.nn.functional.nll_loss(self._log_proba(xt), lab, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xt)
        return grad.double().numpy()
