"""Monitoring of a deployed model: sliding windows, drift tests against an approval baseline, control charts.

Needs numpy and scipy (the ``guard`` extra); nothing here is imported by :mod:`mlwarden` itself.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlwarden.monitor.baseline import Baseline, BaselineConfig, FeatureProfile
    from mlwarden.monitor.drift import DriftConfig, DriftDetector, DriftReport, DriftResult
    from mlwarden.monitor.spc import ChartPoint, Cusum, CusumConfig, Ewma, EwmaConfig
    from mlwarden.monitor.windows import CategoricalWindow, FeatureWindow, ScalarWindow, VectorWindow, WindowCounts

# Imported on first use: the drift tests import scipy, and `mlwarden monitor drift` reads its tables (pyarrow,
# no scipy) while scipy imports on another thread.
_HOME = {
    **dict.fromkeys(("Baseline", "BaselineConfig", "FeatureProfile"), "baseline"),
    **dict.fromkeys(("DriftConfig", "DriftDetector", "DriftReport", "DriftResult"), "drift"),
    **dict.fromkeys(("ChartPoint", "Cusum", "CusumConfig", "Ewma", "EwmaConfig"), "spc"),
    **dict.fromkeys(("CategoricalWindow", "FeatureWindow", "ScalarWindow", "VectorWindow", "WindowCounts"), "windows"),
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"mlwarden.monitor.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Baseline",
    "BaselineConfig",
    "CategoricalWindow",
    "ChartPoint",
    "Cusum",
    "CusumConfig",
    "DriftConfig",
    "DriftDetector",
    "DriftReport",
    "DriftResult",
    "Ewma",
    "EwmaConfig",
    "FeatureProfile",
    "FeatureWindow",
    "ScalarWindow",
    "VectorWindow",
    "WindowCounts",
]
