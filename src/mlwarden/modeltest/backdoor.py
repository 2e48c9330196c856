"""Backdoor probe of an image classifier: Neural Cleanse (which class has a planted shortcut) and STRIP entropies.

**Neural Cleanse** (Wang et al., S&P 2019) reverse-engineers, for every class, the smallest mask ``m`` and pattern
``p`` (tanh-parameterised, so both stay in range) such that ``x' = (1 - m)·x + m·p`` is classified as that class,
minimising ``cross-entropy + λ·|m|₁`` with the paper's λ schedule (raise λ by 1.5 after ``patience`` steps at ≥ 99 %
attack success, lower it by 1.5^1.5 after ``patience`` steps below). A backdoored class needs a far smaller mask
than the others; the anomaly index ``(median - l₁) / (1.4826 · MAD)`` flags classes above 2. The implementation is
shared with the data check (:func:`mlwarden.datacheck.poison.neural_cleanse`): ART's ``NeuralCleanse`` needs its
Keras classifier and TensorFlow, which mlwarden does not install.

**STRIP** (Gao et al., ACSAC 2019) superimposes an input with random clean images: a trigger keeps the predictions
fixed on the target class, so trojaned inputs have low prediction entropy. ART's ``STRIP`` sums
``scipy.stats.entropy(predictions, axis=0)`` — the entropy of each class's column across the blends rather than of
each prediction — so the paper's formula is implemented here: the mean over ``n`` blends of the Shannon entropy
(bits) of each blended prediction. The threshold is set at the ``frr`` quantile of a normal fitted to the clean test
inputs' entropies (the paper's rule; ART's too), so on clean test data about ``frr`` fall below it by construction —
an excess means inputs that carry a trigger. The trigger is unknown, so the probe also stamps the test inputs with
the reverse-engineered trigger of the most anomalous class and reports its attack success and STRIP entropies.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import numpy as np

from mlwarden.datacheck.model import Rate
from mlwarden.datacheck.poison import ANOMALY_THRESHOLD, NC_DEFAULTS, anomaly_index, neural_cleanse
from mlwarden.modeltest.model import ModelTestError, TestContext, TestResult

DEFAULTS: dict[str, Any] = {
    **NC_DEFAULTS,
    "strip_blends": 20,  # clean images superimposed on each input (the paper uses up to 100)
    "strip_inputs": 200,  # test inputs STRIP looks at (seeded sample)
    "strip_frr": 0.01,  # false rejection rate that sets the entropy threshold
}


def _png_base64(image: np.ndarray) -> str:
    """An ``(C, H, W)`` array in [0, 1] as a PNG (greyscale or RGB), base64-encoded."""
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(image) * 255), 0, 255).astype(np.uint8)
    frame = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels[:3], 0, -1)
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def strip_entropies(predict: Any, x: np.ndarray, pool: np.ndarray, blends: int, rng: np.random.Generator) -> np.ndarray:
    """STRIP's per-input entropy: mean Shannon entropy (bits) of the predictions on ``blends`` superimpositions.

    Each input is blended half and half with ``blends`` images drawn from ``pool`` (ART's ``combine_images``).
    """
    out = np.empty(len(x))
    for i, image in enumerate(x):
        chosen = pool[rng.integers(0, len(pool), blends)]
        p = np.clip(predict(0.5 * image[None] + 0.5 * chosen), 1e-12, 1.0)
        out[i] = float(np.mean(-(p * np.log2(p)).sum(axis=1)))
    return out


def _summary(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.01, 0.05, 0.5, 0.95])
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "p01": float(q[0]), "p05": float(q[1]), "median": float(q[2]), "p95": float(q[3])}  # fmt: skip


def _strip(ctx: TestContext, x: np.ndarray, trigger: dict[str, Any], target: int, params: dict[str, Any]) -> Any:
    from scipy.stats import norm

    rng = np.random.default_rng(ctx.options.seed)
    pool = np.asarray(ctx.x_train if ctx.x_train is not None and len(ctx.x_train) else x, dtype=np.float32)
    inputs = x[rng.choice(len(x), min(len(x), int(params["strip_inputs"])), replace=False)]
    clean = strip_entropies(ctx.subject.predict_proba, inputs, pool, int(params["strip_blends"]), rng)
    mean, std = norm.fit(clean)
    threshold = float(norm.ppf(float(params["strip_frr"]), loc=mean, scale=std))
    mask, pattern = trigger["mask"][None], trigger["pattern"]
    stamped = ((1 - mask) * inputs + mask * pattern).astype(np.float32)
    stamped_entropy = strip_entropies(ctx.subject.predict_proba, stamped, pool, int(params["strip_blends"]), rng)
    hits = int((ctx.subject.predict(stamped) == target).sum())
    return {
        "inputs": len(inputs),
        "threshold_bits": threshold,
        "clean_entropy": _summary(clean),
        "clean_below_threshold": Rate(int((clean <= threshold).sum()), len(clean)).to_dict(),
        "reversed_trigger": {
            "class": str(ctx.subject.classes[target]),
            "attack_success": Rate(hits, len(stamped)).to_dict(),
            "entropy": _summary(stamped_entropy),
            "below_threshold": Rate(int((stamped_entropy <= threshold).sum()), len(stamped)).to_dict(),
        },
    }


def probe(ctx: TestContext) -> TestResult:
    """Neural Cleanse over every class and STRIP entropies, for an image classifier in PyTorch.

    Raises:
        ModelTestError: too few test images, or images outside the input range.
    """
    started = time.perf_counter()
    if not ctx.image:
        return TestResult("backdoor_probe", {}, None, {}, 0.0, status="skipped", reason="image classifiers only")
    if ctx.subject.framework != "torch":
        reason = f"needs a differentiable PyTorch model (gradients of the input); the model is {ctx.subject.framework}"
        return TestResult("backdoor_probe", {}, None, {}, 0.0, status="skipped", reason=reason)
    params = ctx.options.params("backdoor_probe", DEFAULTS)
    x = np.asarray(ctx.x_test, dtype=np.float32)
    if x.ndim != 4 or len(x) < 10:
        raise ModelTestError(f"the backdoor probe needs at least 10 images shaped (n, C, H, W); got {x.shape}")
    rng = np.random.default_rng(ctx.options.seed)
    if len(x) > ctx.options.max_rows:
        x = x[np.sort(rng.choice(len(x), ctx.options.max_rows, replace=False))]
    module = ctx.subject.torch_module()
    nc = neural_cleanse(module, x, ctx.subject.n_classes, params, seed=ctx.options.seed, clip=ctx.clip_values)
    names = {c: str(ctx.subject.classes[c]) for c in nc}
    index = anomaly_index({c: r["l1"] for c, r in nc.items()})
    flagged = [c for c, a in sorted(index.items(), key=lambda kv: -kv[1]) if a > ANOMALY_THRESHOLD]
    top = max(index, key=lambda c: index[c])
    shown = flagged or [top]
    triggers = [{"class": names[c], "png_base64": _png_base64(nc[c]["mask"][None] * nc[c]["pattern"])} for c in shown]
    metrics = {
        "anomaly_index": {names[c]: a for c, a in index.items()},
        "l1_norms": {names[c]: r["l1"] for c, r in nc.items()},
        "attack_success": {names[c]: r["success"] for c, r in nc.items()},
        "max_anomaly_index": index[top],
        "max_anomaly_class": names[top],
        "flagged_classes": [names[c] for c in flagged],
        "triggers": triggers,
        "strip": _strip(ctx, x, nc[top], top, params),
    }
    parameters = {**params, "anomaly_threshold": ANOMALY_THRESHOLD, "mad_consistency": 1.4826,
                  "clip_values": list(ctx.clip_values)}  # fmt: skip
    rows = {"test": len(x), "strip_pool": len(ctx.x_train) if ctx.x_train is not None else len(x)}
    return TestResult("backdoor_probe", parameters, ctx.options.seed, rows, time.perf_counter() - started, metrics)
