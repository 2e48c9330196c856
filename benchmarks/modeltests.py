"""Model tests through mlwarden against the library they wrap, called directly, doing the same work in one process.

Each comparison is a named function returning the two timings (seconds, best and median of ``--repeats``
alternating runs) and the figures that show both did the same work. Today:

``robustness``
    An undefended MLP on scikit-learn's digits (64 → 64 → 10, pixels scaled to [0, 1]); PGD (L∞, 20 steps of
    eps/4, one seeded random start) at 5 budgets on 500 test rows, plus the clean accuracy.
    mlwarden: ``run_on_subject`` with ``robustness.attacks=["pgd"]`` (context, label encoding, row sample, the
    Wilson intervals included). ART directly: ``PyTorchClassifier`` + ``ProjectedGradientDescent`` + ``predict``.
    Target: mlwarden ≤ 1.1 × ART.

Other parts (membership, attribute inference, fairness) can be added to :data:`COMPARISONS`.
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


def _compare(
    name: str, ours: Callable[[], list[float]], peer: Callable[[], list[float]], peer_name: str, repeats: int,
    labels: list[str],
) -> dict[str, Any]:  # fmt: skip
    ours(), peer()  # warm-up: imports, first-call allocations
    times: dict[str, list[float]] = {"mlwarden": [], peer_name: []}
    figures: dict[str, list[float]] = {}
    for _ in range(repeats):  # alternate, so a busy neighbour slows both alike
        for who, fn in (("mlwarden", ours), (peer_name, peer)):
            started = time.perf_counter()
            figures[who] = fn()
            times[who].append(time.perf_counter() - started)
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "name": name,
        "peer": peer_name,
        "repeats": repeats,
        "seconds_best": best,
        "seconds_median": median,
        "ratio_best": best["mlwarden"] / best[peer_name],
        "ratio_median": median["mlwarden"] / median[peer_name],
        "figures": {"labels": labels, **figures},
    }


COMPARISONS: dict[str, Callable[[int], dict[str, Any]]] = {"robustness": robustness}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=sorted(COMPARISONS), help="comparisons to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = [COMPARISONS[name](args.repeats) for name in (args.only or COMPARISONS)]
    for r in results:
        peer = r["peer"]
        print(r["name"])
        print(f"  mlwarden {r['seconds_best']['mlwarden']:.3f} s best, {r['seconds_median']['mlwarden']:.3f} s median")
        print(f"  {peer:<8} {r['seconds_best'][peer]:.3f} s best, {r['seconds_median'][peer]:.3f} s median")
        print(f"  ratio mlwarden/{peer}: {r['ratio_best']:.3f} (best), {r['ratio_median']:.3f} (median); target ≤ 1.1")
        for i, label in enumerate(r["figures"]["labels"]):
            print(f"  {label:<14} mlwarden {r['figures']['mlwarden'][i]:.4f}   {peer} {r['figures'][peer][i]:.4f}")
    OUT.mkdir(exist_ok=True)
    (OUT / "modeltests.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
