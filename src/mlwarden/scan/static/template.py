"""Jinja chat templates: server-side template injection (SSTI) found by parsing, never rendering.

Chat templates travel inside model files (GGUF ``tokenizer.chat_template``, ``tokenizer_config.json``)
and are rendered by loaders such as llama-cpp-python (CVE-2024-34359) or litellm (CVE-2024-2952) —
sometimes in a non-sandboxed Jinja environment, where ``{{ cycler.__init__.__globals__.os.popen(..) }}``
runs a shell command. Rendering a template to find out is exactly the attack, so the template is only
*parsed* by Jinja's own parser and its syntax tree is walked.

The walk looks for what no benign chat template needs: dunder or private attribute names (directly,
through ``|attr``, ``map(attribute=...)`` or subscripts — Jinja's ``getitem`` falls back to
``getattr``), names built at render time from fragments (``'__cla' ~ 'ss__'``, ``'%c'|format(95)``,
``dict(__class__=1)|join``), calls to process/file/import functions, ``str.format`` fields that
traverse attributes, and web-framework globals (``request``, ``config``). Benign templates loop,
branch, call ``raise_exception``, use ``namespace()`` for loop state and ``tojson`` — none of which is
flagged.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, TemplateSyntaxError, nodes
from jinja2.ext import Extension
from jinja2.parser import Parser

from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Confidence, Rule, Severity, rule
from mlwarden.scan.context import INCOMPLETE
from mlwarden.scan.static.base import Handler

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

_REMEDIATION = (
    "Do not load this model with a loader that renders its chat template outside a sandbox; "
    "replace the template with a reviewed one (or render with jinja2.sandbox.ImmutableSandboxed"
    "Environment) before use."
)

SSTI_INTERNALS = rule(
    "MLW-TPL-001",
    "Chat template reaches Python internals (template injection)",
    Severity.CRITICAL,
    cwe=1336,
    description="The template walks dunder or interpreter-internal attributes (__class__, __globals__, "
    "__builtins__, __subclasses__, f_locals...). Rendered by a non-sandboxed Jinja environment this reaches "
    "os/builtins and runs arbitrary code (CVE-2024-34359, CVE-2024-2952). No chat template needs it.",
    remediation=_REMEDIATION,
)
SSTI_DANGEROUS = rule(
    "MLW-TPL-002",
    "Chat template calls dangerous functions or private attributes",
    Severity.HIGH,
    cwe=1336,
    description="The template calls process, file, network or import functions (popen, system, open, "
    "import_module...), reaches module objects (os, subprocess, sys), private attributes, or uses "
    "str.format fields that traverse attributes. Chat templates only format messages.",
    remediation=_REMEDIATION,
)
SSTI_SUSPICIOUS = rule(
    "MLW-TPL-003",
    "Chat template uses constructs that cannot be shown safe",
    Severity.MEDIUM,
    cwe=1336,
    description="Attribute names computed at render time, characters built from code points, object "
    "representations turned into strings, dunder fragments, web-framework globals or template "
    "includes: the usual building blocks of obfuscated injection payloads, unknown to benign templates.",
    remediation="Review the template by hand before loading the model with a non-sandboxed renderer.",
    confidence=Confidence.MEDIUM,
)
UNUSUAL_CALL = rule(
    "MLW-TPL-004",
    "Chat template calls an unusual method",
    Severity.LOW,
    cwe=None,
    description="A method outside the string/dict/list methods chat templates normally use is called. "
    "Not dangerous by itself; listed so that a reviewer can check it.",
    remediation="Check what object the method is called on.",
    confidence=Confidence.LOW,
)
UNPARSEABLE = rule(
    "MLW-TPL-005",
    "Chat template does not parse",
    Severity.LOW,
    cwe=None,
    description="Jinja cannot parse the template, so a loader rendering it fails before running any of "
    "it (nothing executes). A loader with other Jinja extensions might still parse it, so the raw text is "
    "also searched for injection tokens (MLW-TPL-006).",
    remediation="Fix or replace the template; the model's chat formatting is broken as shipped.",
)
UNPARSEABLE_TOKENS = rule(
    "MLW-TPL-006",
    "Unparseable chat template contains injection tokens",
    Severity.HIGH,
    cwe=1336,
    description="The template could not be parsed, and its raw text contains dunder names or process/"
    "import functions. A loader with a different Jinja version or extensions may parse and run it.",
    remediation=_REMEDIATION,
    confidence=Confidence.MEDIUM,
)

_DUNDER = re.compile(r"^__\w+__$")
_FRAGMENT = re.compile(r"__[A-Za-z]|[A-Za-z]__(?!\w)")
_FORMAT_TRAVERSAL = re.compile(r"\{[^{}]*?(?:\.|\[)[^{}]*\}")
_FORMAT_DUNDER = re.compile(r"\{[^{}]*?(?:\._|\[_)[^{}]*\}")
_TEXT_TOKENS = re.compile(r"__\w+__|\bpopen\b|\bsubprocess\b|\bimport_module\b|\bos\.system\b")
_MAX_FOLD = 10_000  # longest string we constant-fold (guards against '_' * 10**9)
_MAX_HITS = 20

#: Attributes that are interpreter internals without dunder spelling.
_PY_INTERNALS = frozenset(
    {
        "func_globals",
        "func_code",
        "func_closure",
        "func_defaults",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_back",
        "f_code",
        "gi_frame",
        "gi_code",
        "cr_frame",
        "cr_code",
        "ag_frame",
        "ag_code",
        "tb_frame",
        "tb_next",
        "co_code",
        "co_consts",
        "im_func",
        "im_self",
        "mro",
    }
)
#: Attribute / key names that are module objects an injection wants to reach.
_MODULES = frozenset(
    {
        "os",
        "subprocess",
        "sys",
        "builtins",
        "importlib",
        "posix",
        "nt",
        "pty",
        "socket",
        "shutil",
        "ctypes",
        "pickle",
        "marshal",
        "environ",
        "modules",
    }
)
#: Method or function names whose call means process, file, network or import access.
_DANGEROUS_CALLS = frozenset(
    {
        "popen",
        "system",
        "spawnv",
        "spawnl",
        "spawnlp",
        "spawnvp",
        "execv",
        "execl",
        "execvp",
        "execlp",
        "fork",
        "kill",
        "import_module",
        "eval",
        "exec",
        "compile",
        "getattr",
        "setattr",
        "delattr",
        "open",
        "check_output",
        "check_call",
        "Popen",
        "run",
        "call",
        "getoutput",
        "getstatusoutput",
        "load",
        "loads",
        "remove",
        "unlink",
        "rmdir",
        "rmtree",
        "urlopen",
        "urlretrieve",
        "connect",
        "create_connection",
        "getenv",
        "putenv",
        "load_module",
        "exec_module",
        "globals",
        "locals",
        "vars",
        "breakpoint",
        "input",
        "read",
        "write",
        "mkdir",
        "makedirs",
        "chmod",
        "listdir",
        "walk",
    }
)
#: Free names that are Python builtins/modules; Jinja does not define them, a hostile loader might.
_DANGEROUS_NAMES = frozenset(
    {"os", "subprocess", "sys", "eval", "exec", "open", "getattr", "globals", "builtins", "importlib", "compile"}
)
#: Jinja/Flask globals that expose Python objects (their attributes lead to __globals__).
_GADGETS = frozenset({"cycler", "joiner", "namespace", "lipsum", "range", "dict", "self"})
_WEB_GLOBALS = frozenset({"request", "config", "url_for", "get_flashed_messages"})
#: Methods benign chat templates call (on strings, dicts, lists, loop, datetime).
_BENIGN_METHODS = frozenset(
    {
        "strip",
        "lstrip",
        "rstrip",
        "split",
        "rsplit",
        "splitlines",
        "startswith",
        "endswith",
        "lower",
        "upper",
        "title",
        "capitalize",
        "casefold",
        "replace",
        "items",
        "keys",
        "values",
        "get",
        "append",
        "extend",
        "insert",
        "pop",
        "join",
        "count",
        "index",
        "find",
        "rfind",
        "isdigit",
        "isalpha",
        "isalnum",
        "isspace",
        "isupper",
        "islower",
        "isnumeric",
        "cycle",
        "changed",
        "next",
        "reset",
        "update",
        "strftime",
        "isoformat",
        "zfill",
        "center",
        "ljust",
        "rjust",
        "partition",
        "rpartition",
        "copy",
        "setdefault",
        "removeprefix",
        "removesuffix",
        "swapcase",
        "format",
    }
)
#: Filters returning generators, whose ``|string`` is an object repr (``()|select|string``: "<generator...").
_GENERATOR_FILTERS = frozenset({"select", "reject", "map", "selectattr", "rejectattr", "batch", "slice", "attr"})
#: Filters that take an attribute path (``attribute=`` keyword, or first positional for some).
_ATTRIBUTE_FILTERS = {
    "map": None,
    "selectattr": 0,
    "rejectattr": 0,
    "groupby": 0,
    "sort": None,
    "sum": None,
    "unique": None,
    "min": None,
    "max": None,
}


class _GenerationExtension(Extension):
    """Parse Hugging Face's ``{% generation %}...{% endgeneration %}`` block (used by benign templates)."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _environment() -> Environment:
    # Parsing only: the environment never renders, so its (unsandboxed) runtime is irrelevant. The
    # extensions are the ones real loaders enable (transformers: loopcontrols + generation).
    return Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do", _GenerationExtension])


@dataclass(frozen=True, slots=True)
class _Hit:
    rule: Rule
    line: int
    reason: str


class _Analyser:
    """One walk over a parsed template, collecting hits."""

    def __init__(self, ctx: ScanContext) -> None:
        self.ctx = ctx
        self.hits: list[_Hit] = []
        self.consts: dict[str, Any] = {}
        self.local_names: set[str] = set()
        self.consumed: set[int] = set()  # ids of Const nodes already judged in an attribute position
        self.visited = 0

    def hit(self, r: Rule, node: nodes.Node, reason: str) -> None:
        self.hits.append(_Hit(r, getattr(node, "lineno", 0) or 0, reason))

    # -- constant folding: what string would this expression produce? --------------------------------
    def fold(self, node: nodes.Node) -> Any:
        """The value of ``node`` when it is built only from constants (else ``None``)."""
        value = self._fold(node)
        if isinstance(value, str) and len(value) > _MAX_FOLD:
            return None
        return value

    def _fold(self, node: nodes.Node) -> Any:  # noqa: C901 - one case per node type reads best here
        if isinstance(node, nodes.Const):
            return node.value if isinstance(node.value, str | int) else None
        if isinstance(node, nodes.Name):
            return self.consts.get(node.name)
        if isinstance(node, nodes.List | nodes.Tuple):
            items = [self.fold(x) for x in node.items]
            return None if any(x is None for x in items) else items
        if isinstance(node, nodes.Concat):
            parts = [self.fold(x) for x in node.nodes]
            return None if any(p is None for p in parts) else "".join(str(p) for p in parts)
        if isinstance(node, nodes.Add):
            left, right = self.fold(node.left), self.fold(node.right)
            return left + right if isinstance(left, str) and isinstance(right, str) else None
        if isinstance(node, nodes.Mul):
            left, right = self.fold(node.left), self.fold(node.right)
            if isinstance(left, str) and isinstance(right, int) and len(left) * right <= _MAX_FOLD:
                return left * right
            return None
        if isinstance(node, nodes.Mod):
            return self._printf(node, self.fold(node.left), self.fold(node.right))
        if isinstance(node, nodes.Getitem):
            base, key = self.fold(node.node), self.fold(node.arg)
            if isinstance(base, str | list) and isinstance(key, int) and -len(base) <= key < len(base):
                return base[key]
            return None
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "dict":
            return {kw.key: None for kw in node.kwargs} if not node.args else None
        if isinstance(node, nodes.Filter) and node.node is not None:
            return self._fold_filter(node)
        return None

    def _printf(self, node: nodes.Node, fmt: Any, args: Any) -> Any:
        if not isinstance(fmt, str) or args is None:
            return None
        try:
            return fmt % (tuple(args) if isinstance(args, list) else args)
        except (TypeError, ValueError, OverflowError):
            return None

    def _fold_filter(self, node: nodes.Filter) -> Any:
        assert node.node is not None
        value = self.fold(node.node)
        name = node.name
        if name == "format":
            args = [self.fold(a) for a in node.args]
            return self._printf(node, value, None if any(a is None for a in args) else args)
        if value is None:
            return None
        if name == "join":
            sep = self.fold(node.args[0]) if node.args else ""
            items = list(value) if isinstance(value, dict | list | str) else None
            if items is None or not isinstance(sep, str) or any(not isinstance(i, str | int) for i in items):
                return None
            return sep.join(str(i) for i in items)
        simple: dict[str, Callable[[str], str]] = {
            "lower": str.lower,
            "upper": str.upper,
            "title": str.title,
            "capitalize": str.capitalize,
            "trim": str.strip,
            "string": str,
        }
        if name in simple and isinstance(value, str):
            return simple[name](value)
        if name == "reverse" and isinstance(value, str | list):
            return value[::-1]
        if name in ("first", "last") and isinstance(value, str | list | dict) and value:
            seq = list(value)
            return seq[0] if name == "first" else seq[-1]
        if name == "list" and isinstance(value, str | dict):
            return list(value)
        if name == "replace" and isinstance(value, str) and len(node.args) >= 2:
            old, new = self.fold(node.args[0]), self.fold(node.args[1])
            if isinstance(old, str) and isinstance(new, str) and old:
                return value.replace(old, new)
        return None

    # -- judging names ----------------------------------------------------------------------------------
    def judge_name(self, name: str, node: nodes.Node, how: str) -> None:
        """Judge an attribute name reached through ``how`` (attribute, subscript, |attr...)."""
        for part in name.split(".") if how.endswith("attribute path") else [name]:
            if _DUNDER.match(part) or part in _PY_INTERNALS:
                self.hit(SSTI_INTERNALS, node, f"{how} '{part}' reaches Python internals")
            elif part.startswith("_"):
                self.hit(SSTI_DANGEROUS, node, f"{how} '{part}' is a private attribute")
            elif part in _MODULES:
                self.hit(SSTI_DANGEROUS, node, f"{how} '{part}' reaches a module object")

    def _consume(self, target: nodes.Node) -> None:
        """Mark the literals that built a judged name, so they are not judged again as bare strings."""
        self.consumed.add(id(target))
        self.consumed.update(id(c) for c in target.find_all(nodes.Const))

    def judge_computed(self, node: nodes.Node, target: nodes.Node, how: str) -> None:
        value = self.fold(target)
        if isinstance(value, str):
            self._consume(target)
            self.judge_name(value, node, how)
        elif value is None:
            self.hit(SSTI_SUSPICIOUS, node, f"{how} computed at render time")

    # -- the walk ---------------------------------------------------------------------------------------
    def walk(self, template: nodes.Template) -> None:
        for n in template.find_all(nodes.Name):
            if n.ctx in ("store", "param"):
                self.local_names.add(n.name)
        for m in template.find_all(nodes.Macro):
            self.local_names.update(a.name for a in m.args)
        self.visit(template)

    def visit(self, node: nodes.Node) -> None:
        self.visited += 1
        if self.visited % 4096 == 0:
            self.ctx.check_time()
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is not None:
            method(node)
        for child in node.iter_child_nodes():
            self.visit(child)

    def visit_Assign(self, node: nodes.Assign) -> None:  # noqa: N802 - dispatch on node class name
        if isinstance(node.target, nodes.Name):
            value = self.fold(node.node)
            if value is not None:
                self.consts[node.target.name] = value

    def visit_Getattr(self, node: nodes.Getattr) -> None:  # noqa: N802
        self.judge_name(node.attr, node, "attribute")
        base = node.node
        if isinstance(base, nodes.Name) and base.name in _GADGETS and base.name not in self.local_names:
            self.hit(SSTI_SUSPICIOUS, node, f"attribute '{node.attr}' of the global '{base.name}'")

    def visit_Getitem(self, node: nodes.Getitem) -> None:  # noqa: N802
        value = self.fold(node.arg)
        if isinstance(value, str):
            self._consume(node.arg)
            self.judge_name(value, node, "subscript")

    def visit_Filter(self, node: nodes.Filter) -> None:  # noqa: N802
        if node.name == "format" and node.node is not None:
            self._judge_printf(node, node.node)
        self._judge_callable_filter(node)

    def visit_Mod(self, node: nodes.Mod) -> None:  # noqa: N802
        self._judge_printf(node, node.left)

    def _judge_printf(self, node: nodes.Node, fmt_node: nodes.Node) -> None:
        fmt = self.fold(fmt_node)
        if isinstance(fmt, str) and re.search(r"%[-+ #0-9.]*c", fmt):
            self.hit(SSTI_SUSPICIOUS, node, "builds characters from code points with '%c' formatting")

    def visit_Test(self, node: nodes.Test) -> None:  # noqa: N802
        self._judge_callable_filter(node)

    def _judge_callable_filter(self, node: nodes.Filter | nodes.Test) -> None:
        name = node.name
        if name == "attr" and node.args:
            self.judge_computed(node, node.args[0], "|attr name")
        if name in ("map", "select", "reject") and len(node.args) >= 2 and self.fold(node.args[0]) == "attr":
            self.judge_computed(node, node.args[1], f"{name}('attr') name")
        if name in _ATTRIBUTE_FILTERS:
            for kw in node.kwargs:
                if kw.key == "attribute":
                    self.judge_computed(node, kw.value, f"{name}(attribute=) attribute path")
            position = _ATTRIBUTE_FILTERS[name]
            if position is not None and len(node.args) > position:
                self.judge_computed(node, node.args[position], f"{name}() attribute path")
        inner = getattr(node, "node", None)
        gadget = isinstance(inner, nodes.Name) and inner.name in _GADGETS and inner.name not in self.local_names
        generator = isinstance(inner, nodes.Filter) and inner.name in _GENERATOR_FILTERS
        if name == "string" and (generator or gadget):
            self.hit(SSTI_SUSPICIOUS, node, "turns an object's representation into a string (character harvesting)")

    def visit_Call(self, node: nodes.Call) -> None:  # noqa: N802
        func = node.node
        if isinstance(func, nodes.Getattr):
            method = func.attr
            if method in ("format", "format_map"):
                fmt = self.fold(func.node)
                if isinstance(fmt, str) and _FORMAT_TRAVERSAL.search(fmt):
                    self.hit(SSTI_DANGEROUS, node, "str.format field traverses attributes or items")
            if method in _DANGEROUS_CALLS:
                self.hit(SSTI_DANGEROUS, node, f"calls '{method}()'")
            elif method not in _BENIGN_METHODS and not method.startswith("_") and method not in _PY_INTERNALS:
                self.hit(UNUSUAL_CALL, node, f"calls method '{method}()'")
        elif (
            isinstance(func, nodes.Name)
            and func.name in _DANGEROUS_CALLS | _DANGEROUS_NAMES
            and func.name not in self.local_names
        ):
            self.hit(SSTI_DANGEROUS, node, f"calls the global '{func.name}()'")
        for kw in node.kwargs:
            if _FRAGMENT.search(kw.key):
                self.hit(SSTI_SUSPICIOUS, node, f"keyword argument '{kw.key}' spells a dunder fragment")

    def visit_Name(self, node: nodes.Name) -> None:  # noqa: N802
        if node.ctx != "load" or node.name in self.local_names:
            return
        if _DUNDER.match(node.name):
            self.hit(SSTI_INTERNALS, node, f"global '{node.name}' is a Python internal")
        elif node.name in _WEB_GLOBALS:
            self.hit(SSTI_SUSPICIOUS, node, f"references the web-framework global '{node.name}'")
        elif node.name in _DANGEROUS_NAMES:
            self.hit(SSTI_SUSPICIOUS, node, f"references the Python builtin/module name '{node.name}'")

    def visit_Const(self, node: nodes.Const) -> None:  # noqa: N802
        if not isinstance(node.value, str) or id(node) in self.consumed:
            return
        text = node.value
        if _DUNDER.match(text):
            self.hit(SSTI_DANGEROUS, node, f"string literal '{text}' names a Python internal")
        elif _FORMAT_DUNDER.search(text):
            self.hit(SSTI_DANGEROUS, node, "string literal is a format string reaching private attributes")
        elif len(text) <= 64 and _FRAGMENT.search(text):
            self.hit(SSTI_SUSPICIOUS, node, f"string literal {text!r} holds a dunder fragment")

    def visit_Import(self, node: nodes.Import) -> None:  # noqa: N802
        self.hit(SSTI_SUSPICIOUS, node, "imports another template (read through the loader's environment)")

    visit_FromImport = visit_Import  # noqa: N815
    visit_Include = visit_Import  # noqa: N815
    visit_Extends = visit_Import  # noqa: N815


def _report(hits: list[_Hit], artifact: Artifact, ctx: ScanContext, origin: str, offset: int | None) -> None:
    grouped: dict[str, list[_Hit]] = defaultdict(list)
    for h in hits:
        if h not in grouped[h.rule.id]:
            grouped[h.rule.id].append(h)
    for group in grouped.values():
        r = group[0].rule
        reasons = [f"line {h.line}: {h.reason}" for h in group[:_MAX_HITS]]
        more = f" (+{len(group) - 5} more)" if len(group) > 5 else ""
        evidence = f"{origin}: " + "; ".join(reasons[:5]) + more
        ctx.report(
            r.finding(
                artifact.location(offset),
                evidence,
                template=origin,
                reasons=reasons,
                lines=sorted({h.line for h in group}),
            )
        )


def analyse_template(source: str, artifact: Artifact, ctx: ScanContext, origin: str, offset: int | None) -> None:
    """Parse ``source`` as a Jinja template (never render it) and report injection findings.

    Args:
        source: the template text.
        artifact: the artifact the template came from (findings are located in it).
        ctx: the scan context.
        origin: where in the artifact the template sits (a GGUF key, ``chat_template[tool_use]``...).
        offset: byte offset of the template in the artifact, when known.
    """
    if len(source) > ctx.limits.max_text_size:
        ctx.report(
            INCOMPLETE.finding(
                artifact.location(offset),
                f"{origin}: template of {len(source)} characters exceeds max_text_size {ctx.limits.max_text_size}",
                limit="max_text_size",
            )
        )
        return
    try:
        tree = _environment().parse(source)
    except TemplateSyntaxError as exc:
        ctx.report(
            UNPARSEABLE.finding(
                artifact.location(offset), f"{origin}: line {exc.lineno}: {exc.message}", template=origin
            )
        )
        tokens = sorted(set(_TEXT_TOKENS.findall(source)))
        if tokens:
            ctx.report(
                UNPARSEABLE_TOKENS.finding(
                    artifact.location(offset),
                    f"{origin}: raw text contains " + ", ".join(tokens[:10]),
                    template=origin,
                    tokens=tokens[:20],
                )
            )
        return
    except RecursionError:
        ctx.report(
            INCOMPLETE.finding(
                artifact.location(offset), f"{origin}: template nested too deeply to parse", limit="recursion"
            )
        )
        return
    analyser = _Analyser(ctx)
    try:
        analyser.walk(tree)
    except RecursionError:
        ctx.report(
            INCOMPLETE.finding(
                artifact.location(offset), f"{origin}: template nested too deeply to analyse", limit="recursion"
            )
        )
    _report(analyser.hits, artifact, ctx, origin, offset)


def read_text(artifact: Artifact, ctx: ScanContext) -> str:
    """Read a whole text artifact, bounded by ``max_text_size`` (shared with the HF JSON handlers).

    Raises:
        LimitExceeded: the artifact is larger than ``max_text_size``.
    """
    limit = ctx.limits.max_text_size
    if artifact.size is not None and artifact.size > limit:
        raise LimitExceeded("max_text_size", f"{artifact.size} bytes > {limit}")
    with artifact.open() as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise LimitExceeded("max_text_size", f"more than {limit} bytes")
    return data.decode("utf-8", errors="replace").lstrip("\ufeff")


class TemplateHandler(Handler):
    """A standalone Jinja template file (``chat_template.jinja``, ``*.jinja``)."""

    formats = (Format.TEMPLATE,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Parse the whole file as a template and report injection findings."""
        analyse_template(read_text(artifact, ctx), artifact, ctx, artifact.name, None)
