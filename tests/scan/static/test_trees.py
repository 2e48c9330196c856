"""Native XGBoost / LightGBM model files: valid ones are clean, corrupt ones are LOW."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Finding, Severity
from mlwarden.core.policy import Limits, Policy
from mlwarden.scan.context import ScanContext
from tests.conftest import rule_ids, scan_one

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((60, 4))
    return x, (x[:, 0] > 0.5).astype(int)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("trees")
    x, y = _data()
    booster = xgb.train({"max_depth": 3, "objective": "binary:logistic"}, xgb.DMatrix(x, label=y), 4)
    booster.save_model(str(out / "model.json"))
    booster.save_model(str(out / "model.ubj"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gbm = lgb.train(
            {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_leaves": 4},
            lgb.Dataset(x, label=(x[:, 1] * 3).astype(int)),
            3,
        )
    gbm.save_model(str(out / "model.txt"))
    return {"json": out / "model.json", "ubj": out / "model.ubj", "lgb": out / "model.txt"}


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("json", "XGBoost JSON model"), ("ubj", "XGBoost UBJSON model"), ("lgb", "LightGBM text model v4 with 9 trees")],
)
def test_valid_models_are_info_only(models: dict[str, Path], kind: str, fragment: str) -> None:
    result = scan_one(models[kind])
    assert [(f.rule_id, f.severity) for f in result.findings] == [("MLW-TREE-002", Severity.INFO)]
    assert fragment in result.findings[0].evidence


def test_ubj_and_lightgbm_are_sniffed(models: dict[str, Path]) -> None:
    assert scan_one(models["ubj"]).formats[0][1] == "xgboost-ubj"
    assert scan_one(models["lgb"]).formats[0][1] == "lightgbm-text"


def test_xgboost_json_is_sniffed_as_json(models: dict[str, Path]) -> None:
    assert scan_one(models["json"]).formats[0][1] == "xgboost-json"


def _scan(data: bytes, fmt: Format, limits: Limits | None = None) -> list[Finding]:
    ctx = ScanContext(Policy(limits=limits or Limits()))
    ctx.descend(Artifact.from_bytes(data, ("model",), 0), fmt)
    return ctx.findings


@pytest.mark.parametrize(
    ("kind", "fmt", "mutate", "fragment"),
    [
        ("ubj", Format.XGBOOST_UBJ, lambda b: b[: len(b) // 2], "truncated"),
        ("ubj", Format.XGBOOST_UBJ, lambda b: b + b"junk", "bytes after the end"),
        ("ubj", Format.XGBOOST_UBJ, lambda b: b.replace(b"attributes{", b"attributes\x01", 1), "unknown UBJSON marker"),
        ("json", Format.XGBOOST_JSON, lambda b: b[:-10], "not valid JSON"),
        ("json", Format.XGBOOST_JSON, lambda b: b'{"learner": [], "version": [1]}', "not an XGBoost model"),
        ("lgb", Format.LIGHTGBM_TEXT, lambda b: b[: b.index(b"end of trees")], "no 'end of trees'"),
        ("lgb", Format.LIGHTGBM_TEXT, lambda b: b.replace(b"version=v4", b"vers=v4"), "no 'version='"),
        ("lgb", Format.LIGHTGBM_TEXT, lambda b: b"trees\n" + b, "first line"),
    ],
)
def test_corrupt_models_are_low(
    models: dict[str, Path], kind: str, fmt: Format, mutate: Callable[[bytes], bytes], fragment: str
) -> None:
    findings = _scan(mutate(models[kind].read_bytes()), fmt)
    assert [(f.rule_id, f.severity) for f in findings] == [("MLW-TREE-001", Severity.LOW)]
    assert fragment in findings[0].evidence


def test_ubj_hostile_lengths_do_not_allocate() -> None:
    # A typed array claiming 2**60 float64 values, and a huge key length: bounded by the file size.
    data = b"{L\x00\x00\x00\x00\x00\x00\x00\x07learner[$D#L" + (2**60).to_bytes(8, "big") + b"}"
    findings = _scan(data, Format.XGBOOST_UBJ)
    assert "runs past the end" in findings[0].evidence
    data = b"{L" + (2**40).to_bytes(8, "big") + b"x}"
    assert "runs past the end" in _scan(data, Format.XGBOOST_UBJ)[0].evidence


def test_ubj_deep_nesting_is_bounded() -> None:
    data = b"{i\x01a" + b"[" * 200 + b"]" * 200 + b"}"
    findings = _scan(data, Format.XGBOOST_UBJ)
    assert "nested deeper" in findings[0].evidence


def test_large_json_is_not_read_whole(models: dict[str, Path]) -> None:
    findings = _scan(models["json"].read_bytes(), Format.XGBOOST_JSON, Limits(max_text_size=100))
    assert rule_ids(findings) == {"MLW-TREE-002"}
    assert "not validated" in findings[0].evidence


def test_pickled_xgboost_is_not_judged_here(tmp_path: Path) -> None:
    """The same model pickled is a pickle: the tree handler must not be the one deciding it is fine."""
    import pickle

    x, y = _data()
    clf = xgb.XGBClassifier(n_estimators=2, max_depth=2).fit(x, y)
    path = tmp_path / "model.json"  # misleading name on purpose
    path.write_bytes(pickle.dumps(clf))
    result = scan_one(path)
    assert result.formats[0][1] == "pickle"
    assert "MLW-TREE-002" not in rule_ids(result)
