"""The ML-BOM: valid CycloneDX 1.6, the exact hashes and purls, datasets and the dependency graph."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from mlwarden.core.errors import UsageError
from mlwarden.integrity.bom import (
    DatasetRef,
    bom_for_path,
    build_bom,
    guess_framework,
    installed_closure,
    normalise_package,
)
from mlwarden.integrity.dataset import build_dataset_manifest, dataset_statement, sign_dataset_manifest
from mlwarden.integrity.envelope import write_bundle
from mlwarden.integrity.errors import VerificationError
from mlwarden.integrity.hashing import hash_model
from mlwarden.integrity.keys import generate_key_pair

MODEL_FILES = {"weights/part-1.bin": b"\x01" * 3000, "weights/part-2.bin": b"\x02" * 10, "config.json": b"{}"}
PACKAGES = {"torch": "2.3.0", "NumPy": "1.26.4", "typing_extensions": "4.12.2", "filelock": "3.15.4"}
#: A fixed requirement graph, so the test does not depend on what is installed.
REQUIRES = {"torch": {"numpy", "typing-extensions", "filelock"}, "numpy": set(), "filelock": set()}


def validate(text: str) -> dict[str, Any]:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, str(error)[:2000]
    return json.loads(text)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    for rel, data in MODEL_FILES.items():
        (tmp_path / "model" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "model" / rel).write_bytes(data)
    return tmp_path / "model"


def requirements(name: str, version: str) -> set[str] | None:
    return REQUIRES.get(name)


def build(model: Path, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": "fraud",
        "version": "3",
        "manifest": hash_model(model),
        "framework": "torch",
        "packages": PACKAGES,
        "requirements": requirements,
    }
    args.update(overrides)
    return validate(build_bom(**args))


def by_ref(bom: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["bom-ref"]: c for c in bom["components"]}


def test_model_component_carries_the_manifest_digest_and_per_file_hashes(model: Path) -> None:
    bom = build(model)
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.6")
    component = bom["metadata"]["component"]
    assert component["type"] == "machine-learning-model"
    assert (component["name"], component["version"], component["bom-ref"]) == ("fraud", "3", "model:fraud@3")
    listing = "".join(f"{hashlib.sha256(d).hexdigest()}  {p}\n" for p, d in sorted(MODEL_FILES.items()))
    assert component["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(listing.encode()).hexdigest()}]
    files = {c["name"]: c for c in component["components"]}
    assert set(files) == set(MODEL_FILES)
    for rel, data in MODEL_FILES.items():
        assert files[rel]["type"] == "file"
        assert files[rel]["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(data).hexdigest()}]
    props = {p["name"]: p["value"] for p in component["properties"]}
    assert props["mlwarden:digest-method"] == "sha256sum-listing"
    assert props["mlwarden:total-size"] == str(sum(len(d) for d in MODEL_FILES.values()))


def test_single_file_model_hash_is_the_file_hash(tmp_path: Path) -> None:
    file = tmp_path / "model.onnx"
    file.write_bytes(b"\x08\x07onnx-ish bytes")
    component = build(file, framework="onnx", packages={"onnx": "1.16.0"})["metadata"]["component"]
    assert component["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(file.read_bytes()).hexdigest()}]
    assert "components" not in component


def test_framework_and_packages_have_exact_purls(model: Path) -> None:
    components = by_ref(build(model))
    assert components["pkg:pypi/torch@2.3.0"]["type"] == "framework"
    assert components["pkg:pypi/torch@2.3.0"]["purl"] == "pkg:pypi/torch@2.3.0"
    for name, version in [("numpy", "1.26.4"), ("typing-extensions", "4.12.2"), ("filelock", "3.15.4")]:
        purl = f"pkg:pypi/{name}@{version}"
        assert (components[purl]["type"], components[purl]["name"], components[purl]["version"]) == (
            "library",
            name,
            version,
        )
    assert sum(1 for c in components.values() if c["name"] == "torch") == 1  # not also listed as a library


def test_dependency_graph_links_model_framework_datasets_and_packages(model: Path) -> None:
    dataset = DatasetRef("reviews", "ab" * 32, "https://example.org/reviews", "CC-BY-4.0")
    bom = build(model, datasets=[dataset], packages={**PACKAGES, "orphan": "1.0"})
    graph = {d["ref"]: set(d.get("dependsOn", ())) for d in bom["dependencies"]}
    assert graph["model:fraud@3"] == {
        "pkg:pypi/torch@2.3.0",
        f"dataset:reviews@sha256:{'ab' * 32}",
        "pkg:pypi/orphan@1.0",  # nothing pulls it in: the model depends on it directly
    }
    assert graph["pkg:pypi/torch@2.3.0"] == {
        "pkg:pypi/numpy@1.26.4",
        "pkg:pypi/typing-extensions@4.12.2",
        "pkg:pypi/filelock@3.15.4",
    }
    assert graph["pkg:pypi/numpy@1.26.4"] == set()


def test_unknown_requirements_mean_no_edges_not_guesses(model: Path) -> None:
    bom = build(model, requirements=lambda name, version: None)
    graph = {d["ref"]: set(d.get("dependsOn", ())) for d in bom["dependencies"]}
    assert graph["pkg:pypi/torch@2.3.0"] == set()
    assert "pkg:pypi/numpy@1.26.4" in graph["model:fraud@3"]


@pytest.mark.parametrize(
    ("license", "expected"),
    [
        ("MIT", {"license": {"id": "MIT"}}),
        ("cc-by-4.0", {"license": {"id": "CC-BY-4.0"}}),
        ("MIT OR Apache-2.0", {"expression": "MIT OR Apache-2.0"}),
        ("internal use only", {"license": {"name": "internal use only"}}),
    ],
)
def test_dataset_component(model: Path, license: str, expected: dict[str, Any]) -> None:
    digest = hashlib.sha256(b"data").hexdigest()
    bom = build(model, datasets=[DatasetRef("reviews", f"sha256:{digest}", "https://example.org/r", license)])
    component = by_ref(bom)[f"dataset:reviews@sha256:{digest}"]
    assert component["type"] == "data"
    assert component["hashes"] == [{"alg": "SHA-256", "content": digest}]
    assert component["licenses"] == [expected]
    assert component["externalReferences"] == [{"type": "distribution", "url": "https://example.org/r"}]


def test_non_url_source_is_a_property_only(model: Path) -> None:
    bom = build(model, datasets=[DatasetRef("crm", "cd" * 32, "exported from the CRM by J. Doe", None)])
    component = by_ref(bom)[f"dataset:crm@sha256:{'cd' * 32}"]
    assert "externalReferences" not in component
    assert {"name": "mlwarden:dataset-source", "value": "exported from the CRM by J. Doe"} in component["properties"]


def test_metadata_has_timestamp_tools_and_properties(model: Path) -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    bom = build(model, timestamp=when, properties={"mlwarden:registry-state": "received"})
    assert datetime.fromisoformat(bom["metadata"]["timestamp"]) == when
    tools = {t["name"]: t for t in bom["metadata"]["tools"]["components"]}
    assert tools["mlwarden"]["version"] == importlib.metadata.version("mlwarden")
    assert tools["mlwarden"]["type"] == "application"
    props = {p["name"]: p["value"] for p in bom["metadata"]["component"]["properties"]}
    assert props["mlwarden:registry-state"] == "received"


def test_pickle_framework_has_no_purl(model: Path) -> None:
    bom = build(model, framework="pickle", packages={})
    (framework,) = [c for c in bom["components"] if c["type"] == "framework"]
    assert framework["name"] == "pickle"
    assert "purl" not in framework


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"datasets": [DatasetRef("d", "not-a-digest", None, None)]}, "expected a SHA-256"),
        ({"datasets": [DatasetRef("d", "aa" * 32, None, None)] * 2}, "listed twice"),
        ({"name": " "}, "non-empty model name"),
    ],
)
def test_bad_input_is_refused(model: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build(model, **overrides)


@pytest.mark.parametrize(
    ("name", "expected"), [("Scikit_Learn", "scikit-learn"), ("typing.extensions", "typing-extensions"), ("a", "a")]
)
def test_normalise_package(name: str, expected: str) -> None:
    assert normalise_package(name) == expected


def test_installed_closure_follows_requirements() -> None:
    closure = installed_closure(["cyclonedx-python-lib"])
    assert closure["cyclonedx-python-lib"] == importlib.metadata.version("cyclonedx-python-lib")
    assert closure["packageurl-python"] == importlib.metadata.version("packageurl-python")  # a requirement of it
    assert installed_closure(["no-such-distribution-xyz"]) == {}


def _torch(path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(2)}, path)


def _numpy(path: Path) -> None:
    np = pytest.importorskip("numpy")
    with path.open("wb") as out:
        np.save(out, np.arange(3))


def _joblib(compress: int) -> Any:
    def write(path: Path) -> None:
        joblib = pytest.importorskip("joblib")
        np = pytest.importorskip("numpy")
        joblib.dump({"a": np.arange(3)}, path, compress=compress)  # arrays are what make it joblib

    return write


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (_torch, "torch"),
        (_numpy, "numpy"),
        (_joblib(0), "joblib"),
        (_joblib(3), "joblib"),
        (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)), "pickle"),
        (lambda p: p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64), "gguf"),
        (lambda p: p.write_text("just some notes\n"), None),
    ],
)
def test_guess_framework_from_content(tmp_path: Path, writer: Any, expected: str | None) -> None:
    path = tmp_path / "model.bin"  # the name never helps
    writer(path)
    assert guess_framework(path) == expected


def test_guess_framework_of_a_folder_uses_its_largest_recognised_file(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    _torch(folder / "pytorch_model.bin")
    (folder / "config.json").write_text('{"model_type": "bert"}')
    assert guess_framework(folder) == "torch"


def test_bom_for_path_describes_an_installed_framework(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _torch(path)
    bom = validate(bom_for_path(path, name="m", version="1"))
    assert bom["metadata"]["component"]["hashes"][0]["content"] == hashlib.sha256(path.read_bytes()).hexdigest()
    (framework,) = [c for c in bom["components"] if c["type"] == "framework"]
    assert (framework["name"], framework["version"]) == ("torch", importlib.metadata.version("torch"))
    for component in bom["components"]:  # every package at its installed version
        assert component["version"] == importlib.metadata.version(component["name"])


def test_dataset_ref_from_a_manifest_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.csv").write_bytes(b"1,2\n")
    manifest = build_dataset_manifest(data, name="xs", source="https://example.org/xs", license="MIT")
    generate_key_pair(tmp_path / "k", tmp_path / "k.pub")
    generate_key_pair(tmp_path / "o", tmp_path / "o.pub")
    signed, unsigned = tmp_path / "signed.json", tmp_path / "unsigned.json"
    write_bundle(sign_dataset_manifest(manifest, tmp_path / "k"), signed)
    write_bundle(dataset_statement(manifest), unsigned)

    ref = DatasetRef.from_manifest_bundle(signed, tmp_path / "k.pub")
    assert ref == DatasetRef(
        "xs", manifest.digest, "https://example.org/xs", "MIT", hashlib.sha256(signed.read_bytes()).hexdigest()
    )
    assert DatasetRef.from_manifest_bundle(unsigned).digest == manifest.digest
    with pytest.raises(VerificationError, match="wrong key"):
        DatasetRef.from_manifest_bundle(signed, tmp_path / "o.pub")
    bom = build(data, framework=None, packages={}, datasets=[ref])
    props = by_ref(bom)[f"dataset:xs@sha256:{manifest.digest}"]["properties"]
    assert {"name": "mlwarden:manifest-sha256", "value": ref.manifest_digest} in props
