"""Builders of synthetic datasets with planted ground truth (valid card numbers, IBANs, flipped labels, ...)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification


def luhn_card(rng: np.random.Generator) -> str:
    """A 16-digit Visa-prefixed number with a valid Luhn check digit."""
    body = "4" + "".join(str(d) for d in rng.integers(0, 10, 14))
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch)
            if i % 2:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def gb_iban(rng: np.random.Generator) -> str:
    """A valid GB IBAN (mod-97 check digits) whose account digits start with 1 (never an issuer prefix)."""
    bban = "WEST1" + "".join(str(d) for d in rng.integers(0, 10, 13))
    rearranged = bban + "GB00"
    check = 98 - int("".join(str(int(c, 36)) for c in rearranged)) % 97
    return f"GB{check:02d}{bban}"


def phone(rng: np.random.Generator) -> str:
    """A UK number in E.164 form with spaces."""
    return f"+44 20 7946 {rng.integers(0, 10_000):04d}"


def email(i: int) -> str:
    return f"person.{i}@example.org"


WORDS = "river stone quiet garden yellow market window paper silver morning travel orange".split()


def sentence(rng: np.random.Generator, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS, n))


def flipped_classification(
    n: int = 4000, classes: int = 2, seed: int = 1, flip_rate: float = 0.1
) -> tuple[pd.DataFrame, np.ndarray]:
    """Separable synthetic classification (class_sep 2.0) with ``flip_rate`` of labels changed; flipped rows."""
    features, y = make_classification(
        n_samples=n, n_features=12, n_informative=8, n_redundant=2, n_classes=classes, class_sep=2.0, flip_y=0,
        random_state=seed,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    flipped = rng.choice(n, int(n * flip_rate), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, classes, len(flipped))) % classes
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(features.shape[1])])
    frame["label"] = noisy
    return frame, np.sort(flipped)
