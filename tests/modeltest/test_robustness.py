"""The robustness test against planted ground truth: ART run by hand, a threshold whose distances are known."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from mlwarden.estimators import subject_from_object
from mlwarden.modeltest import ModelTestOptions
from mlwarden.modeltest.run import run_on_subject

from .digits import split, train_mlp

torch.set_num_threads(1)


def _robustness(model: Any, x: np.ndarray, y: np.ndarray, **options: Any) -> Any:
    subject = subject_from_object(model, x[:4])
    (result,) = run_on_subject(subject, x, y, ModelTestOptions(tests=("robustness",), **options))
    assert result.status == "ok", result.reason
    return result


def _attack(result: Any, name: str) -> dict[str, Any]:
    return next(a for a in result.metrics["attacks"] if a["attack"] == name)


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    return train_mlp()


def test_pgd_on_an_undefended_mlp_matches_art_run_directly(mlp: torch.nn.Module) -> None:
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    _, _, x, y = split()
    x, y = x[:400], y[:400]
    eps = 0.1  # the range is [0, 1] (digits / 16): the absolute budget is 0.1 as well
    result = _robustness(mlp, x, y, eps=(eps,), max_rows=400, seed=3)
    ours = _attack(result, "pgd")["points"][0]

    classifier = PyTorchClassifier(mlp, loss=torch.nn.CrossEntropyLoss(), input_shape=(64,), nb_classes=10,
                                   clip_values=(float(x.min()), float(x.max())))  # fmt: skip
    np.random.seed(3)
    torch.manual_seed(3)
    attack = ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=eps / 4, max_iter=20,
                                      num_random_init=1, verbose=False)  # fmt: skip
    direct = float((classifier.predict(attack.generate(x, y=y)).argmax(1) == y).mean())

    clean = result.metrics["clean_accuracy"]["rate"]
    assert clean > 0.9
    assert ours["accuracy"] == pytest.approx(direct, abs=0.02)  # measured: both 0.3525 (clean 0.935)
    assert ours["accuracy"] < clean - 0.3
    assert ours["eps_abs"] == pytest.approx(eps)
    assert ours["count"] == round(ours["accuracy"] * 400)
    assert ours["ci95"][0] < ours["accuracy"] < ours["ci95"][1]
    assert result.parameters["eps_step_ratio"] == 0.25
    assert result.parameters["max_iter"] == 20
    # FGSM is one PGD step without restarts: never much stronger; Gaussian noise of the same size barely hurts.
    fgsm = _attack(result, "fgsm")["points"][0]["accuracy"]
    noise = _attack(result, "gaussian_noise")["points"][0]["accuracy"]
    assert fgsm >= ours["accuracy"] - 0.03
    assert noise > clean - 0.1


def test_pgd_accuracy_does_not_rise_with_the_budget(mlp: torch.nn.Module) -> None:
    _, _, x, y = split()
    result = _robustness(mlp, x, y, eps=(0.01, 0.02, 0.05, 0.1, 0.2), max_rows=300)
    points = _attack(result, "pgd")["points"]
    for smaller, larger in zip(points, points[1:], strict=False):
        assert larger["accuracy"] <= smaller["ci95"][1]
    assert points[-1]["accuracy"] < 0.1  # eps 0.2 of the range fools an undefended MLP almost always
    assert result.rows == {"test": 300}


def test_logistic_regression_is_attacked_white_box_in_its_own_input_range() -> None:
    x, y = load_digits(return_X_y=True)  # pixels 0-16: eps is a fraction of that range
    model = LogisticRegression(max_iter=500).fit(x[:1200], y[:1200])
    result = _robustness(model, x[1200:], y[1200:], eps=(0.05, 0.2), max_rows=200)
    names = [a["attack"] for a in result.metrics["attacks"]]
    assert names == ["fgsm", "pgd", "gaussian_noise"]
    assert result.parameters["clip_values"] == [0.0, 16.0]
    pgd = _attack(result, "pgd")["points"]
    assert [p["eps_abs"] for p in pgd] == pytest.approx([0.8, 3.2])
    assert pgd[1]["accuracy"] < result.metrics["clean_accuracy"]["rate"] - 0.5


def _threshold_data(features: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray, DecisionTreeClassifier]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(400, features)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    return x[200:], y[200:], DecisionTreeClassifier(max_depth=1).fit(x[:200], y[:200])


@pytest.mark.parametrize("features", [1, 3])
def test_hopskipjump_finds_the_known_distance_to_a_threshold(features: int) -> None:
    # A stump on feature 0 at threshold t: the smallest L-inf change that flips row i is |x_i0 - t|. So the
    # accuracy at eps must be the share of rows that are correct and farther than eps * range from t.
    x, y, stump = _threshold_data(features)
    x, y = x[:50], y[:50]
    hsj = {"hsj_rows": 50, "hsj_max_iter": 5, "hsj_max_eval": 100, "hsj_init_eval": 10}
    eps = (0.02, 0.05, 0.1, 0.2, 0.3)
    result = _robustness(stump, x, y, eps=eps, max_rows=50, overrides={"robustness": hsj})
    attack = _attack(result, "hopskipjump")
    assert attack["kind"] == "black_box"
    assert [a["attack"] for a in result.metrics["attacks"]] == ["hopskipjump", "gaussian_noise"]

    lo, hi = result.parameters["clip_values"]
    distance = np.abs(x[:, 0] - stump.tree_.threshold[0])
    correct = stump.predict(x) == y
    expected = [float(np.mean(correct & (distance > e * (hi - lo)))) for e in eps]
    got = [p["accuracy"] for p in attack["points"]]
    assert got == pytest.approx(expected, abs=0.021)  # one row in 50; measured: equal
    assert expected[0] - expected[-1] > 0.4  # the curve has to fall for this to test anything
    assert attack["median_linf"] == pytest.approx(float(np.median(distance[correct])), abs=0.01)
    assert result.rows == {"test": 50, "hopskipjump": 50}


def test_hopskipjump_is_reproducible_with_the_seed() -> None:
    x, y, stump = _threshold_data(2, seed=5)
    hsj = {"robustness": {"hsj_rows": 15, "hsj_max_iter": 3, "hsj_max_eval": 50, "hsj_init_eval": 10}}
    first = _robustness(stump, x, y, eps=(0.05, 0.1), max_rows=100, overrides=hsj)
    second = _robustness(stump, x, y, eps=(0.05, 0.1), max_rows=100, overrides=hsj)
    assert _attack(first, "hopskipjump") | {"seconds": 0} == _attack(second, "hopskipjump") | {"seconds": 0}


def test_a_random_forest_is_attacked_black_box() -> None:
    x_train, y_train, x, y = split()
    forest = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=1).fit(x_train, y_train)
    hsj = {"robustness": {"hsj_rows": 10, "hsj_max_iter": 3, "hsj_max_eval": 100, "hsj_init_eval": 10}}
    result = _robustness(forest, x, y, eps=(0.05, 0.5), max_rows=100, overrides=hsj)
    attack = _attack(result, "hopskipjump")
    assert attack["adversarial_found"]["count"] == attack["adversarial_found"]["total"] > 0
    assert attack["points"][1]["accuracy"] < attack["clean_accuracy"]["rate"]  # half the range flips most rows
    assert attack["points"][0]["accuracy"] >= attack["points"][1]["accuracy"]
    assert 0 < attack["median_linf"] <= 1


def test_images_get_blur_and_a_unit_range() -> None:
    net = train_mlp(image=True, steps=60)
    _, _, x, y = split()
    images = x.reshape(-1, 1, 8, 8)
    subject = subject_from_object(net, images[:4])
    options = ModelTestOptions(tests=("robustness",), eps=(0.1,), max_rows=200,
                               overrides={"robustness": {"attacks": ["gaussian_noise", "blur"]}})  # fmt: skip
    (result,) = run_on_subject(subject, images, y, options, image=True)
    blur = _attack(result, "blur")["points"]
    assert [p["sigma"] for p in blur] == [0.5, 1.0]
    assert blur[0]["eps"] is None
    assert result.parameters["clip_values"] == [0.0, 1.0]
    # 8x8 digits blurred by one pixel lose their strokes: accuracy falls, and more at the larger sigma.
    assert blur[1]["accuracy"] < blur[0]["accuracy"] <= result.metrics["clean_accuracy"]["rate"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attacks": ["pgd"]}, "needs the model's gradients"),
        ({"attacks": ["blur"]}, "image data only"),
        ({"attacks": ["cw"]}, "attacks must be 'auto' or a list"),
        ({"max_iter": 0}, "max_iter must be a whole number"),
        ({"blur_sigmas": "1"}, "blur_sigmas must be a list"),
        ({"steps": 3}, "unknown parameter"),
    ],
)
def test_wrong_parameters_are_an_error_result_not_a_crash(overrides: dict[str, Any], message: str) -> None:
    x, y, stump = _threshold_data(2)
    subject = subject_from_object(stump, x[:4])
    options = ModelTestOptions(tests=("robustness",), overrides={"robustness": overrides})
    (result,) = run_on_subject(subject, x, y, options)
    assert result.status == "error"
    assert message in result.reason
