"""ONNX handler: external-data traversal, custom operator domains, malformed graphs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Severity
from mlwarden.core.policy import Policy
from mlwarden.scan.context import ScanContext
from tests.conftest import failing, rule_ids, scan_one
from tests.scan.static.test_protobuf import fb, fv

onnx = pytest.importorskip("onnx")
np = pytest.importorskip("numpy")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _mlp(domain: str = "", extra_nodes: list[Any] | None = None, functions: list[Any] | None = None) -> Any:
    w = numpy_helper.from_array(np.arange(64 * 16, dtype=np.float32).reshape(64, 16) / 1000, "W")
    b = numpy_helper.from_array(np.zeros(16, dtype=np.float32), "B")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["H"], name="matmul"),
        helper.make_node("Add", ["H", "B"], ["H2"], name="add"),
        helper.make_node("Relu", ["H2"], ["Y"], name="relu", domain=domain),
        *(extra_nodes or []),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 16])],
        [w, b],
    )
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, producer_name="mlwarden-test", opset_imports=opsets, functions=functions or [])


def _with_external(model: Any, location: str) -> Any:
    """Point the weight tensor W at an external file ``location`` (written by hand, like an attacker)."""
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4096")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model


def _write(path: Path, model: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def test_benign_mlp_is_clean(tmp_path: Path) -> None:
    result = scan_one(_write(tmp_path / "mlp.onnx", _mlp()))
    assert ((str(tmp_path / "mlp.onnx"),), "onnx") in result.formats
    assert failing(result) == []
    assert not any(f.rule_id.startswith("MLW-ONNX") for f in result.findings)


def test_benign_external_data_inside_folder_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "model" / "mlp.onnx"
    path.parent.mkdir()
    onnx.save_model(
        _mlp(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (path.parent / "weights.bin").is_file()
    result = scan_one(path)
    assert failing(result) == []
    assert not rule_ids(result) & {"MLW-ONNX-001", "MLW-ONNX-002"}


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("/etc/passwd", "absolute path"),
        ("../../../../etc/passwd", "'..' component"),
        ("weights/..\\..\\secret.bin", "'..' component"),
        ("C:\\Windows\\win.ini", "absolute path"),
    ],
)
def test_external_data_traversal_is_high(tmp_path: Path, location: str, problem: str) -> None:
    result = scan_one(_write(tmp_path / "evil.onnx", _with_external(_mlp(), location)))
    hits = [f for f in result.findings if f.rule_id == "MLW-ONNX-001"]
    assert len(hits) == 1
    assert hits[0].severity is Severity.HIGH
    assert hits[0].cwe == 22
    assert problem in hits[0].evidence
    assert repr(location) in hits[0].evidence
    assert hits[0].detail("external_location") == location
    assert hits[0].detail("tensors") == ("W",)
    assert hits[0].location.offset is not None
    assert hits[0].location.offset > 0


def test_external_data_symlink_is_high(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    os.symlink(secret, model_dir / "weights.bin")
    result = scan_one(_write(model_dir / "m.onnx", _with_external(_mlp(), "weights.bin")))
    hits = [f for f in result.findings if f.rule_id == "MLW-ONNX-001"]
    assert len(hits) == 1
    assert "outside the model folder" in hits[0].evidence or "symlink" in hits[0].evidence


def test_external_data_symlink_within_folder_is_high(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "real.bin").write_bytes(b"\x00" * 4096)
    os.symlink("real.bin", model_dir / "weights.bin")
    result = scan_one(_write(model_dir / "m.onnx", _with_external(_mlp(), "weights.bin")))
    assert [f.evidence for f in result.findings if f.rule_id == "MLW-ONNX-001"][0].endswith("is a symlink to real.bin")


def test_external_data_special_file_is_high(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    os.mkfifo(model_dir / "weights.bin")
    result = scan_one(_write(model_dir / "m.onnx", _with_external(_mlp(), "weights.bin")))
    hits = [f for f in result.findings if f.rule_id == "MLW-ONNX-001"]
    assert hits
    assert "not a regular file" in hits[0].evidence


def test_missing_external_data_is_low(tmp_path: Path) -> None:
    result = scan_one(_write(tmp_path / "m.onnx", _with_external(_mlp(), "weights.bin")))
    hits = [f for f in result.findings if f.rule_id == "MLW-ONNX-002"]
    assert len(hits) == 1
    assert hits[0].severity is Severity.LOW
    assert "not found" in hits[0].evidence
    assert failing(result) == []


def test_traversal_is_found_in_archive_members_without_disk_access() -> None:
    model = _with_external(_mlp(), "../../etc/shadow")
    artifact = Artifact.from_bytes(model.SerializeToString(), ("bundle.zip", "m.onnx"), 1)
    ctx = ScanContext(Policy())
    assert ctx.descend(artifact) is Format.ONNX
    assert [f.rule_id for f in ctx.findings] == ["MLW-ONNX-001"]


def test_custom_domain_operator_is_medium(tmp_path: Path) -> None:
    result = scan_one(_write(tmp_path / "custom.onnx", _mlp(domain="com.evil.ops")))
    hits = [f for f in result.findings if f.rule_id == "MLW-ONNX-003"]
    assert len(hits) == 1
    assert hits[0].severity is Severity.MEDIUM
    assert hits[0].cwe == 829
    assert hits[0].detail("domain") == "com.evil.ops"
    assert hits[0].detail("op_type") == "Relu"
    assert "com.evil.ops::Relu" in hits[0].evidence
    assert "relu" in hits[0].evidence


@pytest.mark.parametrize(
    "domain",
    [
        "ai.onnx",
        "ai.onnx.ml",
        "ai.onnx.training",
        "ai.onnx.preview.training",
        "com.microsoft",
        "com.microsoft.nchwc",
        "com.microsoft.experimental",
    ],
)
def test_standard_domains_are_not_reported(tmp_path: Path, domain: str) -> None:
    result = scan_one(_write(tmp_path / "std.onnx", _mlp(domain=domain)))
    assert not rule_ids(result) & {"MLW-ONNX-003", "MLW-ONNX-005"}


def _tokenizer(domain: str, ops: list[str]) -> Any:
    """A string pre-processing graph as onnxruntime-extensions builds them (string in, string out)."""
    names = ["text", *(f"t{i}" for i in range(len(ops)))]
    nodes = [
        helper.make_node(op, [names[i]], [names[i + 1]], name=f"{op.lower()}_{i}", domain=domain)
        for i, op in enumerate(ops)
    ]
    graph = helper.make_graph(
        nodes,
        "pre",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info(names[-1], TensorProto.STRING, [None])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    return helper.make_model(graph, producer_name="mlwarden-test", opset_imports=opsets)


@pytest.mark.parametrize(
    ("domain", "ops", "library"),
    [
        ("ai.onnx.contrib", ["StringLower", "StringRegexReplace", "StringLower"], "onnxruntime-extensions"),
        ("com.microsoft.extensions", ["DecodeImage"], "onnxruntime-extensions"),
        ("org.pytorch.aten", ["ATen"], "PyTorch ATen"),
    ],
)
def test_extension_library_domain_is_info_naming_the_library(
    tmp_path: Path, domain: str, ops: list[str], library: str
) -> None:
    # Regression: these domains were reported as unknown custom ops (MLW-ONNX-003, medium).
    result = scan_one(_write(tmp_path / "pre.onnx", _tokenizer(domain, ops)))
    assert "MLW-ONNX-003" not in rule_ids(result)
    assert failing(result) == []
    [hit] = [f for f in result.findings if f.rule_id == "MLW-ONNX-005"]
    assert hit.severity is Severity.INFO
    assert library in hit.detail("library")
    assert library in hit.evidence
    assert hit.detail("domain") == domain
    assert hit.detail("op_types") == tuple(sorted(set(ops)))
    assert hit.detail("count") == len(ops)


def test_unshipped_domain_stays_medium_next_to_a_library_domain(tmp_path: Path) -> None:
    extra = [
        helper.make_node("StringLower", ["Y"], ["S"], name="lower", domain="ai.onnx.contrib"),
        helper.make_node("Exfil", ["Y"], ["Z"], name="exfil", domain="com.acme.native"),
    ]
    result = scan_one(_write(tmp_path / "mixed.onnx", _mlp(extra_nodes=extra)))
    [custom] = failing(result)
    assert custom.rule_id == "MLW-ONNX-003"
    assert custom.severity is Severity.MEDIUM
    assert custom.detail("domain") == "com.acme.native"
    assert [f.detail("domain") for f in result.findings if f.rule_id == "MLW-ONNX-005"] == ["ai.onnx.contrib"]


def test_model_local_function_is_not_a_custom_op(tmp_path: Path) -> None:
    body = [helper.make_node("Relu", ["x"], ["y"])]
    fn = helper.make_function("pkg.local", "MyRelu", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    extra = [helper.make_node("MyRelu", ["Y"], ["Z"], domain="pkg.local")]
    result = scan_one(_write(tmp_path / "fn.onnx", _mlp(extra_nodes=extra, functions=[fn])))
    assert "MLW-ONNX-003" not in rule_ids(result)


def test_custom_op_inside_if_subgraph_and_function_body(tmp_path: Path) -> None:
    def branch(name: str, domain: str) -> Any:
        return helper.make_graph(
            [helper.make_node("Bad", ["Y"], ["O"], domain=domain, name=name)],
            name,
            [],
            [helper.make_tensor_value_info("O", TensorProto.FLOAT, [1, 16])],
        )

    cond = helper.make_node(
        "If", ["C"], ["O"], then_branch=branch("then", "com.native.a"), else_branch=branch("else", "com.native.b")
    )
    fn = helper.make_function(
        "pkg.local",
        "Wrap",
        ["x"],
        ["y"],
        [helper.make_node("Hidden", ["x"], ["y"], domain="com.native.c")],
        [helper.make_opsetid("", 17)],
    )
    result = scan_one(_write(tmp_path / "sub.onnx", _mlp(extra_nodes=[cond], functions=[fn])))
    domains = {f.detail("domain") for f in result.findings if f.rule_id == "MLW-ONNX-003"}
    assert domains == {"com.native.a", "com.native.b", "com.native.c"}


def test_external_tensor_in_constant_attribute_is_checked(tmp_path: Path) -> None:
    value = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "const_value")
    const = helper.make_node("Constant", [], ["K"], value=value)
    model = _mlp(extra_nodes=[const])
    tensor = model.graph.node[-1].attribute[0].t
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "/proc/self/environ"
    result = scan_one(_write(tmp_path / "const.onnx", model))
    hits = [f for f in result.findings if f.rule_id == "MLW-ONNX-001"]
    assert hits
    assert hits[0].detail("tensors") == ("const_value",)


def test_truncated_model_is_malformed(tmp_path: Path) -> None:
    data = _mlp().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) - 40])
    result = scan_one(path)
    hits = [f for f in result.findings if f.rule_id == "MLW-ONNX-004"]
    assert len(hits) == 1
    assert hits[0].severity is Severity.MEDIUM
    assert "runs past the end" in hits[0].evidence


def test_corrupt_graph_is_malformed() -> None:
    data = bytearray(_mlp().SerializeToString())
    # Corrupt the first node's tag inside the graph: wire type 7 is invalid.
    model = onnx.ModelProto()
    model.ParseFromString(bytes(data))
    graph_bytes = model.graph.SerializeToString()
    start = bytes(data).index(graph_bytes)
    data[start] = (1 << 3) | 7
    ctx = ScanContext(Policy())
    ctx.descend(Artifact.from_bytes(bytes(data), ("corrupt.onnx",), 0), Format.ONNX)
    assert [f.rule_id for f in ctx.findings] == ["MLW-ONNX-004"]
    assert "invalid wire type 7" in ctx.findings[0].evidence
    assert ctx.findings[0].location.offset == start


def test_deeply_nested_subgraphs_hit_the_depth_limit(tmp_path: Path) -> None:
    # Written with the wire encoder: the protobuf library itself refuses to build messages this deep.
    graph = fb(1, fb(4, "Identity"))
    for _ in range(70):
        attribute = fb(1, "then_branch") + fb(6, graph) + fv(20, 5)
        graph = fb(1, fb(4, "If") + fb(5, attribute))
    path = tmp_path / "deep.onnx"
    path.write_bytes(fv(1, 8) + fb(7, graph) + fb(8, fb(1, "") + fv(2, 17)))
    result = scan_one(path)
    hits = [f for f in result.findings if f.rule_id == "MLW-GEN-001"]
    assert hits
    assert hits[0].detail("limit") == "onnx_graph_depth"
