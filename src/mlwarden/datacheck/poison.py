"""Backdoor poisoning of an image folder, given the PyTorch model trained on it: which samples, which target class.

Three published methods, each answering part of the question:

* **Neural Cleanse** (Wang et al., S&P 2019) names the *target class*: for every class it searches the smallest
  mask ``m`` and pattern ``p`` such that ``(1 - m)·x + m·p`` sends clean images to that class. A backdoor is a
  shortcut, so the target class needs a much smaller mask than the others; the anomaly index of the masks' L1
  norms (median absolute deviation, consistency constant 1.4826) flags classes more than 2 below the median.
  ART's ``NeuralCleanse`` runs only on its Keras classifier (TensorFlow), so :func:`neural_cleanse` implements the
  paper in PyTorch; the model probe (``mlwarden.modeltest.backdoor``) reuses it.
* **Activation clustering** (Chen et al., 2018; ART ``ActivationDefence``) and **spectral signatures** (Tran et al.,
  NeurIPS 2018; ART ``SpectralSignatureDefense``) name the *samples*: within a class, poisoned samples form their
  own cluster (resp. the tail along the top singular vector) of the model's last hidden layer.

Why the combination: ART's per-class rules flag samples in *every* class by construction (the smaller of two
clusters; the top ``1.5·expected_pp_poison`` of spectral scores), and on clean classes with natural sub-styles they
flag as much as on the poisoned one — ART cannot say which class is poisoned (its ``relative-size`` analysis
raises on a class without a small cluster in ART 1.20.1, ``silhouette-scores`` leaves the large cluster's
assignments uninitialised). So the samples reported as suspicious are those ART flags *in the classes Neural
Cleanse flags*; the per-class ART counts over every class are reported too. Images are read at native size,
fail closed (an unreadable file stops the check), and the model is loaded only through the safe loader.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlwarden.datacheck.model import CheckResult, DataCheckError, Rate
from mlwarden.datacheck.readers import TableSource
from mlwarden.estimators._art import import_art

import_art()  # before any `art` import: ART resets logging at import (mlwarden.estimators._art)

#: Consistency constant turning the median absolute deviation into a standard-deviation estimate (normal data).
MAD_CONSISTENCY = 1.4826
#: Neural Cleanse's anomaly-index threshold (the paper's: > 2, i.e. > 95 % confidence of being an outlier).
ANOMALY_THRESHOLD = 2.0
#: Flagged rows listed in a report (exact counts are in the metrics).
MAX_SAMPLES = 200

NC_DEFAULTS: dict[str, Any] = {
    "steps": 300,  # optimisation steps per class
    "lr": 0.1,  # Adam learning rate on the tanh-parameterised mask and pattern
    "batch": 64,  # clean images per step
    "init_lambda": 1e-3,  # initial weight of |m|_1 (the paper's init_cost)
    "attack_target": 0.99,  # success rate a mask must reach to count (the paper's 99 %)
    "patience": 10,  # steps before the paper's lambda schedule raises or lowers lambda
    "max_images": 1000,  # clean images the search draws from (seeded sample)
}


def anomaly_index(norms: Mapping[int, float]) -> dict[int, float]:
    """Neural Cleanse's anomaly index, on the small side: ``(median - l) / (1.4826 · MAD)`` per class.

    Positive values are classes whose trigger is smaller than the median; the paper flags values above 2. With a
    MAD of 0 (all norms equal) every index is 0.
    """
    values = np.array(list(norms.values()), dtype=np.float64)
    median = float(np.median(values))
    mad = MAD_CONSISTENCY * float(np.median(np.abs(values - median)))
    if mad <= 0:
        return dict.fromkeys(norms, 0.0)
    return {c: (median - float(v)) / mad for c, v in norms.items()}


def neural_cleanse(
    module: Any, x: np.ndarray, n_classes: int, params: Mapping[str, Any], *, seed: int, clip: tuple[float, float]
) -> dict[int, dict[str, Any]]:
    """Reverse-engineer the smallest trigger for every class (Wang et al. 2019, Algorithm 1 with its λ schedule).

    Args:
        module: a ``torch.nn.Module`` returning class scores for ``(n, C, H, W)`` float32 inputs.
        x: clean images ``(n, C, H, W)`` within ``clip``.
        n_classes: the number of output classes.
        params: see :data:`NC_DEFAULTS`.
        seed: seeds the image sample, the batches and the initial mask and pattern.
        clip: the input range (the pattern stays inside it).

    Returns:
        Per class: ``l1`` (norm of the smallest mask that reached ``attack_target``, or of the last mask when none
        did), ``success`` (its attack success rate on the batch), ``reached``, ``mask`` ``(H, W)`` and ``pattern``.
    """
    import torch

    if len(x) == 0:
        raise DataCheckError("Neural Cleanse needs clean images")
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(x), min(len(x), int(params["max_images"])), replace=False)
    images = torch.as_tensor(np.asarray(x, dtype=np.float32)[np.sort(keep)])
    module.eval()
    frozen = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        return {t: _reverse_one(module, images, t, params, seed + t, clip) for t in range(n_classes)}
    finally:
        for p, wanted in frozen:
            p.requires_grad_(wanted)


def _reverse_one(
    module: Any, images: Any, target: int, params: Mapping[str, Any], seed: int, clip: tuple[float, float]
) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    _, channels, height, width = images.shape
    mask_raw = (torch.rand((1, height, width), generator=generator) * 2 - 1).requires_grad_(True)
    pattern_raw = (torch.rand((channels, height, width), generator=generator) * 2 - 1).requires_grad_(True)
    optimiser = torch.optim.Adam([mask_raw, pattern_raw], lr=float(params["lr"]), betas=(0.5, 0.9))
    loss_fn = torch.nn.CrossEntropyLoss()
    lo, hi = clip
    lam, above, below = float(params["init_lambda"]), 0, 0
    best: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    for _ in range(int(params["steps"])):
        idx = torch.randint(0, len(images), (int(params["batch"]),), generator=generator)
        mask = (torch.tanh(mask_raw) + 1) / 2
        pattern = (torch.tanh(pattern_raw) + 1) / 2 * (hi - lo) + lo
        stamped = (1 - mask) * images[idx] + mask * pattern
        logits = module(stamped)
        labels = torch.full((len(idx),), target, dtype=torch.long)
        l1 = mask.sum()
        loss = loss_fn(logits, labels) + lam * l1
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        success = float((logits.argmax(dim=1) == target).float().mean())
        last = {"l1": l1.item(), "success": success, "mask": mask.detach()[0].numpy(),
                "pattern": pattern.detach().numpy()}  # fmt: skip
        if success >= params["attack_target"] and (best is None or last["l1"] < best["l1"]):
            best = last
        # The paper's schedule: raise lambda while the attack succeeds, lower it while it does not.
        above, below = (above + 1, 0) if success >= params["attack_target"] else (0, below + 1)
        if above >= params["patience"]:
            lam, above = (lam * 1.5 if lam > 0 else float(params["init_lambda"])), 0
        elif below >= params["patience"]:
            lam, below = lam / 1.5**1.5, 0
    chosen = best or last
    return {**chosen, "reached": best is not None}


def _penultimate(module: Any) -> tuple[Any, str]:
    """The module whose output is the last hidden representation, and its name (the whole model if unknown)."""
    import torch

    if isinstance(module, torch.nn.Sequential) and len(module) >= 2:
        return torch.nn.Sequential(*list(module.children())[:-1]), f"output of layer {len(module) - 2} (last hidden)"
    return module, "model output (not an nn.Sequential: the last hidden layer is unknown)"


def _read_images(source: TableSource) -> tuple[np.ndarray, list[str], list[str]]:
    from mlwarden.datacheck.images import read_image

    files: list[tuple[Path, str]] = getattr(source, "files", [])
    arrays = [read_image(f, None) for f, _ in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataCheckError(f"the backdoor check needs images of one size; found sizes {sorted(shapes)[:5]}")
    x = np.stack(arrays)[:, None, :, :].astype(np.float32)
    paths = [f.relative_to(source.path).as_posix() for f, _ in files]
    return x, paths, [c for _, c in files]


def _art_flags(
    module: Any, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int, spectral: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, str]:
    """ART's two defences on the last hidden layer: per-row flags of each (all classes), and the layer used.

    The defences take the activations of the classifier's last layer; giving them a classifier over the model
    without its output layer makes that the last hidden layer, as both papers use (the logits of a 10-class model
    are too few dimensions: ART warns below 32).
    """
    import torch
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    features, layer = _penultimate(module)
    classifier = PyTorchClassifier(
        model=features, loss=torch.nn.CrossEntropyLoss(), input_shape=x.shape[1:], nb_classes=n_classes,
        clip_values=(0.0, 1.0), device_type="cpu",
    )  # fmt: skip
    state = np.random.get_state()
    np.random.seed(seed)  # ART's KMeans has no random_state: it draws from numpy's global generator
    try:
        ac = ActivationDefence(classifier, x, y)
        _, ac_clean = ac.detect_poison(nb_clusters=2, clustering_method="KMeans", reduce="PCA", nb_dims=10,
                                       cluster_analysis="smaller")  # fmt: skip
        ss = SpectralSignatureDefense(classifier, x, y, batch_size=256, **spectral)
        _, ss_clean = ss.detect_poison()
    finally:
        np.random.set_state(state)
    return np.asarray(ac_clean) == 0, np.asarray(ss_clean) == 0, layer


def backdoor_check(source: TableSource, model: str | None, *, seed: int, dynamic: bool = True) -> CheckResult:
    """Find backdoor-poisoned samples in an image folder and the class they were relabelled to.

    Args:
        source: an image folder (one sub-folder per class; the folder names are the model's class indices).
        model: path of the PyTorch model trained on it (scanned, then loaded with :func:`mlwarden.load`).
        seed: seeds Neural Cleanse and ART's clustering.
        dynamic: also run the sandboxed dynamic analysis before loading (the safe loader's default).

    Raises:
        DataCheckError: not an image folder, no model, not a PyTorch model, images of mixed sizes.
    """
    if source.format != "images":
        raise DataCheckError("the backdoor check applies to image folders only")
    if model is None:
        raise DataCheckError("the backdoor check needs --model (the model trained on this data)")
    from mlwarden.estimators import EstimatorError, load_subject

    started = time.perf_counter()
    x, paths, labels = _read_images(source)
    try:
        subject = load_subject(model, x[:5], dynamic=dynamic)
    except (EstimatorError, ValueError, TypeError) as exc:  # loaded, but it does not classify these images
        raise DataCheckError(f"the backdoor check needs a PyTorch image classifier for these images: {exc}") from None
    if subject.framework != "torch":
        raise DataCheckError(
            f"the backdoor check needs a PyTorch model (activations, gradients); got {subject.framework}"
        )
    y = subject.encode(np.asarray(labels))
    module = subject.torch_module()
    spectral = {"expected_pp_poison": 0.33, "eps_multiplier": 1.5}  # ART's defaults
    ac_flags, ss_flags, layer = _art_flags(module, x, y, subject.n_classes, seed, spectral)
    nc = neural_cleanse(module, x, subject.n_classes, NC_DEFAULTS, seed=seed, clip=(0.0, 1.0))
    index = anomaly_index({c: r["l1"] for c, r in nc.items()})
    suspected = sorted(c for c, a in index.items() if a > ANOMALY_THRESHOLD)
    in_suspected = np.isin(y, suspected)
    metrics: dict[str, Any] = {}
    for name, flags in (("activation_clustering", ac_flags), ("spectral_signature", ss_flags)):
        chosen = flags & in_suspected
        metrics[name] = {
            "flagged": Rate(int(chosen.sum()), len(y)).to_dict(),
            "by_class": {
                str(subject.classes[c]): {"flagged_in_class": int(flags[y == c].sum()), "rows": int((y == c).sum())}
                for c in range(subject.n_classes)
            },
            "suspected_target": [str(subject.classes[c]) for c in suspected],
        }
    both = ac_flags & ss_flags & in_suspected
    methods = (("activation_clustering", ac_flags & in_suspected), ("spectral_signature", ss_flags & in_suspected))
    samples = [{"row": int(i), "path": paths[i], "class": labels[i], "methods": [n for n, f in methods if f[i]]}
               for i in np.flatnonzero(methods[0][1] | methods[1][1])]  # fmt: skip
    metrics["both_methods"] = {"flagged": Rate(int(both.sum()), len(y)).to_dict()}
    metrics["either_method"] = {"flagged": Rate(len(samples), len(y)).to_dict()}
    metrics["neural_cleanse"] = {
        "l1_norms": {str(subject.classes[c]): r["l1"] for c, r in nc.items()},
        "anomaly_index": {str(subject.classes[c]): a for c, a in index.items()},
        "reached_target": {str(subject.classes[c]): r["reached"] for c, r in nc.items()},
    }
    metrics["suspected_target"] = [str(subject.classes[c]) for c in suspected]
    parameters = {
        "activations": layer,
        "activation_clustering": {
            "nb_clusters": 2,
            "clustering_method": "KMeans",
            "reduce": "PCA",
            "nb_dims": 10,
            "cluster_analysis": "smaller",
        },
        "spectral_signature": {**spectral, "batch_size": 256},
        "neural_cleanse": {**NC_DEFAULTS, "anomaly_threshold": ANOMALY_THRESHOLD},
        "rule": "samples flagged by an ART method in a class whose Neural Cleanse anomaly index exceeds 2",
        "image_shape": list(x.shape[1:]),
        "model_digest": subject.digest,
        "dynamic_analysis": dynamic,
    }
    return CheckResult("backdoor", parameters, seed, len(y), time.perf_counter() - started, metrics,
                       tuple(samples[:MAX_SAMPLES]))  # fmt: skip
