"""Small models on scikit-learn's 8×8 digits with known behaviour, for the model tests (seeded, CPU, seconds)."""

from __future__ import annotations

import functools

import numpy as np
from sklearn.datasets import load_digits


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Pixels scaled to [0, 1] (float32, 64 features) and the digit labels."""
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first 1200 digits for training, the other 597 for testing."""
    x, y = digits()
    return x[:1200], y[:1200], x[1200:], y[1200:]


def train_mlp(hidden: int = 64, steps: int = 80, image: bool = False, seed: int = 0):  # type: ignore[no-untyped-def]
    """An undefended MLP (no adversarial training): about 93 % test accuracy, easily fooled by PGD.

    With ``image`` it takes ``(1, 8, 8)`` images (a ``Flatten`` first).
    """
    import torch

    torch.manual_seed(seed)
    layers = [torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)]
    net = torch.nn.Sequential(*([torch.nn.Flatten()] if image else []), *layers)
    x, y, _, _ = split()
    xt = torch.tensor(x.reshape(-1, 1, 8, 8) if image else x)
    yt = torch.tensor(y)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        optimiser.step()
    return net.eval()
