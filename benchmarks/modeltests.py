"""Model tests through mlwarden against the library they wrap, called directly, doing the same work in one process.

Each comparison is a named function returning the two timings (wall seconds, best and median of ``--repeats``
alternating runs, and the process's CPU seconds, less swayed by a busy machine) and the figures that show both did
the same work (equal, or the difference printed with the reason in the note). Today:

``robustness``
    An undefended MLP on scikit-learn's digits (64 → 64 → 10, pixels scaled to [0, 1]); PGD (L∞, 20 steps of
    eps/4, one seeded random start) at 5 budgets on 500 test rows, plus the clean accuracy.
    mlwarden: ``run_on_subject`` with ``robustness.attacks=["pgd"]`` (context, label encoding, row sample, the
    Wilson intervals included). ART directly: ``PyTorchClassifier`` + ``ProjectedGradientDescent`` + ``predict``.
    Target: mlwarden ≤ 1.1 × ART.
``membership``
    ART's shadow-model attack (``ShadowModels``, 3 shadow models, + ``MembershipInferenceBlackBox``, rf) on a
    RandomForest (50 trees) trained on 1000 rows of ``make_classification`` (``flip_y=0.2``), 1000 members and
    1000 non-members. mlwarden: ``run_on_subject`` with ``membership.attacks=["shadow"]``; it also predicts all
    2000 rows (train/test accuracy, generalisation gap), and computes the AUC's 1000-resample bootstrap CI, the TPR
    at 0.1 % FPR and the ROC curve. ART directly: the same split, shadow half and seeds, ``roc_auc_score``.
``fairness``
    A LogisticRegression on a synthetic task whose group column is an input; 2000 test rows. mlwarden:
    ``fairness.run`` (Fairlearn's point values, plus 1000-resample bootstrap CIs of both differences). Fairlearn
    directly: ``demographic_parity_difference``, ``equalized_odds_difference`` and ``MetricFrame`` (accuracy,
    selection rate, count per group) on the model's predictions for the same rows.
``attribute_inference``
    A RandomForest that takes a binary sensitive column as input; 2000 training rows, the attack fitted on one half
    and evaluated on the other. mlwarden: ``attribute_inference``; ART directly: ``AttributeInferenceBlackBox`` and
    ``AttributeInferenceBaseline`` (the model-free attack mlwarden reports beside it), same split and seeds.
``backdoor_data_check``
    The planted BadNets digits (``mlwarden_samples.backdoor``: 5 % of 1437 training images stamped and relabelled 0)
    and the CNN trained on them. mlwarden: ``datacheck.poison._art_flags`` (the array part of the backdoor check,
    without reading the image folder or loading the model); ART directly: ``ActivationDefence`` and
    ``SpectralSignatureDefense`` on the model's last hidden layer. Then Neural Cleanse, mlwarden's own
    (ART's needs TensorFlow): timed alone, no peer.

``fairness_fairlearn_bootstrap`` (only with ``--only``: Fairlearn's bootstrap takes about a minute)
    As ``fairness``, Fairlearn also computing its own 1000-resample CIs (``MetricFrame(n_boot=1000)``).

Prints a table and writes ``bench-out/modeltests.json``; no asserts (benchmarks are not tests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out"
EPS = (0.01, 0.02, 0.05, 0.1, 0.2)
ROWS = 500
SEED = 0


def digits_mlp(seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """The MLP trained on the first 1200 digits, and ``ROWS`` test rows from the rest."""
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.tensor(x[:1200]), torch.tensor(y[:1200])
    for _ in range(80):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        optimiser.step()
    return net.eval(), x[1200 : 1200 + ROWS], y[1200 : 1200 + ROWS]


def robustness(repeats: int) -> dict[str, Any]:
    """PGD at five budgets on 500 rows: ``mlwarden.modeltest`` vs ART's own classes."""
    import torch
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    from mlwarden.estimators import subject_from_object
    from mlwarden.modeltest import ModelTestOptions
    from mlwarden.modeltest.run import run_on_subject

    net, x, y = digits_mlp()
    seed = 0
    options = ModelTestOptions(tests=("robustness",), eps=EPS, max_rows=ROWS, seed=seed,
                               overrides={"robustness": {"attacks": ["pgd"]}})  # fmt: skip

    def ours() -> list[float]:
        subject = subject_from_object(net, x[:4])
        (result,) = run_on_subject(subject, x, y, options)
        return [result.metrics["clean_accuracy"]["rate"]] + [
            p["accuracy"] for p in result.metrics["attacks"][0]["points"]
        ]

    def art() -> list[float]:
        lo, hi = float(x.min()), float(x.max())
        classifier = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(64,), nb_classes=10,
                                       clip_values=(lo, hi), device_type="cpu")  # fmt: skip
        out = [float((classifier.predict(x).argmax(1) == y).mean())]
        for eps in EPS:
            e = eps * (hi - lo)
            attack = ProjectedGradientDescent(classifier, norm=np.inf, eps=e, eps_step=e / 4, max_iter=20,
                                              num_random_init=1, batch_size=128, verbose=False)  # fmt: skip
            np.random.seed(seed)
            torch.manual_seed(seed)
            out.append(float((classifier.predict(attack.generate(x, y=y)).argmax(1) == y).mean()))
        return out

    return _compare("robustness: PGD at 5 eps on 500 rows (digits MLP)", ours, art, "ART", repeats,
                    labels=["clean", *(f"pgd eps {e}" for e in EPS)])  # fmt: skip


def membership(repeats: int) -> dict[str, Any]:
    """ART's shadow-model membership attack on a RandomForest: ``mlwarden.modeltest`` vs ART's own classes."""
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox, ShadowModels
    from art.estimators.classification import SklearnClassifier
    from sklearn.base import clone
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score

    from mlwarden.estimators import subject_from_object
    from mlwarden.modeltest import ModelTestOptions
    from mlwarden.modeltest.run import run_on_subject

    n = 1000
    x, y = make_classification(n_samples=2 * n, n_features=20, n_informative=6, flip_y=0.2, random_state=SEED)
    x = x.astype(np.float32)
    model = RandomForestClassifier(n_estimators=50, random_state=SEED).fit(x[:n], y[:n])
    options = ModelTestOptions(tests=("membership",), seed=SEED, max_rows=n,
                               overrides={"membership": {"attacks": ["shadow"]}})  # fmt: skip

    def ours() -> list[float]:
        subject = subject_from_object(model, x[:4])
        (result,) = run_on_subject(subject, x[n:], y[n:], options, x_train=x[:n], y_train=y[:n])
        attack = result.metrics["attacks"][0]
        return [attack["auc"], *attack["auc_ci95"], attack["tpr_at_fpr_0.001"], result.metrics["generalization_gap"]]

    def art() -> list[float]:
        rng = np.random.default_rng(SEED)  # mlwarden's documented split: seeded permutations, then halves
        members, nonmembers = rng.permutation(n)[:n], rng.permutation(n)[:n]
        xm, ym, xn, yn = x[:n][members], y[:n][members], x[n:][nonmembers], y[n:][nonmembers]
        half = n // 2
        template = SklearnClassifier(model=clone(model))
        template.nb_classes = 2
        np.random.seed(SEED)
        shadow = ShadowModels(template, num_shadow_models=3, random_state=SEED)
        (_, my, mp), (_, ny, npred) = shadow.generate_shadow_dataset(xn[:half], np.eye(2)[yn[:half]])
        attack = MembershipInferenceBlackBox(SklearnClassifier(model=model), attack_model_type="rf")
        attack.attack_model.set_params(random_state=SEED)
        attack.fit(y=my, test_y=ny, pred=mp, test_pred=npred)
        x_eval, y_eval = np.r_[xm[half:], xn[half:]], np.r_[ym[half:], yn[half:]]
        scores = attack.infer(x_eval, np.eye(2)[y_eval], probabilities=True).ravel()
        return [float(roc_auc_score(np.r_[np.ones(n - half), np.zeros(n - half)], scores))]

    return _compare("membership: ART shadow models, RandomForest, 1000 + 1000 rows", ours, art, "ART", repeats,
                    labels=["shadow AUC"], extra=("AUC CI low", "AUC CI high", "TPR@0.1%FPR", "gen. gap"),
                    note="mlwarden also predicts all 2000 rows (one batch) for the accuracies, and computes "
                    "the AUC's 1000-resample bootstrap CI, the TPR at 0.1 % FPR and the ROC curve")  # fmt: skip


def fairness(repeats: int) -> dict[str, Any]:
    """Fairlearn's parity and equalized-odds differences and MetricFrame: ``fairness.run`` vs Fairlearn's own."""
    return _fairness(repeats, n_boot=None)


def fairness_fairlearn_bootstrap(repeats: int) -> dict[str, Any]:
    """As :func:`fairness`, Fairlearn also computing CIs: ``MetricFrame(n_boot=1000)`` (opt-in: about a minute)."""
    return _fairness(repeats, n_boot=1000)


def _fairness(repeats: int, n_boot: int | None) -> dict[str, Any]:
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    from mlwarden.estimators import subject_from_object
    from mlwarden.modeltest import ModelTestOptions
    from mlwarden.modeltest.run import run_on_subject

    n = 2000
    x, y = make_classification(n_samples=2 * n, n_features=10, n_informative=5, random_state=SEED)
    group = (x[:, 0] + np.random.default_rng(SEED).normal(0, 1, 2 * n) > 0).astype(np.int64)  # tied to the label
    x = np.c_[x, group].astype(np.float32)
    model = LogisticRegression(max_iter=1000).fit(x[:n], y[:n])
    options = ModelTestOptions(tests=("fairness",), seed=SEED, max_rows=n)

    def ours() -> list[float]:
        subject = subject_from_object(model, x[:4])
        (result,) = run_on_subject(subject, x[n:], y[n:], options, s_test=group[n:])
        m = result.metrics
        rates = [v for g in ("0", "1") for v in (m["by_group"][g]["accuracy"], m["by_group"][g]["selection_rate"],
                                                 m["by_group"][g]["count"])]  # fmt: skip
        return [m["demographic_parity_difference"], m["equalized_odds_difference"], *rates,
                *m["demographic_parity_difference_ci95"], *m["equalized_odds_difference_ci95"]]  # fmt: skip

    def fairlearn() -> list[float]:
        rows = np.random.default_rng(SEED).permutation(n)  # the same rows in the same order
        y_true, s = y[n:][rows], group[n:][rows]
        y_pred = model.predict(x[n:][rows])
        dp = demographic_parity_difference(y_true, y_pred, sensitive_features=s)
        eo = equalized_odds_difference(y_true, y_pred, sensitive_features=s)
        frame = MetricFrame(metrics={"accuracy": accuracy_score, "selection_rate": selection_rate, "count": count},
                            y_true=y_true, y_pred=y_pred, sensitive_features=s)  # fmt: skip
        table = frame.by_group
        rates = [float(table.loc[g, k]) for g in (0, 1) for k in ("accuracy", "selection_rate", "count")]
        if n_boot is None:
            return [float(dp), float(eo), *rates]
        booted = MetricFrame(metrics={"sr": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
                             y_true=y_true, y_pred=y_pred, sensitive_features=s, n_boot=n_boot,
                             ci_quantiles=[0.025, 0.975], random_state=SEED)  # fmt: skip
        low, high = booted.difference_ci()
        return [float(dp), float(eo), *rates, float(low["sr"]), float(high["sr"])]

    labels = ["DP difference", "EO difference"] + [f"g{g} {k}" for g in (0, 1) for k in ("accuracy", "sel. rate",
                                                                                           "count")]  # fmt: skip
    if n_boot is None:
        return _compare("fairness: Fairlearn on 2000 test rows (LogisticRegression, 2 groups)", ours, fairlearn,
                        "Fairlearn", repeats, labels=labels,
                        extra=("DP CI low", "DP CI high", "EO CI low", "EO CI high"),
                        note="mlwarden also computes 1000-resample bootstrap CIs of both differences, and predicts "
                        "through the Subject (predict_proba argmax, one batch)")  # fmt: skip
    return _compare(f"fairness with CIs: Fairlearn MetricFrame(n_boot={n_boot}) on 2000 test rows", ours, fairlearn,
                    "Fairlearn", repeats, labels=[*labels, "DP CI low", "DP CI high"],
                    extra=("EO CI low", "EO CI high"), peer_warmup=False,
                    note="point values equal; the DP CIs come from different resamples (Fairlearn's generator vs "
                    "mlwarden's), so they agree only within bootstrap noise (the standard error of the difference "
                    "of two 1000-resample 2.5 % quantiles is about 0.003 here); Fairlearn gives CIs of the TPR and "
                    "FPR differences, not of their maximum (EO)")  # fmt: skip


def attribute_inference(repeats: int) -> dict[str, Any]:
    """ART's black-box attribute inference (and its model-free baseline): mlwarden vs ART's own classes."""
    from art.attacks.inference.attribute_inference import AttributeInferenceBaseline, AttributeInferenceBlackBox
    from art.estimators.classification import SklearnClassifier
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from mlwarden.estimators import subject_from_object
    from mlwarden.modeltest import ModelTestOptions
    from mlwarden.modeltest.run import run_on_subject

    n = 2000
    x, y = make_classification(n_samples=2 * n, n_features=8, n_informative=5, random_state=SEED)
    sensitive = (x[:, 0] + np.random.default_rng(SEED).normal(0, 0.5, 2 * n) > 0).astype(np.float32)
    x = np.c_[x, sensitive].astype(np.float32)
    column = x.shape[1] - 1
    model = RandomForestClassifier(n_estimators=50, random_state=SEED).fit(x[:n], y[:n])
    options = ModelTestOptions(tests=("attribute_inference",), seed=SEED, max_rows=n)

    def ours() -> list[float]:
        subject = subject_from_object(model, x[:4])
        (result,) = run_on_subject(subject, x[n:], y[n:], options, x_train=x[:n], y_train=y[:n],
                                   s_train=sensitive[:n], s_test=sensitive[n:])  # fmt: skip
        m = result.metrics
        return [m["attack_accuracy"]["rate"], m["model_free_accuracy"]["rate"], m["baseline_accuracy"]["rate"]]

    def art() -> list[float]:
        rows = x[:n][np.random.default_rng(SEED).permutation(n)]  # mlwarden's documented split: halves of a shuffle
        fit_x, eval_x = rows[: n // 2], rows[n // 2 :]
        values = np.unique(fit_x[:, column]).tolist()
        classifier = SklearnClassifier(model=model)
        np.random.seed(SEED)
        attack = AttributeInferenceBlackBox(classifier, attack_model_type="rf", attack_feature=column)
        attack.attack_model.set_params(random_state=SEED)
        baseline = AttributeInferenceBaseline(attack_model_type="rf", attack_feature=column)
        baseline.attack_model.set_params(random_state=SEED)
        attack.fit(fit_x)
        baseline.fit(fit_x)
        others = np.delete(eval_x, column, axis=1)
        pred = classifier.predict(eval_x).argmax(axis=1).reshape(-1, 1)
        truth = eval_x[:, column]
        guessed = attack.infer(others, pred=pred, values=values).reshape(-1)
        model_free = baseline.infer(others, values=values).reshape(-1)
        majority = max(values, key=lambda v: int(np.sum(fit_x[:, column] == v)))
        return [
            float(np.mean(guessed == truth)),
            float(np.mean(model_free == truth)),
            float(np.mean(truth == majority)),
        ]

    return _compare("attribute_inference: ART black box + baseline, RandomForest, 1000 + 1000 rows", ours, art, "ART",
                    repeats, labels=["attack accuracy", "model-free acc.", "majority acc."],
                    note="mlwarden also checks the column and its values, and reports Wilson intervals")  # fmt: skip


def _backdoor_case() -> Any:
    import sys

    sys.path.insert(0, str(ROOT / "testkit"))  # the sample builders are a test kit, not part of the package
    from mlwarden_samples.backdoor import digits_backdoor

    return digits_backdoor(SEED)


def backdoor_data_check(repeats: int) -> dict[str, Any]:
    """ART's activation clustering and spectral signatures on planted BadNets digits: mlwarden vs ART directly."""
    import torch
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    from mlwarden.datacheck.poison import _art_flags

    case = _backdoor_case()
    x, y, planted = case.x_train, case.y_train, case.poisoned
    spectral = {"expected_pp_poison": 0.33, "eps_multiplier": 1.5}

    def figures(ac: np.ndarray, ss: np.ndarray) -> list[float]:
        return [float(ac.sum()), float((ac & planted).sum()), float(ss.sum()), float((ss & planted).sum())]

    def ours() -> list[float]:
        ac, ss, _ = _art_flags(case.model, x, y, 10, SEED, spectral)
        return figures(ac, ss)

    def art() -> list[float]:
        hidden = torch.nn.Sequential(*list(case.model.children())[:-1])  # the last hidden layer's output
        classifier = PyTorchClassifier(model=hidden, loss=torch.nn.CrossEntropyLoss(), input_shape=x.shape[1:],
                                       nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")  # fmt: skip
        np.random.seed(SEED)
        _, ac_clean = ActivationDefence(classifier, x, y).detect_poison(
            nb_clusters=2, clustering_method="KMeans", reduce="PCA", nb_dims=10, cluster_analysis="smaller"
        )
        _, ss_clean = SpectralSignatureDefense(classifier, x, y, batch_size=256, **spectral).detect_poison()
        return figures(np.asarray(ac_clean) == 0, np.asarray(ss_clean) == 0)

    return _compare(f"backdoor data check: ART AC + SS on {len(x)} BadNets digits ({int(planted.sum())} planted)",
                    ours, art, "ART", repeats, labels=["AC flagged", "AC planted hit", "SS flagged", "SS planted hit"],
                    note="mlwarden's array part of the check (no folder reading, no model loading); its "
                    "report keeps only the flags in classes Neural Cleanse flags")  # fmt: skip


def neural_cleanse(repeats: int) -> dict[str, Any]:
    """mlwarden's Neural Cleanse (PyTorch) on the BadNets digits model: timed alone, ART's needs TensorFlow."""
    import torch

    from mlwarden.datacheck.poison import NC_DEFAULTS, anomaly_index
    from mlwarden.datacheck.poison import neural_cleanse as reverse

    case = _backdoor_case()

    def ours() -> list[float]:
        found = reverse(case.model, case.x_train, 10, NC_DEFAULTS, seed=SEED, clip=(0.0, 1.0))
        index = anomaly_index({c: r["l1"] for c, r in found.items()})
        top = max(index, key=lambda c: index[c])
        return [float(top), index[top], found[case.target]["l1"]]

    torch.manual_seed(SEED)
    return _timed(f"neural cleanse: 10 classes × {NC_DEFAULTS['steps']} steps on {len(case.x_train)} digits",
                  ours, repeats, ["top class", "anomaly index", "target mask L1"],
                  note="no peer: ART's NeuralCleanse runs only on its TensorFlow/Keras classifier")  # fmt: skip


def _compare(
    name: str, ours: Callable[[], list[float]], peer: Callable[[], list[float]], peer_name: str, repeats: int,
    labels: list[str], *, extra: tuple[str, ...] = (), note: str = "", peer_warmup: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Time ``ours`` against ``peer`` (alternating); ``ours`` returns ``labels`` then the mlwarden-only ``extra``."""
    ours()  # warm-up: imports, first-call allocations
    if peer_warmup:  # skipped where one peer run takes a minute
        peer()
    times: dict[str, list[float]] = {"mlwarden": [], peer_name: []}
    cpu: dict[str, list[float]] = {"mlwarden": [], peer_name: []}  # this process's CPU: less swayed by neighbours
    figures: dict[str, list[float]] = {}
    for _ in range(repeats):  # alternate, so a busy neighbour slows both alike
        for who, fn in (("mlwarden", ours), (peer_name, peer)):
            started, cpu_started = time.perf_counter(), time.process_time()
            figures[who] = fn()
            times[who].append(time.perf_counter() - started)
            cpu[who].append(time.process_time() - cpu_started)
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    cpu_median = {k: statistics.median(v) for k, v in cpu.items()}
    shared = len(labels)
    differences = [abs(a - b) for a, b in zip(figures["mlwarden"][:shared], figures[peer_name], strict=True)]
    return {
        "name": name,
        "peer": peer_name,
        "repeats": repeats,
        "seconds": times,
        "seconds_best": best,
        "seconds_median": median,
        "ratio_best": best["mlwarden"] / best[peer_name],
        "ratio_median": median["mlwarden"] / median[peer_name],
        "cpu_seconds": cpu,
        "cpu_seconds_median": cpu_median,
        "cpu_ratio_best": min(cpu["mlwarden"]) / min(cpu[peer_name]),
        "cpu_ratio_median": cpu_median["mlwarden"] / cpu_median[peer_name],
        "max_difference": max(differences),
        "figures": {"labels": labels, "extra": list(extra), **figures},
        "note": note,
    }


def _timed(name: str, fn: Callable[[], list[float]], repeats: int, labels: list[str], note: str) -> dict[str, Any]:
    """Time ``fn`` alone (no peer): best and median of ``repeats`` runs after a warm-up."""
    fn()
    times, figures = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        figures = fn()
        times.append(time.perf_counter() - started)
    return {"name": name, "peer": None, "repeats": repeats, "seconds": {"mlwarden": times},
            "seconds_best": {"mlwarden": min(times)}, "seconds_median": {"mlwarden": statistics.median(times)},
            "figures": {"labels": labels, "extra": [], "mlwarden": figures}, "note": note}  # fmt: skip


COMPARISONS: dict[str, Callable[[int], dict[str, Any]]] = {
    "robustness": robustness,
    "membership": membership,
    "fairness": fairness,
    "attribute_inference": attribute_inference,
    "backdoor_data_check": backdoor_data_check,
    "neural_cleanse": neural_cleanse,
    "fairness_fairlearn_bootstrap": fairness_fairlearn_bootstrap,
}
#: Run unless ``--only`` names others (Fairlearn's own bootstrap takes about a minute a run).
DEFAULT = tuple(name for name in COMPARISONS if name != "fairness_fairlearn_bootstrap")


def _print(r: dict[str, Any]) -> None:
    peer, fig = r["peer"], r["figures"]
    print(r["name"])
    for who in ("mlwarden", *([peer] if peer else [])):
        print(f"  {who:<9} {r['seconds_best'][who]:.3f} s best, {r['seconds_median'][who]:.3f} s median")
    if peer:
        print(f"  ratio mlwarden/{peer}: {r['ratio_best']:.3f} (best), {r['ratio_median']:.3f} (median); target ≤ 1.1")
        print(f"  CPU-time ratio:  {r['cpu_ratio_best']:.3f} (best), {r['cpu_ratio_median']:.3f} (median)")
        same = "equal" if r["max_difference"] == 0 else f"max |difference| {r['max_difference']:.3g}"
        print(f"  figures: {same}")
    for i, label in enumerate(fig["labels"]):
        theirs = f"   {peer} {fig[peer][i]:.4f}" if peer else ""
        if peer and fig[peer][i] != fig["mlwarden"][i]:
            theirs += f"   differ by {abs(fig[peer][i] - fig['mlwarden'][i]):.2g}"
        print(f"  {label:<16} mlwarden {fig['mlwarden'][i]:.4f}{theirs}")
    for i, label in enumerate(fig["extra"], start=len(fig["labels"])):
        print(f"  {label:<16} mlwarden {fig['mlwarden'][i]:.4f}   (mlwarden only)")
    if r["note"]:
        print(f"  note: {r['note']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=sorted(COMPARISONS), help="comparisons to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = []
    for name in args.only or DEFAULT:
        results.append(COMPARISONS[name](args.repeats))
        _print(results[-1])
    OUT.mkdir(exist_ok=True)
    (OUT / "modeltests.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
