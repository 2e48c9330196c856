"""SavedModel handler. TensorFlow is not installed: fixtures are written in the protobuf wire format."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Finding, Severity
from mlwarden.core.policy import Policy
from mlwarden.scan.context import ScanContext
from tests.conftest import failing, rule_ids, scan_one
from tests.scan.static.test_protobuf import fb, fv

# Field numbers from tensorflow/core/protobuf/{saved_model,meta_graph}.proto, framework/{graph,node_def,
# function,attr_value,op_def}.proto.


def node(name: str, op: str, *inputs: str, attrs: dict[str, bytes] | None = None) -> bytes:
    """NodeDef(name=1, op=2, input=3, attr=5 map<string, AttrValue>)."""
    out = fb(1, name) + fb(2, op) + b"".join(fb(3, i) for i in inputs)
    for key, value in (attrs or {}).items():
        out += fb(5, fb(1, key) + fb(2, value))
    return out


def attr_s(text: str) -> bytes:
    """AttrValue with s=2."""
    return fb(2, text)


def function(name: str, *nodes: bytes) -> bytes:
    """FunctionDef(signature=1 OpDef(name=1), node_def=3)."""
    return fb(1, fb(1, name)) + b"".join(fb(3, n) for n in nodes)


def saved_model(nodes: list[bytes], functions: list[bytes] | None = None, assets: list[str] | None = None) -> bytes:
    graph_def = b"".join(fb(1, n) for n in nodes)
    if functions:
        graph_def += fb(2, b"".join(fb(1, f) for f in functions))
    graph_def += fb(4, fv(1, 1808))  # versions
    meta_info = fb(4, "serve") + fb(5, "2.16.1")
    meta_graph = fb(1, meta_info) + fb(2, graph_def)
    for name in assets or []:
        meta_graph += fb(6, fb(1, fb(1, "asset_path:0")) + fb(2, name))
    return fv(1, 1) + fb(2, meta_graph)


BENIGN_GRAPH = [
    node("x", "Placeholder", attrs={"dtype": fv(6, 1)}),
    node("w", "Const"),
    node("b", "Const"),
    node("matmul", "MatMul", "x", "w"),
    node("add", "Add", "matmul", "b"),
    node("saver_filename", "Placeholder"),
    node("StatefulPartitionedCall", "StatefulPartitionedCall", "saver_filename"),
]
BENIGN_FUNCTIONS = [
    function("__inference__traced_save_45", node("SaveV2", "SaveV2"), node("MergeV2Checkpoints", "MergeV2Checkpoints")),
    function("__inference__traced_restore_60", node("RestoreV2", "RestoreV2")),
    function("__inference_serve_10", node("MatMul", "MatMul"), node("Relu", "Relu")),
]


def _scan(tmp_path: Path, data: bytes) -> list[Finding]:
    path = tmp_path / "saved_model.pb"
    path.write_bytes(data)
    result = scan_one(path)
    assert (str(path), "tf-savedmodel") in result.formats
    return list(result.findings)


def test_benign_saved_model_has_only_low_checkpoint_io(tmp_path: Path) -> None:
    findings = _scan(tmp_path, saved_model(BENIGN_GRAPH, BENIGN_FUNCTIONS, assets=["vocab.txt"]))
    assert all(f.severity < Severity.MEDIUM for f in findings)
    ops = {f.detail("op") for f in findings if f.rule_id == "MLW-TF-005"}
    assert ops == {"SaveV2", "RestoreV2", "MergeV2Checkpoints"}


def test_pyfunc_in_graph_is_high(tmp_path: Path) -> None:
    findings = _scan(
        tmp_path, saved_model([*BENIGN_GRAPH, node("hook", "PyFunc", "x", attrs={"token": attr_s("pyfunc_0")})])
    )
    hits = [f for f in findings if f.rule_id == "MLW-TF-001"]
    assert len(hits) == 1
    assert hits[0].severity is Severity.HIGH
    assert hits[0].cwe == 94
    assert hits[0].detail("op") == "PyFunc"
    assert "hook (graph)" in hits[0].evidence


def test_eager_pyfunc_and_write_file_inside_function_body(tmp_path: Path) -> None:
    evil = function("__inference_serve_99", node("py", "EagerPyFunc"), node("dump", "WriteFile", "fn", "data"))
    findings = _scan(tmp_path, saved_model(BENIGN_GRAPH, [*BENIGN_FUNCTIONS, evil]))
    by_rule = {f.rule_id: f for f in findings}
    assert by_rule["MLW-TF-001"].detail("op") == "EagerPyFunc"
    write = by_rule["MLW-TF-002"]
    assert write.severity is Severity.HIGH
    assert write.detail("op") == "WriteFile"
    assert "dump (function __inference_serve_99)" in write.evidence


def test_file_read_ops_are_medium_and_counted(tmp_path: Path) -> None:
    nodes = [
        *BENIGN_GRAPH,
        node("r1", "ReadFile", "p"),
        node("r2", "ReadFile", "q"),
        node("ls", "MatchingFiles", "pattern"),
        node("mm", "ImmutableConst"),
    ]
    findings = _scan(tmp_path, saved_model(nodes))
    reads = {f.detail("op"): f for f in findings if f.rule_id == "MLW-TF-004"}
    assert set(reads) == {"ReadFile", "MatchingFiles", "ImmutableConst"}
    assert reads["ReadFile"].detail("count") == 2
    assert reads["ReadFile"].severity is Severity.MEDIUM


def test_network_ops_are_high(tmp_path: Path) -> None:
    findings = _scan(tmp_path, saved_model([*BENIGN_GRAPH, node("svc", "DataServiceDatasetV4")]))
    assert [f.detail("op") for f in findings if f.rule_id == "MLW-TF-003"] == ["DataServiceDatasetV4"]


def test_print_to_file_is_a_write_but_print_to_stderr_is_not(tmp_path: Path) -> None:
    to_file = node("p1", "PrintV2", "x", attrs={"output_stream": attr_s("file:///tmp/log.txt")})
    to_err = node("p2", "PrintV2", "x", attrs={"output_stream": attr_s("stderr")})
    findings = _scan(tmp_path, saved_model([*BENIGN_GRAPH, to_file, to_err]))
    writes = [f for f in findings if f.rule_id == "MLW-TF-002"]
    assert len(writes) == 1
    assert "file:///tmp/log.txt" in writes[0].evidence
    assert "p2" not in writes[0].evidence


@pytest.mark.parametrize("asset", ["../../../etc/passwd", "/etc/shadow"])
def test_asset_traversal_is_high(tmp_path: Path, asset: str) -> None:
    findings = _scan(tmp_path, saved_model(BENIGN_GRAPH, assets=["vocab.txt", asset]))
    hits = [f for f in findings if f.rule_id == "MLW-TF-006"]
    assert len(hits) == 1
    assert hits[0].detail("filename") == asset
    assert hits[0].cwe == 22


def test_truncated_saved_model_is_malformed(tmp_path: Path) -> None:
    data = saved_model([*BENIGN_GRAPH, node("hook", "PyFunc")])
    findings = _scan(tmp_path, data[:-10])
    hits = [f for f in findings if f.rule_id == "MLW-TF-007"]
    assert len(hits) == 1
    assert hits[0].severity is Severity.MEDIUM


def test_wrong_wire_type_inside_node_attr_is_malformed() -> None:
    bad_node = fb(1, "n") + fb(2, "PrintV2") + fb(5, fb(1, "output_stream") + fv(2, 3))
    data = saved_model([bad_node])
    ctx = ScanContext(Policy())
    assert ctx.descend(Artifact.from_bytes(data, ("saved_model.pb",), 0)) is Format.SAVEDMODEL
    assert [f.rule_id for f in ctx.findings] == ["MLW-TF-007"]
    assert "expected 2" in ctx.findings[0].evidence


def test_pyfunc_found_in_archive_member() -> None:
    data = saved_model([node("hook", "PyFuncStateless")])
    ctx = ScanContext(Policy())
    ctx.descend(Artifact.from_bytes(data, ("model.tar", "export/saved_model.pb"), 1))
    assert rule_ids(ctx.findings) == {"MLW-TF-001"}
    assert ctx.findings[0].location.chain == ("model.tar", "export/saved_model.pb")


def test_benign_fails_nothing_by_default(tmp_path: Path) -> None:
    path = tmp_path / "saved_model.pb"
    path.write_bytes(saved_model(BENIGN_GRAPH, BENIGN_FUNCTIONS))
    assert failing(scan_one(path)) == []
