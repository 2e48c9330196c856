"""numpy files and joblib dumps: data is data, object arrays and wrapped payloads are analysed."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest

from tests.conftest import failing, rule_ids, scan_bytes, scan_one

np = pytest.importorskip("numpy")
EVIL = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."
SYSTEM = {"os.system", "posix.system", "nt.system"}  # os.system pickles under the platform module's name


class Canary:
    """Pickles as a call to os.system that would touch a file under the test's tmp dir."""

    def __init__(self, path: Path) -> None:
        self.cmd = f"touch {path}"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (self.cmd,))


def _npy(array) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_numeric_npy_and_npz_are_clean(tmp_path: Path) -> None:
    assert scan_bytes(tmp_path, _npy(np.arange(100, dtype=np.float32))).findings == ()
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.ones((3, 4)), b=np.array(["x", "yz"]))
    assert scan_bytes(tmp_path, buf.getvalue(), "arrays.npz").findings == ()


def test_benign_object_array_has_only_info(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, _npy(np.array([1, "two", None, 3.5], dtype=object)))
    assert rule_ids(result) == {"MLW-NPY-002"}
    assert not failing(result)


def test_object_array_with_payload(tmp_path: Path) -> None:
    marker = tmp_path / "canary"
    data = _npy(np.array([Canary(marker)], dtype=object))
    result = scan_bytes(tmp_path, data, "weights.npy")
    assert SYSTEM & {f.detail("global") for f in failing(result)}
    assert not marker.exists()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("w.npy", data)
    assert SYSTEM & {f.detail("global") for f in failing(scan_bytes(tmp_path, buf.getvalue(), "x.npz"))}


def test_malformed_npy_header_and_size(tmp_path: Path) -> None:
    good = _npy(np.arange(10, dtype=np.int64))
    bad_header = good.replace(b"'descr'", b"'descr' __import__('os')", 1)
    assert rule_ids(scan_bytes(tmp_path, bad_header)) == {"MLW-NPY-001"}
    assert rule_ids(scan_bytes(tmp_path, good[:-8])) == {"MLW-NPY-003"}


def test_joblib_payload_after_array_bytes(tmp_path: Path) -> None:
    # aisbom PR #91: joblib writes raw array bytes mid-stream; a payload after them must still be found.
    joblib = pytest.importorskip("joblib")
    marker = tmp_path / "canary"
    p = tmp_path / "model.joblib"
    joblib.dump(
        {
            "a_weights": np.arange(10_000, dtype=np.float64),
            "b": np.ones((7, 3), dtype=np.int8),
            "z_payload": Canary(marker),
        },
        p,
    )
    result = scan_one(p)
    assert {f.detail("global") for f in failing(result)} <= SYSTEM
    assert failing(result)
    assert "MLW-PKL-120" not in rule_ids(result)  # the array bytes were skipped, not misparsed
    assert not marker.exists()


@pytest.mark.parametrize("compress", [("zlib", 3), ("gzip", 3), ("bz2", 3), ("lzma", 3), ("xz", 3), 3])
def test_compressed_joblib(tmp_path: Path, compress) -> None:  # type: ignore[no-untyped-def]
    joblib = pytest.importorskip("joblib")
    p = tmp_path / "model.joblib"
    joblib.dump({"w": np.arange(1000.0), "z": Canary(tmp_path / "canary")}, p, compress=compress)
    found = {f.detail("global") for f in failing(scan_one(p))}
    assert found
    assert found <= SYSTEM
    joblib.dump({"w": np.arange(1000.0), "s": np.array(["a", None], dtype=object)}, p, compress=compress)
    assert not failing(scan_one(p))


def test_joblib_object_array_nested_pickle(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    p = tmp_path / "obj.joblib"
    joblib.dump([np.array([Canary(tmp_path / "c")], dtype=object), np.arange(5)], p)
    assert SYSTEM & {f.detail("global") for f in failing(scan_one(p))}


def test_sklearn_models_are_clean(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    joblib = pytest.importorskip("joblib")
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=60), rng.integers(0, 3, 60)])
    y = (x[:, 0] > 0).astype(int)
    models = [
        LogisticRegression().fit(x, y),
        RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y),
        GradientBoostingClassifier(n_estimators=3).fit(x, y),
        Pipeline(
            [
                ("pre", ColumnTransformer([("num", StandardScaler(), [0]), ("cat", OneHotEncoder(), [1])])),
                ("clf", LogisticRegression()),
            ]
        ).fit(x, y),
        Pipeline([("log", FunctionTransformer(np.log1p)), ("clf", LogisticRegression())]).fit(np.abs(x), y),
    ]
    for i, model in enumerate(models):
        p = tmp_path / f"m{i}.joblib"
        joblib.dump(model, p)
        assert not failing(scan_one(p)), (type(model).__name__, [f.evidence for f in failing(scan_one(p))])
        q = tmp_path / f"m{i}.pkl"
        q.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        assert not failing(scan_one(q)), type(model).__name__
