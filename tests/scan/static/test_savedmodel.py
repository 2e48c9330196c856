"""SavedModel handler. TensorFlow is not installed: fixtures are written in the protobuf wire format."""

from __future__ import annotations

import json
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


def attr_f(name: str) -> bytes:
    """AttrValue with func=10 (NameAttrList name=1): how StatefulPartitionedCall names the function it runs."""
    return fb(10, fb(1, name))


def saved_model(
    nodes: list[bytes],
    functions: list[bytes] | None = None,
    assets: list[str] | None = None,
    *,
    saver: tuple[str, str, str] | None = None,
    signatures: dict[str, dict[str, str]] | None = None,
    collections: dict[str, list[str]] | None = None,
    exported: list[str] | None = None,
) -> bytes:
    """SavedModel(meta_graphs=2) with one MetaGraphDef(meta_info_def=1, graph_def=2, saver_def=3,
    collection_def=4, signature_def=5, asset_file_def=6, object_graph_def=7)."""
    graph_def = b"".join(fb(1, n) for n in nodes)
    if functions:
        graph_def += fb(2, b"".join(fb(1, f) for f in functions))
    graph_def += fb(4, fv(1, 1808))  # versions
    meta_info = fb(4, "serve") + fb(5, "2.16.1")
    meta_graph = fb(1, meta_info) + fb(2, graph_def)
    if saver is not None:  # SaverDef(filename_tensor_name=1, save_tensor_name=2, restore_op_name=3, version=7)
        meta_graph += fb(3, fb(1, saver[0]) + fb(2, saver[1]) + fb(3, saver[2]) + fv(7, 2))
    for key, names in (collections or {}).items():  # CollectionDef(node_list=1 NodeList(value=1))
        meta_graph += fb(4, fb(1, key) + fb(2, fb(1, b"".join(fb(1, n) for n in names))))
    for key, outputs in (signatures or {}).items():  # SignatureDef(outputs=2 map<string, TensorInfo(name=1)>)
        body = b"".join(fb(2, fb(1, k) + fb(2, fb(1, v))) for k, v in outputs.items())
        meta_graph += fb(5, fb(1, key) + fb(2, body + fb(3, "tensorflow/serving/predict")))
    for name in assets or []:
        meta_graph += fb(6, fb(1, fb(1, "asset_path:0")) + fb(2, name))
    if exported:  # SavedObjectGraph(concrete_functions=2 map<string, SavedConcreteFunction>)
        meta_graph += fb(7, b"".join(fb(2, fb(1, name) + fb(2, b"")) for name in exported))
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
    assert ((str(path),), "tf-savedmodel") in result.formats
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


# A SavedModel laid out the way tf.saved_model.save (TF2) writes one: the SaverDef names the two
# StatefulPartitionedCall nodes that run the generated checkpoint functions; the serving signature runs another.
TF2_NODES = [
    node("serving_default_x", "Placeholder"),
    node("saver_filename", "Placeholder"),
    node(
        "StatefulPartitionedCall",
        "StatefulPartitionedCall",
        "serving_default_x",
        attrs={"f": attr_f("__inference_signature_wrapper_30")},
    ),
    node(
        "StatefulPartitionedCall_1",
        "StatefulPartitionedCall",
        "saver_filename",
        attrs={"f": attr_f("__inference__traced_save_45")},
    ),
    node(
        "StatefulPartitionedCall_2",
        "StatefulPartitionedCall",
        "saver_filename",
        attrs={"f": attr_f("__inference__traced_restore_60")},
    ),
    node("NoOp", "NoOp"),
]
TRACED_SAVE = function(
    "__inference__traced_save_45",
    node("StringJoin", "StringJoin"),
    node("ShardedFilename", "ShardedFilename"),
    node("SaveV2", "SaveV2"),
    node("MergeV2Checkpoints", "MergeV2Checkpoints"),
)
TRACED_RESTORE = function(
    "__inference__traced_restore_60", node("RestoreV2", "RestoreV2"), node("Assign", "AssignVariableOp")
)
SIGNATURE_WRAPPER = function(
    "__inference_signature_wrapper_30",
    node("call", "StatefulPartitionedCall", attrs={"f": attr_f("__inference_serve_10")}),
)
TF2_KWARGS = {
    "saver": ("saver_filename:0", "StatefulPartitionedCall_1:0", "StatefulPartitionedCall_2"),
    "signatures": {"serving_default": {"y": "StatefulPartitionedCall:0"}, "__saved_model_init_op": {"init": "NoOp"}},
    "exported": ["__inference_serve_10", "__inference_signature_wrapper_30"],
}
CANARY_PATH = attr_s("/tmp/mlwarden-canary/ckpt")  # never written: the scanner does not run graphs


def _tf2(serve: list[bytes], extra_functions: list[bytes] | None = None) -> bytes:
    serve_fn = function("__inference_serve_10", node("MatMul", "MatMul"), node("Relu", "Relu"), *serve)
    fns = [TRACED_SAVE, TRACED_RESTORE, SIGNATURE_WRAPPER, serve_fn, *(extra_functions or [])]
    return saved_model(TF2_NODES, fns, **TF2_KWARGS)  # type: ignore[arg-type]


def test_tf2_checkpoint_functions_are_low(tmp_path: Path) -> None:
    findings = _scan(tmp_path, _tf2([]))
    assert all(f.severity is Severity.LOW for f in findings)
    assert {f.detail("op") for f in findings} == {"SaveV2", "MergeV2Checkpoints", "RestoreV2"}


@pytest.mark.parametrize("op", ["Save", "SaveV2", "SaveSlices", "MergeV2Checkpoints"])
def test_save_with_constant_path_in_serving_function_is_high(tmp_path: Path, op: str) -> None:
    # Regression: a save op with an attacker path inside the serving function was LOW, "like checkpoint saving".
    serve = [
        node("path", "Const", attrs={"value": fb(8, fv(1, 7) + fb(8, "/tmp/mlwarden-canary/x"))}),
        node("dump", op, "path"),
    ]
    findings = _scan(tmp_path, _tf2(serve))
    [hit] = [f for f in findings if f.rule_id == "MLW-TF-002"]
    assert hit.severity is Severity.HIGH
    assert hit.detail("op") == op
    assert hit.detail("checkpoint_op_outside_saver") is True
    assert "dump (function __inference_serve_10)" in hit.evidence
    assert "outside the checkpoint save/restore functions" in hit.evidence
    assert "__inference__traced_save_45" not in hit.evidence  # the real saver stays LOW


def test_serving_function_calling_the_generated_save_function_is_high(tmp_path: Path) -> None:
    serve = [node("sneaky", "StatefulPartitionedCall", attrs={"f": attr_f("__inference__traced_save_45")})]
    findings = _scan(tmp_path, _tf2(serve))
    writes = {f.detail("op"): f for f in findings if f.rule_id == "MLW-TF-002"}
    assert set(writes) == {"SaveV2", "MergeV2Checkpoints"}
    assert "function __inference__traced_save_45" in writes["SaveV2"].evidence


def test_function_named_like_the_saver_but_reachable_from_serving_is_high(tmp_path: Path) -> None:
    fake = function("__inference__traced_save_99", node("w", "SaveV2", attrs={"p": CANARY_PATH}))
    serve = [node("c", "PartitionedCall", attrs={"f": attr_f("__inference__traced_save_99")})]
    findings = _scan(tmp_path, _tf2(serve, [fake]))
    assert [f.evidence for f in findings if f.rule_id == "MLW-TF-002"] == [
        "1 SaveV2 op(s) outside the checkpoint save/restore functions: w (function __inference__traced_save_99)"
    ]


def test_exported_object_graph_function_with_save_is_high(tmp_path: Path) -> None:
    rogue = function("__inference_export_77", node("w", "SaveV2"))
    data = saved_model(
        TF2_NODES,
        [TRACED_SAVE, TRACED_RESTORE, SIGNATURE_WRAPPER, function("__inference_serve_10"), rogue],
        **{**TF2_KWARGS, "exported": ["__inference_serve_10", "__inference_export_77"]},  # type: ignore[arg-type]
    )
    assert [f.detail("op") for f in _scan(tmp_path, data) if f.rule_id == "MLW-TF-002"] == ["SaveV2"]


def test_restore_outside_the_saver_reads_a_file(tmp_path: Path) -> None:
    findings = _scan(tmp_path, _tf2([node("peek", "RestoreV2", attrs={"p": CANARY_PATH})]))
    [hit] = [f for f in findings if f.rule_id == "MLW-TF-004"]
    assert hit.severity is Severity.MEDIUM
    assert hit.detail("op") == "RestoreV2"


@pytest.mark.parametrize(
    ("op", "rule_id"),
    [
        ("DistributedSave", "MLW-TF-003"),
        ("CollectiveReduceV2", "MLW-TF-003"),
        ("RpcCall", "MLW-TF-003"),
        ("RemoteCall", "MLW-TF-003"),
        ("WriteScalarSummary", "MLW-TF-002"),
        ("SaveDatasetV2", "MLW-TF-002"),
        ("TFRecordDataset", "MLW-TF-004"),
        ("WholeFileReaderV2", "MLW-TF-004"),
        ("PyFuncStateless", "MLW-TF-001"),
    ],
)
def test_registry_io_ops_in_serving_function(tmp_path: Path, op: str, rule_id: str) -> None:
    findings = _scan(tmp_path, _tf2([node("io", op)]))
    assert [f.detail("op") for f in findings if f.rule_id == rule_id] == [op]


def _tf1(extra: list[bytes], signature_output: str = "y:0") -> bytes:
    nodes = [
        node("x", "Placeholder"),
        node("w", "VariableV2"),
        node("y", "MatMul", "x", "w"),
        node("save/Const", "Const"),
        node("save/SaveV2", "SaveV2", "save/Const", "save/SaveV2/tensor_names", "w"),
        node("save/control_dependency", "Identity", "save/Const", "^save/SaveV2"),
        node("save/RestoreV2", "RestoreV2", "save/Const"),
        node("save/Assign", "Assign", "w", "save/RestoreV2"),
        node("save/restore_all", "NoOp", "^save/Assign"),
        *extra,
    ]
    return saved_model(
        nodes,
        saver=("save/Const:0", "save/control_dependency:0", "save/restore_all"),
        signatures={"serving_default": {"y": signature_output}},
        collections={"saved_model_main_op": ["init_all_tables"]},
    )


def test_tf1_saver_scope_is_low(tmp_path: Path) -> None:
    findings = _scan(tmp_path, _tf1([node("init_all_tables", "NoOp")]))
    assert all(f.severity is Severity.LOW for f in findings)
    assert {f.detail("op") for f in findings} == {"SaveV2", "RestoreV2"}


@pytest.mark.parametrize(
    ("extra", "signature_output"),
    [
        ([node("y2", "Identity", "y", "^save/control_dependency")], "y2:0"),  # control dependency on the saver
        ([], "save/control_dependency:0"),  # the signature fetches the saver's output
        ([node("save_evil", "SaveV2", "x")], "y:0"),  # a save op outside the save/ scope
    ],
)
def test_tf1_saver_reached_from_serving_is_high(tmp_path: Path, extra: list[bytes], signature_output: str) -> None:
    findings = _scan(tmp_path, _tf1(extra, signature_output))
    [hit] = [f for f in findings if f.rule_id == "MLW-TF-002"]
    assert hit.severity is Severity.HIGH
    assert hit.detail("op") == "SaveV2"


def test_io_table_is_built_from_the_registry() -> None:
    from mlwarden.scan.static import savedmodel

    raw = json.loads((Path(savedmodel.__file__).parent / "tf_io_ops.json").read_text())
    assert raw["generated_by"] == "scripts/build-tf-io-ops"
    assert raw["source"]["registry_ops"] > 1000
    table = savedmodel.io_ops()
    assert set(table.values()) <= {*savedmodel._CATEGORY_RULES, *savedmodel._OUTSIDE_SAVER}
    assert table["DistributedSave"] == "network"
    assert table["SaveV2"] == "checkpoint-write"
    assert table["EagerPyFunc"] == "python"
    assert "IdentityReaderV2" not in table
    assert "MatMul" not in table
