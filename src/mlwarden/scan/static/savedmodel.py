"""TensorFlow SavedModel (``saved_model.pb``): graph ops that reach files, the network or Python.

A SavedModel is a program: loading it and running a signature executes its graph, and TensorFlow has ops
that read and write files, list directories, open network connections or call back into Python. The
graph is read from the protobuf wire format (no TensorFlow needed)::

    SavedModel.meta_graphs(2) -> MetaGraphDef.graph_def(2) -> GraphDef.node(1) -> NodeDef(name=1, op=2, input=3)
                                                               GraphDef.library(2) -> FunctionDefLibrary
                                                                 .function(1) -> FunctionDef.node_def(3)
    MetaGraphDef.saver_def(3), .collection_def(4), .signature_def(5), .object_graph_def(7)
    MetaGraphDef.asset_file_def(6) -> AssetFileDef.filename(2)

Which ops do I/O comes from TensorFlow's op registry, not from a hand list: ``tf_io_ops.json`` is generated
by ``scripts/build-tf-io-ops`` from the ``gen_*_ops.py`` wrappers of a TensorFlow wheel. Its categories map
to rules: ``python`` -> MLW-TF-001, ``file-write`` -> MLW-TF-002, ``network`` -> MLW-TF-003, ``file-read`` ->
MLW-TF-004 (``PrintV2`` with a ``file://`` output stream is a write too), ``vocabulary`` -> MLW-TF-005.

The saver's own ops (``checkpoint-write``: ``SaveV2``, ``MergeV2Checkpoints`` ...; ``checkpoint-read``:
``RestoreV2`` ...) are in every SavedModel, so they are LOW (MLW-TF-005) *only where TensorFlow puts them*:

* TF2: inside the functions that the MetaGraph's ``SaverDef`` nodes call (``__inference__traced_save_N`` /
  ``__inference__traced_restore_N`` and what they call) — or, when unreferenced, functions so named;
* TF1: top-level nodes of the saver's ``save/`` (``save_1/`` ...) name scope;

and only when nothing else reaches them: no other top-level node, signature tensor, collection or object-graph
function may call those functions or depend on those nodes. Anywhere else a save op is an attacker writing a
file (HIGH, MLW-TF-002) and a restore op reads one (MEDIUM, MLW-TF-004). Custom ops (``tf.load_op_library``)
are not in the registry and are not reported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.protobuf import LEN, ProtobufError, WireField, WireReader, expect, open_seekable
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Rule, Severity, rule
from mlwarden.scan.context import ScanContext
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.onnx import relative_path_problem

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
    "dumps, PrintV2 to file://, or Save/SaveV2/MergeV2Checkpoints outside the checkpoint save function). "
    "Running the model can create or overwrite files on the host.",
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
    description="Save/Restore ops inside the checkpoint save/restore functions TensorFlow generates, and "
    "lookup-table initialisers, read and write files through paths fed at load time; every SavedModel has "
    "them. Reported so the inventory of file access is complete.",
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

_CATEGORY_RULES: dict[str, Rule] = {
    "python": PYTHON_OP,
    "file-write": FILE_WRITE_OP,
    "network": NETWORK_OP,
    "file-read": FILE_READ_OP,
    "vocabulary": CHECKPOINT_OP,
}
# Checkpoint ops: LOW inside the saver's functions / scope, this rule anywhere else.
_OUTSIDE_SAVER: dict[str, Rule] = {"checkpoint-write": FILE_WRITE_OP, "checkpoint-read": FILE_READ_OP}
_SAVER_SCOPE = re.compile(r"^save(_\d+)?/")
_SAVER_FUNCTION = re.compile(r"^__inference__traced_(save|restore)_\d+$")


@cache
def io_ops() -> dict[str, str]:
    """``{op name: category}`` from ``tf_io_ops.json`` (built by ``scripts/build-tf-io-ops``)."""
    raw = json.loads(resources.files(__package__).joinpath("tf_io_ops.json").read_text("utf-8"))
    return {op: entry["category"] for op, entry in raw["ops"].items()}


def _node_name(ref: str) -> str:
    """``"^name"`` / ``"name:0"`` / ``"name:output:0"`` -> ``"name"``."""
    return ref.lstrip("^").split(":", 1)[0]


@dataclass
class _Node:
    name: str
    op: str
    offset: int
    calls: set[str]
    stream: str = ""  # PrintV2 output_stream


@dataclass
class _MetaGraph:
    nodes: list[_Node] = field(default_factory=list)  # top-level graph nodes (all of them)
    inputs: dict[str, list[str]] = field(default_factory=dict)  # top-level node -> nodes it runs first
    functions: dict[str, list[_Node]] = field(default_factory=dict)  # library function -> its nodes
    gradients: dict[str, str] = field(default_factory=dict)
    saver_refs: set[str] = field(default_factory=set)  # nodes the SaverDef names
    other_refs: set[str] = field(default_factory=set)  # nodes signatures and collections name
    exported: set[str] = field(default_factory=set)  # functions the object graph hands to the user


@dataclass
class _State:
    ops: dict[tuple[str, str, bool], list[tuple[str, str, int]]] = field(default_factory=dict)
    assets: list[tuple[str, int]] = field(default_factory=list)


class _Walker:
    def __init__(self, reader: WireReader) -> None:
        self.r = reader
        self.graphs: list[_MetaGraph] = []
        self.assets: list[tuple[str, int]] = []

    def saved_model(self) -> None:
        for f in self.r.fields():
            if f.number == 2:
                self.graphs.append(_MetaGraph())
                self.meta_graph(f, self.graphs[-1])

    def meta_graph(self, f: WireField, mg: _MetaGraph) -> None:
        for g in self.r.message(f):
            if g.number == 2:
                self.graph_def(g, mg)
            elif g.number == 3:  # SaverDef: filename/save tensor = 1/2, restore op = 3
                mg.saver_refs.update(_node_name(self.r.text(h)) for h in self.r.message(g) if h.number in (1, 2, 3))
            elif g.number == 4:  # map<string, CollectionDef>: node_list = 1 -> value = 1
                mg.other_refs.update(self._strings(g, (2, 1, 1)))
            elif g.number == 5:  # map<string, SignatureDef>: inputs/outputs = 1/2 -> map<string, TensorInfo>
                for path in ((2, 1, 2, 1), (2, 2, 2, 1)):
                    mg.other_refs.update(_node_name(s) for s in self._strings(g, path))
            elif g.number == 6:
                self.assets.extend((self.r.text(h), h.offset) for h in self.r.message(g) if h.number == 2)
            elif g.number == 7:  # SavedObjectGraph.concrete_functions: map<string, SavedConcreteFunction>
                mg.exported.update(self._strings(g, (2, 1)))

    def _strings(self, f: WireField, path: tuple[int, ...]) -> list[str]:
        """The string fields reached from message ``f`` by following field numbers ``path``."""
        out: list[str] = []
        for g in self.r.message(f):
            if g.number == path[0]:
                if len(path) == 1:
                    out.append(self.r.text(g))
                else:
                    out.extend(self._strings(g, path[1:]))
        return out

    def graph_def(self, f: WireField, mg: _MetaGraph) -> None:
        for g in self.r.message(f):
            if g.number == 1:
                inputs: list[str] = []
                n = self.node(g, inputs)
                mg.nodes.append(n)
                mg.inputs[n.name] = [_node_name(i) for i in inputs]
            elif g.number == 2:
                for h in self.r.message(g):
                    if h.number == 1:
                        self.function(h, mg)
                    elif h.number == 2:  # GradientDef: function_name = 1, gradient_func = 2
                        names = {k.number: self.r.text(k) for k in self.r.message(h) if k.number in (1, 2)}
                        if 1 in names and 2 in names:
                            mg.gradients[names[1]] = names[2]

    def function(self, f: WireField, mg: _MetaGraph) -> None:
        name = "<function>"
        nodes: list[WireField] = []
        for g in self.r.message(f):
            if g.number == 1:  # signature: OpDef, name = 1
                for h in self.r.message(g):
                    if h.number == 1:
                        name = self.r.text(h)
            elif g.number == 3:
                nodes.append(g)
        mg.functions.setdefault(name, []).extend(self.node(g, None) for g in nodes)

    def node(self, f: WireField, inputs: list[str] | None) -> _Node:
        n = _Node("", "", f.offset, set())
        for g in self.r.message(f):
            if g.number == 1:
                n.name = self.r.text(g)
            elif g.number == 2:
                n.op = self.r.text(g)
            elif g.number == 3 and inputs is not None:
                inputs.append(self.r.text(g))
            elif g.number == 5:  # map<string, AttrValue> entry: key = 1, value = 2
                key, value = "", None
                for h in self.r.message(g):
                    if h.number == 1:
                        key = self.r.text(h)
                    elif h.number == 2:
                        expect(h, LEN)
                        value = h
                if value is not None:
                    self._attr(value, key, n)
        n.calls.add(n.op)  # a node whose op names a library function calls it
        return n

    def _attr(self, f: WireField, key: str, n: _Node) -> None:
        """Record function references (func = 10, list.func = 1.9, NameAttrList name = 1) and PrintV2's stream."""
        for g in self.r.message(f):
            if g.number == 2 and key == "output_stream":
                n.stream = self.r.text(g)
            elif g.number == 10:
                self._func(g, n)
            elif g.number == 1:
                for h in self.r.message(g):
                    if h.number == 9:
                        self._func(h, n)

    def _func(self, f: WireField, n: _Node) -> None:
        for g in self.r.message(f):
            if g.number == 1:
                n.calls.add(self.r.text(g))
            elif g.number == 2:  # attr map of the called function: may name further functions
                for h in self.r.message(g):
                    if h.number == 2:
                        expect(h, LEN)
                        self._attr(h, "", n)


def _closure(mg: _MetaGraph, roots: set[str]) -> set[str]:
    """Library functions reachable from ``roots`` (function names) through calls and registered gradients."""
    seen: set[str] = set()
    todo = [r for r in roots if r in mg.functions]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        callees = {c for n in mg.functions[name] for c in n.calls}
        if name in mg.gradients:
            callees.add(mg.gradients[name])
        todo.extend(c for c in callees if c in mg.functions and c not in seen)
    return seen


def _classify(mg: _MetaGraph, state: _State) -> None:
    """Add the I/O ops of one MetaGraph to ``state``, judging checkpoint ops by where they sit."""
    table = io_ops()
    saver = {n.name for n in mg.nodes if _SAVER_SCOPE.match(n.name)} | (mg.saver_refs & set(mg.inputs))
    # Saver nodes that a non-saver node, signature or collection runs (directly or as an input) are exposed.
    todo = [i for n in mg.nodes if n.name not in saver for i in mg.inputs[n.name]] + list(mg.other_refs)
    exposed: set[str] = set()
    while todo:
        name = todo.pop()
        if name in saver and name not in exposed:
            exposed.add(name)
            todo.extend(mg.inputs.get(name, ()))
    private = saver - exposed
    saver_calls = {c for n in mg.nodes if n.name in private for c in n.calls}
    other_calls = {c for n in mg.nodes if n.name not in private for c in n.calls} | mg.exported
    reached = _closure(mg, other_calls)
    named = {f for f in mg.functions if _SAVER_FUNCTION.match(f)}  # unreferenced TF2 checkpoint functions
    checkpoint = (_closure(mg, saver_calls) | named) - reached

    def add(n: _Node, where: str, in_saver: bool) -> None:
        category = table.get(n.op)
        rule_, op = (_CATEGORY_RULES.get(category) if category else None), n.op
        if category in _OUTSIDE_SAVER:
            rule_ = CHECKPOINT_OP if in_saver else _OUTSIDE_SAVER[category]
        if n.op == "PrintV2" and n.stream.startswith("file://"):
            rule_, op = FILE_WRITE_OP, f"PrintV2(output_stream={n.stream})"
        if rule_ is not None:
            escalated = category in _OUTSIDE_SAVER and not in_saver
            state.ops.setdefault((rule_.id, op, escalated), []).append((n.name, where, n.offset))

    for n in mg.nodes:
        add(n, "graph", n.name in private)
    for name, nodes in mg.functions.items():
        for n in nodes:
            add(n, f"function {name}", name in checkpoint)


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
        state = _State(assets=walker.assets)
        for mg in walker.graphs:
            ctx.check_time()
            _classify(mg, state)
        rules = {r.id: r for r in (*_CATEGORY_RULES.values(), *_OUTSIDE_SAVER.values())}
        for (rule_id, op, escalated), nodes in sorted(state.ops.items()):
            names = [f"{n or '<unnamed>'} ({w})" for n, w, _ in nodes[:_EXAMPLES]]
            why = " outside the checkpoint save/restore functions" if escalated else ""
            ctx.report(
                rules[rule_id].finding(
                    artifact.location(nodes[0][2]),
                    f"{len(nodes)} {op} op(s){why}: {', '.join(names)}",
                    op=op,
                    count=len(nodes),
                    nodes=names,
                    checkpoint_op_outside_saver=escalated,
                )
            )
        for filename, offset in state.assets:
            problem = relative_path_problem(filename)
            if problem is not None:
                ctx.report(
                    ASSET_TRAVERSAL.finding(
                        artifact.location(offset), f"asset file {filename!r}: {problem}", filename=filename
                    )
                )
