"""joblib < 0.10 array wrappers: the risk is the file they name, so that file is what gets checked.

joblib 0.9 and older pickled each numpy array as an ``NDArrayWrapper`` (``ZNDArrayWrapper`` when compressed) whose
state names a sibling file: ``{"filename": "model.pkl_01.npy", "subclass": numpy.ndarray, "allow_mmap": True}``
(or ``{"filename", "init_args", "state"}``). Today's joblib still reads such pickles: ``NumpyUnpickler.load_build``
sees a wrapper after BUILD and calls its ``read()``, which joins the name to the pickle's folder with
``os.path.join`` (an absolute name wins, ``..`` climbs out) and opens it — ``numpy.load(..., allow_pickle=True)``
for ``NDArrayWrapper``, so an object array in that ``.npy`` is a pickle loaded with no restriction; a zlib file
for ``ZNDArrayWrapper``.

Constructing the wrapper is harmless (the classes are allowlisted); at every BUILD of one :func:`check` reports:

* a name that leaves the model's folder (absolute, ``..``, a symlink or special file) — HIGH, like ONNX external data;
* a sibling that is missing — LOW (the model cannot load; nothing runs);
* an ``NDArrayWrapper`` sibling that is present — analysed through the scan context, so *its* findings (a pickle in
  an object array) are reported, located as ``<joblib file NAME>`` under the pickle that names it (a
  ``ZNDArrayWrapper`` file is raw array bytes for ``ndarray.__setstate__``, never unpickled: only its name counts);
* a state the scanner cannot read (computed, truncated, or setting attributes the wrapper does not have, which
  would shadow ``read`` itself) — MEDIUM.

Siblings resolve against the folder of the file (:mod:`mlwarden.artifacts.folder`: on disk, or the listing of the
remote prefix or repository it was read from), also through compression layers (``model.pkl.z``): joblib
decompresses in memory and keeps the path. A pickle inside an archive or embedded in another pickle has no folder
joblib would use, so only the name is checked. Pickles inside a sibling are loaded by numpy's plain unpickler, which
never calls ``read()``: wrappers there are not followed (no loops between files).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from mlwarden.artifacts.folder import layer_folder, relative_path_problem
from mlwarden.core.findings import Severity, rule
from mlwarden.scan.static.pickle.emulator import Call, Container, Global, render

if TYPE_CHECKING:
    from mlwarden.scan.static.pickle.analyzer import PickleAnalyzer

WRAPPERS: dict[str, frozenset[str]] = {
    f"{package}.{module}.{cls}": frozenset(
        {"filename", "subclass", "allow_mmap"} if cls == "NDArrayWrapper" else {"filename", "init_args", "state"}
    )
    for package in ("joblib", "sklearn.externals.joblib")
    for module in ("numpy_pickle", "numpy_pickle_compat")
    for cls in ("NDArrayWrapper", "ZNDArrayWrapper")
}
_RECONSTRUCTORS = frozenset({"copyreg._reconstructor", "copy_reg._reconstructor"})
_SIBLING = "<joblib file "
_SEEN: WeakKeyDictionary[PickleAnalyzer, set[str]] = WeakKeyDictionary()

TRAVERSAL = rule(
    "MLW-JOBLIB-001",
    "Legacy joblib array file outside the model folder",
    Severity.HIGH,
    cwe=22,
    description="A joblib < 0.10 array wrapper names the file joblib loads the array from; the name is absolute, "
    "contains '..', or resolves to a symlink or special file. Loading reads that file with numpy.load("
    "allow_pickle=True): a pickle anywhere on the host runs, and file contents can leak into the model.",
    remediation="Do not load the model. Legacy joblib array files sit next to the pickle and are named "
    "'<pickle name>_NN.npy'.",
)
MISSING = rule(
    "MLW-JOBLIB-002",
    "Legacy joblib array file missing",
    Severity.LOW,
    cwe=None,
    description="A joblib < 0.10 array wrapper names a file that is not beside the pickle. The model cannot load "
    "as distributed; this runs nothing.",
    remediation="Obtain every '<pickle name>_NN.npy' file from the publisher, or re-save with a current joblib.",
)
UNCHECKABLE = rule(
    "MLW-JOBLIB-003",
    "Legacy joblib array wrapper the scanner cannot check",
    Severity.MEDIUM,
    cwe=20,
    description="A joblib < 0.10 array wrapper is built from state that is computed, truncated or sets attributes "
    "the wrapper does not have (an attribute named 'read' replaces the method joblib calls). Which file it "
    "loads, or what it runs, cannot be told statically.",
    remediation="Re-save the model with a current joblib from a trusted environment.",
)


def wrapper_class(target: Any) -> str | None:
    """The wrapper class a BUILD target instantiates (NEWOBJ/REDUCE of the class, or copyreg._reconstructor)."""
    if not isinstance(target, Call):
        return None
    func = target.func
    if isinstance(func, Global) and func.full in WRAPPERS:
        return func.full
    if isinstance(func, Global) and func.full in _RECONSTRUCTORS and isinstance(target.args, tuple) and target.args:
        cls = target.args[0]
        if isinstance(cls, Global) and cls.full in WRAPPERS:
            return cls.full
    return None


def check(analyzer: PickleAnalyzer, target: Any, state: Any, pos: int) -> None:
    """Check the file a legacy wrapper built at ``pos`` makes joblib load (see the module docstring)."""
    cls = wrapper_class(target)
    artifact, ctx = analyzer.artifact, analyzer.ctx
    if cls is None or any(part.startswith(_SIBLING) for part in artifact.chain):
        return
    where = artifact.location(pos)
    shown = f"{cls} with state {render(state, analyzer.preview)}"
    name, problem = _filename(cls, target, state)
    if name is None:
        analyzer.extra.append(UNCHECKABLE.finding(where, f"{shown}: {problem}", details={"global": cls}))
        return
    if problem is not None:
        analyzer.extra.append(UNCHECKABLE.finding(where, f"{shown}: {problem}", details={"global": cls}))
    lexical = relative_path_problem(name)
    if lexical is not None:
        analyzer.extra.append(TRAVERSAL.finding(where, f"{cls} loads {name!r}: {lexical}", filename=name))
        return
    folder = layer_folder(artifact)  # the folder on disk, or the listing of a remote prefix / repository
    if folder is None:
        return
    seen = _SEEN.setdefault(analyzer, set())
    if name in seen:
        return
    seen.add(name)
    found = folder.problem(name)
    if found is not None:
        text, traversal = found
        target_rule = TRAVERSAL if traversal else MISSING
        analyzer.extra.append(target_rule.finding(where, f"{cls} loads {name!r}: {text}", filename=name))
        return
    if cls.endswith(".ZNDArrayWrapper"):
        return  # raw array bytes handed to ndarray.__setstate__: never unpickled, nothing more to analyse
    ctx.descend(folder.open(name, (*artifact.chain, f"{_SIBLING}{name}>"), artifact.depth + 1))


def _filename(cls: str, target: Call, state: Any) -> tuple[str | None, str | None]:
    """``(file name, problem)``; the name is ``None`` when the state does not say it literally."""
    fields: dict[str, Any] = {}
    if isinstance(target.args, tuple) and target.args and isinstance(target.args[0], str):
        fields["filename"] = target.args[0]  # NDArrayWrapper(filename, ...) called directly
    if isinstance(state, Container) and state.kind == "dict":
        if state.count > len(state.items):
            return None, "state dict truncated by the scanner"
        for item in state.items:
            key = item[0] if isinstance(item, tuple) and len(item) == 2 else None
            if not isinstance(key, str):
                return None, "state dict with a computed key"
            fields[key] = item[1]
    elif state is not None:
        return None, "state is not a plain dict"
    name = fields.get("filename")
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    if not isinstance(name, str):
        return None, "no literal file name"
    extra = sorted(set(fields) - WRAPPERS[cls])
    return name, (f"state sets attributes {extra} the wrapper does not have" if extra else None)


__all__ = ["MISSING", "TRAVERSAL", "UNCHECKABLE", "WRAPPERS", "check", "wrapper_class"]
