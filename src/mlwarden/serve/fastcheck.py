"""The default adversarial check of one request in a single model call: feature squeezing plus noise disagreement.

The guard's default detectors (:class:`~mlwarden.guard.adversarial.CombinedDetector` over bit-depth
:class:`~mlwarden.guard.adversarial.FeatureSqueezing` and KL-scored
:class:`~mlwarden.guard.adversarial.NoiseDisagreement`) query the model three times per request (the input,
its squeezed copies, its noisy copies), each query with its own validation, and score the noise one copy at a
time. For one row that bookkeeping, not arithmetic, was a third of the guard's CPU per request.

:class:`FusedSqueezeNoise` computes the same scores with the same arithmetic: the input's probabilities through
the servable's row memo (shared with the answer), the squeezed and noisy copies in one batched call, the KL
divergences of all noisy copies at once; the noise comes from a generator seeded like the detector's, drawn in
the same shape, so the stream of noise is the same. :func:`fuse` builds it only for exactly that combination
and returns ``None`` for anything else (median smoothing, ensembles, flip-rate statistic, the gradient
detector), which keeps the generic detectors. tests/serve/test_fastcheck.py checks that both give the same
scores and decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import numpy as np

from mlwarden.core.errors import UsageError
from mlwarden.guard.adversarial import AdversarialScore, CombinedDetector, FeatureSqueezing, NoiseDisagreement

_EPS = 1e-12  # the detectors' floor for probabilities and thresholds (mlwarden.guard.adversarial)

Proba = Callable[[np.ndarray], np.ndarray]


class FusedSqueezeNoise:
    """``CombinedDetector([FeatureSqueezing, NoiseDisagreement]).check`` in one model call (see the module docstring).

    Args:
        squeeze: the calibrated squeezing member (bit depths only).
        noise: the calibrated noise member (KL statistic, no ensemble).
        combined_threshold: the combined detector's threshold.
        proba: class probabilities of the request's own rows (the servable's memo, shared with the answer).
        raw: class probabilities of a batch, uncached (the squeezed and noisy copies are never asked again).
        seed: the noise seed (the detector's).
    """

    name = CombinedDetector.name

    def __init__(
        self,
        squeeze: FeatureSqueezing,
        noise: NoiseDisagreement,
        combined_threshold: float,
        proba: Proba,
        raw: Proba,
        seed: int | None,
    ) -> None:
        self.threshold = combined_threshold
        self._proba, self._raw = proba, raw
        self._sq_range = squeeze.value_range
        self._bits = [2**b - 1 for b in squeeze.bit_depths]
        self._sigma, self._samples = noise.sigma, noise.n_samples
        self._noise_range = noise.value_range
        self._rng = np.random.default_rng(seed)
        self._t_squeeze = squeeze.threshold if squeeze.threshold > 0 else _EPS
        self._t_noise = noise.threshold if noise.threshold > 0 else _EPS
        self._ratio_keys = (f"ratio_{squeeze.name}", f"ratio_{noise.name}")
        self._members = (squeeze.name, noise.name)

    def check(self, x: np.ndarray) -> list[AdversarialScore]:
        """Score and decide each row of ``x`` (as :meth:`CombinedDetector.check`).

        Raises:
            UsageError: ``x`` is not a non-empty finite ``(n, d)`` batch.
        """
        batch = np.asarray(x, dtype=np.float64)
        if batch.ndim != 2 or batch.shape[0] == 0:
            raise UsageError(f"x must be a non-empty batch of shape (n, d), got shape {batch.shape}")
        if not np.all(np.isfinite(batch)):
            raise UsageError("x contains NaN or infinite values")
        n = batch.shape[0]
        p = self._proba(batch)
        # The copies, in the order and shapes the separate detectors make them.
        lo, hi = self._sq_range
        unit = (np.clip(batch, lo, hi) - lo) / (hi - lo)
        copies = [np.round(unit * levels) / levels * (hi - lo) + lo for levels in self._bits]
        noisy = np.repeat(batch[None], self._samples, axis=0) + self._rng.normal(
            0.0, self._sigma, (self._samples, *batch.shape)
        )
        if self._noise_range is not None:
            noisy = np.clip(noisy, *self._noise_range)
        copies.append(noisy.reshape((-1, batch.shape[1])))
        q_all = self._raw(np.concatenate(copies))
        squeezed = [np.abs(p - q_all[i * n : (i + 1) * n]).sum(axis=1) for i in range(len(self._bits))]
        matrix = np.stack(squeezed, axis=1)
        squeeze_score = matrix.max(axis=1)
        q = q_all[len(self._bits) * n :].reshape(self._samples, n, -1)
        pc = np.clip(p, _EPS, 1.0)
        qc = np.clip(q, _EPS, 1.0)
        kl = np.sum(pc * (np.log(pc) - np.log(qc)), axis=2).mean(axis=0)
        ratios = np.stack([squeeze_score / self._t_squeeze, kl / self._t_noise], axis=1)
        scores = ratios.max(axis=1)
        worst = ratios.argmax(axis=1)
        threshold = self.threshold
        first, second = self._ratio_keys
        return [
            AdversarialScore(
                self.name,
                float(s),
                threshold,
                bool(s > threshold),
                MappingProxyType({first: float(r[0]), second: float(r[1]), "worst": self._members[int(w)]}),
            )
            for s, r, w in zip(scores.tolist(), ratios, worst.tolist(), strict=True)
        ]


def fuse(detector: CombinedDetector, proba: Proba, raw: Proba, seed: int | None) -> FusedSqueezeNoise | None:
    """The fused check equal to ``detector``, or ``None`` when ``detector`` is another combination.

    ``proba`` and ``raw`` must compute what the members' model computes (``proba`` may cache, ``raw`` must not
    have to); ``seed`` must be the noise member's seed.
    """
    members = detector.detectors
    if len(members) != 2:
        return None
    squeeze, noise = members
    if type(squeeze) is not FeatureSqueezing or type(noise) is not NoiseDisagreement:
        return None
    if squeeze.median_size is not None or not squeeze.bit_depths:
        return None
    if noise.statistic != "kl" or noise.ensemble:
        return None
    try:
        thresholds = (detector.threshold, squeeze.threshold, noise.threshold)
    except UsageError:  # not calibrated: the generic detector says so at check time
        return None
    return FusedSqueezeNoise(squeeze, noise, thresholds[0], proba, raw, seed)
