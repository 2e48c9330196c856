"""Keras configs: .keras config.json, Keras 2 JSON and HDF5 model_config. Models are built, never loaded."""

from __future__ import annotations

import base64
import json
import marshal
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Finding, Severity
from mlwarden.core.policy import Policy
from mlwarden.scan.context import ScanContext
from mlwarden.scan.static.keras import marshal_strings
from tests.conftest import failing, rule_ids, scan_one

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")


def scan_config(config: Any, fmt: Format | None = None) -> list[Finding]:
    data = config if isinstance(config, bytes) else json.dumps(config).encode()
    ctx = ScanContext(Policy())
    detected = ctx.descend(Artifact.from_bytes(data, ("model.keras", "config.json"), 1), fmt)
    assert detected is (fmt or Format.KERAS_CONFIG)
    return ctx.findings


def only(findings: list[Finding], rule_id: str) -> Finding:
    hits = [f for f in findings if f.rule_id == rule_id]
    assert len(hits) == 1, [(f.rule_id, f.evidence) for f in findings]
    return hits[0]


def layer(
    class_name: str, config: dict[str, Any], module: str | None = "keras.layers", registered_name: str | None = None
) -> dict[str, Any]:
    return {"module": module, "class_name": class_name, "config": config, "registered_name": registered_name}


def fnref(module: str, name: str) -> dict[str, Any]:
    """How Keras 3 serialises a reference to a function."""
    return {"module": module, "class_name": "function", "config": name, "registered_name": "function"}


def model_with(*layers: dict[str, Any]) -> dict[str, Any]:
    base = [layer("InputLayer", {"batch_shape": [None, 4], "dtype": "float32", "name": "input_layer"})]
    return {
        "module": "keras",
        "class_name": "Sequential",
        "registered_name": None,
        "config": {"name": "sequential", "layers": base + list(layers)},
    }


# --- real models ---------------------------------------------------------------------------------------


def _benign_models() -> dict[str, Any]:
    seq = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    seq.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    inp = keras.Input((10,), dtype="int32")
    x = keras.layers.Embedding(50, 8)(inp)
    x = keras.layers.Conv1D(4, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.LSTM(6)(x)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=keras.regularizers.L2(0.01))(x)
    fn = keras.Model(inp, out)
    fn.compile(
        optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.BinaryCrossentropy(), metrics=[keras.metrics.AUC()]
    )
    return {"sequential": seq, "functional": fn}


@pytest.fixture(scope="module")
def benign_models() -> dict[str, Any]:
    return _benign_models()


@pytest.mark.parametrize("name", ["sequential", "functional"])
def test_benign_keras_config_is_clean(tmp_path: Path, benign_models: dict[str, Any], name: str) -> None:
    path = tmp_path / f"{name}.keras"
    benign_models[name].save(path)
    config = zipfile.ZipFile(path).read("config.json")
    findings = scan_config(config)
    assert findings == []


@pytest.mark.parametrize("name", ["sequential", "functional"])
def test_benign_h5_model_is_clean(tmp_path: Path, benign_models: dict[str, Any], name: str) -> None:
    path = tmp_path / f"{name}.h5"
    benign_models[name].save(path)
    result = scan_one(path)
    assert ((str(path),), "hdf5") in result.formats
    assert failing(result) == []
    assert not any(f.rule_id.startswith("MLW-KERAS") for f in result.findings)


@pytest.mark.parametrize("name", ["sequential", "functional"])
def test_benign_keras_archive_is_clean(tmp_path: Path, benign_models: dict[str, Any], name: str) -> None:
    path = tmp_path / f"{name}.keras"
    benign_models[name].save(path)
    result = scan_one(path)
    assert ((str(path), "config.json"), "keras-config") in result.formats
    assert failing(result) == []


def test_weights_only_h5_is_clean(tmp_path: Path, benign_models: dict[str, Any]) -> None:
    path = tmp_path / "model.weights.h5"
    benign_models["sequential"].save_weights(path)
    result = scan_one(path)
    assert failing(result) == []


def _lambda_model(canary: Path) -> Any:
    # Harmless canary: if this lambda ever ran it would only write a file under the test's tmp dir.
    fn = lambda x, p=str(canary): (__import__("pathlib").Path(p).write_text("pwned"), x)[1]  # noqa: E731
    return keras.Sequential([keras.Input((3,)), keras.layers.Lambda(fn, output_shape=(3,))])


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_bytecode_is_critical(tmp_path: Path, suffix: str) -> None:
    canary = tmp_path / "canary.txt"
    path = tmp_path / f"lambda{suffix}"
    _lambda_model(canary).save(path)
    canary.unlink(missing_ok=True)
    result = scan_one(path)
    hit = only(list(result.findings), "MLW-KERAS-001")
    assert hit.severity is Severity.CRITICAL
    assert "write_text" in hit.evidence
    assert "suspicious: __import__, write_text" in hit.evidence
    assert "__import__" in hit.detail("names")
    assert hit.detail("paths") == ("$.config.layers[1].config.function",)
    if suffix == ".h5":
        assert hit.location.phase == "model_config"
    else:
        assert hit.location.chain == (str(path), "config.json")
    assert not canary.exists()


def test_marshal_strings_lists_names_without_unmarshalling() -> None:
    code = marshal.dumps(compile("import os\nos.system('echo hi')", "<evil>", "exec"))
    names = marshal_strings(code)
    assert {"os", "system", "echo hi", "<evil>"} <= set(names)


# --- hand-edited configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "target"),
    [
        ({"module": "os", "class_name": "system", "config": {}, "registered_name": None}, "os.system"),
        (
            {"module": "builtins", "class_name": "function", "config": "exec", "registered_name": "function"},
            "builtins.exec",
        ),
        (
            {"module": "subprocess", "class_name": "Popen", "config": {}, "registered_name": "X>Popen"},
            "subprocess.Popen",
        ),
        (
            {"module": "evil_pkg.payload", "class_name": "run", "config": {}, "registered_name": None},
            "evil_pkg.payload.run",
        ),
    ],
)
def test_import_outside_keras_is_high(obj: dict[str, Any], target: str) -> None:
    dense = layer("Dense", {"name": "dense", "units": 2, "activation": obj})
    hit = only(scan_config(model_with(dense)), "MLW-KERAS-003")
    assert hit.severity is Severity.HIGH
    assert hit.cwe == 502
    assert hit.detail("target") == target
    assert hit.detail("paths") == ("$.config.layers[1].config.activation",)


def test_cve_2025_1550_shape_is_high() -> None:
    """CVE-2025-1550 (io-no/CVE-Reports#2): a layer whose module/class_name name an arbitrary callable."""
    evil = {"module": "os", "class_name": "system", "config": {"command": "touch /tmp/x"}, "registered_name": None}
    assert rule_ids(scan_config(model_with(evil))) == {"MLW-KERAS-003"}


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (fnref("keras.models", "load_model"), "keras.models.load_model"),
        (fnref("keras.utils", "get_file"), "keras.utils.get_file"),
        (
            {
                "module": "keras.config",
                "class_name": "function",
                "config": "enable_unsafe_deserialization",
                "registered_name": "function",
            },
            "keras.config.enable_unsafe_deserialization",
        ),
        (
            {
                "module": "keras.src.backend.common.global_state",
                "class_name": "function",
                "config": "set_global_attribute",
                "registered_name": "function",
            },
            "keras.src.backend.common.global_state.set_global_attribute",
        ),
    ],
)
def test_lambda_calling_non_modeling_keras_api(fn: dict[str, Any], expected: str) -> None:
    """CVE-2025-9906 / CVE-2025-8747 (io-no/CVE-Reports#5): Lambda wired to a Keras loader API."""
    findings = scan_config(
        model_with(layer("Lambda", {"name": "unsafe", "function": fn, "arguments": {"safe_mode": False}}))
    )
    assert only(findings, "MLW-KERAS-004").detail("target") == expected
    assert only(findings, "MLW-KERAS-002").severity is Severity.HIGH
    assert "MLW-KERAS-001" not in rule_ids(findings)


def test_custom_objects_are_low_and_grouped() -> None:
    # Safe mode builds a custom object only from code the loading program registers: the file runs nothing.
    custom = [
        layer("MyLayer", {"name": f"my_layer_{i}"}, module=None, registered_name="MyPkg>MyLayer") for i in range(3)
    ]
    fn_layer = layer("Dense", {"name": "d", "units": 1, "activation": fnref("builtins", "my_activation")})
    pkg_layer = layer("Block", {"name": "block"}, module="my_models.layers", registered_name="MyModels>Block")
    findings = scan_config(model_with(*custom, fn_layer, pkg_layer))
    assert {f.rule_id for f in findings} == {"MLW-KERAS-005"}
    assert all(f.severity is Severity.LOW for f in findings)
    by_object = {f.detail("object"): f for f in findings}
    assert set(by_object) == {"MyPkg>MyLayer", "my_activation", "MyModels>Block"}
    assert by_object["MyPkg>MyLayer"].detail("count") == 3


def test_keras_hub_objects_are_not_custom() -> None:
    backbone = layer(
        "GemmaBackbone",
        {"name": "gemma_backbone"},
        module="keras_hub.src.models.gemma.gemma_backbone",
        registered_name="keras_hub>GemmaBackbone",
    )
    assert scan_config(model_with(backbone)) == []


def test_keras3_lambda_value_form_and_output_shape_lambda() -> None:
    code = base64.b64encode(marshal.dumps((lambda x: x).__code__)).decode()
    loose = {"class_name": "__lambda__", "config": {"value": [code, None, None]}}
    lam = layer(
        "Lambda",
        {
            "name": "l",
            "output_shape": loose,
            "function": {"class_name": "__lambda__", "config": {"code": code, "defaults": None, "closure": None}},
        },
    )
    findings = scan_config(model_with(lam, layer("Dense", {"name": "d", "units": 1, "activation": loose})))
    hits = [f for f in findings if f.rule_id == "MLW-KERAS-001"]
    assert sorted(p for f in hits for p in f.detail("paths")) == [
        "$.config.layers[1].config.function",
        "$.config.layers[1].config.output_shape",
        "$.config.layers[2].config.activation",
    ]


def test_keras2_lambda_list_and_named_function_forms() -> None:
    code = base64.b64encode(marshal.dumps((lambda x: x).__code__)).decode()
    keras2 = {
        "class_name": "Sequential",
        "keras_version": "2.15.0",
        "backend": "tensorflow",
        "config": {
            "name": "sequential",
            "layers": [
                {
                    "class_name": "Lambda",
                    "config": {
                        "name": "lam",
                        "function": [code, None, None],
                        "function_type": "lambda",
                        "module": "__main__",
                    },
                },
                {
                    "class_name": "Lambda",
                    "config": {"name": "named", "function": "system", "function_type": "function", "module": "os"},
                },
            ],
        },
    }
    findings = scan_config(keras2)
    assert only(findings, "MLW-KERAS-001").detail("paths") == ("$.config.layers[0].config.function",)
    assert only(findings, "MLW-KERAS-002").detail("function") == "os.system"
    assert only(findings, "MLW-KERAS-003").detail("target") == "os.system"


def test_torch_module_wrapper_pickle_is_reported_and_descended() -> None:
    """CVE-2025-49655: TorchModuleWrapper's base64 torch.save() pickle; the embedded pickle is analysed."""
    payload = pickle.dumps(print, protocol=2)  # a global reference, never unpickled by the scanner
    wrapper = layer(
        "TorchModuleWrapper", {"name": "torch_module_wrapper", "module": base64.b64encode(payload).decode()}
    )
    ctx = ScanContext(Policy())
    ctx.descend(Artifact.from_bytes(json.dumps(model_with(wrapper)).encode(), ("m.keras", "config.json"), 1))
    assert only(ctx.findings, "MLW-KERAS-006").severity is Severity.HIGH
    chains = [chain for chain, fmt in ctx.formats if fmt is Format.PICKLE]
    assert chains == [("m.keras", "config.json", "<config.json:$.config.layers[1]>")]


def test_loader_gadgets() -> None:
    tfsm = layer("TFSMLayer", {"name": "tfsm", "filepath": "/tmp/other_saved_model"}, module="keras.layers")
    local = layer("StringLookup", {"name": "lookup", "vocabulary": "/etc/passwd"})
    remote = layer("StringLookup", {"name": "lookup2", "vocabulary": "http://127.0.0.1:9/vocab.txt"})
    named = layer("Dense", {"name": "../../../tmp/evil", "units": 1})
    tfop = {"class_name": "TFOpLambda", "config": {"name": "tf.io.write_file", "function": "io.write_file"}}
    benign_tfop = {"class_name": "TFOpLambda", "config": {"name": "tf.math.add", "function": "math.add"}}
    findings = scan_config(model_with(tfsm, local, remote, named, tfop, benign_tfop))
    assert only(findings, "MLW-KERAS-007").detail("filepath") == "/tmp/other_saved_model"
    vocab = {f.detail("vocabulary"): f for f in findings if f.rule_id == "MLW-KERAS-008"}
    assert set(vocab) == {"/etc/passwd", "http://127.0.0.1:9/vocab.txt"}
    assert vocab["http://127.0.0.1:9/vocab.txt"].detail("remote") is True
    assert only(findings, "MLW-KERAS-009").detail("name") == "../../../tmp/evil"
    assert only(findings, "MLW-KERAS-010").detail("function") == "io.write_file"
    assert only(findings, "MLW-KERAS-004").detail("target") == "keras.layers.TFSMLayer"


def test_malformed_config_is_medium() -> None:
    hit = only(scan_config(b'{"class_name": "Sequential", "config": {', Format.KERAS_CONFIG), "MLW-KERAS-011")
    assert hit.severity is Severity.MEDIUM


def test_config_too_deep_is_incomplete() -> None:
    nested: Any = {"class_name": "Dense", "config": {}}
    for _ in range(300):
        nested = {"class_name": "Wrapper", "module": "keras.layers", "config": {"layer": nested}}
    findings = scan_config(nested)
    assert only(findings, "MLW-GEN-001").detail("limit") in {"keras_config_depth", "recursion"}


# --- HDF5 ------------------------------------------------------------------------------------------------


def _h5_with_config(path: Path, config: Any) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        f.create_dataset("model_weights/dense/kernel", data=[[1.0, 2.0]])
    return path


def test_h5_with_hand_edited_config(tmp_path: Path) -> None:
    evil = layer("Dense", {"name": "d", "activation": fnref("builtins", "eval")})
    path = _h5_with_config(tmp_path / "evil.h5", model_with(evil))
    result = scan_one(path)
    hit = only(list(result.findings), "MLW-KERAS-003")
    assert hit.detail("origin") == "model_config"
    assert hit.location.phase == "model_config"


def test_plain_hdf5_data_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=list(range(100)))
        f.attrs["description"] = "not a model"
    result = scan_one(path)
    assert result.findings == ()


def test_h5_with_invalid_config_json_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = "{not json"
    hit = only(list(scan_one(path).findings), "MLW-KERAS-011")
    assert hit.location.phase == "model_config"


def test_corrupt_hdf5_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00\xff" * 200)
    hit = only(list(scan_one(path).findings), "MLW-KERAS-012")
    assert hit.severity is Severity.MEDIUM
