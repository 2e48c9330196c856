"""Checks that look beside a file work on remote models: the same findings as a local scan of the same tree.

One tree is written to ``tmp_path`` and served, byte for byte, by real loopback servers: a hub-shaped endpoint
(``hf://``), a ranged HTTP server (each file a URL of its own, so every neighbour is a HEAD) and fsspec's
``memory://`` (a listed prefix, and a single object). The tree holds every kind of check that looks beside a file:

* ``config.json`` whose ``auto_map`` names a shipped module and a missing one (MLW-HF-001, ``file_present``);
* ONNX models whose external data escapes (``../../etc/passwd``), is missing, names a folder, and one benign model
  with valid external data (built here with ``onnx.helper`` and checked to load with ``onnx``);
* legacy joblib pickles (plain and ZF-compressed) naming present, missing and canary-carrying ``.npy`` arrays.

Findings are compared as (rule, severity, evidence, location below the file), so a ``file_present`` or a
"not found" that only a local scan could see would show up as a difference.
"""

from __future__ import annotations

import importlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlwarden
from mlwarden.core.policy import Policy
from mlwarden.scan.engine import scan_remote
from mlwarden.scan.remote import resolve
from mlwarden.scan.result import FileResult
from tests.scan.remote_servers import Hub, RangeServer
from tests.scan.static.test_joblib_legacy import Canary, nd_state, wrapper_pickle, zf

onnx = pytest.importorskip("onnx")
np = pytest.importorskip("numpy")

COMMIT = "c" * 40
WEIGHTS = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
CONFIG = {
    "model_type": "canary",
    "auto_map": {"AutoModel": "modeling_canary.CanaryModel", "AutoConfig": "configuration_gone.GoneConfig"},
}
#: Never imported or run: a body that reads as suspicious to a reviewer, harmless if it ever ran.
MODULE = b'import subprocess\n\n\nclass CanaryModel:\n    def __init__(self):\n        subprocess.run(["true"])\n'

Findings = dict[str, list[tuple[str, str, str, tuple[str, ...]]]]


def onnx_model(location: str | None) -> bytes:
    """``y = x + w`` with the 4 floats of ``w`` stored in ``location`` (``None``: inside the model)."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    if location is not None:
        weight.ClearField("float_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(len(WEIGHTS)))):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[weight],
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _npy(array: object) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], Path]:
    """The files of the tree by relative name, and the folder they are written to."""
    canary_dir = tmp_path_factory.mktemp("canary")
    payload = np.empty(1, dtype=object)
    payload[0] = Canary(canary_dir / "ran")
    files = {
        "config.json": json.dumps(CONFIG).encode(),
        "modeling_canary.py": MODULE,
        "onnx/traversal.onnx": onnx_model("../../etc/passwd"),
        "onnx/missing.onnx": onnx_model("absent.bin"),
        "onnx/folder.onnx": onnx_model("data"),
        "onnx/data/part.bin": WEIGHTS,
        "benign/model.onnx": onnx_model("model.data"),
        "benign/model.data": WEIGHTS,
        "joblib/model.pkl": wrapper_pickle(
            [nd_state("model.pkl_01.npy"), nd_state("model.pkl_02.npy"), nd_state("model.pkl_03.npy")]
        ),
        "joblib/model.pkl_01.npy": _npy(np.linspace(0, 1, 10)),
        "joblib/model.pkl_03.npy": _npy(payload),
        "joblibz/model.pkl": zf(wrapper_pickle([nd_state("model.pkl_01.npy"), nd_state("gone.npy")], py2=False)),
        "joblibz/model.pkl_01.npy": _npy(np.arange(3)),
    }
    root = tmp_path_factory.mktemp("tree") / "local"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    loaded = onnx.load(str(root / "benign" / "model.onnx"))  # the benign fixture is a valid, loadable model
    assert onnx.numpy_helper.to_array(loaded.graph.initializer[0]).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert not (canary_dir / "ran").exists()
    return files, root


@pytest.fixture(scope="module")
def tree(written: tuple[dict[str, bytes], Path]) -> dict[str, bytes]:
    """The files of the tree by relative name."""
    return written[0]


@pytest.fixture(scope="module")
def local(written: tuple[dict[str, bytes], Path]) -> Findings:
    """Findings of the local scan of the tree, by relative name."""
    root = written[1]
    report = mlwarden.scan(root, Policy())
    assert not report.errors
    return _by_name(report.files, lambda path: Path(path).relative_to(root).as_posix())


def _by_name(results: tuple[FileResult, ...] | list[FileResult], name: object) -> Findings:
    out: Findings = {}
    for result in results:
        assert result.error is None, result.error
        key = name(result.path)  # type: ignore[operator]
        out[key] = sorted((f.rule_id, str(f.severity), f.evidence, f.location.chain[1:]) for f in result.findings)
    return out


def test_local_tree_has_every_neighbour_finding(local: Findings) -> None:
    """The ground truth itself: each check beside a file fired locally (else the comparison proves nothing)."""
    hf = [e for rule, _, e, _ in local["config.json"] if rule == "MLW-HF-001"]
    assert any("modeling_canary.py present beside config.json" in e for e in hf)
    assert any("configuration_gone.py NOT present" in e for e in hf)
    assert {r for r, *_ in local["onnx/traversal.onnx"]} == {"MLW-ONNX-001"}
    assert {r for r, *_ in local["onnx/missing.onnx"]} == {"MLW-ONNX-002"}
    assert {r for r, *_ in local["onnx/folder.onnx"]} == {"MLW-ONNX-001"}
    assert local["benign/model.onnx"] == []
    assert {"MLW-JOBLIB-002"} <= {r for r, *_ in local["joblib/model.pkl"]}
    assert any(where == ("<joblib file model.pkl_03.npy>",) for *_, where in local["joblib/model.pkl"])
    assert {r for r, *_ in local["joblibz/model.pkl"]} == {"MLW-JOBLIB-002"}


@pytest.fixture
def hub(tree: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RangeServer]:
    pytest.importorskip("huggingface_hub")
    server = RangeServer(hub=Hub("org/nbr", {COMMIT: dict(tree)}, {"main": COMMIT})).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.stop()


@pytest.fixture
def http(tree: dict[str, bytes]) -> Iterator[RangeServer]:
    server = RangeServer(files={f"/tree/{name}": data for name, data in tree.items()}).start()
    yield server
    server.stop()


def test_hf_repository_matches_local_scan(hub: RangeServer, local: Findings) -> None:
    report = mlwarden.scan(f"hf://org/nbr@{COMMIT}", Policy())
    assert _by_name(report.files, lambda p: p.removeprefix(f"hf://org/nbr@{COMMIT}/")) == local


def test_http_files_match_local_scan(http: RangeServer, tree: dict[str, bytes], local: Findings) -> None:
    """Plain HTTP has no listing: one HEAD per name. It cannot tell a folder from a missing file (documented)."""
    report = mlwarden.scan([f"{http.url}/tree/{name}" for name in sorted(tree)], Policy())
    found = _by_name(report.files, lambda p: p.removeprefix(f"{http.url}/tree/"))
    folder = found.pop("onnx/folder.onnx")
    assert found == {k: v for k, v in local.items() if k != "onnx/folder.onnx"}
    assert [(r, s) for r, s, *_ in folder] == [("MLW-ONNX-002", "low")]
    assert "file not found beside the model" in folder[0][2]


def test_memory_prefix_and_single_object_match_local_scan(tree: dict[str, bytes], local: Findings) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for name, data in tree.items():
        fs.pipe(f"/nbr-test/{name}", data)
    try:
        report = mlwarden.scan("memory://nbr-test", Policy())
        assert _by_name(report.files, lambda p: p.removeprefix("memory:///nbr-test/")) == local
        single = mlwarden.scan("memory://nbr-test/onnx/missing.onnx", Policy())  # no listing: info() per name
        assert _by_name(single.files, lambda _p: "onnx/missing.onnx")["onnx/missing.onnx"] == local["onnx/missing.onnx"]
    finally:
        fs.rm("/nbr-test", recursive=True)


def test_external_data_is_looked_up_never_read(http: RangeServer, hub: RangeServer) -> None:
    """The benign model's external data costs one HEAD over HTTP, and no request at all in a listed repository."""
    result = mlwarden.scan(f"{http.url}/tree/benign/model.onnx", Policy()).files[0]
    assert result.error is None
    assert result.findings == ()
    data_requests = [(m, p, n) for m, p, n in http.log if p == "/tree/benign/model.data"]
    assert data_requests == [("HEAD", "/tree/benign/model.data", 0)]
    hub.log.clear()
    assert mlwarden.scan("hf://org/nbr/benign/model.onnx", Policy()).files[0].findings == ()
    assert not [p for _, p, _ in hub.log if p.endswith("/model.data")]


def test_a_neighbour_that_cannot_be_looked_up_makes_the_file_an_error(http: RangeServer) -> None:
    """A lookup refused (here: redirected to another host) is an error, never "missing" or clean."""
    http.redirects["/tree/onnx/absent.bin"] = f"http://localhost:{http.httpd.server_address[1]}/tree/onnx/x"
    (item,) = resolve(f"{http.url}/tree/onnx/missing.onnx")
    result = scan_remote(item, Policy())
    assert result.error is not None
    assert "looking beside the file" in result.error
    assert "redirected to another host" in result.error
    assert result.findings == ()


def test_lookups_of_one_object_are_bounded(http: RangeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    remote_folder = importlib.import_module("mlwarden.scan.remote_folder")
    monkeypatch.setattr(remote_folder, "MAX_LOOKUPS", 0)
    result = mlwarden.scan(f"{http.url}/tree/benign/model.onnx", Policy()).files[0]
    assert [(f.rule_id, f.detail("limit")) for f in result.findings] == [("MLW-GEN-001", "max_neighbour_lookups")]
    assert not [p for _, p, _ in http.log if p == "/tree/benign/model.data"]
