"""TorchScript code (``code/`` members of a ``torch.jit.save`` archive).

TorchScript is not run by CPython: ``torch.jit.load`` compiles it, and it can only call what the runtime
registers — built-in ``aten``/``prim`` operators and *custom operators* registered by native libraries that
were loaded into the process. A reference to another operator namespace means the model needs (and will
call into) such a library; a few built-ins touch the file system.

The code is Python syntax, so it is parsed with :mod:`ast` (never compiled or run) and every reference is
judged by its resolved dotted name: attribute chains are walked back to their root name, ``getattr(x,
"name")`` with a constant name counts as ``x.name``, and simple assignments (``f = torch.save``,
``o = torch.ops.myns``) are followed, flow-insensitively (a name stands for every value ever assigned
to it), so spacing, aliasing and ``getattr`` spellings resolve to the same name. What cannot be resolved
(``getattr`` with a computed name, ``eval``, ``__import__``, dunder attributes) is reported as such, and
code that does not parse is reported rather than passed as clean.
"""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING

from mlwarden.core.findings import Rule, Severity, rule

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

CUSTOM_OP = rule(
    "MLW-TS-001",
    "TorchScript calls a custom operator",
    Severity.MEDIUM,
    cwe=829,
    description="The scripted code calls an operator (or uses a class) outside PyTorch's built-in "
    "namespaces; it runs native code from a library the loading process must have loaded.",
    remediation="Check which library provides the operator and whether you trust it.",
)
FILE_OP = rule(
    "MLW-TS-002",
    "TorchScript reads or writes files",
    Severity.HIGH,
    cwe=73,
    description="The scripted code calls a built-in operator that reads or writes files (or loads a native "
    "library) when the model runs.",
    remediation="Model code should not touch the file system; inspect the archive's code/ folder.",
)
UNPARSEABLE = rule(
    "MLW-TS-003",
    "TorchScript code does not parse",
    Severity.MEDIUM,
    cwe=None,
    description="A code/ member of the TorchScript archive is not valid Python syntax, so it could not be "
    "analysed. torch.jit.save never writes such code; the archive was edited by hand or is damaged.",
    remediation="Inspect the archive's code/ folder, or re-export the model from trusted source code.",
)
DYNAMIC = rule(
    "MLW-TS-004",
    "TorchScript code uses dynamic lookups",
    Severity.HIGH,
    cwe=470,
    description="The scripted code looks names up at run time (getattr with a computed name, eval/exec, "
    "__import__, globals()) or reaches dunder attributes (__class__, __globals__...). torch.jit.save never "
    "writes such code; it hides what the model calls.",
    remediation="Inspect the archive's code/ folder; do not load the model until the lookup is explained.",
)

#: Operator namespaces libtorch registers itself (``ops.<ns>.<op>``).
_BUILTIN_NAMESPACES = frozenset(
    "aten prim prims quantized _quantized quantized_decomposed quantization prepacked _caffe2 profiler cuda "
    "mkldnn mkldnn_prepacked mkl onednn sparse _nested".split()
)
#: ``torch.classes.<ns>`` namespaces registered by libtorch itself.
_BUILTIN_CLASSES = _BUILTIN_NAMESPACES | {"rnn", "xnnpack", "dist_c10d", "c10d", "profiling"}
#: Operators (``ns.op``) and ``torch.<name>`` functions that read or write files or load native code.
_FILE_OPS = frozenset({"aten.from_file", "aten.save", "aten.load", "debugprims.load_tensor"})
_TORCH_FILE_FUNCS = frozenset({"from_file", "save", "load", "load_library"})
#: aten/prim operators spelled as dunders (``torch.__isnot__(x, None)``), written by torch.jit.save.
_OP_DUNDERS = frozenset(
    {"__and__", "__contains__", "__getitem__", "__iand__", "__ilshift__", "__ior__", "__irshift__", "__is__"}
    | {"__isnot__", "__ixor__", "__lshift__", "__not__", "__or__", "__rshift__", "__xor__"}
)
#: Dunder names torch.jit.save writes (module root, class-body declarations).
_NAME_DUNDERS = frozenset({"__torch__", "__annotations__", "__parameters__", "__buffers__", "__constants__"})
_DYNAMIC_NAMES = frozenset({"eval", "exec", "compile", "__import__", "globals", "locals", "vars", "breakpoint"})
_LOOKUP_NAMES = frozenset({"getattr", "setattr", "delattr"})
_DUNDER = re.compile(r"^__\w+__$")
_CODE_MEMBER = re.compile(r"(^|/)code/.+\.py$")
_MAX_PARTS = 64  # resolved names longer than this are cut (bounds `x = x.a` chains)
_MAX_EXPANSIONS = 50_000  # alias-following steps per file; beyond it, the aliases are reported


def is_torchscript_code(artifact: Artifact) -> bool:
    """Whether the artifact is a ``code/**.py`` member of an archive (TorchScript layout)."""
    return len(artifact.chain) > 1 and bool(_CODE_MEMBER.search(artifact.chain[-1]))


def _canonical(name: str) -> str:
    """``torch.ops.x`` -> ``ops.x``, ``__torch__.torch.classes`` -> ``torch.classes``, ``builtins.eval`` -> ``eval``."""
    for prefix in ("__torch__.", "builtins."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name[len("torch.") :] if name.startswith("torch.ops.") else name


def _const_str(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _join(base: str, attr: str) -> str:
    """``base.attr`` in canonical form, cut to ``_MAX_PARTS`` parts (so ``x = x.a`` chains end)."""
    return _canonical(".".join(f"{_canonical(base)}.{attr}".split(".")[:_MAX_PARTS]))


def _dotted(node: ast.expr) -> str | None:
    """The dotted name ``node`` spells as written (``a.b.c``, ``getattr(a, "b")``), or None."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            attr = _const_str(node.args[1]) if len(node.args) >= 2 else None
            if attr is None:
                return None
            parts.append(attr)
            node = node.args[0]
        elif isinstance(node, ast.Name):
            return ".".join([node.id, *parts[::-1][: _MAX_PARTS - 1]])
        else:
            return None


class _Analyser:
    """Alias collection, then one judging pass over every node of the module."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.nodes = list(ast.walk(tree))
        self.raw: dict[str, set[str]] = {}  # name -> dotted names assigned to it, as written
        self.expanded: dict[str, set[str]] = {}
        self.memo: dict[int, set[str]] = {}
        self.budget = _MAX_EXPANSIONS
        self.hits: dict[str, dict[str, int]] = {r.id: {} for r in (CUSTOM_OP, FILE_OP, DYNAMIC)}

    def resolve(self, node: ast.expr) -> set[str]:
        """Every dotted name ``node`` may stand for (empty when it is not a name or attribute chain)."""
        if id(node) in self.memo:
            return self.memo[id(node)]
        chain: list[ast.Attribute] = []
        root = node
        while isinstance(root, ast.Attribute):  # iterative: attribute chains can be long
            chain.append(root)
            root = root.value
        names: set[str] = set()
        if isinstance(root, ast.Name):
            names = self.expand(root.id)
        elif isinstance(root, ast.Call) and len(root.args) >= 2 and "getattr" in self.resolve(root.func):
            attr = _const_str(root.args[1])
            names = set() if attr is None else {_join(b, attr) for b in self.resolve(root.args[0])}
        for link in reversed(chain):
            names = {_join(b, link.attr) for b in names}
            self.memo[id(link)] = names
        self.memo[id(node)] = names
        return names

    def expand(self, name: str) -> set[str]:
        """``name`` and every dotted name it was assigned, followed through chains of assignments."""
        if name in self.expanded:
            return self.expanded[name]
        seen, todo = {name}, [name]
        while todo and self.budget > 0:
            root, dot, rest = todo.pop().partition(".")
            for value in self.raw.get(root, ()):
                new = _join(value, rest) if dot else _canonical(value)
                self.budget -= 1
                if new not in seen:
                    seen.add(new)
                    todo.append(new)
        if self.budget <= 0:
            self.hit(DYNAMIC, "too many aliases to resolve", self.tree)
        self.expanded[name] = seen
        return seen

    # -- aliases ------------------------------------------------------------------------------------------
    def collect(self) -> None:
        """Remember what simple assignments (``f = torch.save``, ``a, b = x, y``) and imports bind."""
        for node in self.nodes:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    self._bind(target, node.value)
            elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
                self._bind(node.target, node.value)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                module = getattr(node, "module", None)
                for a in node.names:
                    full = f"{module}.{a.name}" if module else a.name
                    self.raw.setdefault(a.asname or a.name.split(".")[0], set()).add(
                        full if a.asname or module else a.name.split(".")[0]
                    )

    def _bind(self, target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Tuple | ast.List) and isinstance(value, ast.Tuple | ast.List):
            for t, v in zip(target.elts, value.elts, strict=False):
                self._bind(t, v)
        elif isinstance(target, ast.Name):
            dotted = _dotted(value)
            if dotted is not None and dotted != target.id:
                self.raw.setdefault(target.id, set()).add(dotted)

    # -- judging ------------------------------------------------------------------------------------------
    def hit(self, r: Rule, what: str, node: ast.AST) -> None:
        self.hits[r.id].setdefault(what, getattr(node, "lineno", 0))

    def judge(self, name: str, node: ast.AST) -> None:
        """Judge one resolved dotted name."""
        parts = _canonical(name).split(".")
        if parts[0] == "ops" and len(parts) >= 3:
            if f"{parts[1]}.{parts[2]}" in _FILE_OPS:
                self.hit(FILE_OP, f"ops.{parts[1]}.{parts[2]}", node)
            elif parts[1] not in _BUILTIN_NAMESPACES:
                self.hit(CUSTOM_OP, f"{parts[1]}::{parts[2]}", node)
        elif parts[0] == "ops" and parts[1:] == ["load_library"]:
            self.hit(FILE_OP, "torch.ops.load_library", node)
        elif parts[0] == "torch" and len(parts) >= 2:
            if parts[-1] in _TORCH_FILE_FUNCS:
                self.hit(FILE_OP, ".".join(parts), node)
            elif parts[1] == "classes" and len(parts) >= 4 and parts[2] not in _BUILTIN_CLASSES:
                self.hit(CUSTOM_OP, f"{parts[2]}::{parts[3]} (class)", node)
        elif len(parts) == 1 and parts[0] in _DYNAMIC_NAMES:
            self.hit(DYNAMIC, f"{parts[0]}()", node)
        elif len(parts) == 1 and parts[0] == "open":
            self.hit(FILE_OP, "open()", node)

    def _judge_dunder(self, base: ast.expr, attr: str, node: ast.AST) -> None:
        if not _DUNDER.match(attr):
            return
        bases = {_canonical(b) for b in self.resolve(base)}
        if attr in _OP_DUNDERS and bases and bases <= {"torch", "ops.aten", "ops.prim"}:
            return
        self.hit(DYNAMIC, f"attribute {attr}", node)

    def run(self) -> None:
        """Collect aliases, then judge every name, attribute, getattr call and dunder."""
        self.collect()
        called = {id(n.func) for n in self.nodes if isinstance(n, ast.Call)}
        for node in self.nodes:
            if isinstance(node, ast.Name):
                if _DUNDER.match(node.id) and node.id not in _NAME_DUNDERS:
                    self.hit(DYNAMIC, f"name {node.id}", node)
                if node.id in _LOOKUP_NAMES - {"getattr"} or (node.id == "getattr" and id(node) not in called):
                    self.hit(DYNAMIC, f"{node.id}()", node)
                for name in self.resolve(node):
                    self.judge(name, node)
            elif isinstance(node, ast.Attribute):
                self._judge_dunder(node.value, node.attr, node)
                for name in self.resolve(node):
                    self.judge(name, node)
            elif isinstance(node, ast.Call) and "getattr" in self.resolve(node.func):
                attr = _const_str(node.args[1]) if len(node.args) >= 2 else None
                if attr is None:
                    self.hit(DYNAMIC, "getattr() with a computed name", node)
                else:
                    self._judge_dunder(node.args[0], attr, node)
                    for name in self.resolve(node):
                        self.judge(name, node)


def analyse_torchscript(source: str, artifact: Artifact, ctx: ScanContext) -> None:
    """Report custom-operator, file-system and dynamic-lookup calls in TorchScript source."""
    try:
        tree = ast.parse(source)
        analyser = _Analyser(tree)
        ctx.check_time()
        analyser.run()
    except (SyntaxError, ValueError) as exc:
        where = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, SyntaxError) else str(exc)
        ctx.report(UNPARSEABLE.finding(artifact.location(), where))
        return
    except (RecursionError, MemoryError):
        ctx.report(UNPARSEABLE.finding(artifact.location(), "code nested too deeply to analyse"))
        return
    for r in (CUSTOM_OP, FILE_OP, DYNAMIC):
        hits = analyser.hits[r.id]
        if not hits:
            continue
        items = sorted(hits, key=lambda k: (hits[k], k))
        lines = [f"line {hits[k]}: {k}" for k in items]
        evidence = ", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "")
        key = "operators" if r is CUSTOM_OP else "calls"
        ctx.report(r.finding(artifact.location(), evidence, details={key: items[:50], "lines": lines[:50]}))
