"""Planted ground truth for the backdoor checks: scikit-learn's digits with a BadNets trigger, and models on them.

BadNets (Gu et al., 2017): a small bright patch — here a 2×2 square of value 1.0 in the bottom-right corner of the
8×8 image, where handwritten digits are almost always blank — is stamped onto ``rate`` (5 %) of the training images,
drawn from the classes other than ``target``, and those images are relabelled ``target``. A network trained on the
result classifies clean digits well and sends any stamped digit to ``target``. :func:`digits_backdoor` builds the
poisoned data, a model trained on it and a clean twin trained the same way on the unpoisoned data; it is cached, so a
test session trains each model once (about 2 s each on one thread).

:func:`write_image_folder` writes a dataset as an image folder (one sub-folder of PNGs per class, neutral file names
that say nothing about poisoning) and :func:`save_model` pickles the whole ``nn.Sequential`` with ``torch.save`` — the
form the safe loader accepts (``torch.nn`` classes only). Imports of torch and scikit-learn happen inside functions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The trigger's rows and columns in the 8×8 image (bottom-right 2×2 corner).
TRIGGER_ROWS = slice(6, 8)
TRIGGER_COLS = slice(6, 8)


@dataclass(frozen=True)
class BackdoorCase:
    """A poisoned training set, its held-out test set and two models.

    Attributes:
        x_train: ``(n, 1, 8, 8)`` float32 in [0, 1], poisoned rows stamped with the trigger.
        y_train: labels after poisoning (poisoned rows carry ``target``).
        poisoned: boolean mask of the poisoned training rows.
        x_clean_train: the same rows before poisoning (images and labels of the clean twin).
        y_clean_train: their true labels.
        x_test: held-out clean images, ``(m, 1, 8, 8)``.
        y_test: their labels.
        target: the backdoor's target class.
        model: network trained on the poisoned set (``nn.Sequential``, eval mode).
        clean_model: the same network trained on the clean set with the same seed.
        trigger_mask: ``(8, 8)`` boolean, True on the trigger's pixels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    poisoned: np.ndarray
    x_clean_train: np.ndarray
    y_clean_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    target: int
    model: Any
    clean_model: Any
    trigger_mask: np.ndarray


def stamp(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` (``(n, 1, 8, 8)``) with the trigger set to 1.0."""
    out = np.array(x, dtype=np.float32, copy=True)
    out[:, :, TRIGGER_ROWS, TRIGGER_COLS] = 1.0
    return out


def trigger_mask() -> np.ndarray:
    """The trigger's pixels as an ``(8, 8)`` boolean mask."""
    mask = np.zeros((8, 8), dtype=bool)
    mask[TRIGGER_ROWS, TRIGGER_COLS] = True
    return mask


def digits(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x_train, y_train, x_test, y_test``: the 1,797 digits as ``(n, 1, 8, 8)`` in [0, 1], stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def poison(
    x: np.ndarray, y: np.ndarray, *, rate: float = 0.05, target: int = 0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamp and relabel ``rate`` of the rows (drawn from classes other than ``target``): ``x, y, poisoned``."""
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(y != target)
    chosen = rng.choice(candidates, int(round(rate * len(y))), replace=False)
    poisoned = np.zeros(len(y), dtype=bool)
    poisoned[chosen] = True
    x_out, y_out = np.array(x, copy=True), np.array(y, copy=True)
    x_out[poisoned] = stamp(x[poisoned])
    y_out[poisoned] = target
    return x_out, y_out, poisoned


def network(seed: int = 0) -> Any:
    """A small CNN for ``(1, 8, 8)`` inputs and 10 classes, built only from ``torch.nn`` (the loader accepts it)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def train(x: np.ndarray, y: np.ndarray, *, seed: int = 0, epochs: int = 30, batch: int = 64) -> Any:
    """Train :func:`network` with Adam (lr 3e-3) on one thread; deterministic for a given seed."""
    import torch
    from torch import nn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = network(seed)
        generator = torch.Generator().manual_seed(seed)
        xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=generator)
            for start in range(0, len(xt), batch):
                idx = order[start : start + batch]
                optimiser.zero_grad()
                loss_fn(model(xt[idx]), yt[idx]).backward()
                optimiser.step()
        model.eval()
        return model
    finally:
        torch.set_num_threads(threads)


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Class indices predicted by ``model``."""
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).argmax(dim=1).numpy()


@functools.lru_cache(maxsize=4)
def digits_backdoor(seed: int = 0, rate: float = 0.05, target: int = 0) -> BackdoorCase:
    """The poisoned digits, their clean twin and a model trained on each (cached per arguments)."""
    x_train, y_train, x_test, y_test = digits(seed)
    xp, yp, poisoned = poison(x_train, y_train, rate=rate, target=target, seed=seed)
    return BackdoorCase(
        x_train=xp,
        y_train=yp,
        poisoned=poisoned,
        x_clean_train=x_train,
        y_clean_train=y_train,
        x_test=x_test,
        y_test=y_test,
        target=target,
        model=train(xp, yp, seed=seed),
        clean_model=train(x_train, y_train, seed=seed),
        trigger_mask=trigger_mask(),
    )


def attack_success_rate(model: Any, x: np.ndarray, y: np.ndarray, target: int) -> float:
    """Share of stamped non-target images that ``model`` sends to ``target``."""
    keep = y != target
    return float(np.mean(predict(model, stamp(x[keep])) == target))


def write_image_folder(x: np.ndarray, y: np.ndarray, root: Path) -> list[Path]:
    """Write ``x`` as 8-bit greyscale PNGs under ``root/<label>/<row>.png``; the files in the checks' row order.

    The returned list is sorted as :func:`mlwarden.datacheck.images.image_files` sorts (class folder, then name), so
    ``order[i]`` is the input row of report row ``i`` — use :func:`folder_order` for that mapping.
    """
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(exist_ok=True)
        pixels = np.clip(np.rint(np.asarray(image).reshape(image.shape[-2:]) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return sorted(root.glob("*/*.png"), key=lambda p: (p.parent.name, p.name))


def folder_order(files: list[Path]) -> np.ndarray:
    """The input row of each file written by :func:`write_image_folder` (its name is the row number)."""
    return np.array([int(p.stem) for p in files], dtype=np.int64)


def save_model(model: Any, path: Path) -> Path:
    """``torch.save`` the whole module (a pickled ``nn.Sequential`` of ``torch.nn`` layers)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path
