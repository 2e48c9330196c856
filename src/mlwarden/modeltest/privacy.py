"""Privacy attacks on a trained classifier: membership inference, attribute inference, model inversion (ART).

``membership``
    Does the model betray which records it was trained on? Members are training rows, non-members test rows,
    balanced by a seeded subsample to equal sizes (at most ``max_rows`` each). Three attacks score each record:
    ``loss_threshold`` (the negative per-sample cross-entropy: members tend to have a lower loss),
    ``confidence_threshold`` (the top probability, no label needed) and ``shadow`` (ART's
    ``ShadowModels`` + ``MembershipInferenceBlackBox``, Shokri et al. 2017: models of the same family are trained
    on half of the non-member rows, a classifier learns "member or not" from their outputs and is evaluated on
    the target's held-out members and non-members). Each attack's ROC AUC has a 95 % stratified bootstrap
    interval; the true-positive rate at 0.1 % false positives (Carlini et al. 2022, "Membership Inference
    Attacks From First Principles") is read off the ROC curve with its resolution ``1 / non-members``.
``attribute_inference``
    Does the model betray a sensitive input attribute of its training records? ART's
    ``AttributeInferenceBlackBox`` learns the attribute from the other features and the model's predicted
    class on half of the training rows and guesses it on the other half; compared with guessing the most
    frequent value, and with ART's ``AttributeInferenceBaseline`` (the same attack without the model).
``inversion``
    Can a class's typical input be reconstructed from the model's gradients? ART's ``MIFace`` (Fredrikson et
    al. 2015), one reconstruction per class, as PNG images with the model's confidence in them.
"""

from __future__ import annotations

import base64
import io
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from mlwarden.datacheck.model import Rate
from mlwarden.estimators._art import import_art
from mlwarden.estimators.subject import EPS
from mlwarden.modeltest.model import ModelTestError, TestContext, TestResult
from mlwarden.modeltest.robustness import seeded

import_art()  # before any `art` import: ART resets logging at import (mlwarden.estimators._art)

MEMBERSHIP_DEFAULTS: dict[str, Any] = {
    "attacks": ["loss_threshold", "confidence_threshold", "shadow"],
    "bootstrap": 1000,
    "shadow_models": 3,
    "attack_model_type": "rf",
}
ATTRIBUTE_DEFAULTS: dict[str, Any] = {"feature_index": None, "attack_model_type": "rf", "max_values": 20}
INVERSION_DEFAULTS: dict[str, Any] = {"max_classes": 10, "max_iter": 100, "learning_rate": 0.1, "threshold": 0.99}
ATTACKS = ("loss_threshold", "confidence_threshold", "shadow")
ATTACK_MODELS = ("rf", "gb", "lr", "dt", "knn", "svm", "nn")
#: The false-positive rate of the low-FPR figure (Carlini et al. 2022).
LOW_FPR = 0.001
#: Points kept of each ROC curve for the report.
ROC_POINTS = 200
#: Fewer members (and as many non-members) than this and the attacks are not run.
MIN_ROWS = 20
#: Drawn rows per block of bootstrap resamples computed together (about 1.6 MB per int64 or float64 array: the
#: random gathers stay in the CPU cache; one block of all 1000 resamples of 500 + 500 rows took 4× as long).
BOOTSTRAP_BLOCK = 200_000


# ----------------------------------------------------------------------------------------------- membership


def membership(ctx: TestContext) -> TestResult:
    """Membership inference: the attacks' ROC AUC (bootstrap 95 % CI) and TPR at 0.1 % FPR on balanced data."""
    started = time.perf_counter()
    params = ctx.options.params("membership", MEMBERSHIP_DEFAULTS)
    attacks = _membership_attacks(params)
    if ctx.x_train is None or ctx.y_train is None:
        raise ModelTestError("membership: needs the training data (--train), the members")
    seed = ctx.options.seed
    members, nonmembers = split_indices(len(ctx.x_train), len(ctx.x_test), ctx.options.max_rows, seed)
    xm, ym = np.asarray(ctx.x_train)[members], np.asarray(ctx.y_train)[members]
    xn, yn = np.asarray(ctx.x_test)[nonmembers], np.asarray(ctx.y_test)[nonmembers]
    subject = ctx.subject
    pm, pn = subject.predict_proba(xm), subject.predict_proba(xn)
    if not (np.isfinite(pm).all() and np.isfinite(pn).all()):
        raise ModelTestError("membership: the model returned non-finite probabilities")
    entries = []
    for name in attacks:
        t0 = time.perf_counter()
        if name == "shadow":
            entry = _shadow_entry(ctx, xm, ym, pm, xn, yn, pn, params, seed)
        else:
            sm, sn = (_loss_score(pm, ym), _loss_score(pn, yn)) if name == "loss_threshold" else (pm.max(1), pn.max(1))
            entry = attack_entry(name, sm, sn, int(params["bootstrap"]), seed)
        entry["seconds"] = round(time.perf_counter() - t0, 4)
        entries.append(entry)
    train_acc = float(np.mean(pm.argmax(1) == ym))
    test_acc = float(np.mean(pn.argmax(1) == yn))
    metrics = {
        "attacks": entries,
        "max_auc": max(e["auc"] for e in entries),
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "generalization_gap": train_acc - test_acc,
    }
    parameters = {**params, "attacks": list(attacks), "auc_ci": "stratified bootstrap, percentile", "balanced": True}
    rows = {"train": len(ctx.x_train), "test": len(ctx.x_test), "members": len(members), "nonmembers": len(nonmembers)}
    return TestResult("membership", parameters, seed, rows, time.perf_counter() - started, metrics)


def _membership_attacks(params: dict[str, Any]) -> tuple[str, ...]:
    chosen = params["attacks"]
    names = [chosen] if isinstance(chosen, str) else list(chosen) if isinstance(chosen, list | tuple) else []
    if not names or any(n not in ATTACKS for n in names):
        raise ModelTestError(f"membership: attacks must be a list of {list(ATTACKS)}, got {chosen!r}")
    _whole("membership", params, "bootstrap", 100)
    _whole("membership", params, "shadow_models", 1)
    if params["attack_model_type"] not in ATTACK_MODELS:
        raise ModelTestError(f"membership: attack_model_type must be one of {list(ATTACK_MODELS)}")
    return tuple(dict.fromkeys(names))


def _whole(test: str, params: dict[str, Any], key: str, low: int) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < low:
        raise ModelTestError(f"{test}: parameter {key} must be a whole number ≥ {low}, got {value!r}")
    return int(value)


def split_indices(n_train: int, n_test: int, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Members (train rows) and non-members (test rows), equally many, seeded, in a seeded random order.

    Raises:
        ModelTestError: fewer than :data:`MIN_ROWS` rows on either side.
    """
    n = min(n_train, n_test, max_rows)
    if n < MIN_ROWS:
        raise ModelTestError(
            f"membership: needs at least {MIN_ROWS} training and {MIN_ROWS} test rows (got {n_train} and {n_test})"
        )
    rng = np.random.default_rng(seed)
    return rng.permutation(n_train)[:n], rng.permutation(n_test)[:n]


def _loss_score(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``-loss``: the negative cross-entropy (as :meth:`Subject.loss`), higher for likely members."""
    return np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))


def attack_entry(name: str, members: np.ndarray, nonmembers: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """One attack's figures from its scores (higher = more likely a member)."""
    from sklearn.metrics import auc as area
    from sklearn.metrics import roc_curve

    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    scores = np.r_[members, nonmembers].astype(np.float64)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    resolution = 1.0 / len(nonmembers)
    shown_fpr, shown_tpr, _ = roc_curve(labels, scores)
    auc = float(area(shown_fpr, shown_tpr))  # what roc_auc_score computes (the same curve, the same call)
    keep = np.unique(np.linspace(0, len(shown_fpr) - 1, min(ROC_POINTS, len(shown_fpr))).round().astype(int))
    return {
        "attack": name,
        "auc": auc,
        "auc_ci95": bootstrap_auc_ci(members, nonmembers, resamples, seed),
        "tpr_at_fpr_0.001": tpr_at_fpr(fpr, tpr, LOW_FPR),
        "fpr_resolution": resolution,
        "low_fpr_resolved": LOW_FPR >= resolution,
        "members": len(members),
        "nonmembers": len(nonmembers),
        "roc": {"fpr": shown_fpr[keep].tolist(), "tpr": shown_tpr[keep].tolist()},
    }


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The ROC curve's TPR at ``target`` FPR, linear between its two surrounding points (in threshold order).

    Between two operating points the curve is what a randomised threshold achieves; with fewer than
    ``1 / target`` non-members the figure rests on the curve's first step and is no measurement at ``target``.
    """
    below = np.flatnonzero(fpr <= target)
    j = int(below[-1])
    if fpr[j] == target or j + 1 >= len(fpr):
        return float(tpr[j])
    f0, f1, t0, t1 = fpr[j], fpr[j + 1], tpr[j], tpr[j + 1]
    return float(t0 + (t1 - t0) * (target - f0) / (f1 - f0))


def bootstrap_auc_ci(members: np.ndarray, nonmembers: np.ndarray, resamples: int, seed: int) -> list[float]:
    """Percentile 95 % interval of the AUC over ``resamples`` stratified bootstrap resamples (seeded).

    Members and non-members are resampled separately, so their counts stay fixed (see :func:`resampled_aucs`).
    """
    rng = np.random.default_rng(seed)
    nm, nn = len(members), len(nonmembers)
    aucs = np.empty(resamples)
    chunk = max(1, 2_000_000 // (nm + nn))  # resamples drawn at a time: bounded memory (and the draws' order)
    block = max(1, BOOTSTRAP_BLOCK // (nm + nn))  # resamples computed at a time: their arrays stay in cache
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        pick_m, pick_n = rng.integers(0, nm, (b, nm)), rng.integers(0, nn, (b, nn))
        for i in range(0, b, block):  # each resample's AUC is its own: blocking changes the time, not the numbers
            aucs[start + i : start + min(i + block, b)] = resampled_aucs(members, nonmembers, pick_m[i : i + block],
                                                                         pick_n[i : i + block])  # fmt: skip
    low, high = np.percentile(aucs, [2.5, 97.5])
    return [float(low), float(high)]


def resampled_aucs(members: np.ndarray, nonmembers: np.ndarray, pick_m: np.ndarray, pick_n: np.ndarray) -> np.ndarray:
    """The AUC of each resample (row ``b`` takes members ``pick_m[b]`` and non-members ``pick_n[b]``).

    The Mann-Whitney statistic, ties counting one half, as ``roc_auc_score``: each drawn member scores the
    drawn weight of non-members below it, read from a cumulative sum over the sorted non-member scores — linear
    in the rows per resample where ranking each resample would be ``n log n``.
    """
    b, nm = pick_m.shape
    nn = pick_n.shape[1]
    order = np.argsort(nonmembers, kind="stable")
    sorted_n = nonmembers[order]
    lt = np.searchsorted(sorted_n, members, side="left")  # non-members strictly below each member
    le = np.searchsorted(sorted_n, members, side="right")  # ... below or tied
    rank = np.empty(nn, dtype=np.intp)
    rank[order] = np.arange(nn)
    # Drawn weight of each sorted non-member, shifted one column so that cum[:, k] is the weight of the k lowest.
    v = np.bincount((rank[pick_n] + 1 + (np.arange(b) * (nn + 1))[:, None]).ravel(), minlength=b * (nn + 1))
    cum = np.cumsum(v.reshape(b, nn + 1), axis=1, dtype=np.float64)
    below = (np.take(cum, lt, axis=1) + np.take(cum, le, axis=1)) * 0.5  # b × members
    drawn = np.take(below.ravel(), pick_m + (np.arange(b) * nm)[:, None])
    return np.asarray(drawn.sum(axis=1) / (nm * nn), dtype=np.float64)


def _shadow_entry(
    ctx: TestContext,
    xm: np.ndarray,
    ym: np.ndarray,
    pm: np.ndarray,
    xn: np.ndarray,
    yn: np.ndarray,
    pn: np.ndarray,
    params: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Shadow models on the first half of the non-members; evaluated on the second halves of both sides."""
    half = len(xn) // 2
    template, description = shadow_template(ctx.subject, seed)
    flat = len(ctx.subject.input_shape) > 1 or ctx.subject.framework != "sklearn"
    x_shadow = xn[:half].reshape(half, -1) if flat else xn[:half]
    scores = shadow_attack(
        ctx.subject.art_classifier(),
        template,
        x_shadow,
        yn[:half],
        np.r_[pm[half:], pn[half:]],
        np.r_[ym[half:], yn[half:]],
        n_classes=ctx.subject.n_classes,
        shadow_models=int(params["shadow_models"]),
        attack_model_type=str(params["attack_model_type"]),
        seed=seed,
    )
    n_eval = len(xm) - half
    entry = attack_entry("shadow", scores[:n_eval], scores[n_eval:], int(params["bootstrap"]), seed)
    entry.update({"shadow_model": description, "shadow_rows": half})
    return entry


def shadow_template(subject: Any, seed: int) -> tuple[Any, str]:
    """An untrained ART classifier of the subject's family: a clone for scikit-learn, else an MLP approximation.

    Unset ``random_state`` parameters of the clone get the seed (reproducible shadow models); the class count is
    set on the ART wrapper because ART's ``clone_for_refitting`` copies it and refuses an unfitted model's.
    """
    from art.estimators.classification import SklearnClassifier
    from sklearn.base import clone
    from sklearn.neural_network import MLPClassifier

    if subject.framework == "sklearn":
        model = clone(subject.model)
        unseeded = {k: seed for k, v in model.get_params().items() if k.endswith("random_state") and v is None}
        model.set_params(**unseeded)
        description = f"clone of {type(subject.model).__name__}"
    else:
        model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=seed)
        description = f"MLPClassifier(64) on flattened inputs: an approximation of the {subject.framework} model"
    with quiet_art():
        template = SklearnClassifier(model=model)
    template.nb_classes = subject.n_classes
    return template, description


@contextmanager
def quiet_art() -> Iterator[None]:
    """Silence ART's warnings that an unfitted shadow template "might not have been fitted" (it is not, by design)."""
    logger = logging.getLogger("art")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def shadow_attack(
    target: Any,
    template: Any,
    x_shadow: np.ndarray,
    y_shadow: np.ndarray,
    pred_eval: np.ndarray,
    y_eval: np.ndarray,
    *,
    n_classes: int,
    shadow_models: int,
    attack_model_type: str,
    seed: int,
) -> np.ndarray:
    """ART's shadow-model attack: membership probabilities of the evaluation rows (from the target's ``pred_eval``).

    Raises:
        ModelTestError: a shadow model's training half lacks a class (too few shadow rows for the classes).
    """
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox, ShadowModels

    onehot = np.eye(n_classes)[y_shadow]
    with warnings.catch_warnings(), seeded(seed), quiet_art():
        shadow = ShadowModels(template, num_shadow_models=shadow_models, random_state=seed)
        warnings.simplefilter("ignore")  # the shadow models' convergence warnings
        try:
            (_, my, mp), (_, ny, np_) = shadow.generate_shadow_dataset(x_shadow, onehot)
        except ValueError as exc:  # a class missing from a shadow model's half: a fit error or ragged outputs
            raise ModelTestError(
                f"membership: the shadow models cannot be trained on {len(x_shadow)} test rows (a class too rare "
                f"for a random half?): {str(exc)[:200]}"
            ) from None
        if mp.shape[1] != n_classes or np_.shape[1] != n_classes:
            raise ModelTestError(
                f"membership: a shadow model saw only {mp.shape[1]} of {n_classes} classes; give more test rows"
            )
        attack = MembershipInferenceBlackBox(target, attack_model_type=attack_model_type)
        if attack_model_type != "nn" and "random_state" in attack.attack_model.get_params():
            attack.attack_model.set_params(random_state=seed)
        attack.fit(y=my, test_y=ny, pred=mp, test_pred=np_)
        scores = attack.infer(None, np.eye(n_classes)[y_eval], pred=pred_eval, probabilities=True)
    return np.asarray(scores, dtype=np.float64).reshape(-1)


# -------------------------------------------------------------------------------------- attribute inference


def attribute_inference(ctx: TestContext) -> TestResult:
    """ART's black-box attribute inference of the sensitive input feature on held-out training rows."""
    started = time.perf_counter()
    params = ctx.options.params("attribute_inference", ATTRIBUTE_DEFAULTS)
    seed = ctx.options.seed
    if ctx.image:
        return _skipped("attribute_inference", params, seed, started, "attribute inference applies to tables only")
    if ctx.x_train is None or ctx.s_train is None:
        raise ModelTestError("attribute_inference: needs the training data (--train) and --sensitive")
    if params["attack_model_type"] not in ATTACK_MODELS:
        raise ModelTestError(f"attribute_inference: attack_model_type must be one of {list(ATTACK_MODELS)}")
    x = np.asarray(ctx.x_train)
    column = _sensitive_column(x, ctx.s_train, params["feature_index"])
    index = np.random.default_rng(seed).permutation(len(x))[: ctx.options.max_rows]
    x = x[index]
    values = np.unique(x[:, column])
    if len(values) < 2 or len(values) > _whole("attribute_inference", params, "max_values", 2):
        raise ModelTestError(
            f"attribute_inference: the attribute (column {column}) has {len(values)} distinct values; the attack "
            f"treats it as categorical with 2 to {params['max_values']} values"
        )
    half = len(x) // 2
    fit_x, eval_x = x[:half], x[half:]
    if half < MIN_ROWS // 2:
        raise ModelTestError(f"attribute_inference: needs at least {MIN_ROWS} training rows, got {len(x)}")
    guessed, model_free = _attribute_attack(ctx, fit_x, eval_x, column, params, seed)
    truth = eval_x[:, column]
    majority = values[np.argmax([np.sum(fit_x[:, column] == v) for v in values])]
    attack = Rate(int(np.sum(guessed == truth)), len(truth))
    baseline = Rate(int(np.sum(truth == majority)), len(truth))
    free = Rate(int(np.sum(model_free == truth)), len(truth))
    metrics = {
        "attack_accuracy": attack.to_dict(),
        "baseline_accuracy": baseline.to_dict(),
        "advantage": attack.rate - baseline.rate,
        "model_free_accuracy": free.to_dict(),
        "model_advantage": attack.rate - free.rate,
        "feature_index": column,
        "values": len(values),
    }
    parameters = {**params, "feature_index": column, "baseline": "most frequent value of the attack's training half"}
    rows = {"train": len(ctx.x_train), "attack_fit": half, "attack_eval": len(eval_x)}
    return TestResult("attribute_inference", parameters, seed, rows, time.perf_counter() - started, metrics)


def _sensitive_column(x: np.ndarray, sensitive: Any, given: Any) -> int:
    if x.ndim != 2:
        raise ModelTestError(f"attribute_inference: needs a table of features, got shape {x.shape}")
    try:
        s = np.asarray(sensitive, dtype=x.dtype)
    except (TypeError, ValueError):
        raise ModelTestError(
            "attribute_inference: the sensitive attribute is not numeric, so not a model input"
        ) from None
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given < x.shape[1]:
            raise ModelTestError(
                f"attribute_inference: feature_index must be a column 0…{x.shape[1] - 1}, got {given!r}"
            )
        return given
    for j in range(x.shape[1]):
        if np.array_equal(x[:, j], s):
            return j
    raise ModelTestError(
        "attribute_inference: no feature column equals the sensitive attribute; the model must take it as an "
        "input (or give feature_index)"
    )


def _attribute_attack(
    ctx: TestContext, fit_x: np.ndarray, eval_x: np.ndarray, column: int, params: dict[str, Any], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The attack's guesses on ``eval_x`` and ART's model-free baseline's (both trained on ``fit_x``)."""
    from art.attacks.inference.attribute_inference import AttributeInferenceBaseline, AttributeInferenceBlackBox

    kind = str(params["attack_model_type"])
    others = np.delete(eval_x, column, axis=1)
    pred = ctx.subject.predict(eval_x).reshape(-1, 1)
    with warnings.catch_warnings(), seeded(seed):
        warnings.simplefilter("ignore")
        attack = AttributeInferenceBlackBox(ctx.subject.art_classifier(), attack_model_type=kind, attack_feature=column)
        baseline = AttributeInferenceBaseline(attack_model_type=kind, attack_feature=column)
        for model in (attack.attack_model, baseline.attack_model):
            if model is not None and "random_state" in model.get_params():
                model.set_params(random_state=seed)
        attack.fit(fit_x)
        baseline.fit(fit_x)
        guessed = attack.infer(others, pred=pred, values=np.unique(fit_x[:, column]).tolist())
        model_free = baseline.infer(others, values=np.unique(fit_x[:, column]).tolist())
    return np.asarray(guessed).reshape(-1), np.asarray(model_free).reshape(-1)


def _skipped(test: str, params: dict[str, Any], seed: int, started: float, reason: str) -> TestResult:
    return TestResult(test, params, seed, {}, time.perf_counter() - started, {}, status="skipped", reason=reason)


# ------------------------------------------------------------------------------------------------ inversion


def inversion(ctx: TestContext) -> TestResult:
    """ART's MIFace: one reconstruction per class (PNG) and the model's confidence in its class."""
    started = time.perf_counter()
    params = ctx.options.params("inversion", INVERSION_DEFAULTS)
    seed = ctx.options.seed
    subject = ctx.subject
    if not ctx.image:
        return _skipped("inversion", params, seed, started, "model inversion applies to image models only")
    if not subject.differentiable:
        reason = f"MIFace needs the model's gradients; a {subject.framework} model of this kind has none in ART"
        return _skipped("inversion", params, seed, started, reason)
    n = min(subject.n_classes, _whole("inversion", params, "max_classes", 1))
    max_iter = _whole("inversion", params, "max_iter", 1)
    from art.attacks.inference.model_inversion import MIFace

    lo, hi = (float(v) for v in ctx.clip_values)
    shape = tuple(np.asarray(ctx.x_test).shape[1:])
    attack = MIFace(
        subject.art_classifier((lo, hi)),
        max_iter=max_iter,
        learning_rate=float(params["learning_rate"]),
        threshold=float(params["threshold"]),
        batch_size=n,
        verbose=False,
    )
    classes = np.arange(n)
    with seeded(seed):
        recon = attack.infer(None, classes)
    confidence = subject.predict_proba(recon)[classes, classes]
    entries = [
        {"class": int(c), "png_base64": to_png(recon[c].reshape(shape), lo, hi), "confidence": float(confidence[c])}
        for c in classes
    ]
    metrics = {"classes": entries, "mean_confidence": float(confidence.mean())}
    parameters = {**params, "start": "zeros (ART's default)", "clip_values": [lo, hi]}
    return TestResult("inversion", parameters, seed, {"classes": n}, time.perf_counter() - started, metrics)


def to_png(image: np.ndarray, lo: float, hi: float) -> str:
    """An image ``(channels, height, width)`` (or ``(height, width)``) in ``[lo, hi]`` as base64 PNG, 8 bits."""
    from PIL import Image

    scaled = np.clip((np.asarray(image, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    pixels = np.round(scaled * 255).astype(np.uint8)
    if pixels.ndim == 3:
        pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels[:3], 0, -1)
    if pixels.ndim != 2 and not (pixels.ndim == 3 and pixels.shape[-1] == 3):
        raise ModelTestError(f"inversion: cannot draw an image of shape {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
