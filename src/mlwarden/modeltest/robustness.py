"""Adversarial robustness: accuracy under attack as a curve over the perturbation budget, with ART.

Budgets ``eps`` are fractions of the input range ``clip_values = (lo, hi)``; the absolute budget is
``eps × (hi − lo)`` in the L∞ norm (both are reported). Attacks, all untargeted against the true labels:

``fgsm`` / ``pgd`` (white box, for models ART has gradients for: PyTorch, logistic regression, SVC)
    ART ``FastGradientMethod`` and ``ProjectedGradientDescent`` (norm ∞; PGD step ``eps × eps_step_ratio``,
    ``max_iter`` steps, ``num_random_init`` seeded random starts). Accuracy is over every sampled row.
``hopskipjump`` (black box, for the rest: tree ensembles, ONNX, Keras)
    ART ``HopSkipJump`` (norm ∞) on at most ``hsj_rows`` rows (a seeded sample of the test rows), once; it
    searches the *smallest* perturbation that changes each correctly classified row's prediction. Accuracy at
    ``eps`` is the fraction of rows whose smallest perturbation found is larger than the absolute budget
    (misclassified rows count 0, rows for which none was found count as robust): an upper bound, since a
    stronger search may find smaller perturbations.
    Each attack starts from the nearest row (L∞) the model labels differently — the sample's rows and seeded
    uniform noise — so the run is reproducible (ART's own start draws from an unseeded generator), and ends
    with an L∞ binary search back to the decision boundary (HopSkipJump's last step moves away from it).
``gaussian_noise`` / ``blur`` (natural corruptions, for contrast)
    Gaussian noise of standard deviation equal to the absolute budget (clipped to the range); for images,
    a Gaussian blur of ``blur_sigmas`` pixels (those points have ``sigma`` and ``eps: null``).

Every accuracy is a Wilson 95 % interval over ``count`` of ``total`` rows. One seed drives the row sample, PGD's
random starts (NumPy and torch generators, restored afterwards) and the noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from mlwarden.datacheck.model import Rate, wilson
from mlwarden.estimators._art import import_art
from mlwarden.modeltest.model import ModelTestError, TestContext, TestResult

import_art()  # before any `art` import: ART resets logging at import (mlwarden.estimators._art)

DEFAULTS: dict[str, Any] = {
    "attacks": "auto",
    "max_iter": 20,
    "eps_step_ratio": 0.25,
    "num_random_init": 1,
    "batch_size": 128,
    "hsj_rows": 50,
    "hsj_max_iter": 10,
    "hsj_max_eval": 500,
    "hsj_init_eval": 50,
    "blur_sigmas": [0.5, 1.0],
}
KINDS = {
    "fgsm": "white_box",
    "pgd": "white_box",
    "hopskipjump": "black_box",
    "gaussian_noise": "corruption",
    "blur": "corruption",
}
#: Uniform-noise candidates added to the rows when looking for HopSkipJump's starting points.
HSJ_NOISE_STARTS = 100
#: Halvings of the final L∞ binary search that puts HopSkipJump's points back on the decision boundary.
TIGHTEN_STEPS = 20


def run(ctx: TestContext) -> TestResult:
    """Accuracy under white-box or black-box attack and under natural corruptions, over ``ctx.options.eps``."""
    started = time.perf_counter()
    params = ctx.options.params("robustness", DEFAULTS)
    attacks = _attacks(params["attacks"], ctx)
    seed = ctx.options.seed
    x, y = sample_rows(ctx.x_test, ctx.y_test, ctx.options.max_rows, seed)
    lo, hi = (float(v) for v in ctx.clip_values)
    if not hi > lo:
        raise ModelTestError(f"robustness: the input range {ctx.clip_values} is empty (constant data)")
    eps = [float(e) for e in ctx.options.eps]
    budgets = [(e, e * (hi - lo)) for e in eps]
    subject = ctx.subject
    predicted = subject.predict(x)
    job = _Job(ctx, x, y, predicted, budgets, params, seed)
    job.validate()
    entries = []
    for name in attacks:
        t0 = time.perf_counter()
        entry = {"attack": name, "kind": KINDS[name], **RUNNERS[name](job)}
        entry["seconds"] = round(time.perf_counter() - t0, 4)
        entries.append(entry)
    parameters = {
        "attacks": list(attacks),
        "norm": "inf",
        "eps": eps,
        "eps_abs": [a for _, a in budgets],
        "clip_values": [lo, hi],
        **{k: v for k, v in params.items() if k != "attacks"},
    }
    metrics = {"clean_accuracy": Rate(int((predicted == y).sum()), len(y)).to_dict(), "attacks": entries}
    rows = {"test": len(x)}
    if "hopskipjump" in attacks:
        rows["hopskipjump"] = min(len(x), job.whole("hsj_rows", 1))
    return TestResult("robustness", parameters, seed, rows, time.perf_counter() - started, metrics)


def sample_rows(x: np.ndarray, y: np.ndarray, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_rows`` rows, a seeded uniform sample kept in file order (all rows when there are fewer)."""
    rng = np.random.default_rng(seed)
    index = np.sort(rng.permutation(len(x))[:max_rows])
    return np.asarray(x[index], dtype=np.float32), np.asarray(y[index])


class _Job:
    """One robustness run's inputs, shared by the attack runners."""

    def __init__(self, ctx: TestContext, x: np.ndarray, y: np.ndarray, predicted: np.ndarray,
                 budgets: list[tuple[float, float]], params: dict[str, Any], seed: int) -> None:  # fmt: skip
        self.ctx, self.x, self.y, self.predicted = ctx, x, y, predicted
        self.budgets, self.params, self.seed = budgets, params, seed
        self.lo, self.hi = (float(v) for v in ctx.clip_values)
        self._classifier: Any = None

    @property
    def classifier(self) -> Any:
        """The ART estimator (built once)."""
        if self._classifier is None:
            self._classifier = self.ctx.subject.art_classifier((self.lo, self.hi))
        return self._classifier

    def validate(self) -> None:
        """Refuse a wrong parameter before any attack runs, whether or not the attack that reads it will."""
        for key in ("max_iter", "batch_size", "hsj_rows", "hsj_max_iter", "hsj_max_eval", "hsj_init_eval"):
            self.whole(key, 1)
        self.whole("num_random_init", 0)
        self.fraction("eps_step_ratio")
        self.sigmas()

    def sigmas(self) -> list[float]:
        sigmas = self.params["blur_sigmas"]
        if (
            not isinstance(sigmas, list | tuple)
            or not sigmas
            or any(isinstance(s, bool) or not isinstance(s, int | float) or s <= 0 for s in sigmas)
        ):
            raise ModelTestError(f"robustness: blur_sigmas must be a list of positive numbers, got {sigmas!r}")
        return [float(s) for s in sigmas]

    def whole(self, key: str, low: int) -> int:
        value = self.params[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < low:
            raise ModelTestError(f"robustness: parameter {key} must be a whole number ≥ {low}, got {value!r}")
        return int(value)

    def fraction(self, key: str) -> float:
        value = self.params[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ModelTestError(f"robustness: parameter {key} must be a number within (0, 1], got {value!r}")
        return float(value)

    def accuracy_on(self, x_adv: np.ndarray) -> np.ndarray:
        return np.asarray(self.ctx.subject.predict(x_adv) == self.y)


def _attacks(chosen: Any, ctx: TestContext) -> tuple[str, ...]:
    differentiable = ctx.subject.differentiable
    if chosen == "auto":
        auto = ["fgsm", "pgd"] if differentiable else ["hopskipjump"]
        return (*auto, "gaussian_noise", *(("blur",) if ctx.image else ()))
    names = [chosen] if isinstance(chosen, str) else list(chosen) if isinstance(chosen, list | tuple) else None
    if not names or any(n not in KINDS for n in names):
        raise ModelTestError(f"robustness: attacks must be 'auto' or a list of {sorted(KINDS)}, got {chosen!r}")
    for name in names:
        if KINDS[name] == "white_box" and not differentiable:
            raise ModelTestError(
                f"robustness: {name} needs the model's gradients; a {ctx.subject.framework} model of this kind "
                "is tested black box (hopskipjump)"
            )
        if name == "blur" and not ctx.image:
            raise ModelTestError("robustness: blur applies to image data only")
    return tuple(dict.fromkeys(names))


def _point(eps: float | None, eps_abs: float | None, correct: np.ndarray, **extra: Any) -> dict[str, Any]:
    count, total = int(np.sum(correct)), len(correct)
    low, high = wilson(count, total)
    point = {"eps": eps, "eps_abs": eps_abs, **extra}
    point.update({"accuracy": count / total if total else 0.0, "ci95": [low, high], "count": count, "total": total})
    return point


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed NumPy's and torch's global generators (which ART draws from), restoring them afterwards."""
    state = np.random.get_state()
    torch_state = None
    try:
        import torch

        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    except ImportError:
        pass
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
        if torch_state is not None:
            import torch

            torch.random.set_rng_state(torch_state)


def _fgsm(job: _Job) -> dict[str, Any]:
    from art.attacks.evasion import FastGradientMethod

    points = []
    for eps, eps_abs in job.budgets:
        attack = FastGradientMethod(job.classifier, norm=np.inf, eps=eps_abs, targeted=False,
                                    batch_size=job.whole("batch_size", 1))  # fmt: skip
        points.append(_point(eps, eps_abs, job.accuracy_on(attack.generate(job.x, y=job.y))))
    return {"points": points}


def _pgd(job: _Job) -> dict[str, Any]:
    from art.attacks.evasion import ProjectedGradientDescent

    points = []
    ratio, max_iter, restarts = (
        job.fraction("eps_step_ratio"),
        job.whole("max_iter", 1),
        job.whole("num_random_init", 0),
    )
    for eps, eps_abs in job.budgets:
        attack = ProjectedGradientDescent(
            job.classifier,
            norm=np.inf,
            eps=eps_abs,
            eps_step=eps_abs * ratio,
            max_iter=max_iter,
            targeted=False,
            num_random_init=restarts,
            batch_size=job.whole("batch_size", 1),
            verbose=False,
        )
        with seeded(job.seed):
            x_adv = attack.generate(job.x, y=job.y)
        points.append(_point(eps, eps_abs, job.accuracy_on(x_adv)))
    return {"points": points}


def _starts(job: _Job, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the nearest (L∞) candidate the model labels differently; ``found`` marks rows that have one."""
    rng = np.random.default_rng(job.seed)
    noise = rng.uniform(job.lo, job.hi, size=(HSJ_NOISE_STARTS, *job.x.shape[1:])).astype(np.float32)
    pool = np.concatenate([job.x, noise])
    pool_pred = np.concatenate([job.predicted, job.ctx.subject.predict(noise)])
    flat = pool.reshape(len(pool), -1)
    starts = np.array(job.x[rows], copy=True)
    found = np.zeros(len(rows), dtype=bool)
    for k, i in enumerate(rows):
        other = np.flatnonzero(pool_pred != job.predicted[i])
        if len(other):
            distance = np.abs(flat[other] - job.x[i].reshape(-1)).max(axis=1)
            starts[k] = pool[other[int(distance.argmin())]]
            found[k] = True
    return starts, found


def _hopskipjump(job: _Job) -> dict[str, Any]:
    from art.attacks.evasion import HopSkipJump

    n = min(len(job.x), job.whole("hsj_rows", 1))
    chosen = np.sort(np.random.default_rng(job.seed).choice(len(job.x), n, replace=False))
    correct = job.predicted[chosen] == job.y[chosen]
    linf = np.zeros(len(job.x))  # misclassified rows: no perturbation needed
    l2 = np.zeros(len(job.x))
    rows = chosen[correct]
    starts, startable = _starts(job, rows)
    linf[rows[~startable]] = l2[rows[~startable]] = np.inf
    attacked = rows[startable]
    if len(attacked):
        attack = HopSkipJump(job.classifier, targeted=False, norm=np.inf, max_iter=job.whole("hsj_max_iter", 1),
                             max_eval=job.whole("hsj_max_eval", 1), init_eval=job.whole("hsj_init_eval", 1),
                             batch_size=job.whole("batch_size", 1), verbose=False)  # fmt: skip
        with seeded(job.seed):
            x_adv = attack.generate(job.x[attacked], x_adv_init=starts[startable])
        x_adv = _tighten(job, job.x[attacked], x_adv, job.predicted[attacked])
        flipped = job.ctx.subject.predict(x_adv) != job.predicted[attacked]
        delta = (x_adv - job.x[attacked]).reshape(len(attacked), -1).astype(np.float64)
        linf[attacked] = np.where(flipped, np.abs(delta).max(axis=1), np.inf)
        l2[attacked] = np.where(flipped, np.sqrt((delta**2).sum(axis=1)), np.inf)
    points = [_point(eps, eps_abs, linf[chosen] > eps_abs) for eps, eps_abs in job.budgets]
    found = int(np.isfinite(linf[rows]).sum())
    return {
        "points": points,
        "rows": n,
        "clean_accuracy": Rate(int(correct.sum()), n).to_dict(),
        "adversarial_found": Rate(found, len(rows)).to_dict(),
        "median_linf": float(np.median(linf[rows])) if len(rows) else None,
        "median_l2": float(np.median(l2[rows])) if len(rows) else None,
        "median_linf_fraction": float(np.median(linf[rows])) / (job.hi - job.lo) if len(rows) else None,
    }


def _tighten(job: _Job, x: np.ndarray, x_adv: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Move each adversarial row back to the decision boundary with an L∞ binary search.

    HopSkipJump ends each iteration with a step *away* from the boundary (its binary search starts the next
    one), so its last point can be up to twice as far as the boundary point it stood on. The search shrinks
    the box ``[x − a, x + a]`` the point is clipped to — HopSkipJump's own L∞ projection — for
    :data:`TIGHTEN_STEPS` halvings; rows that are not adversarial are returned unchanged.
    """
    flat = (x_adv - x).reshape(len(x), -1)
    high = np.abs(flat).max(axis=1).astype(np.float64)
    low = np.zeros_like(high)
    adversarial = job.ctx.subject.predict(x_adv) != label
    shape = (-1,) + (1,) * (x.ndim - 1)
    for _ in range(TIGHTEN_STEPS):
        mid = (low + high) / 2
        a = mid.reshape(shape)
        flips = job.ctx.subject.predict(np.clip(x_adv, x - a, x + a).astype(np.float32)) != label
        high = np.where(flips, mid, high)
        low = np.where(flips, low, mid)
    a = high.reshape(shape)
    return np.where(adversarial.reshape(shape), np.clip(x_adv, x - a, x + a), x_adv).astype(np.float32)


def _noise(job: _Job) -> dict[str, Any]:
    rng = np.random.default_rng(job.seed)
    points = []
    for eps, eps_abs in job.budgets:
        noisy = np.clip(job.x + rng.normal(0.0, eps_abs, size=job.x.shape), job.lo, job.hi).astype(np.float32)
        points.append(_point(eps, eps_abs, job.accuracy_on(noisy), sigma=eps_abs))
    return {"points": points}


def _blur(job: _Job) -> dict[str, Any]:
    from scipy.ndimage import gaussian_filter

    sigmas = job.sigmas()
    points = []
    for sigma in sigmas:
        blurred = gaussian_filter(job.x, sigma=(0, 0, sigma, sigma)).astype(np.float32)
        points.append(_point(None, None, job.accuracy_on(blurred), sigma=sigma))
    return {"points": points}


RUNNERS: dict[str, Callable[[_Job], dict[str, Any]]] = {
    "fgsm": _fgsm,
    "pgd": _pgd,
    "hopskipjump": _hopskipjump,
    "gaussian_noise": _noise,
    "blur": _blur,
}
