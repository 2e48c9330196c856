"""The fused adversarial check (serve/fastcheck.py) decides exactly as the generic detectors it replaces.

Both are built from the same calibrated baseline with the same noise seed, then fed the same stream of requests
(single rows, batches, rows far outside the value range, rows near the decision boundary): every score, ratio,
threshold and flag must agree. Any other detector combination is left to the generic detectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlwarden.serve.calibration import AdversarialSettings, GuardBaseline, build_detector, capture
from mlwarden.serve.checks import RequestGuard
from mlwarden.serve.fastcheck import FusedSqueezeNoise, fuse
from mlwarden.serve.policy import GuardPolicy
from mlwarden.serve.servable import Servable, load_servable
from tests.serve.world import tabular_data, train_sklearn


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Servable, GuardBaseline]:
    servable = load_servable(train_sklearn(tmp_path_factory.mktemp("m") / "m.joblib", 1))
    baseline = capture(servable, tabular_data(1000, 5)[0], adversarial=AdversarialSettings(fpr=0.05))
    return servable, baseline


def _requests() -> list[np.ndarray]:
    x = tabular_data(400, 9)[0]
    batches = [x[i : i + 1] for i in range(200)]
    batches += [x[200 + 10 * i : 210 + 10 * i] for i in range(10)]
    batches.append(x[300:310] * 25.0)  # far outside the value range: clipped by both
    batches.append(np.zeros((3, x.shape[1])))  # near the boundary of a centred model
    batches.append(x[310:311] + 1e-9)
    return batches


def test_fused_check_equals_the_generic_detectors(captured: tuple[Servable, GuardBaseline]) -> None:
    servable, baseline = captured
    generic = build_detector(servable, baseline.adversarial, baseline.adversarial_thresholds, baseline.value_range)
    twin = build_detector(servable, baseline.adversarial, baseline.adversarial_thresholds, baseline.value_range)
    fns = servable.proba_fns()
    assert generic is not None
    assert twin is not None
    assert fns is not None
    fused = fuse(twin, *fns, seed=baseline.adversarial.seed)
    assert isinstance(fused, FusedSqueezeNoise)
    flagged = 0
    for batch in _requests():
        expected, got = generic.check(batch), fused.check(batch)
        assert len(got) == len(expected) == len(batch)
        for e, g in zip(expected, got, strict=True):
            assert g.detector == e.detector == "combined"
            assert g.threshold == e.threshold
            assert g.flagged == e.flagged
            assert g.score == pytest.approx(e.score, rel=1e-12, abs=1e-15)
            assert set(g.detail) == set(e.detail)
            assert g.detail["worst"] == e.detail["worst"]
            for key in g.detail:
                if key != "worst":
                    assert g.detail[key] == pytest.approx(e.detail[key], rel=1e-12, abs=1e-15)
            flagged += e.flagged
    assert flagged > 0  # the stream exercised the flagging branch, not only clean rows


def test_request_guard_uses_the_fused_check_and_refuses_bad_batches(
    captured: tuple[Servable, GuardBaseline],
) -> None:
    servable, baseline = captured
    guard = RequestGuard(GuardPolicy(), servable, baseline)
    assert guard.fused is not None
    assert guard.fused.threshold == baseline.adversarial_thresholds["combined"]
    from mlwarden.core.errors import UsageError

    with pytest.raises(UsageError):
        guard.fused.check(np.array([[np.nan] * 8]))
    with pytest.raises(UsageError):
        guard.fused.check(np.zeros((0, 8)))


@pytest.mark.parametrize("detectors", [("squeeze",), ("noise",), ("noise", "squeeze")])
def test_other_combinations_keep_the_generic_detectors(
    captured: tuple[Servable, GuardBaseline], tmp_path: Path, detectors: tuple[str, ...]
) -> None:
    servable, baseline = captured
    settings = AdversarialSettings(detectors=detectors)  # type: ignore[arg-type]
    detector = build_detector(servable, settings, None, baseline.value_range)
    assert detector is not None
    detector.calibrate(tabular_data(200, 3)[0], 0.05)
    fns = servable.proba_fns()
    assert fns is not None
    assert fuse(detector, *fns, seed=0) is None


def test_uncalibrated_detector_is_not_fused(captured: tuple[Servable, GuardBaseline]) -> None:
    servable, baseline = captured
    detector = build_detector(servable, baseline.adversarial, None, baseline.value_range)
    fns = servable.proba_fns()
    assert detector is not None
    assert fns is not None
    assert fuse(detector, *fns, seed=0) is None
