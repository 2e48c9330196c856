"""Adversarial-input detectors: feature squeezing, perturbation/ensemble disagreement and input-gradient norm.

Each detector maps a batch of inputs to one score per row (higher = more suspicious) and flags rows whose
score exceeds a threshold. Thresholds are never guessed: :meth:`Detector.calibrate` sets them from clean
reference data at a target false-positive rate (the ``1 - fpr`` quantile of clean scores), so the operator
chooses the cost of false alarms and the detection rate follows. Every decision is an
:class:`AdversarialScore` carrying the score, the threshold and the detector-specific evidence.

Methods:
- :class:`FeatureSqueezing` — Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
  Neural Networks" (NDSS 2018): adversarial perturbations live in bits a squeezed input no longer has, so the
  prediction moves (L1 distance between probability vectors) when the input is squeezed; max over squeezers.
- :class:`NoiseDisagreement` — adversarial examples sit close to a decision boundary, so small random noise
  (and independent models) disagree with the prediction more than on clean inputs (cf. Hu et al., 2019;
  Roth et al., "The Odds are Odd", ICML 2019); scored as mean KL divergence or as the fraction of flips.
- :class:`GradientNorm` — gradient-based attacks (FGSM, PGD) move inputs to where the loss is steep; the
  input-gradient norm of the loss at the predicted label is larger there than on confident clean inputs.
- :class:`CombinedDetector` — flags when any member is far above its own clean scale, calibrated as a whole.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
from scipy import ndimage

from mlwarden.core.errors import UsageError
from mlwarden.guard.model_api import PredictFn, as_batch, is_differentiable

_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class AdversarialScore:
    """The evidence for one input: which detector, its score, the calibrated threshold and the decision.

    ``detail`` holds detector-specific figures (e.g. the L1 distance per squeezer, the flip rate under noise).
    """

    detector: str
    score: float
    threshold: float
    flagged: bool
    detail: Mapping[str, float | str]


def _check_fpr(fpr: float, n: int) -> None:
    if not 0.0 < fpr < 1.0:
        raise UsageError(f"fpr must be in (0, 1), got {fpr}")
    if n * fpr < 1.0:
        raise UsageError(f"calibrating at fpr={fpr} needs at least {math.ceil(1 / fpr)} clean samples, got {n}")


def _quantile_threshold(clean_scores: np.ndarray, fpr: float) -> float:
    """The ``1 - fpr`` empirical quantile (an observed score), so that at most ``fpr`` of clean scores exceed it."""
    return float(np.quantile(clean_scores, 1.0 - fpr, method="higher"))


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q) for probability matrices."""
    p = np.clip(p, _EPS, 1.0)
    q = np.clip(q, _EPS, 1.0)
    return np.asarray(np.sum(p * (np.log(p) - np.log(q)), axis=1))


class Detector(ABC):
    """One adversarial-input detector with a threshold calibrated on clean data.

    Subclasses implement :meth:`_score`; this class owns calibration and the decision.
    """

    name: str = "detector"

    def __init__(self, threshold: float | None = None) -> None:
        if threshold is not None and not math.isfinite(threshold):
            raise UsageError(f"{self.name}: threshold must be finite, got {threshold}")
        self._threshold = threshold

    @abstractmethod
    def _score(self, x: np.ndarray) -> tuple[np.ndarray, list[dict[str, float | str]]]:
        """Per-row scores (higher = more suspicious) and per-row evidence, for a validated batch."""

    @property
    def threshold(self) -> float:
        """The calibrated (or configured) threshold; raises :class:`UsageError` before calibration."""
        if self._threshold is None:
            raise UsageError(f"{self.name}: not calibrated; call calibrate(clean_x) or pass threshold=")
        return self._threshold

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Raw per-row scores for a batch (no threshold needed)."""
        return self._score(as_batch(x))[0]

    def calibrate(self, clean_x: np.ndarray, fpr: float = 0.05) -> float:
        """Set the threshold so that a fraction ``fpr`` of ``clean_x`` would be flagged; returns it.

        Why a quantile: it makes the false-positive rate on data like the reference set an explicit, audited
        choice instead of a magic constant, and it adapts to each model's own score scale.
        """
        batch = as_batch(clean_x, name="clean_x")
        _check_fpr(fpr, batch.shape[0])
        self._threshold = _quantile_threshold(self._score(batch)[0], fpr)
        return self._threshold

    def check(self, x: np.ndarray) -> list[AdversarialScore]:
        """Score and decide each row of ``x``."""
        threshold = self.threshold
        scores, details = self._score(as_batch(x))
        return [
            AdversarialScore(self.name, float(s), threshold, bool(s > threshold), MappingProxyType(d))
            for s, d in zip(scores, details, strict=True)
        ]


class FeatureSqueezing(Detector):
    """Feature squeezing (Xu et al., NDSS 2018): L1 distance between predictions on the input and squeezed copies.

    Args:
        model: the protected model.
        bit_depths: reduce each feature to ``b`` bits over ``value_range`` (the paper uses 1 bit for MNIST,
            4-5 bits for CIFAR-10/ImageNet).
        median_size: side of the median-smoothing window (2 in the paper); needs ``image_shape``.
        image_shape: shape of one input as an image, ``(H, W)`` or ``(H, W, C)``; None for tabular inputs (then
            only bit-depth squeezers run).
        value_range: the valid input range; inputs are clipped to it before squeezing.
        threshold: a fixed threshold instead of :meth:`calibrate`.
    """

    name = "feature_squeezing"

    def __init__(
        self,
        model: PredictFn,
        *,
        bit_depths: Sequence[int] = (1,),
        median_size: int | None = 2,
        image_shape: tuple[int, ...] | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        threshold: float | None = None,
    ) -> None:
        super().__init__(threshold)
        if any(not 1 <= b <= 16 for b in bit_depths):
            raise UsageError(f"bit depths must be in 1..16, got {tuple(bit_depths)}")
        if median_size is not None and median_size < 2:
            raise UsageError(f"median_size must be >= 2 (or None), got {median_size}")
        if image_shape is not None and len(image_shape) not in (2, 3):
            raise UsageError(f"image_shape must be (H, W) or (H, W, C), got {image_shape}")
        lo, hi = value_range
        if not lo < hi:
            raise UsageError(f"value_range must have low < high, got {value_range}")
        if not bit_depths and (median_size is None or image_shape is None):
            raise UsageError("feature squeezing needs at least one squeezer (bit_depths or median smoothing)")
        self.model = model
        self.bit_depths = tuple(bit_depths)
        self.median_size = median_size if image_shape is not None else None
        self.image_shape = image_shape
        self.value_range = (float(lo), float(hi))

    def _squeezers(self, x: np.ndarray) -> dict[str, np.ndarray]:
        lo, hi = self.value_range
        unit = (np.clip(x, lo, hi) - lo) / (hi - lo)
        out = {}
        for b in self.bit_depths:
            levels = 2**b - 1
            out[f"bit_depth_{b}"] = np.round(unit * levels) / levels * (hi - lo) + lo
        if self.median_size is not None and self.image_shape is not None:
            n = x.shape[0]
            try:
                images = x.reshape((n, *self.image_shape))
            except ValueError:
                raise UsageError(f"inputs of shape {x.shape[1:]} do not fit image_shape {self.image_shape}") from None
            size = (1, self.median_size, self.median_size) + ((1,) if len(self.image_shape) == 3 else ())
            smoothed = ndimage.median_filter(images, size=size, mode="reflect")
            out[f"median_{self.median_size}x{self.median_size}"] = smoothed.reshape(x.shape)
        return out

    def _score(self, x: np.ndarray) -> tuple[np.ndarray, list[dict[str, float | str]]]:
        base = self.model.predict_proba(x)
        dists = {
            name: np.abs(base - self.model.predict_proba(sq)).sum(axis=1) for name, sq in self._squeezers(x).items()
        }
        names = list(dists)
        matrix = np.stack([dists[k] for k in names], axis=1)
        worst = matrix.argmax(axis=1)
        details: list[dict[str, float | str]] = []
        for i in range(x.shape[0]):
            d: dict[str, float | str] = {f"l1_{k}": float(matrix[i, j]) for j, k in enumerate(names)}
            d["squeezer"] = names[int(worst[i])]
            details.append(d)
        return matrix.max(axis=1), details


class NoiseDisagreement(Detector):
    """Disagreement of the prediction with predictions under small random noise and with other models.

    Args:
        model: the protected model.
        sigma: standard deviation of the Gaussian noise, in input units.
        n_samples: noisy copies per input.
        statistic: ``"kl"`` — mean KL(p(x) || q) over the voters (smooth, fine-grained); ``"flip_rate"`` — the
            fraction of voters whose top class differs from the model's.
        ensemble: further models that vote on the clean input (ensemble disagreement).
        value_range: clip noisy inputs to this range (None: no clipping).
        seed: seed for the noise; None draws fresh OS entropy (an attacker then cannot predict the noise).
    """

    name = "noise_disagreement"

    def __init__(
        self,
        model: PredictFn,
        *,
        sigma: float = 0.05,
        n_samples: int = 16,
        statistic: Literal["kl", "flip_rate"] = "kl",
        ensemble: Sequence[PredictFn] = (),
        value_range: tuple[float, float] | None = (0.0, 1.0),
        seed: int | None = None,
        threshold: float | None = None,
    ) -> None:
        super().__init__(threshold)
        if not sigma > 0 or not math.isfinite(sigma):
            raise UsageError(f"sigma must be a positive number, got {sigma}")
        if not 1 <= n_samples <= 1024:
            raise UsageError(f"n_samples must be in 1..1024, got {n_samples}")
        if statistic not in ("kl", "flip_rate"):
            raise UsageError(f"statistic must be 'kl' or 'flip_rate', got {statistic!r}")
        if value_range is not None and not value_range[0] < value_range[1]:
            raise UsageError(f"value_range must have low < high, got {value_range}")
        self.model = model
        self.sigma = float(sigma)
        self.n_samples = n_samples
        self.statistic = statistic
        self.ensemble = tuple(ensemble)
        self.value_range = value_range
        self._rng = np.random.default_rng(seed)

    def _score(self, x: np.ndarray) -> tuple[np.ndarray, list[dict[str, float | str]]]:
        n = x.shape[0]
        p = self.model.predict_proba(x)
        top = p.argmax(axis=1)
        noisy = np.repeat(x[None], self.n_samples, axis=0) + self._rng.normal(
            0.0, self.sigma, (self.n_samples, *x.shape)
        )
        if self.value_range is not None:
            noisy = np.clip(noisy, *self.value_range)
        q = self.model.predict_proba(noisy.reshape((-1, *x.shape[1:]))).reshape(self.n_samples, n, -1)
        kl_noise = np.stack([_kl(p, q[s]) for s in range(self.n_samples)])  # (samples, n)
        flips_noise = (q.argmax(axis=2) != top[None]).astype(np.float64)
        kls, flips = [kl_noise], [flips_noise]
        for member in self.ensemble:
            pm = member.predict_proba(x)
            if pm.shape != p.shape:
                raise UsageError(f"ensemble member returns shape {pm.shape}, the model {p.shape}")
            kls.append(_kl(p, pm)[None])
            flips.append((pm.argmax(axis=1) != top).astype(np.float64)[None])
        kl = np.concatenate(kls).mean(axis=0)
        flip = np.concatenate(flips).mean(axis=0)
        noise_flip = flips_noise.mean(axis=0)
        details: list[dict[str, float | str]] = [
            {"mean_kl": float(kl[i]), "flip_rate": float(flip[i]), "noise_flip_rate": float(noise_flip[i])}
            for i in range(n)
        ]
        return (kl if self.statistic == "kl" else flip), details


class GradientNorm(Detector):
    """L2 norm of the input gradient of the cross-entropy loss at the predicted label.

    Only for differentiable models (:func:`~mlwarden.guard.model_api.is_differentiable`). Why it works:
    FGSM/PGD follow the loss gradient, leaving inputs where the loss surface is steep and the model is unsure,
    whereas clean inputs mostly sit in flat, confident regions.
    """

    name = "gradient_norm"

    def __init__(self, model: PredictFn, *, threshold: float | None = None) -> None:
        super().__init__(threshold)
        if not is_differentiable(model):
            raise UsageError(f"{type(model).__name__} is not differentiable; the gradient score needs .gradient()")
        self.model = model

    def _score(self, x: np.ndarray) -> tuple[np.ndarray, list[dict[str, float | str]]]:
        p = self.model.predict_proba(x)
        label = p.argmax(axis=1)
        grad = self.model.gradient(x, label)  # type: ignore[attr-defined]  # checked by is_differentiable
        norms = np.linalg.norm(np.asarray(grad).reshape(x.shape[0], -1), axis=1)
        details: list[dict[str, float | str]] = [
            {"predicted": float(label[i]), "confidence": float(p[i, label[i]])} for i in range(x.shape[0])
        ]
        return norms, details


class CombinedDetector(Detector):
    """Flags an input when any member scores far above its own clean scale.

    The combined score is ``max_i score_i / t_i`` where ``t_i`` is member ``i``'s threshold; calibrating the
    combination sets each ``t_i`` at ``fpr`` and then the combined threshold at ``fpr`` on the same clean data,
    so the union of detectors keeps the requested false-positive rate instead of adding the members' rates.
    """

    name = "combined"

    def __init__(self, detectors: Sequence[Detector], *, threshold: float | None = None) -> None:
        super().__init__(threshold)
        if not detectors:
            raise UsageError("CombinedDetector needs at least one detector")
        self.detectors = tuple(detectors)

    def calibrate(self, clean_x: np.ndarray, fpr: float = 0.05) -> float:
        """Calibrate every member, then the combined score, at ``fpr``."""
        batch = as_batch(clean_x, name="clean_x")
        for det in self.detectors:
            det.calibrate(batch, fpr)
        return super().calibrate(batch, fpr)

    def _score(self, x: np.ndarray) -> tuple[np.ndarray, list[dict[str, float | str]]]:
        ratios = []
        for det in self.detectors:
            scale = det.threshold if det.threshold > 0 else _EPS
            ratios.append(det.scores(x) / scale)
        matrix = np.stack(ratios, axis=1)
        worst = matrix.argmax(axis=1)
        details: list[dict[str, float | str]] = []
        for i in range(x.shape[0]):
            d: dict[str, float | str] = {
                f"ratio_{det.name}": float(matrix[i, j]) for j, det in enumerate(self.detectors)
            }
            d["worst"] = self.detectors[int(worst[i])].name
            details.append(d)
        return matrix.max(axis=1), details
