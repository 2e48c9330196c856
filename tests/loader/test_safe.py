"""mlwarden.load: benign models round-trip, hostile ones raise UnsafeModelError and never run, no TOCTOU."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import mlwarden
from mlwarden.core.errors import LimitExceeded, UsageError
from mlwarden.core.policy import Limits, PickleRules, Policy
from mlwarden.loader import safe
from mlwarden_samples import build_malicious

needs_sandbox = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def _private_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("mlwarden-load-")}


# -- benign models load and equal the original -------------------------------------------------------------------


def test_sklearn_pickle_predicts_the_same(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x = np.random.default_rng(0).normal(size=(60, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    path = tmp_path / "forest.pkl"
    path.write_bytes(pickle.dumps(model))
    before = _private_dirs()
    loaded = mlwarden.load(path, dynamic=False)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert _private_dirs() == before  # the private copy is gone


def test_joblib_compressed_predicts_the_same(tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(1).normal(size=(50, 3))
    model = LogisticRegression().fit(x, (x[:, 2] > 0).astype(int))
    path = tmp_path / "model.joblib"
    joblib.dump(model, path, compress=3)
    loaded = mlwarden.load(path, dynamic=False)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_torch_state_dict_and_full_module(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    sd = mlwarden.load(tmp_path / "sd.pt", dynamic=False)
    assert sd.keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        assert torch.equal(sd[k], v)
    torch.save(net, tmp_path / "full.pt")
    full = mlwarden.load(tmp_path / "full.pt", dynamic=False)
    assert isinstance(full, torch.nn.Sequential)
    x = torch.randn(5, 4)
    assert torch.equal(full(x), net(x))


def test_numpy_npy_npz_and_object_array(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(mlwarden.load(tmp_path / "a.npy", dynamic=False), a)
    np.savez(tmp_path / "b.npz", w=a, b=np.ones(2))
    out = mlwarden.load(tmp_path / "b.npz", dynamic=False)
    assert set(out) == {"w", "b"}
    np.testing.assert_array_equal(out["w"], a)
    objs = np.array([{"k": 1}, [1, 2]], dtype=object)
    np.save(tmp_path / "o.npy", objs, allow_pickle=True)
    loaded = mlwarden.load(tmp_path / "o.npy", dynamic=False)
    assert loaded[0] == {"k": 1}
    assert loaded[1] == [1, 2]


def test_safetensors_tensors_equal(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    tensors = {"w": torch.randn(3, 2), "b": torch.arange(4)}
    save_file(tensors, tmp_path / "m.safetensors")
    out = mlwarden.load(tmp_path / "m.safetensors", dynamic=False)
    assert out.keys() == tensors.keys()
    assert all(torch.equal(out[k], tensors[k]) for k in tensors)


def test_keras_model_predicts_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="relu"), keras.layers.Dense(1)])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = mlwarden.load(path, dynamic=False)
    x = np.random.default_rng(2).normal(size=(4, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded.predict(x, verbose=0)), np.asarray(model.predict(x, verbose=0)))


def test_onnx_folder_with_external_data(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(256, dtype=np.float32).reshape(16, 16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [w],
    )
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(helper.make_model(graph), folder / "model.onnx", save_as_external_data=True, location="weights.bin",
              size_threshold=0)  # fmt: skip
    assert (folder / "weights.bin").exists()
    model = mlwarden.load(folder, dynamic=False)
    got = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(got, np.arange(256, dtype=np.float32).reshape(16, 16))


# -- hostile models are refused with findings, and never run -----------------------------------------------------

FAMILIES = [
    "pickle-os-system",
    "pickle-builtins-exec",
    "joblib-reduce",
    "torch-zip-data-pkl",
    "torch-legacy-main",
    "numpy-object-payload",
    "keras-lambda",
    "gguf-ssti",
    "onnx-external-traversal",
    "nested-archive",
]


@pytest.mark.parametrize("family", FAMILIES)
def test_malicious_sample_refused_and_canary_absent(tmp_path: Path, family: str) -> None:
    canary_dir = tmp_path / "canary"
    samples = build_malicious(tmp_path / "corpus", canary_dir, only=[family])
    if not samples:
        pytest.skip(f"{family}: framework not installed")
    for sample in samples:
        with pytest.raises(mlwarden.UnsafeModelError) as info:
            mlwarden.load(sample.path, dynamic=False)
        err = info.value
        assert err.findings
        assert all(f.severity >= Policy().fail_on for f in err.findings)
        assert err.findings[0].severity == max(f.severity for f in err.findings)
        assert err.findings[0].rule_id in str(err)
        assert err.findings[0].location.chain[0] == str(sample.path)  # the user's path, not the private copy
        if sample.path.is_file():
            assert err.digest == hashlib.sha256(sample.path.read_bytes()).hexdigest()
    assert list(canary_dir.iterdir()) == []


def test_unknown_harmless_class_needs_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mlw_safe_points.py").write_text(
        "class Point:\n    def __init__(self, x):\n        self.x = x\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import mlw_safe_points  # type: ignore[import-not-found]

    path = tmp_path / "point.pkl"
    path.write_bytes(pickle.dumps(mlw_safe_points.Point(7)))
    with pytest.raises(mlwarden.UnsafeModelError) as info:
        mlwarden.load(path, dynamic=False)
    assert [f.rule_id for f in info.value.findings] == ["MLW-PKL-110"]
    policy = Policy(pickle=PickleRules(allow=("mlw_safe_points.Point",)))
    assert mlwarden.load(path, policy=policy, dynamic=False).x == 7


def test_restricted_layer_catches_what_a_lenient_policy_lets_through(
    tmp_path: Path, hostile: bytes, canary: Path
) -> None:
    # fail_on=CRITICAL+disabled rule: the analysis passes; the restricted unpickler still refuses os.system.
    from mlwarden.core.findings import Severity
    from mlwarden.core.policy import RuleOverride

    path = tmp_path / "m.pkl"
    path.write_bytes(hostile)
    policy = Policy(fail_on=Severity.CRITICAL, rules={"MLW-PKL-100": RuleOverride(enabled=False)})
    with pytest.raises(mlwarden.UnsafeModelError) as info:
        mlwarden.load(path, policy=policy, dynamic=False)
    assert "restricted unpickler refused" in str(info.value)
    assert info.value.digest == hashlib.sha256(hostile).hexdigest()
    assert not canary.exists()


# -- the loaded bytes are the analysed bytes ---------------------------------------------------------------------


def test_source_swapped_after_copy_does_not_reach_the_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostile: bytes, canary: Path
) -> None:
    path = tmp_path / "model.pkl"
    original = {"weights": [1.0, 2.0, 3.0]}
    path.write_bytes(pickle.dumps(original))
    real = safe._analyse
    swapped: list[bool] = []

    def analyse_then_swap(*args: object, **kw: object) -> object:
        result = real(*args, **kw)  # type: ignore[arg-type]
        path.write_bytes(hostile)  # the attacker swaps the file between the check and the load
        swapped.append(True)
        return result

    monkeypatch.setattr(safe, "_analyse", analyse_then_swap)
    loaded = mlwarden.load(path, dynamic=False, restricted=False)  # even with the restricted layer off
    assert swapped == [True]
    assert loaded == original
    assert not canary.exists()
    assert path.read_bytes() == hostile


def test_digest_of_the_copied_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    copy = safe.copy_model(path, Limits())
    try:
        assert copy.digest == hashlib.sha256(path.read_bytes()).hexdigest()
        assert oct(copy.root.stat().st_mode & 0o777) == "0o700"
        assert copy.files[0].path.read_bytes() == path.read_bytes()
    finally:
        copy.remove()
    assert not copy.root.exists()


# -- limits and usage errors --------------------------------------------------------------------------------------


def test_max_file_size_is_enforced(tmp_path: Path) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(list(range(1000))))
    with pytest.raises(LimitExceeded) as info:
        mlwarden.load(path, policy=Policy(limits=Limits(max_file_size=100)), dynamic=False)
    assert info.value.limit == "max_file_size"


def test_symlink_inside_a_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    np.save(folder / "a.npy", np.ones(2))
    (folder / "secret").symlink_to("/etc/hostname")
    with pytest.raises(UsageError, match="symbolic link"):
        mlwarden.load(folder, dynamic=False)


def test_unknown_framework_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown framework"):
        mlwarden.load(tmp_path / "x", framework="tensorflow", dynamic=False)
    with pytest.raises(UsageError):
        mlwarden.load(tmp_path / "missing.pkl", dynamic=False)


def test_sandbox_unavailable_means_nothing_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlwarden.scan.dynamic import sandbox

    def unavailable() -> None:
        raise sandbox.SandboxUnavailable("no namespaces here")

    monkeypatch.setattr(sandbox, "check_available_cached", unavailable)
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps([1]))
    before = _private_dirs()
    with pytest.raises(sandbox.SandboxUnavailable):
        mlwarden.load(path)
    assert _private_dirs() == before


# -- with the sandbox ----------------------------------------------------------------------------------------------


@needs_sandbox
def test_dynamic_benign_sklearn_loads(tmp_path: Path) -> None:
    from sklearn.tree import DecisionTreeClassifier

    x = np.random.default_rng(3).normal(size=(30, 2))
    model = DecisionTreeClassifier(max_depth=2).fit(x, (x[:, 0] > 0).astype(int))
    path = tmp_path / "tree.pkl"
    path.write_bytes(pickle.dumps(model))
    loaded = mlwarden.load(path, dynamic=True)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


@needs_sandbox
def test_dynamic_hostile_pickle_refused_with_dynamic_findings(tmp_path: Path, hostile: bytes, canary: Path) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(hostile)
    with pytest.raises(mlwarden.UnsafeModelError) as info:
        mlwarden.load(path, dynamic=True)
    ids = {f.rule_id for f in info.value.findings}
    assert "MLW-PKL-100" in ids  # static
    assert any(i.startswith("MLW-DYN-") for i in ids), ids  # the sandboxed run saw the exec
    assert not canary.exists()
