"""The restricted unpickler on its own: what it admits, what it refuses, with no analysis in front of it."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from mlwarden.core.errors import MlwardenError, UnsafeModelError
from mlwarden.core.policy import PickleRules, Policy
from mlwarden.loader import RestrictedUnpickler, pickle_module, restricted_loads
from mlwarden.loader.frameworks import load_with


def test_refuses_os_system_without_running_it(hostile: bytes, canary: Path) -> None:
    with pytest.raises(UnsafeModelError) as info:
        restricted_loads(hostile, display="hostile.pkl")
    assert not canary.exists()
    assert isinstance(info.value, MlwardenError)
    (finding,) = info.value.findings
    assert finding.rule_id == "MLW-PKL-100"
    assert finding.detail("global") == "os.system"
    assert finding.location.chain == ("hostile.pkl",)
    assert "os.system" in str(info.value)


def test_load_with_pickle_layer_refuses_hostile_file_directly(tmp_path: Path, hostile: bytes, canary: Path) -> None:
    # The analysis is bypassed entirely: only the restricted layer stands between the file and os.system.
    path = tmp_path / "model.pkl"
    path.write_bytes(hostile)
    with pytest.raises(UnsafeModelError):
        load_with("pickle", path, Policy(), True, str(path))
    assert not canary.exists()


def test_admits_plain_data_and_numpy_arrays() -> None:
    data = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "names": ["a", "b"], "t": (1, 2.5, None)}
    out = restricted_loads(pickle.dumps(data, protocol=2))
    assert out["names"] == ["a", "b"]
    assert out["t"] == (1, 2.5, None)
    np.testing.assert_array_equal(out["w"], data["w"])


def test_sklearn_estimator_round_trip() -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    out = restricted_loads(pickle.dumps(model))
    np.testing.assert_array_equal(out.predict(x), model.predict(x))


def _write_module(folder: Path, name: str) -> None:
    (folder / f"{name}.py").write_text(
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n", encoding="utf-8"
    )


def test_unknown_class_refused_unless_policy_allows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, "mlw_restricted_points")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mlw_restricted_points  # type: ignore[import-not-found]

    data = pickle.dumps(mlw_restricted_points.Point(1, 2))
    with pytest.raises(UnsafeModelError) as info:
        restricted_loads(data)
    assert info.value.findings[0].rule_id == "MLW-PKL-110"
    allowed = Policy(pickle=PickleRules(allow=("mlw_restricted_points.Point",)))
    point = restricted_loads(data, allowed)
    assert (point.x, point.y) == (1, 2)
    wildcard = Policy(pickle=PickleRules(allow=("mlw_restricted_points.*",)))
    assert restricted_loads(data, wildcard).y == 2


def test_policy_deny_beats_builtin_allowlist() -> None:
    from collections import OrderedDict

    data = pickle.dumps(OrderedDict(a=1))
    assert restricted_loads(data) == OrderedDict(a=1)
    denied = Policy(pickle=PickleRules(deny=("collections.OrderedDict",)))
    with pytest.raises(UnsafeModelError) as info:
        restricted_loads(data, denied)
    assert info.value.findings[0].rule_id == "MLW-PKL-114"


def test_build_on_an_imported_class_is_refused() -> None:
    # c collections.OrderedDict ; } (empty dict state) ; BUILD -> would set attributes on the class itself.
    data = b"\x80\x02ccollections\nOrderedDict\n}X\x03\x00\x00\x00fooK\x01sb."
    with pytest.raises(UnsafeModelError) as info:
        restricted_loads(data)
    assert info.value.findings[0].rule_id == "MLW-PKL-113"
    from collections import OrderedDict

    assert not hasattr(OrderedDict, "foo")


def test_setitems_on_an_imported_object_is_refused() -> None:
    # c collections.OrderedDict ( X'k' K1 u : SETITEMS on the class object.
    data = b"\x80\x02ccollections\nOrderedDict\n(X\x01\x00\x00\x00kK\x01u."
    with pytest.raises(UnsafeModelError) as info:
        restricted_loads(data)
    assert info.value.findings[0].rule_id == "MLW-PKL-113"


def test_ufunc_reconstruct_cannot_import_outside_numpy(canary: Path) -> None:
    arg_mod, arg_name = b"os", b"system"
    data = (
        b"\x80\x02cnumpy.core\n_ufunc_reconstruct\n"
        + b"X" + len(arg_mod).to_bytes(4, "little") + arg_mod
        + b"X" + len(arg_name).to_bytes(4, "little") + arg_name
        + b"\x86R."
    )  # fmt: skip
    with pytest.raises(UnsafeModelError) as info:
        restricted_loads(data)
    assert info.value.findings[0].rule_id == "MLW-PKL-102"


def test_ufunc_reconstruct_of_a_real_ufunc_is_admitted() -> None:
    assert restricted_loads(pickle.dumps(np.log1p)) is np.log1p


def test_torch_pickle_module_refuses_hostile_full_pickle(tmp_path: Path, canary: Path) -> None:
    torch = pytest.importorskip("torch")

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return os.system, (f"touch {canary}",)

    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2), "x": Payload()}, path)
    with pytest.raises(UnsafeModelError) as info:
        torch.load(path, weights_only=False, pickle_module=pickle_module(Policy(), str(path)))
    assert info.value.findings[0].detail("global") in {"os.system", "posix.system"}
    assert info.value.findings[0].rule_id == "MLW-PKL-100"
    assert not canary.exists()


def test_joblib_object_array_is_read_restricted(tmp_path: Path, canary: Path) -> None:
    joblib = pytest.importorskip("joblib")

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return os.system, (f"touch {canary}",)

    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = "fine", Payload()
    path = tmp_path / "model.joblib"
    joblib.dump({"a": arr}, path)
    with pytest.raises(UnsafeModelError):
        load_with("joblib", path, Policy(), True, str(path))
    assert not canary.exists()
    benign = np.array(["x", 1], dtype=object)
    joblib.dump({"a": benign, "b": np.arange(3)}, path)
    out = load_with("joblib", path, Policy(), True, str(path))
    assert list(out["a"]) == ["x", 1]
    assert list(out["b"]) == [0, 1, 2]


def test_unpickler_subclass_is_a_pickle_unpickler() -> None:
    assert issubclass(RestrictedUnpickler, pickle._Unpickler)
    assert RestrictedUnpickler(io.BytesIO(pickle.dumps([1]))).load() == [1]
