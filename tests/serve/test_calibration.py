"""The baseline captured at approval: OOD threshold and adversarial thresholds hit their rates on fresh data;
the document round-trips and corrupt ones are refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlwarden.core.errors import UsageError
from mlwarden.serve.calibration import AdversarialSettings, GuardBaseline, build_detector, capture, read_reference
from mlwarden.serve.servable import load_servable
from tests.serve.world import tabular_data, train_sklearn


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, GuardBaseline]:
    servable = load_servable(train_sklearn(tmp_path_factory.mktemp("m") / "m.joblib", 1))
    settings = AdversarialSettings(fpr=0.05)
    return servable, capture(
        servable, tabular_data(3000, 5)[0], adversarial=settings, ood_quantile=0.99, model_digest="sha256:" + "00" * 32
    )


def test_ood_threshold_rates(captured: tuple[object, GuardBaseline]) -> None:
    """Measured: quantile 0.99 flags 0.6% of 5,000 fresh in-distribution rows and 98.8% of rows shifted by 5 on
    every feature (a shift partly along the classes' own high-variance direction)."""
    _, baseline = captured
    assert baseline.baseline is not None
    assert baseline.ood_threshold is not None
    fresh = baseline.baseline.mahalanobis(tabular_data(5000, 6)[0])
    shifted = baseline.baseline.mahalanobis(tabular_data(500, 7, shift=5.0)[0])
    assert 0.003 <= float(np.mean(fresh > baseline.ood_threshold)) <= 0.03
    assert float(np.mean(shifted > baseline.ood_threshold)) >= 0.97


def test_adversarial_thresholds_keep_their_rate_on_held_out_data(captured: tuple[object, GuardBaseline]) -> None:
    """Measured: calibrated at fpr 0.05, the combined detector flags 6.2% of 2,000 held-out clean rows."""
    servable, baseline = captured
    detector = build_detector(
        servable,
        baseline.adversarial,
        baseline.adversarial_thresholds,  # type: ignore[arg-type]
        baseline.value_range,
    )
    assert detector is not None
    rate = float(np.mean([s.flagged for s in detector.check(tabular_data(2000, 8)[0])]))
    assert 0.02 <= rate <= 0.09


def test_round_trip_and_confidence(captured: tuple[object, GuardBaseline]) -> None:
    _, baseline = captured
    again = GuardBaseline.from_json(baseline.to_json())
    assert again == baseline
    assert baseline.confidence_mean is not None
    assert 0.5 < baseline.confidence_mean <= 1.0
    assert sum(baseline.label_counts.values()) == 3000


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("ood_threshold"), "missing field 'ood_threshold'"),
        (lambda d: d.update(format="other/1"), "format"),
        (lambda d: d.update(input_kind="audio"), "input_kind"),
        (lambda d: d.update(adversarial_thresholds={"combined": "x"}), "wrong type"),
        (lambda d: d.update(adversarial={"action": "explode"}), "action"),
    ],
)
def test_corrupt_documents_are_refused(captured: tuple[object, GuardBaseline], mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(captured[1].to_json())
    mutate(doc)
    with pytest.raises((UsageError, ValueError), match=message):
        GuardBaseline.from_json(json.dumps(doc))
    with pytest.raises(UsageError, match="not JSON"):
        GuardBaseline.from_json(b"{broken")


def test_bad_reference_data(captured: tuple[object, GuardBaseline], tmp_path: Path) -> None:
    servable, _ = captured
    with pytest.raises(UsageError, match="features"):
        capture(servable, np.zeros((100, 3)))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="finite"):
        capture(servable, np.full((100, 8), np.nan))  # type: ignore[arg-type]
    (tmp_path / "a.csv").write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(UsageError, match="not a number"):
        read_reference(tmp_path / "a.csv")
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{"nope": 1}\n')
    with pytest.raises(UsageError, match="line 2"):
        read_reference(tmp_path / "b.jsonl")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(UsageError, match="use .npy"):
        read_reference(tmp_path / "c.txt")
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4\n")
    data, names = read_reference(tmp_path / "d.csv")
    assert names == ("a", "b")
    assert data.tolist() == [[1.0, 2.0], [3.0, 4.0]]  # type: ignore[union-attr]


def _benchmark_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The guard benchmark's data: two Gaussian classes in 8 features (benchmarks/guard_load.py)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.where(y[:, None] == 1, 1.0, -1.0) * np.linspace(0.5, 1.5, 8) + rng.standard_normal((n, 8))
    return x, y


def test_calibrated_prada_blocks_no_benign_client_of_a_hundred_and_still_stops_a_synthetic_stream() -> None:
    """Measured on this model: delta 0.890; 100 benign clients of 400 fresh rows each, 0 blocked (the earlier
    calibration on 20 simulated clients gave 0.907 and blocked one of them for good at its 110th query, W 0.904);
    5 clients sending Jacobian-augmented queries (Papernot et al.) are all blocked at the first test."""
    from sklearn.linear_model import LogisticRegression

    from mlwarden.guard.extraction import ExtractionConfig, ExtractionMonitor
    from mlwarden.serve.calibration import calibrate_prada

    x, y = _benchmark_like(4000, 1)
    model = LogisticRegression(max_iter=500).fit(x, y)
    reference = _benchmark_like(1000, 2)[0]
    delta = calibrate_prada(reference, model.predict_proba(reference))
    assert delta is not None
    assert 0.85 <= delta <= 0.9
    monitor = ExtractionMonitor(ExtractionConfig(delta=delta), n_classes=2)
    rows = _benchmark_like(40_000, 3)[0]
    labels = model.predict(rows)
    blocked = {
        f"c{i % 100}"
        for i in range(len(rows))
        if monitor.observe(f"c{i % 100}", rows[i], int(labels[i]), now=i * 0.002).action != "allow"
    }
    assert blocked == set()
    rng = np.random.default_rng(9)
    direction = np.sign(model.coef_[0])  # the gradient's sign of a linear model: Jacobian augmentation's step
    for attacker in range(5):
        points = list(reference[rng.choice(len(reference), 10, replace=False)])
        while len(points) < 150:  # Papernot et al.: every point so far, stepped along the gradient's sign
            step = 0.1 if len(points) % 20 < 10 else -0.1
            points += [p + step * direction * (1 if model.predict(p[None])[0] else -1) for p in points]
        queries = np.array(points[:150])
        verdicts = [
            monitor.observe(f"thief{attacker}", q, int(c), now=k * 0.5)
            for k, (q, c) in enumerate(zip(queries, model.predict(queries), strict=True))
        ]
        first = next((k for k, v in enumerate(verdicts) if v.action == "block"), None)
        assert first is not None, f"attacker {attacker} not blocked"
        assert first < 120, first
