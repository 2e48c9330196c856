"""Adversarial-input detectors against FGSM and PGD on scikit-learn's 8x8 digits (pixels scaled to [0, 1]).

Setup: 50% train, 25% clean calibration, 25% clean held-out test. Victims: a scikit-learn LogisticRegression
(95.8% test accuracy) and a 64-128-10 torch MLP (97.1%). Attacks are white-box L-inf, eps=0.1 (1.6 of the 16
grey levels), written here in torch independently of the adapters: FGSM (one step) and PGD (20 steps of
eps/8, random start); the logistic regression is attacked through an exact torch copy of its linear layer.
Rates are measured on *successful* adversarial examples (clean input correctly classified, adversarial input
misclassified); thresholds are calibrated at fpr=0.05 on the calibration split, false positives are measured on
the held-out split. Measured (seeded, torch 2.13 CPU), detection / false-positive rate:

    model  attack  success  squeeze(2-bit)  noise(KL)    grad-norm    combined
    lr     fgsm    34%      0.59 / 0.06     0.68 / 0.06  0.49 / 0.06  0.66 / 0.06
    lr     pgd     36%      0.64 / 0.06     0.59 / 0.06  0.48 / 0.06  0.69 / 0.05
    torch  fgsm    68%      0.73 / 0.08     0.45 / 0.06  0.25 / 0.06  0.70 / 0.08
    torch  pgd     70%      0.71 / 0.08     0.34 / 0.07  0.17 / 0.06  0.66 / 0.08

Known limit (measured, not asserted): at eps=0.2 PGD drives the torch MLP to confident wrong answers and every
detector falls to the false-positive level (3-8%); such inputs are far from the data and are the input
validator's (out-of-distribution) job. Median smoothing is too destructive for 8x8 images and is left out here.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from mlwarden.core.errors import UsageError
from mlwarden.guard.adversarial import (
    CombinedDetector,
    Detector,
    FeatureSqueezing,
    GradientNorm,
    NoiseDisagreement,
)
from mlwarden.guard.model_api import SklearnModel, TorchModel, is_differentiable

EPS = 0.1
FPR = 0.05
MAX_FPR = 0.10  # on held-out clean data, for a target of 0.05 on the calibration split

# Lower bounds on the detection rate: the measured figure (module docstring) minus a margin of ~0.1.
MIN_DETECTION = {
    ("lr", "fgsm"): {"feature_squeezing": 0.5, "noise_disagreement": 0.55, "gradient_norm": 0.38, "combined": 0.55},
    ("lr", "pgd"): {"feature_squeezing": 0.52, "noise_disagreement": 0.48, "gradient_norm": 0.37, "combined": 0.58},
    ("torch", "fgsm"): {"feature_squeezing": 0.62, "noise_disagreement": 0.34, "gradient_norm": 0.15, "combined": 0.6},
    ("torch", "pgd"): {"feature_squeezing": 0.6, "noise_disagreement": 0.24, "gradient_norm": 0.11, "combined": 0.56},
}


class Setup:
    def __init__(self) -> None:
        x, y = load_digits(return_X_y=True)
        x = x / 16.0
        self.x_train, rest_x, self.y_train, rest_y = train_test_split(x, y, test_size=0.5, random_state=0, stratify=y)
        self.x_cal, self.x_test, _, self.y_test = train_test_split(
            rest_x, rest_y, test_size=0.5, random_state=0, stratify=rest_y
        )
        self.lr = LogisticRegression(max_iter=2000).fit(self.x_train, self.y_train)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        opt = torch.optim.Adam(self.net.parameters(), 1e-2)
        xt, yt = torch.tensor(self.x_train, dtype=torch.float32), torch.tensor(self.y_train)
        for _ in range(200):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(self.net(xt), yt).backward()
            opt.step()
        self.net.eval()
        # An exact torch copy of the logistic regression (softmax over W x + b), used only to attack it.
        self.lr_torch = torch.nn.Linear(64, 10).double()
        with torch.no_grad():
            self.lr_torch.weight.copy_(torch.tensor(self.lr.coef_))
            self.lr_torch.bias.copy_(torch.tensor(self.lr.intercept_))

    def victim(self, name: str) -> tuple[SklearnModel | TorchModel, torch.nn.Module]:
        if name == "lr":
            return SklearnModel(self.lr), self.lr_torch
        return TorchModel(self.net), self.net


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    # One intra-op thread: these models are tiny, and with pytest-xdist workers on a small machine torch's
    # thread pool oversubscribes the cores (setup went from 2 s to 40 s). Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Setup()
    finally:
        torch.set_num_threads(threads)


def attack(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, eps: float, steps: int, seed: int = 0) -> np.ndarray:
    """FGSM (steps=1) or PGD (L-inf, random start, step eps/8) in torch, clipped to [0, 1]."""
    dtype = next(net.parameters()).dtype
    x0 = torch.tensor(x, dtype=dtype)
    labels = torch.tensor(y)
    adv = x0.clone()
    step = eps
    if steps > 1:
        gen = torch.Generator().manual_seed(seed)
        adv = (x0 + (torch.rand(x0.shape, generator=gen, dtype=dtype) * 2 - 1) * eps).clamp(0, 1)
        step = eps / 8
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(adv), labels)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = torch.min(torch.max(adv.detach() + step * grad.sign(), x0 - eps), x0 + eps).clamp(0, 1)
    return adv.detach().double().numpy()


def detectors(model: SklearnModel | TorchModel) -> list[Detector]:
    def parts() -> list[Detector]:
        return [
            FeatureSqueezing(model, bit_depths=(2,), median_size=None),
            NoiseDisagreement(model, sigma=0.1, n_samples=32, seed=0),
            GradientNorm(model),
        ]

    return [*parts(), CombinedDetector(parts())]


@pytest.mark.parametrize("model_name", ["lr", "torch"])
@pytest.mark.parametrize("attack_name", ["fgsm", "pgd"])
def test_detects_attacks_at_measured_rate_with_bounded_false_positives(
    setup: Setup, model_name: str, attack_name: str
) -> None:
    """Measured figures: see the table in the module docstring (eps=0.1, calibrated at fpr=0.05)."""
    model, net = setup.victim(model_name)
    adv = attack(net, setup.x_test, setup.y_test, eps=EPS, steps=1 if attack_name == "fgsm" else 20)
    clean_ok = model.predict_proba(setup.x_test).argmax(1) == setup.y_test
    fooled = model.predict_proba(adv).argmax(1) != setup.y_test
    adversarial = adv[clean_ok & fooled]
    assert len(adversarial) >= 100  # the attack works (34-69% success here), so the rates are meaningful

    bounds = MIN_DETECTION[(model_name, attack_name)]
    for det in detectors(model):
        det.calibrate(setup.x_cal, fpr=FPR)
        detection = np.mean([s.flagged for s in det.check(adversarial)])
        false_pos = np.mean([s.flagged for s in det.check(setup.x_test)])
        assert detection >= bounds[det.name], f"{det.name}: detection {detection:.2f}"
        assert false_pos <= MAX_FPR, f"{det.name}: false positives {false_pos:.2f}"
        assert detection > 2 * false_pos, f"{det.name}: no better than chance"


def test_calibration_keeps_false_positives_on_reference_data(setup: Setup) -> None:
    model = SklearnModel(setup.lr)
    for fpr in (0.01, 0.05, 0.2):
        det = FeatureSqueezing(model, bit_depths=(2,), median_size=None)
        threshold = det.calibrate(setup.x_cal, fpr=fpr)
        rate = np.mean(det.scores(setup.x_cal) > threshold)
        assert rate <= fpr
        assert rate >= fpr - 0.02  # the quantile is tight, not a blanket high threshold


def test_score_carries_evidence(setup: Setup) -> None:
    model = SklearnModel(setup.lr)
    det = FeatureSqueezing(model, bit_depths=(1, 3), median_size=2, image_shape=(8, 8))
    det.calibrate(setup.x_cal, fpr=0.05)
    (score,) = det.check(setup.x_test[:1])
    assert score.detector == "feature_squeezing"
    assert score.threshold == det.threshold
    assert score.flagged == (score.score > score.threshold)
    assert score.detail["squeezer"] in {"bit_depth_1", "bit_depth_3", "median_2x2"}
    assert score.score == max(score.detail[k] for k in ("l1_bit_depth_1", "l1_bit_depth_3", "l1_median_2x2"))
    with pytest.raises(TypeError):
        score.detail["squeezer"] = "x"  # type: ignore[index]


def test_squeezers_do_what_the_paper_says(setup: Setup) -> None:
    det = FeatureSqueezing(SklearnModel(setup.lr), bit_depths=(1,), median_size=2, image_shape=(8, 8))
    img = np.zeros((1, 64))
    img[0, 27] = 1.0  # an isolated bright pixel: removed by median smoothing
    img[0, 0] = 0.4  # below one half: 1-bit squeezing maps it to 0
    squeezed = det._squeezers(img)
    assert set(np.unique(squeezed["bit_depth_1"])) <= {0.0, 1.0}
    assert squeezed["bit_depth_1"][0, 0] == 0.0
    assert squeezed["bit_depth_1"][0, 27] == 1.0
    assert squeezed["median_2x2"][0, 27] == 0.0


def test_noise_disagreement_with_second_model(setup: Setup) -> None:
    """Ensemble disagreement: with a random forest as a second voter, inputs the two models label differently
    get flip rates >= 1/33 from that vote alone, and the score stays calibrated on clean data."""
    forest = RandomForestClassifier(n_estimators=50, random_state=0).fit(setup.x_train, setup.y_train)
    model = SklearnModel(setup.lr)
    det = NoiseDisagreement(
        model, sigma=0.1, n_samples=32, statistic="flip_rate", ensemble=[SklearnModel(forest)], seed=1
    )
    det.calibrate(setup.x_cal, fpr=0.1)
    scores = det.check(setup.x_test)
    disagree = model.predict_proba(setup.x_test).argmax(1) != forest.predict_proba(setup.x_test).argmax(1)
    assert disagree.any()
    assert all(s.detail["flip_rate"] >= 1 / 33 for s, d in zip(scores, disagree, strict=True) if d)
    assert np.mean([s.flagged for s in scores]) <= 0.15


def test_sklearn_gradient_matches_torch_autograd(setup: Setup) -> None:
    model = SklearnModel(setup.lr)
    x = setup.x_test[:5]
    label = np.array([0, 3, 5, 7, 9])
    xt = torch.tensor(x, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(setup.lr_torch(xt), torch.tensor(label), reduction="sum")
    (expected,) = torch.autograd.grad(loss, xt)
    np.testing.assert_allclose(model.gradient(x, label), expected.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(TorchModel(setup.lr_torch).gradient(x, label), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_refusals(setup: Setup) -> None:
    forest = SklearnModel(RandomForestClassifier(n_estimators=5, random_state=0).fit(setup.x_train, setup.y_train))
    assert not is_differentiable(forest)
    with pytest.raises(UsageError, match="not differentiable"):
        GradientNorm(forest)
    with pytest.raises(UsageError, match="not differentiable"):
        GradientNorm(TorchModel(setup.net, differentiable=False))
    det = FeatureSqueezing(forest)
    with pytest.raises(UsageError, match="not calibrated"):
        det.check(setup.x_test[:2])
    with pytest.raises(UsageError, match="at least 20"):
        det.calibrate(setup.x_cal[:10], fpr=0.05)
    with pytest.raises(UsageError, match="fpr"):
        det.calibrate(setup.x_cal, fpr=1.0)
    bad = setup.x_test[:2].copy()
    bad[0, 0] = np.nan
    with pytest.raises(UsageError, match="NaN"):
        det.scores(bad)
    with pytest.raises(UsageError, match="image_shape"):
        FeatureSqueezing(forest, image_shape=(7, 7)).scores(setup.x_test[:2])
    with pytest.raises(UsageError):
        NoiseDisagreement(forest, sigma=0.0)
    with pytest.raises(UsageError, match="predict_proba"):
        SklearnModel(object())
