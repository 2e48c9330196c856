"""TensorFlow SavedModel (``saved_model.pb``): graph ops that reach files, the network or Python.

A SavedModel is a program: loading it and running a signature executes its graph, and TensorFlow has ops
that read and write files, list directories, open network connections or call back into Python. The
graph is read from the protobuf wire format (no TensorFlow needed)::

    SavedModel.meta_graphs(2) -> MetaGraphDef.graph_def(2) -> GraphDef.node(1) -> NodeDef(name=1, op=2)
                                                               GraphDef.library(2) -> FunctionDefLibrary
                                                                 .function(1) -> FunctionDef.node_def(3)
    MetaGraphDef.asset_file_def(6) -> AssetFileDef.filename(2)

Decisions, op by op (``_OPS``):

* ``PyFunc``, ``PyFuncStateless``, ``EagerPyFunc`` — HIGH. They call a Python function by token from the
  loading process's registry; the code is not in the file, but a graph that calls into Python must never
  be treated as self-contained (and a token can hit whatever the host registered).
* ``WriteFile``, ``SaveDataset``, ``DatasetToTFRecord``, ``CreateSummaryFileWriter``/``DbWriter``,
  ``Debug*`` ops (``debug_urls`` may be ``file://``), and ``PrintV2`` whose ``output_stream`` is
  ``file://...`` — HIGH: the model writes files.
* ``Rpc``/``TryRpc``/``RpcClient``/``RpcCall`` and tf.data service ops — HIGH: network access.
* ``ReadFile``, ``MatchingFiles``, ``ImmutableConst`` (memory-maps a named file), file readers and file
  datasets — MEDIUM: the model reads local files (disclosure through its outputs).
* ``Save``/``SaveV2``/``SaveSlices``/``Restore*``/``MergeV2Checkpoints`` — LOW: every SavedModel contains
  them (the saver reads and writes its own ``variables/`` checkpoint through a fed path).
* ``InitializeTableFromTextFile(V2)`` — LOW: the usual way lookup tables load their vocabulary asset.
* ``DecodeCSV`` and other parsing ops only transform tensors and are not reported. Custom ops (needing
  ``tf.load_op_library``) cannot be told apart without TensorFlow's op registry and are not reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Rule, Severity, rule
from mlwarden.scan.context import ScanContext
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.onnx import relative_path_problem
from mlwarden.scan.static.protobuf import LEN, ProtobufError, WireField, WireReader, expect, open_seekable

_EXAMPLES = 5

PYTHON_OP = rule(
    "MLW-TF-001",
    "Graph calls back into Python",
    Severity.HIGH,
    cwe=94,
    description="The graph contains PyFunc/EagerPyFunc ops, which run Python functions of the loading "
    "process. The model is not self-contained and its behaviour depends on code outside the file.",
    remediation="Do not serve the model unless you know which Python functions it expects and trust them.",
)
FILE_WRITE_OP = rule(
    "MLW-TF-002",
    "Graph writes files",
    Severity.HIGH,
    cwe=73,
    description="The graph contains ops that write files (WriteFile, dataset or summary writers, debug "
    "dumps, PrintV2 to file://). Running the model can create or overwrite files on the host.",
    remediation="Do not run the model outside a sandbox; ask the publisher why inference writes files.",
)
NETWORK_OP = rule(
    "MLW-TF-003",
    "Graph opens network connections",
    Severity.HIGH,
    cwe=918,
    description="The graph contains RPC or tf.data service ops, which connect to network addresses when run.",
    remediation="Do not run the model with network access; ask the publisher why inference needs it.",
)
FILE_READ_OP = rule(
    "MLW-TF-004",
    "Graph reads local files",
    Severity.MEDIUM,
    cwe=73,
    description="The graph contains ops that read or list local files (ReadFile, MatchingFiles, "
    "ImmutableConst, file readers and datasets). File contents can leak through the model's outputs.",
    remediation="Check which paths the ops read (their inputs); run the model without access to secrets.",
)
CHECKPOINT_OP = rule(
    "MLW-TF-005",
    "Graph has checkpoint or vocabulary file I/O",
    Severity.LOW,
    cwe=None,
    description="Save/Restore and lookup-table initialisers read and write files through paths fed at "
    "load time; every SavedModel has them. Reported so the inventory of file access is complete.",
    remediation="None needed for standard SavedModels.",
)
ASSET_TRAVERSAL = rule(
    "MLW-TF-006",
    "Asset file name escapes the assets folder",
    Severity.HIGH,
    cwe=22,
    description="An AssetFileDef names a file with an absolute path or '..'; TensorFlow joins it to the "
    "model's assets/ folder, so loading reads a file elsewhere on the host.",
    remediation="Do not load the model; asset file names are plain relative names.",
)
MALFORMED = rule(
    "MLW-TF-007",
    "Malformed SavedModel",
    Severity.MEDIUM,
    cwe=20,
    description="saved_model.pb could not be parsed (truncated, corrupt or deliberately malformed), so "
    "its graph was not fully analysed.",
    remediation="Re-export or re-download the model; do not load a model that mlwarden cannot parse.",
)

_OPS: dict[str, Rule] = {
    **dict.fromkeys(("PyFunc", "PyFuncStateless", "EagerPyFunc"), PYTHON_OP),
    **dict.fromkeys(
        (
            "WriteFile",
            "SaveDataset",
            "SaveDatasetV2",
            "DatasetToTFRecord",
            "ExperimentalDatasetToTFRecord",
            "CreateSummaryFileWriter",
            "CreateSummaryDbWriter",
            "DebugIdentity",
            "DebugIdentityV2",
            "DebugIdentityV3",
            "DebugNanCount",
            "DebugNumericSummary",
            "DebugNumericSummaryV2",
            "SnapshotDataset",
            "SnapshotDatasetV2",
        ),
        FILE_WRITE_OP,
    ),
    **dict.fromkeys(
        (
            "Rpc",
            "TryRpc",
            "RpcClient",
            "RpcCall",
            "RpcServer",
            "RpcServerStart",
            "RpcServerRegister",
            "DataServiceDataset",
            "DataServiceDatasetV2",
            "DataServiceDatasetV3",
            "DataServiceDatasetV4",
            "RegisterDataset",
            "RegisterDatasetV2",
        ),
        NETWORK_OP,
    ),
    **dict.fromkeys(
        (
            "ReadFile",
            "MatchingFiles",
            "MatchingFilesDataset",
            "ExperimentalMatchingFilesDataset",
            "ImmutableConst",
            "WholeFileReader",
            "WholeFileReaderV2",
            "TextLineReader",
            "TextLineReaderV2",
            "FixedLengthRecordReader",
            "FixedLengthRecordReaderV2",
            "TFRecordReader",
            "TFRecordReaderV2",
            "LMDBReader",
            "TextLineDataset",
            "TFRecordDataset",
            "TFRecordDatasetV2",
            "FixedLengthRecordDataset",
            "FixedLengthRecordDatasetV2",
            "LMDBDataset",
            "ExperimentalLMDBDataset",
            "LoadDataset",
            "CSVDataset",
            "CSVDatasetV2",
            "ExperimentalCSVDataset",
            "SqlDataset",
            "ExperimentalSqlDataset",
        ),
        FILE_READ_OP,
    ),
    **dict.fromkeys(
        (
            "Save",
            "SaveV2",
            "SaveSlices",
            "Restore",
            "RestoreV2",
            "RestoreSlice",
            "MergeV2Checkpoints",
            "InitializeTableFromTextFile",
            "InitializeTableFromTextFileV2",
        ),
        CHECKPOINT_OP,
    ),
}


@dataclass
class _State:
    ops: dict[tuple[str, str], list[tuple[str, str, int]]] = field(default_factory=dict)  # (rule, op) ->
    assets: list[tuple[str, int]] = field(default_factory=list)


class _Walker:
    def __init__(self, reader: WireReader) -> None:
        self.r = reader
        self.s = _State()

    def saved_model(self) -> None:
        for f in self.r.fields():
            if f.number == 2:
                self.meta_graph(f)

    def meta_graph(self, f: WireField) -> None:
        for g in self.r.message(f):
            if g.number == 2:
                self.graph_def(g)
            elif g.number == 6:
                for h in self.r.message(g):
                    if h.number == 2:
                        self.s.assets.append((self.r.text(h), h.offset))

    def graph_def(self, f: WireField) -> None:
        for g in self.r.message(f):
            if g.number == 1:
                self.node(g, "graph")
            elif g.number == 2:
                for h in self.r.message(g):
                    if h.number == 1:
                        self.function(h)

    def function(self, f: WireField) -> None:
        name = "<function>"
        nodes: list[WireField] = []
        for g in self.r.message(f):
            if g.number == 1:  # signature: OpDef, name = 1
                for h in self.r.message(g):
                    if h.number == 1:
                        name = self.r.text(h)
            elif g.number == 3:
                nodes.append(g)
        for g in nodes:
            self.node(g, f"function {name}")

    def node(self, f: WireField, where: str) -> None:
        name = op = ""
        attrs: dict[str, WireField] = {}
        for g in self.r.message(f):
            if g.number == 1:
                name = self.r.text(g)
            elif g.number == 2:
                op = self.r.text(g)
            elif g.number == 5:  # map<string, AttrValue> entry: key = 1, value = 2
                key, value = "", None
                for h in self.r.message(g):
                    if h.number == 1:
                        key = self.r.text(h)
                    elif h.number == 2:
                        expect(h, LEN)
                        value = h
                if value is not None:
                    attrs[key] = value
        target = _OPS.get(op)
        if op == "PrintV2" and "output_stream" in attrs:
            stream = self._attr_string(attrs["output_stream"])
            if stream.startswith("file://"):
                target = FILE_WRITE_OP
                op = f"PrintV2(output_stream={stream})"
        if target is not None:
            self.s.ops.setdefault((target.id, op), []).append((name, where, f.offset))

    def _attr_string(self, f: WireField) -> str:
        for g in self.r.message(f):  # AttrValue: s = 2
            if g.number == 2:
                return self.r.text(g)
        return ""


class SavedModelHandler(Handler):
    """Static analysis of TensorFlow ``saved_model.pb`` files."""

    formats = (Format.SAVEDMODEL,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Walk every graph and function body and report ops that touch files, network or Python."""
        stream = open_seekable(artifact, ctx.limits.max_member_size)
        with stream:
            walker = _Walker(WireReader(stream, artifact.size, tick=ctx.check_time))
            try:
                walker.saved_model()
            except ProtobufError as exc:
                ctx.report(MALFORMED.finding(artifact.location(exc.offset), str(exc)))
        rules = {r.id: r for r in _OPS.values()} | {FILE_WRITE_OP.id: FILE_WRITE_OP}
        for (rule_id, op), nodes in sorted(walker.s.ops.items()):
            names = [f"{n or '<unnamed>'} ({w})" for n, w, _ in nodes[:_EXAMPLES]]
            ctx.report(
                rules[rule_id].finding(
                    artifact.location(nodes[0][2]),
                    f"{len(nodes)} {op} op(s): {', '.join(names)}",
                    op=op,
                    count=len(nodes),
                    nodes=names,
                )
            )
        for filename, offset in walker.s.assets:
            problem = relative_path_problem(filename)
            if problem is not None:
                ctx.report(
                    ASSET_TRAVERSAL.finding(
                        artifact.location(offset), f"asset file {filename!r}: {problem}", filename=filename
                    )
                )
