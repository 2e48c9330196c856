"""Keras model configurations (``config.json`` of ``.keras`` archives, Keras 2 JSON, HDF5 ``model_config``).

A Keras config is a tree of ``{"module", "class_name", "config", "registered_name"}`` objects that
``load_model`` turns back into Python objects, so the config decides what code runs at load time:

* **Lambda layers** carry marshalled Python bytecode (``"class_name": "__lambda__"`` in Keras 3, a
  ``[code, defaults, closure]`` list in Keras 2) that runs when the model is called — and at load for
  HDF5 files, where ``safe_mode`` is ignored (CVE-2024-3660, CVE-2025-9905). CRITICAL. The bytecode is
  base64-decoded but never unmarshalled: ``marshal`` is not safe against crafted input (it can crash the
  interpreter) and is version-specific, so the preview lists the identifier-like strings found in the
  marshal stream (``co_names``, constants) by a bounded byte scan instead. Lambdas that call a named
  function are HIGH.
* **Imports outside Keras**: ``module``/``class_name`` naming e.g. ``os.system`` or ``builtins.exec``
  (CVE-2025-1550) — HIGH; Keras APIs that are not model components (``keras.utils.get_file``,
  ``keras.models.load_model``, ``keras.config.enable_unsafe_deserialization``: CVE-2025-8747,
  CVE-2025-9906) — HIGH.
* **Custom objects** (``module`` null or a user package, ``registered_name`` like ``"MyPkg>MyLayer"``)
  need user code to load — MEDIUM. Keras writes ``"module": "builtins"`` for functions defined in
  ``__main__`` and resolves them only among registered objects, so those are custom objects too unless
  the name is a dangerous builtin.
* **Loader gadgets**: ``TorchModuleWrapper`` embeds a ``torch.save`` pickle (CVE-2025-49655; the decoded
  bytes are handed back to the dispatcher, so the pickle is analysed); ``TFSMLayer`` loads an external
  SavedModel (CVE-2026-1462); lookup layers whose ``vocabulary`` is a path read a local file or URL at
  load (CVE-2025-12058); layer names with ``..`` (CVE-2026-12479); ``TFOpLambda`` calling TensorFlow
  file, Python or summary functions.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Rule, Severity, rule
from mlwarden.scan.context import ScanContext
from mlwarden.scan.static.base import Handler

MAX_CONFIG_DEPTH = 200
MAX_CONFIG_NODES = 2_000_000
_PREVIEW = 200
_EXAMPLES = 5
_MAX_CODE_B64 = 1024 * 1024

KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_nlp", "keras_cv", "tf_keras"})
_KERAS_PREFIXES = ("tensorflow.keras", "tensorflow.python.keras")
_DANGEROUS_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "subprocess",
        "builtins",
        "__builtin__",
        "sys",
        "shutil",
        "socket",
        "importlib",
        "runpy",
        "pickle",
        "_pickle",
        "marshal",
        "ctypes",
        "pty",
        "code",
        "codeop",
        "webbrowser",
        "http",
        "urllib",
        "urllib3",
        "requests",
        "multiprocessing",
        "asyncio",
        "pathlib",
        "io",
        "tempfile",
        "shlex",
        "platform",
        "signal",
        "threading",
        "types",
        "operator",
        "functools",
        "glob",
        "zipfile",
        "tarfile",
        "sqlite3",
        "telnetlib",
        "ftplib",
        "smtplib",
        "inspect",
        "gc",
        "numpy",
        "torch",
        "tensorflow",
        "jax",
        "dill",
        "cloudpickle",
        "joblib",
        "pip",
        "setuptools",
        "distutils",
        "site",
        "sysconfig",
        "timeit",
        "pdb",
        "bdb",
        "trace",
        "profile",
        "cProfile",
        "linecache",
        "commands",
        "popen2",
        "pydoc",
    }
)
_DANGEROUS_BUILTINS = frozenset(
    {
        "exec",
        "eval",
        "compile",
        "open",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "exit",
        "quit",
        "help",
        "memoryview",
        "print",
    }
)
_NON_MODELING = frozenset(
    {
        "get_file",
        "load_model",
        "model_from_json",
        "model_from_yaml",
        "save_model",
        "load_weights",
        "save_weights",
        "enable_unsafe_deserialization",
        "deserialize_keras_object",
        "serialize_keras_object",
        "register_keras_serializable",
        "load_img",
        "save_img",
        "clear_session",
        "set_global_attribute",
        "image_dataset_from_directory",
        "text_dataset_from_directory",
        "audio_dataset_from_directory",
        "func_load",
        "TFSMLayer",
    }
)
_NON_MODELING_MODULES = frozenset({"saving", "global_state", "file_utils", "io_utils", "python_utils", "module_utils"})
_LOOKUPS = frozenset({"StringLookup", "IntegerLookup", "IndexLookup", "TextVectorization", "Hashing"})
_TFOP_DANGER = re.compile(
    r"(^|\.)(io|gfile|py_func|py_function|numpy_function|saved_model|summary|"
    r"load_library|load_op_library)(\.|$)|(^|\.)raw_ops\.(ReadFile|WriteFile|PyFunc\w*|"
    r"EagerPyFunc|MatchingFiles|ImmutableConst)$"
)
_SUSPICIOUS_NAMES = frozenset(
    {
        "os",
        "system",
        "popen",
        "Popen",
        "subprocess",
        "exec",
        "eval",
        "open",
        "__import__",
        "builtins",
        "socket",
        "compile",
        "getattr",
        "remove",
        "unlink",
        "rmtree",
        "check_output",
        "check_call",
        "spawn",
        "execv",
        "execve",
        "fork",
        "pickle",
        "marshal",
        "loads",
        "urlopen",
        "requests",
        "write_text",
        "write_bytes",
        "shutil",
        "__builtins__",
        "globals",
        "import_module",
    }
)

LAMBDA_BYTECODE = rule(
    "MLW-KERAS-001",
    "Lambda layer with marshalled Python bytecode",
    Severity.CRITICAL,
    cwe=94,
    description="A Lambda layer (or another function slot) stores Python bytecode that Keras unmarshals "
    "and runs. Legacy HDF5 loading ignores safe_mode (CVE-2025-9905), and any load with safe_mode=False "
    "runs it (CVE-2024-3660).",
    remediation="Do not load the model. Rebuild it from a trusted definition of the Lambda's function, or "
    "replace the Lambda by a registered custom layer whose code you review.",
)
LAMBDA_FUNCTION = rule(
    "MLW-KERAS-002",
    "Lambda layer calls a Python function",
    Severity.HIGH,
    cwe=94,
    description="A Lambda layer calls a named Python function resolved at load time. Which code runs "
    "depends on the environment, and Keras APIs such as load_model have been abused this way "
    "(CVE-2025-9906).",
    remediation="Check that the named function is your own, reviewed code before loading the model.",
)
FOREIGN_IMPORT = rule(
    "MLW-KERAS-003",
    "Config imports an object from outside Keras",
    Severity.HIGH,
    cwe=502,
    description="An object's module/class_name names a Python module outside the Keras namespaces (e.g. "
    "os.system, builtins.exec). Keras versions before 3.9 imported it during loading, even with "
    "safe_mode=True (CVE-2025-1550).",
    remediation="Do not load the model; a genuine Keras model only references Keras objects and "
    "registered custom objects.",
)
NON_MODELING_API = rule(
    "MLW-KERAS-004",
    "Config references a non-modeling Keras API",
    Severity.HIGH,
    cwe=829,
    description="The config references a Keras function that is not a model component (file download, "
    "model loading, turning safe mode off). These have been used to bypass safe_mode (CVE-2025-8747, "
    "CVE-2025-9906).",
    remediation="Do not load the model.",
)
CUSTOM_OBJECT = rule(
    "MLW-KERAS-005",
    "Custom object needs user code",
    Severity.MEDIUM,
    cwe=829,
    description="The model uses a custom layer, function or other object that only loads if its Python "
    "code is registered by the user; that code is not in the model and is not analysed.",
    remediation="Load the model only with custom-object code you obtained from a trusted source and reviewed.",
)
TORCH_PICKLE = rule(
    "MLW-KERAS-006",
    "TorchModuleWrapper embeds a pickled torch module",
    Severity.HIGH,
    cwe=502,
    description="A TorchModuleWrapper layer stores a torch.save() pickle that Keras 3.11.0-3.11.2 "
    "unpickled at load even in safe mode (CVE-2025-49655). The embedded pickle is analysed separately.",
    remediation="Do not load the model with an affected Keras; check the findings of the embedded pickle.",
)
EXTERNAL_MODEL = rule(
    "MLW-KERAS-007",
    "Layer loads an external SavedModel",
    Severity.HIGH,
    cwe=829,
    description="A TFSMLayer loads a TensorFlow SavedModel from a path in the config, which runs that "
    "model's graph (CVE-2026-1462).",
    remediation="Do not load the model unless the referenced SavedModel is yours and has been scanned.",
)
VOCAB_FILE = rule(
    "MLW-KERAS-008",
    "Lookup layer reads its vocabulary from a path",
    Severity.MEDIUM,
    cwe=73,
    description="A lookup/vectorization layer's vocabulary is a file path or URL, read during loading even "
    "with safe_mode=True (CVE-2025-12058): local file disclosure, or a network request for URLs.",
    remediation="Do not load the model; saved Keras models store vocabularies inside the archive.",
)
NAME_TRAVERSAL = rule(
    "MLW-KERAS-009",
    "Object name contains a path traversal",
    Severity.HIGH,
    cwe=22,
    description="A layer or object name contains '..' or is absolute; Keras builds file paths from names "
    "when saving or loading assets (CVE-2026-12479).",
    remediation="Do not load the model.",
)
TFOP_DANGER = rule(
    "MLW-KERAS-010",
    "TFOpLambda calls a TensorFlow file, Python or I/O function",
    Severity.HIGH,
    cwe=94,
    description="A TFOpLambda layer calls a TensorFlow function that reads or writes files, calls Python "
    "or loads libraries when the model runs.",
    remediation="Do not run the model; ask the publisher why the graph performs I/O.",
)
MALFORMED = rule(
    "MLW-KERAS-011",
    "Malformed Keras config",
    Severity.MEDIUM,
    cwe=20,
    description="The Keras model configuration could not be parsed, so what it loads is unknown.",
    remediation="Do not load a model whose configuration mlwarden cannot parse.",
)


@dataclass
class _Hits:
    """Findings grouped by (rule, key) so a model with 500 custom layers gives one finding, not 500."""

    groups: dict[tuple[str, str], tuple[Rule, str, list[str], dict[str, Any]]] = field(default_factory=dict)

    def add(self, which: Rule, key: str, path: str, evidence: str, /, **details: Any) -> None:
        entry = self.groups.get((which.id, key))
        if entry is None:
            self.groups[(which.id, key)] = (which, evidence, [path], details)
        else:
            entry[2].append(path)


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "…"


def marshal_strings(raw: bytes, limit: int = 40) -> list[str]:
    """Identifier-like strings in a marshal stream, found by scanning type codes — never unmarshalling."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n and len(out) < limit:
        code = raw[i] & 0x7F
        text: bytes | None = None
        if code in (0x7A, 0x5A) and i + 1 < n:  # 'z' / 'Z': short ASCII, 1-byte length
            size, start = raw[i + 1], i + 2
        elif code in (0x61, 0x41, 0x75, 0x74) and i + 4 < n:  # 'a' 'A' 'u' 't': 4-byte length
            size, start = int.from_bytes(raw[i + 1 : i + 5], "little"), i + 5
        else:
            i += 1
            continue
        if 0 < size <= 512 and start + size <= n:
            text = raw[start : start + size]
            if all(0x20 <= b < 0x7F for b in text):
                word = text.decode("ascii")
                if word not in out:
                    out.append(word)
                i = start + size
                continue
        i += 1
    return out


def _code_evidence(code: Any) -> tuple[str, list[str]]:
    if not isinstance(code, str):
        return "no code string", []
    try:
        raw = base64.b64decode(code[:_MAX_CODE_B64])
    except (binascii.Error, ValueError):
        return f"undecodable code {code[:60]!r}", []
    names = marshal_strings(raw)
    bad = sorted(set(names) & _SUSPICIOUS_NAMES)
    text = f"{len(raw)} bytes of bytecode; strings: {', '.join(names[:20]) or '-'}"
    if bad:
        text += f"; suspicious: {', '.join(bad)}"
    return text, names


def _keras_module(module: str) -> bool:
    return module.split(".", 1)[0] in KERAS_PACKAGES or module.startswith(_KERAS_PREFIXES)


def _bad_name(name: str) -> bool:
    return name.startswith(("/", "\\")) or ".." in re.split(r"[\\/]+", name)


class _Analyser:
    def __init__(self, ctx: ScanContext) -> None:
        self.ctx = ctx
        self.hits = _Hits()
        self.done: set[int] = set()
        self.embedded: list[tuple[str, bytes]] = []

    def walk(self, root: Any) -> None:
        stack: list[tuple[Any, str, int]] = [(root, "$", 0)]
        seen = 0
        while stack:
            node, path, depth = stack.pop()
            seen += 1
            if seen % 10_000 == 0:
                self.ctx.check_time()
            if seen > MAX_CONFIG_NODES:
                raise LimitExceeded("keras_config_nodes", f"more than {MAX_CONFIG_NODES} values in config")
            if depth > MAX_CONFIG_DEPTH:
                raise LimitExceeded("keras_config_depth", f"config nested deeper than {MAX_CONFIG_DEPTH}")
            if isinstance(node, dict):
                if isinstance(node.get("class_name"), str):
                    self.obj(node, path)
                children: Iterator[tuple[str, Any]] = ((f"{path}.{k}", v) for k, v in node.items())
            elif isinstance(node, list):
                children = ((f"{path}[{i}]", v) for i, v in enumerate(node))
            else:
                continue
            stack.extend((v, p, depth + 1) for p, v in reversed(list(children)))

    def obj(self, o: dict[str, Any], path: str) -> None:
        cls: str = o["class_name"]
        cfg = o.get("config")
        cfg_d = cfg if isinstance(cfg, dict) else {}
        label = cfg_d.get("name") or o.get("name") or cls
        if cls == "__lambda__" and id(o) not in self.done:
            code = cfg_d.get("code")
            if code is None and isinstance(cfg_d.get("value"), list) and cfg_d["value"]:
                code = cfg_d["value"][0]
            self._lambda(path, str(label), code)
        elif cls == "Lambda":
            self._lambda_layer(cfg_d, path, str(label))
        elif cls == "TFOpLambda":
            fn = cfg_d.get("function")
            if isinstance(fn, str) and _TFOP_DANGER.search(fn):
                self.hits.add(TFOP_DANGER, fn, path, f"TFOpLambda {label!r} calls tf.{fn}", function=fn)
        elif cls == "TorchModuleWrapper" and isinstance(cfg_d.get("module"), str):
            self.hits.add(
                TORCH_PICKLE,
                path,
                path,
                f"TorchModuleWrapper {label!r} embeds {len(cfg_d['module'])} base64 characters of pickled module",
            )
            self._embed(path, cfg_d["module"])
        elif cls == "TFSMLayer":
            target = cfg_d.get("filepath")
            self.hits.add(
                EXTERNAL_MODEL, str(target), path, f"TFSMLayer {label!r} loads {_clip(target)}", filepath=_clip(target)
            )
        elif cls in _LOOKUPS and isinstance(cfg_d.get("vocabulary"), str):
            vocab = cfg_d["vocabulary"]
            remote = "://" in vocab
            self.hits.add(
                VOCAB_FILE,
                vocab,
                path,
                f"{cls} {label!r} reads vocabulary from {_clip(vocab)}",
                vocabulary=_clip(vocab),
                **({"remote": True} if remote else {}),
            )
        for name in (cfg_d.get("name"), o.get("name")):
            if isinstance(name, str) and _bad_name(name):
                self.hits.add(NAME_TRAVERSAL, name, path, f"{cls} named {_clip(name)}", name=_clip(name))
        if "module" in o:
            self._module(o, cls, cfg, path)

    def _lambda(self, path: str, label: str, code: Any) -> None:
        text, names = _code_evidence(code)
        self.hits.add(LAMBDA_BYTECODE, path, path, f"Lambda {label!r}: {text}", names=names[:40])

    def _lambda_layer(self, cfg: dict[str, Any], path: str, label: str) -> None:
        for slot in ("function", "output_shape", "mask"):
            value = cfg.get(slot)
            kind = cfg.get(f"{slot}_type")
            if isinstance(value, dict) and value.get("class_name") == "__lambda__":
                self.done.add(id(value))
                inner_raw = value.get("config")
                inner: dict[str, Any] = inner_raw if isinstance(inner_raw, dict) else {}
                code = inner.get("code")
                if code is None and isinstance(inner.get("value"), list) and inner["value"]:
                    code = inner["value"][0]
                self._lambda(f"{path}.config.{slot}", label, code)
            elif kind == "lambda" and isinstance(value, list | str):  # Keras 2: [code, defaults, closure]
                self._lambda(f"{path}.config.{slot}", label, value[0] if isinstance(value, list) else value)
            elif slot == "function" and value is not None:
                if isinstance(value, dict):
                    target = f"{value.get('module')}.{value.get('config') or value.get('class_name')}"
                else:  # Keras 2: function name looked up in the globals of config["module"]
                    module = str(cfg.get("module") or "?")
                    target = f"{module}.{value}"
                    if module.split(".", 1)[0] in _DANGEROUS_MODULES:
                        self.hits.add(
                            FOREIGN_IMPORT,
                            target,
                            path,
                            f"Lambda {label!r} imports {_clip(target)}",
                            target=_clip(target),
                        )
                self.hits.add(
                    LAMBDA_FUNCTION, target, path, f"Lambda {label!r} calls {_clip(target)}", function=_clip(target)
                )

    def _module(self, o: dict[str, Any], cls: str, cfg: Any, path: str) -> None:
        module = o.get("module")
        registered = o.get("registered_name")
        if cls == "function" and isinstance(cfg, str):
            name = cfg
        elif cls == "__typespec__":
            name = str(o.get("spec_name"))
        elif cls.startswith("__"):
            return
        else:
            name = cls
        if module is None:
            key = str(registered or name)
            self.hits.add(
                CUSTOM_OBJECT,
                key,
                path,
                f"custom {'function' if cls == 'function' else 'object'} {_clip(key)}",
                object=_clip(key),
            )
            return
        module = str(module)
        qualified = f"{module}.{name}"
        if _keras_module(module) or (cls == "__typespec__" and module.startswith("tensorflow.")):
            parts = set(module.split("."))
            if name in _NON_MODELING or parts & _NON_MODELING_MODULES:
                self.hits.add(
                    NON_MODELING_API, qualified, path, f"references {_clip(qualified)}", target=_clip(qualified)
                )
            return
        top = module.split(".", 1)[0]
        if top in _DANGEROUS_MODULES:
            if module == "builtins" and cls == "function" and name not in _DANGEROUS_BUILTINS:
                self.hits.add(CUSTOM_OBJECT, name, path, f"custom function {_clip(name)}", object=_clip(name))
            else:
                self.hits.add(FOREIGN_IMPORT, qualified, path, f"imports {_clip(qualified)}", target=_clip(qualified))
        elif isinstance(registered, str) and registered and registered != "function":
            self.hits.add(
                CUSTOM_OBJECT,
                registered,
                path,
                f"custom object {_clip(registered)} from module {_clip(module)}",
                object=_clip(registered),
                module=_clip(module),
            )
        else:
            self.hits.add(FOREIGN_IMPORT, qualified, path, f"imports {_clip(qualified)}", target=_clip(qualified))

    def _embed(self, path: str, text: str) -> None:
        if len(text) > self.ctx.limits.max_header_size * 4 // 3:
            raise LimitExceeded("max_header_size", f"embedded module at {path} is {len(text)} characters")
        try:
            self.embedded.append((path, base64.b64decode(text)))
        except (binascii.Error, ValueError):
            return


def analyse_keras_config(config: Any, artifact: Artifact, ctx: ScanContext, origin: str) -> None:
    """Analyse a parsed Keras config (any Keras version) and report findings against ``artifact``.

    Args:
        config: the parsed JSON.
        artifact: where the config came from (a ``config.json`` member, or an HDF5 file).
        ctx: the scan context.
        origin: where in the artifact the config sits (``"config.json"``, ``"model_config"`` attribute).
    """
    analyser = _Analyser(ctx)
    where = artifact.location(phase=None if origin == "config.json" else origin)
    try:
        analyser.walk(config)
    finally:
        for target, evidence, paths, details in analyser.hits.groups.values():
            count = f" ({len(paths)} occurrences)" if len(paths) > 1 else ""
            ctx.report(
                target.finding(
                    where,
                    f"{evidence}{count} at {paths[0]}",
                    origin=origin,
                    paths=paths[:_EXAMPLES],
                    count=len(paths),
                    **details,
                )
            )
    for path, data in analyser.embedded:
        child = artifact.child(f"<{origin}:{path}>", len(data), _opener(data), data[: 64 * 1024])
        ctx.descend(child)


def _opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def parse_config_text(data: bytes) -> Any:
    """Parse config JSON bytes; raises ``ValueError`` (incl. ``UnicodeDecodeError``) when malformed."""
    return json.loads(data.decode("utf-8-sig"))


class KerasConfigHandler(Handler):
    """Static analysis of Keras JSON model configs (``config.json`` in ``.keras`` archives, ``to_json``)."""

    formats = (Format.KERAS_CONFIG,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Parse the JSON (bounded by ``max_text_size``) and analyse it."""
        limit = ctx.limits.max_text_size
        if artifact.size is not None and artifact.size > limit:
            raise LimitExceeded("max_text_size", f"Keras config is {artifact.size} bytes")
        with artifact.open() as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise LimitExceeded("max_text_size", f"Keras config is larger than {limit} bytes")
        try:
            config = parse_config_text(data)
        except ValueError as exc:
            ctx.report(MALFORMED.finding(artifact.location(), f"invalid JSON: {exc}"[:300]))
            return
        if not isinstance(config, dict):
            ctx.report(MALFORMED.finding(artifact.location(), f"top level is {type(config).__name__}"))
            return
        analyse_keras_config(config, artifact, ctx, "config.json")
