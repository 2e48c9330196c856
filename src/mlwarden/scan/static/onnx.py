"""ONNX models: external-data path traversal and custom operator domains, read from the wire format.

ONNX itself has no code-execution construct; the two ways an ONNX file reaches outside itself are

* **external data**: a tensor with ``data_location = EXTERNAL`` names a file (``location``) that the
  loader opens relative to the model's folder. Absolute paths and ``..`` let a model read any file the
  victim can (CVE-2022-25882, CVE-2024-27318 in ``onnx``; ONNX Runtime had the same class of bug).
* **custom operators**: a node in a non-standard domain only runs if the user registers a native library
  (``SessionOptions.register_custom_ops_library``) or a Python op (onnxruntime-extensions ``PyOp``) —
  code that is not in the model and must be trusted separately.

Operator domains fall in three groups:

* **standard** (:data:`STANDARD_DOMAINS`, not reported): the ONNX ones (``""``, ``ai.onnx``, ``ai.onnx.ml``,
  ``ai.onnx.training``, ``ai.onnx.preview.training``) and those built into ONNX Runtime (``com.microsoft``,
  ``com.microsoft.nchwc``, ``com.microsoft.experimental``, ``com.ms.internal.nhwc``) — the runtime that loads
  the model implements them.
* **extension libraries** (:data:`LIBRARY_DOMAINS`, INFO naming the library): domains implemented by a
  well-known library the user installs and registers, not by the file — ``ai.onnx.contrib`` and
  ``com.microsoft.extensions`` (onnxruntime-extensions), ``org.pytorch.aten`` (PyTorch's ATen fallback) and
  kin. The model cannot bring that code along; whoever runs it already chose the library.
* **custom** (MEDIUM): any other domain. Nobody ships it, so running the model needs a native library or
  Python callback from the publisher, which is not analysed.

A node whose ``(domain, op_type)`` names a function defined in the model itself (``functions``, as the
PyTorch exporter writes) is neither. onnxruntime-extensions also lets users register their own Python ops
in ``ai.onnx.contrib`` (``@onnx_op``); those cannot be told from the library's own ops by name, which is
why the INFO finding lists the op types.

The graph is walked with :mod:`mlwarden.artifacts.protobuf`: tensor payloads are skipped by seeking,
subgraphs (``If``/``Loop``/``Scan`` bodies, function bodies, training graphs) are followed to a bounded
depth, and any malformed structure is a finding. External data locations are checked against the model's
:class:`~mlwarden.artifacts.folder.Folder`: the folder on disk, or the listing of a remote prefix or repository
(existence only: the data itself is never read).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.folder import file_folder, relative_path_problem
from mlwarden.artifacts.protobuf import VARINT, ProtobufError, WireField, WireReader, expect, open_seekable
from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Confidence, Severity, rule
from mlwarden.scan.context import ScanContext
from mlwarden.scan.static.base import Handler

STANDARD_DOMAINS = frozenset(
    {
        "",
        "ai.onnx",
        "ai.onnx.ml",
        "ai.onnx.training",
        "ai.onnx.preview.training",
        "com.microsoft",
        "com.microsoft.nchwc",
        "com.microsoft.experimental",
        "com.ms.internal.nhwc",
    }
)
# Domains implemented by a library the user installs and registers, never by the model file.
LIBRARY_DOMAINS: dict[str, str] = {
    "ai.onnx.contrib": "onnxruntime-extensions",
    "com.microsoft.extensions": "onnxruntime-extensions",
    "org.pytorch.aten": "PyTorch ATen fallback (ONNX Runtime's ATen executor with torch, or Caffe2)",
    "org.pytorch._caffe2": "Caffe2 (PyTorch)",
    "com.microsoft.mlfeaturizers": "ONNX Runtime built with ML.NET featurizers",
    "com.microsoft.dml": "ONNX Runtime DirectML execution provider",
    "trt.plugins": "TensorRT plugins (ONNX Runtime TensorRT execution provider)",
}
MAX_GRAPH_DEPTH = 64
_EXAMPLES = 5

EXTERNAL_TRAVERSAL = rule(
    "MLW-ONNX-001",
    "External tensor data points outside the model folder",
    Severity.HIGH,
    cwe=22,
    description="A tensor stores its data in an external file whose location is absolute, contains '..', "
    "escapes the model's folder, or is a symlink or special file. Loading the model reads that file "
    "(CVE-2022-25882, CVE-2024-27318), which can disclose local files through the model's outputs or "
    "block on a device.",
    remediation="Do not load the model. Legitimate external data files sit next to the model and are "
    "named by a plain relative path.",
)
EXTERNAL_MISSING = rule(
    "MLW-ONNX-002",
    "External tensor data file missing or reference incomplete",
    Severity.LOW,
    cwe=None,
    description="A tensor refers to external data that is not present beside the model (or names no "
    "location). The model cannot load as distributed; this cannot execute code.",
    remediation="Obtain the complete model folder (all external data files) from the publisher.",
)
CUSTOM_DOMAIN = rule(
    "MLW-ONNX-003",
    "Custom operator domain needs a native library",
    Severity.MEDIUM,
    cwe=829,
    description="Nodes use an operator domain that neither ONNX nor ONNX Runtime implements and that no "
    "function in the model defines. Running the model requires registering a custom-op library or Python "
    "callback, whose code is not in the model and is not analysed.",
    remediation="Only run the model with a custom-op library you obtained from and trust the publisher of; "
    "review that library separately.",
    confidence=Confidence.MEDIUM,
)
LIBRARY_DOMAIN = rule(
    "MLW-ONNX-005",
    "Operators implemented by an extension library",
    Severity.INFO,
    cwe=None,
    description="Nodes use an operator domain that a well-known library implements (onnxruntime-extensions, "
    "PyTorch's ATen fallback ...). The model only runs where the user installed and registered that library; "
    "the file brings no code of its own.",
    remediation="None needed if you use the named library from its official source.",
)
MALFORMED = rule(
    "MLW-ONNX-004",
    "Malformed ONNX model",
    Severity.MEDIUM,
    cwe=20,
    description="The ModelProto could not be parsed (truncated, corrupt or deliberately malformed), so "
    "its graph was not fully analysed.",
    remediation="Re-export or re-download the model; do not load a model that mlwarden cannot parse.",
)


@dataclass
class _State:
    functions: set[tuple[str, str]] = field(default_factory=set)
    custom: dict[tuple[str, str], list[tuple[str, int]]] = field(default_factory=dict)
    external: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    no_location: list[tuple[str, int]] = field(default_factory=list)


class _Walker:
    """Depth-first walk of a ModelProto that collects custom-domain nodes and external-data references."""

    def __init__(self, reader: WireReader) -> None:
        self.r = reader
        self.s = _State()

    def model(self) -> None:
        for f in self.r.fields():
            if f.number == 7:
                self.graph(f, 0)
            elif f.number == 25:
                self.function(f)
            elif f.number == 20:  # TrainingInfoProto: initialization=1, algorithm=2 are graphs
                for g in self.r.message(f):
                    if g.number in (1, 2):
                        self.graph(g, 1)

    def graph(self, f: WireField, depth: int) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise LimitExceeded("onnx_graph_depth", f"subgraphs nested deeper than {MAX_GRAPH_DEPTH}")
        for g in self.r.message(f):
            if g.number == 1:
                self.node(g, depth)
            elif g.number == 5:
                self.tensor(g)
            elif g.number == 15:
                self.sparse(g)

    def function(self, f: WireField) -> None:
        name = domain = ""
        for g in self.r.message(f):
            if g.number == 1:
                name = self.r.text(g)
            elif g.number == 10:
                domain = self.r.text(g)
            elif g.number == 7:
                self.node(g, 1)
        self.s.functions.add((domain, name))

    def node(self, f: WireField, depth: int) -> None:
        domain = op_type = name = ""
        for g in self.r.message(f):
            if g.number == 7:
                domain = self.r.text(g)
            elif g.number == 4:
                op_type = self.r.text(g)
            elif g.number == 3:
                name = self.r.text(g)
            elif g.number == 5:
                self.attribute(g, depth)
        if domain not in STANDARD_DOMAINS:
            self.s.custom.setdefault((domain, op_type), []).append((name, f.offset))

    def attribute(self, f: WireField, depth: int) -> None:
        for g in self.r.message(f):
            if g.number in (5, 10):
                self.tensor(g)
            elif g.number in (6, 11):
                self.graph(g, depth + 1)
            elif g.number in (22, 23):
                self.sparse(g)

    def sparse(self, f: WireField) -> None:
        for g in self.r.message(f):
            if g.number in (1, 2):
                self.tensor(g)

    def tensor(self, f: WireField) -> None:
        name = ""
        external = False
        entries: dict[str, str] = {}
        for g in self.r.message(f):
            if g.number == 8:
                name = self.r.text(g)
            elif g.number == 14:
                expect(g, VARINT)
                external = g.value == 1
            elif g.number == 13:
                key = value = ""
                for h in self.r.message(g):
                    if h.number == 1:
                        key = self.r.text(h)
                    elif h.number == 2:
                        value = self.r.text(h, 8192)
                entries[key] = value
        if not external:
            return
        location = entries.get("location")
        if location is None or not location.strip():
            self.s.no_location.append((name, f.offset))
        else:
            self.s.external.setdefault(location, []).append((name, f.offset))


def _examples(items: list[tuple[str, int]]) -> list[str]:
    return [name or "<unnamed>" for name, _ in items[:_EXAMPLES]]


class OnnxHandler(Handler):
    """Static analysis of ONNX ``ModelProto`` files."""

    formats = (Format.ONNX,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Walk the model graph and report unsafe external data and custom operator domains."""
        stream = open_seekable(artifact, ctx.limits.max_member_size)
        with stream:
            walker = _Walker(WireReader(stream, artifact.size, tick=ctx.check_time))
            try:
                walker.model()
            except ProtobufError as exc:
                ctx.report(MALFORMED.finding(artifact.location(exc.offset), str(exc)))
        self._report(artifact, ctx, walker.s)

    def _report(self, artifact: Artifact, ctx: ScanContext, s: _State) -> None:
        by_library: dict[str, list[tuple[str, list[tuple[str, int]]]]] = {}
        for (domain, op_type), nodes in sorted(s.custom.items()):
            if (domain, op_type) in s.functions:
                continue
            if domain in LIBRARY_DOMAINS:
                by_library.setdefault(domain, []).append((op_type, nodes))
                continue
            ctx.report(
                CUSTOM_DOMAIN.finding(
                    artifact.location(nodes[0][1]),
                    f"{len(nodes)} node(s) of operator {domain}::{op_type}, e.g. {', '.join(_examples(nodes))}",
                    domain=domain,
                    op_type=op_type,
                    count=len(nodes),
                    nodes=_examples(nodes),
                )
            )
        for domain, ops in by_library.items():
            library = LIBRARY_DOMAINS[domain]
            op_types = [op_type for op_type, _ in ops]
            count = sum(len(nodes) for _, nodes in ops)
            shown = ", ".join(op_types[:_EXAMPLES])
            if len(op_types) > _EXAMPLES:
                shown += f" and {len(op_types) - _EXAMPLES} more op types"
            ctx.report(
                LIBRARY_DOMAIN.finding(
                    artifact.location(ops[0][1][0][1]),
                    f"{count} node(s) in domain {domain!r}, implemented by {library}: {shown}",
                    domain=domain,
                    library=library,
                    op_types=op_types,
                    count=count,
                )
            )
        folder = file_folder(artifact)  # on disk, or the listing of a remote prefix / repository
        for location, tensors in sorted(s.external.items()):
            where = artifact.location(tensors[0][1])
            evidence = f"external data location {location!r} of tensor(s) {', '.join(_examples(tensors))}"
            problem = relative_path_problem(location)
            if problem is not None:
                ctx.report(
                    EXTERNAL_TRAVERSAL.finding(
                        where, f"{evidence}: {problem}", external_location=location, tensors=_examples(tensors)
                    )
                )
                continue
            if folder is None:
                continue
            found = folder.problem(location)
            if found is None:
                continue
            problem, traversal = found
            target = EXTERNAL_TRAVERSAL if traversal else EXTERNAL_MISSING
            ctx.report(
                target.finding(where, f"{evidence}: {problem}", external_location=location, tensors=_examples(tensors))
            )
        if s.no_location:
            ctx.report(
                EXTERNAL_MISSING.finding(
                    artifact.location(s.no_location[0][1]),
                    f"{len(s.no_location)} external tensor(s) name no location, e.g. "
                    f"{', '.join(_examples(s.no_location))}",
                    tensors=_examples(s.no_location),
                )
            )
