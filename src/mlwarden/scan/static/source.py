"""Python source shipped beside a model (Hugging Face ``trust_remote_code`` modules and similar).

Such a file *is* code: ``transformers`` imports it when the model is loaded with
``trust_remote_code=True``, and everything at module level runs right then. It is parsed with
:mod:`ast` (never imported or executed) and the calls that reach beyond building a network are
reported: process execution, ``eval``/``exec``, sockets and HTTP, ``ctypes``, and deserialisers that
are themselves code execution (``pickle.load``, ``torch.load`` without ``weights_only=True``).
Aliases are followed (``import subprocess as sp; sp.run``, ``from os import system``). A plain
modeling file — ``torch.nn`` classes, ``math``, ``typing`` — produces only an INFO summary.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from typing import TYPE_CHECKING

from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Confidence, Rule, Severity, rule
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.template import read_text
from mlwarden.scan.static.torchscript import analyse_torchscript, is_torchscript_code

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

EXECUTES = rule(
    "MLW-SRC-001",
    "Python source runs commands, dynamic code or network access",
    Severity.HIGH,
    cwe=94,
    description="The module calls process execution (os.system, subprocess), eval/exec, sockets, HTTP "
    "clients or ctypes. Model code needs none of these; loaded with trust_remote_code it runs with the "
    "user's rights (at import time when the call is at module level).",
    remediation="Read the module before loading the model with trust_remote_code, or load without it.",
)
RISKY = rule(
    "MLW-SRC-002",
    "Python source deserialises untrusted data or imports dynamically",
    Severity.MEDIUM,
    cwe=502,
    description="The module uses pickle/marshal/dill/joblib loading, torch.load without weights_only=True, "
    "dynamic imports, code objects or file deletion — each can be turned into code execution or damage.",
    remediation="Check what the call loads or deletes and where that data comes from.",
    confidence=Confidence.MEDIUM,
)
UNPARSEABLE = rule(
    "MLW-SRC-003",
    "Python source does not parse",
    Severity.LOW,
    cwe=None,
    description="The file is not valid Python 3 for this interpreter, so importing it fails before any of "
    "it runs; it could not be analysed.",
    remediation="Check which Python version the model's code targets.",
)
SUMMARY = rule(
    "MLW-SRC-004",
    "Python source analysed",
    Severity.INFO,
    cwe=None,
    description="Modules the source imports (for review of custom model code).",
    remediation="None needed.",
)

#: qualified-name prefixes -> rule. A trailing "." means "anything in the module".
_CALLS: dict[str, Rule] = {
    "os.system": EXECUTES,
    "os.popen": EXECUTES,
    "os.exec": EXECUTES,
    "os.spawn": EXECUTES,
    "os.posix_spawn": EXECUTES,
    "os.fork": EXECUTES,
    "pty.spawn": EXECUTES,
    "subprocess.": EXECUTES,
    "commands.": EXECUTES,
    "socket.": EXECUTES,
    "urllib.request.": EXECUTES,
    "urllib.urlopen": EXECUTES,
    "http.client.": EXECUTES,
    "requests.": EXECUTES,
    "httpx.": EXECUTES,
    "ctypes.": EXECUTES,
    "builtins.eval": EXECUTES,
    "builtins.exec": EXECUTES,
    "pickle.load": RISKY,
    "pickle.Unpickler": RISKY,
    "cPickle.load": RISKY,
    "_pickle.load": RISKY,
    "dill.load": RISKY,
    "cloudpickle.load": RISKY,
    "marshal.load": RISKY,
    "joblib.load": RISKY,
    "shelve.open": RISKY,
    "torch.load": RISKY,
    "importlib.import_module": RISKY,
    "builtins.__import__": RISKY,
    "builtins.compile": RISKY,
    "types.CodeType": RISKY,
    "types.FunctionType": RISKY,
    "shutil.rmtree": RISKY,
    "os.remove": RISKY,
    "os.unlink": RISKY,
    "os.rmdir": RISKY,
}
_BUILTINS = {"eval", "exec", "compile", "__import__"}
_MAX_LINES = 20


def _qualified(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    root = aliases.get(node.id)
    if root is None:
        if node.id in _BUILTINS and not parts:
            root = f"builtins.{node.id}"
        else:
            return None
    return ".".join([root, *reversed(parts)])


def _rule_for(name: str, call: ast.Call) -> Rule | None:
    """The rule a call to ``name`` falls under (prefix match: ``os.exec`` covers ``os.execvp``)."""
    for prefix, r in _CALLS.items():
        if name.startswith(prefix):
            if prefix == "torch.load" and any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in call.keywords
            ):
                return None
            return r
    return None


class _Visitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.imports: set[str] = set()
        self.hits: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.rules: dict[str, Rule] = {}
        self.depth = 0  # > 0 inside a function or class body (runs later, not at import)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.add(alias.name)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                root = alias.name.split(".")[0]
                self.aliases[root] = root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        self.imports.add(module)
        for alias in node.names:
            if alias.name != "*":
                self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"

    def _scoped(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scoped  # noqa: N815

    def visit_Call(self, node: ast.Call) -> None:
        name = _qualified(node.func, self.aliases)
        r = _rule_for(name, node) if name else None
        if r is not None and name is not None:
            when = "" if self.depth else " (at import time)"
            self.hits[r.id].append((node.lineno, f"line {node.lineno}: {name}(){when}"))
            self.rules[r.id] = r
        self.generic_visit(node)


class PythonSourceHandler(Handler):
    """Static review of Python source files found beside a model."""

    formats = (Format.PYTHON_SOURCE,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Parse with :mod:`ast` (never import) and report dangerous calls with their line numbers."""
        source = read_text(artifact, ctx)
        if is_torchscript_code(artifact):
            analyse_torchscript(source, artifact, ctx)
        try:
            tree = ast.parse(source, filename=artifact.name)
        except SyntaxError as exc:
            ctx.report(UNPARSEABLE.finding(artifact.location(), f"line {exc.lineno}: {exc.msg}"))
            return
        ctx.check_time()
        visitor = _Visitor()
        visitor.visit(tree)
        for rule_id, hits in visitor.hits.items():
            lines = [text for _, text in hits]
            more = f" (+{len(lines) - 5} more)" if len(lines) > 5 else ""
            ctx.report(
                visitor.rules[rule_id].finding(
                    artifact.location(),
                    "; ".join(lines[:5]) + more,
                    calls=lines[:_MAX_LINES],
                    lines=sorted({n for n, _ in hits})[:_MAX_LINES],
                )
            )
        if visitor.imports:
            ctx.report(
                SUMMARY.finding(
                    artifact.location(),
                    f"imports {sorted(visitor.imports)[:30]}",
                    imports=sorted(visitor.imports)[:100],
                )
            )
