"""Membership inference, attribute inference and model inversion against models with planted behaviour."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mlwarden.estimators import subject_from_object
from mlwarden.modeltest.model import ModelTestError, ModelTestOptions, TestContext
from mlwarden.modeltest.privacy import (
    attribute_inference,
    inversion,
    membership,
    resampled_aucs,
    shadow_attack,
    shadow_template,
    split_indices,
    tpr_at_fpr,
)

from .digits import split, train_mlp

SEEDS = [0, 1, 2]


def _context(model: Any, x: np.ndarray, y: np.ndarray, n_train: int, seed: int, **options: Any) -> TestContext:
    """Fit ``model`` on the first ``n_train`` rows; the rest are the test (non-member) rows."""
    model.fit(x[:n_train], y[:n_train])
    subject = subject_from_object(model, x[n_train : n_train + 5])
    return TestContext(
        subject,
        x[n_train:],
        subject.encode(y[n_train:]),
        ModelTestOptions(seed=seed, **options),
        x_train=x[:n_train],
        y_train=subject.encode(y[:n_train]),
    )


def _noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy binary task: 20 % of the labels flipped at random, so memorising them is what betrays members."""
    x, y = make_classification(n_samples=n, n_features=20, n_informative=6, flip_y=0.2, random_state=seed)
    return x.astype(np.float32), y


# ------------------------------------------------------------------------------------------------ membership


@pytest.mark.parametrize("seed", SEEDS)
def test_an_overfit_forest_betrays_its_members(seed: int) -> None:
    # Unlimited-depth trees on 300 noisy rows memorise the flipped labels: measured max AUC 0.81-0.89 (seeds 0-2).
    x, y = _noisy(600, seed)
    result = membership(_context(RandomForestClassifier(n_estimators=50, random_state=seed), x, y, 300, seed))
    metrics = result.metrics
    assert metrics["max_auc"] >= 0.7
    assert metrics["generalization_gap"] > 0.1
    assert result.rows["members"] == result.rows["nonmembers"] == 300
    assert [e["attack"] for e in metrics["attacks"]] == ["loss_threshold", "confidence_threshold", "shadow"]
    for entry in metrics["attacks"]:
        low, high = entry["auc_ci95"]
        assert low <= entry["auc"] <= high
        assert entry["members"] + entry["nonmembers"] in (600, 300)  # the shadow attack evaluates on halves
        assert entry["fpr_resolution"] == pytest.approx(1 / entry["nonmembers"])
        assert entry["low_fpr_resolved"] is False  # 300 non-members cannot resolve a 0.1 % FPR
        assert len(entry["roc"]["fpr"]) == len(entry["roc"]["tpr"]) <= 200
    assert metrics["max_auc"] == max(e["auc"] for e in metrics["attacks"])


@pytest.mark.parametrize("seed", SEEDS)
def test_a_regularised_model_on_much_data_does_not(seed: int) -> None:
    # Strongly regularised logistic regression on 3000 rows: train and test behave alike (measured 0.48-0.52).
    x, y = _noisy(4000, seed)
    result = membership(_context(LogisticRegression(C=0.01), x, y, 3000, seed))
    assert result.metrics["max_auc"] <= 0.6
    assert abs(result.metrics["generalization_gap"]) < 0.05
    assert result.rows == {"train": 3000, "test": 1000, "members": 1000, "nonmembers": 1000}


def test_the_loss_attack_is_sklearns_auc_of_the_negative_loss() -> None:
    x, y = _noisy(600, 0)
    ctx = _context(RandomForestClassifier(n_estimators=20, random_state=0), x, y, 300, 7)
    result = membership(ctx)
    members, nonmembers = split_indices(300, 300, ctx.options.max_rows, 7)
    scores = np.r_[-ctx.subject.loss(ctx.x_train[members], ctx.y_train[members]),
                   -ctx.subject.loss(ctx.x_test[nonmembers], ctx.y_test[nonmembers])]  # fmt: skip
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(300)], scores)
    assert result.metrics["attacks"][0]["auc"] == pytest.approx(expected, abs=1e-12)
    assert result.parameters["bootstrap"] == 1000
    assert result.seed == 7


def test_tpr_at_low_fpr_interpolates_between_the_surrounding_operating_points() -> None:
    fpr = np.array([0.0, 0.0, 0.002, 0.5, 1.0])
    tpr = np.array([0.0, 0.3, 0.5, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.001) == pytest.approx(0.4)  # halfway from (0, 0.3) to (0.002, 0.5)
    assert tpr_at_fpr(fpr, tpr, 0.002) == pytest.approx(0.5)
    assert tpr_at_fpr(np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.7, 1.0]), 0.0) == pytest.approx(0.7)


def test_each_bootstrap_auc_is_sklearns_auc_of_that_resample() -> None:
    rng = np.random.default_rng(0)
    members = rng.integers(0, 6, 40).astype(float)  # few distinct scores: many ties
    nonmembers = rng.integers(0, 5, 30).astype(float)
    pick_m, pick_n = rng.integers(0, 40, (5, 40)), rng.integers(0, 30, (5, 30))
    fast = resampled_aucs(members, nonmembers, pick_m, pick_n)
    for b in range(5):
        labels = np.r_[np.ones(40), np.zeros(30)]
        expected = roc_auc_score(labels, np.r_[members[pick_m[b]], nonmembers[pick_n[b]]])
        assert fast[b] == pytest.approx(expected, abs=1e-12)


def test_many_nonmembers_resolve_the_low_fpr_figure() -> None:
    x, y = _noisy(6000, 3)
    ctx = _context(LogisticRegression(C=0.01), x, y, 3000, 3, max_rows=2000)
    entry = membership(ctx).metrics["attacks"][0]
    assert entry["nonmembers"] == 2000
    assert entry["fpr_resolution"] == pytest.approx(0.0005)
    assert entry["low_fpr_resolved"] is True
    assert 0.0 <= entry["tpr_at_fpr_0.001"] < 0.05  # a model that leaks nothing has TPR ≈ FPR


def test_the_shadow_attack_equals_art_run_directly() -> None:
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox, ShadowModels
    from art.estimators.classification import SklearnClassifier
    from sklearn.base import clone

    seed = 5
    x, y = _noisy(800, seed)
    ctx = _context(RandomForestClassifier(n_estimators=30, random_state=seed), x, y, 400, seed)
    ours = membership(ctx).metrics["attacks"][2]
    assert ours["attack"] == "shadow"
    assert ours["shadow_model"] == "clone of RandomForestClassifier"

    # The same split, by hand: shadow models on the first half of the non-members, evaluation on the second halves.
    members, nonmembers = split_indices(400, 400, 1000, seed)
    xm, ym = ctx.x_train[members], ctx.y_train[members]
    xn, yn = ctx.x_test[nonmembers], ctx.y_test[nonmembers]
    half = 200
    template = SklearnClassifier(model=clone(ctx.subject.model))
    template.nb_classes = 2
    shadow = ShadowModels(template, num_shadow_models=3, random_state=seed)
    (_, my, mp), (_, ny, npred) = shadow.generate_shadow_dataset(xn[:half], np.eye(2)[yn[:half]])
    attack = MembershipInferenceBlackBox(SklearnClassifier(model=ctx.subject.model), attack_model_type="rf")
    attack.attack_model.set_params(random_state=seed)
    attack.fit(y=my, test_y=ny, pred=mp, test_pred=npred)
    x_eval, y_eval = np.r_[xm[half:], xn[half:]], np.r_[ym[half:], yn[half:]]
    scores = attack.infer(x_eval, np.eye(2)[y_eval], probabilities=True).ravel()
    art_auc = roc_auc_score(np.r_[np.ones(half), np.zeros(half)], scores)
    assert ours["auc"] == pytest.approx(art_auc, abs=1e-9)
    assert ours["members"] == ours["nonmembers"] == half


def test_a_shadow_model_must_see_every_class() -> None:
    x, y = make_classification(n_samples=300, n_classes=3, n_informative=4, random_state=0)
    x = x.astype(np.float32)
    model = LogisticRegression().fit(x, y)
    subject = subject_from_object(model, x[:5])
    template, _ = shadow_template(subject, 0)
    rare = np.r_[np.zeros(20), np.ones(19), [2]].astype(np.int64)  # class 2 once: missing from some random half
    with pytest.raises(ModelTestError, match="shadow model"):
        shadow_attack(subject.art_classifier(), template, x[:40], rare, model.predict_proba(x[:10]),
                      np.zeros(10, np.int64), n_classes=3, shadow_models=3, attack_model_type="rf", seed=0)  # fmt: skip


def test_a_torch_model_gets_an_mlp_shadow_and_its_overfitting_shows() -> None:
    import torch

    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = split()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.tensor(x_train[:150]), torch.tensor(y_train[:150])
    for _ in range(300):  # 150 rows, 300 full-batch steps: memorised
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        optimiser.step()
    subject = subject_from_object(net.eval(), x_test[:5])
    ctx = TestContext(subject, x_test, y_test, ModelTestOptions(seed=0), x_train=x_train[:150], y_train=y_train[:150])
    metrics = membership(ctx).metrics
    shadow = metrics["attacks"][2]
    assert shadow["shadow_model"].startswith("MLPClassifier(64)")
    assert "torch" in shadow["shadow_model"]
    assert metrics["train_accuracy"] == 1.0
    assert metrics["max_auc"] >= 0.7


def test_membership_needs_training_data() -> None:
    x, y = _noisy(200, 0)
    ctx = _context(LogisticRegression(), x, y, 100, 0)
    ctx.x_train = None
    with pytest.raises(ModelTestError, match="needs the training data"):
        membership(ctx)


def test_membership_refuses_unknown_attacks_and_tiny_data() -> None:
    x, y = _noisy(200, 0)
    ctx = _context(LogisticRegression(), x, y, 100, 0, overrides={"membership": {"attacks": ["lira"]}})
    with pytest.raises(ModelTestError, match="attacks must be a list"):
        membership(ctx)
    with pytest.raises(ModelTestError, match="at least 20"):
        split_indices(15, 500, 1000, 0)


# ---------------------------------------------------------------------------------------- attribute inference


def _attribute_context(drives: bool, seed: int) -> TestContext:
    """Column 2 is the sensitive attribute; it decides the label (10 % noise) or is unused noise."""
    rng = np.random.default_rng(seed)
    n = 1000
    s = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 5))
    if drives:
        y = np.where(rng.random(n) < 0.1, 1 - s, s)
    else:
        y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(int)
    features = np.c_[x[:, :2], s, x[:, 2:]].astype(np.float32)
    model = LogisticRegression().fit(features, y) if drives else _ignoring_column(2).fit(features, y)
    subject = subject_from_object(model, features[:5])
    return TestContext(subject, features[:50], subject.encode(y[:50]), ModelTestOptions(seed=seed),
                       x_train=features, y_train=subject.encode(y), s_train=s)  # fmt: skip


def _ignoring_column(column: int) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline

    drop = ColumnTransformer([("drop", "drop", [column])], remainder="passthrough")
    return make_pipeline(drop, LogisticRegression())


@pytest.mark.parametrize("seed", SEEDS)
def test_an_attribute_that_drives_the_label_is_recovered(seed: int) -> None:
    result = attribute_inference(_attribute_context(True, seed))
    metrics = result.metrics
    assert metrics["feature_index"] == 2  # found as the column equal to the sensitive values
    assert metrics["advantage"] > 0.3  # measured 0.49-0.51: the predicted class is the attribute 90 % of the time
    assert metrics["attack_accuracy"]["ci95"][0] > metrics["baseline_accuracy"]["ci95"][1]
    assert metrics["advantage"] == pytest.approx(
        metrics["attack_accuracy"]["rate"] - metrics["baseline_accuracy"]["rate"]
    )
    assert result.rows == {"train": 1000, "attack_fit": 500, "attack_eval": 500}


@pytest.mark.parametrize("seed", SEEDS)
def test_an_unused_noise_attribute_is_not(seed: int) -> None:
    metrics = attribute_inference(_attribute_context(False, seed)).metrics
    assert abs(metrics["advantage"]) < 0.1
    assert abs(metrics["model_advantage"]) < 0.1


def test_attribute_inference_needs_the_attribute_as_a_model_input() -> None:
    ctx = _attribute_context(True, 0)
    ctx.s_train = np.asarray(ctx.s_train) + 5  # no column holds these values
    with pytest.raises(ModelTestError, match="no feature column equals the sensitive attribute"):
        attribute_inference(ctx)
    ctx.s_train = np.array(["a", "b"] * 500)
    with pytest.raises(ModelTestError, match="not numeric"):
        attribute_inference(ctx)
    ctx.s_train = None
    with pytest.raises(ModelTestError, match="--sensitive"):
        attribute_inference(ctx)


def test_attribute_inference_skips_images() -> None:
    ctx = _attribute_context(True, 0)
    ctx.image = True
    result = attribute_inference(ctx)
    assert result.status == "skipped"
    assert "tables only" in result.reason


# ------------------------------------------------------------------------------------------------- inversion


def _decode(png: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png))), dtype=np.float32) / 255.0


def test_miface_reconstructs_images_the_model_assigns_to_their_class() -> None:
    import torch

    torch.set_num_threads(1)
    net = train_mlp(image=True)
    _, _, x_test, y_test = split()
    images = x_test.reshape(-1, 1, 8, 8)
    subject = subject_from_object(net, images[:5])
    ctx = TestContext(subject, images, y_test, ModelTestOptions(seed=0), image=True)
    result = inversion(ctx)
    entries = result.metrics["classes"]
    assert [e["class"] for e in entries] == list(range(10))
    recon = np.stack([_decode(e["png_base64"]) for e in entries])
    assert recon.shape == (10, 8, 8)  # valid PNGs of the input size
    probabilities = subject.predict_proba(recon[:, None])  # the model on the decoded (8-bit) reconstructions
    own = float(np.mean(np.diag(probabilities)))
    others = float((probabilities.sum() - np.trace(probabilities)) / 90)
    assert own > 0.5 > others  # a blank start gives every class the same mean: the inversion moved toward its class
    start = subject.predict_proba(np.zeros((1, 1, 8, 8), dtype=np.float32))[0]
    assert own > float(start.max())
    assert result.metrics["mean_confidence"] == pytest.approx(np.mean([e["confidence"] for e in entries]))


def test_inversion_skips_tables_and_models_without_gradients() -> None:
    x, y = _noisy(200, 0)
    ctx = _context(RandomForestClassifier(n_estimators=5, random_state=0), x, y, 100, 0)
    assert inversion(ctx).status == "skipped"
    ctx.image = True
    result = inversion(ctx)
    assert result.status == "skipped"
    assert "gradients" in result.reason
