"""Monitoring of a deployed model: sliding windows, drift tests against an approval baseline, control charts.

Needs numpy and scipy (the ``guard`` extra); nothing here is imported by :mod:`mlwarden` itself.
"""

from mlwarden.monitor.baseline import Baseline, BaselineConfig, FeatureProfile
from mlwarden.monitor.drift import DriftConfig, DriftDetector, DriftReport, DriftResult
from mlwarden.monitor.spc import ChartPoint, Cusum, CusumConfig, Ewma, EwmaConfig
from mlwarden.monitor.windows import CategoricalWindow, FeatureWindow, ScalarWindow, VectorWindow, WindowCounts

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
