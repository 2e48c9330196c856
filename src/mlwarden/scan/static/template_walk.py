"""The chat-template syntax-tree walk: constant folding of string expressions, then judging names.

Injection payloads hide attribute names by building them at render time (``'__cla' ~ 'ss__'``,
``'%c'|format(95)``, ``dict(__class__=1)|join``). :class:`TemplateAnalyser` folds expressions built
only from constants back to the string they would produce (bounded in length), and judges that string
like a literal attribute name; what cannot be folded is itself suspicious in an attribute position.

A subscript whose key cannot be folded is judged by how the key is made: keys that are data (``message[key]``
over a loop variable, ``messages[loop.index0 + 1]``) are what benign templates use and pass; keys the
template *builds* as strings at render time (``x[a ~ 'init' ~ b]``, a ``{% set %}`` variable, loop variable
or macro argument holding such a string) hide the name they reach and are reported, as are calls through a
subscript or any other expression (``x[k]()``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import nodes

from mlwarden.core.findings import Rule
from mlwarden.scan.static.template_rules import (
    ATTRIBUTE_FILTERS,
    BENIGN_METHODS,
    COMPUTED_LOOKUP,
    DANGEROUS_CALLS,
    DANGEROUS_NAMES,
    DUNDER,
    FORMAT_DUNDER,
    FORMAT_TRAVERSAL,
    FRAGMENT,
    GADGETS,
    GENERATOR_FILTERS,
    MODULES,
    MUTATING_METHODS,
    NUMERIC_FILTERS,
    PY_INTERNALS,
    SSTI_DANGEROUS,
    SSTI_INTERNALS,
    SSTI_SUSPICIOUS,
    STRING_BUILDING_FILTERS,
    STRING_BUILDING_METHODS,
    UNUSUAL_CALL,
    WEB_GLOBALS,
)

if TYPE_CHECKING:
    from mlwarden.scan.context import ScanContext

_MAX_FOLD = 10_000  # longest string we constant-fold (guards against '_' * 10**9)


@dataclass(frozen=True, slots=True)
class Hit:
    """One reason to report ``rule``, at a template line (deduplicated before reporting)."""

    rule: Rule
    line: int
    reason: str


class TemplateAnalyser:
    """One walk over a parsed template, collecting hits."""

    def __init__(self, ctx: ScanContext) -> None:
        self.ctx = ctx
        self.hits: list[Hit] = []
        self.consts: dict[str, Any] = {}
        self.local_names: set[str] = set()
        self.consumed: set[int] = set()  # ids of Const nodes already judged in an attribute position
        self.built: set[str] = set()  # variables (``ns.attr`` for namespace fields) holding built strings
        self.str_names: set[str] = set()  # variables assigned constant strings
        self.mutated: set[str] = set()  # variables changed in place (.append...), never folded
        self.visited = 0

    def hit(self, r: Rule, node: nodes.Node, reason: str) -> None:
        """Record a hit at ``node``'s line."""
        self.hits.append(Hit(r, getattr(node, "lineno", 0) or 0, reason))

    # -- constant folding: what string would this expression produce? --------------------------------
    def fold(self, node: nodes.Node) -> Any:
        """The value of ``node`` when it is built only from constants (else ``None``)."""
        value = self._fold(node)
        if isinstance(value, str) and len(value) > _MAX_FOLD:
            return None
        return value

    def _fold(self, node: nodes.Node) -> Any:
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
        if not (node.node is not None):
            raise RuntimeError("internal invariant broken: node.node is not None")
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
            if DUNDER.match(part) or part in PY_INTERNALS:
                self.hit(SSTI_INTERNALS, node, f"{how} '{part}' reaches Python internals")
            elif part.startswith("_"):
                self.hit(SSTI_DANGEROUS, node, f"{how} '{part}' is a private attribute")
            elif part in MODULES:
                self.hit(SSTI_DANGEROUS, node, f"{how} '{part}' reaches a module object")

    def _consume(self, target: nodes.Node) -> None:
        """Mark the literals that built a judged name, so they are not judged again as bare strings."""
        self.consumed.add(id(target))
        self.consumed.update(id(c) for c in target.find_all(nodes.Const))

    def judge_computed(self, node: nodes.Node, target: nodes.Node, how: str) -> None:
        """Judge an attribute name given by an expression: folded when constant, suspicious when not."""
        value = self.fold(target)
        if isinstance(value, str):
            self._consume(target)
            self.judge_name(value, node, how)
        elif value is None:
            self.hit(SSTI_SUSPICIOUS, node, f"{how} computed at render time")
            if self.builds_string(target):
                self.hit(COMPUTED_LOOKUP, node, f"{how} is a string built at render time")

    # -- render-time strings: is this expression a string the template builds from pieces? ---------------
    def _const_str(self, node: nodes.Node) -> bool:
        if isinstance(node, nodes.Name):
            return node.name in self.str_names or isinstance(self.fold(node), str)
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
            return f"{node.node.name}.{node.attr}" in self.str_names
        return isinstance(self.fold(node), str)

    def builds_string(self, node: nodes.Node) -> bool:
        """Whether ``node`` contains a string built at render time (not under a number or a test)."""
        intrinsic, uses = self._string_parts(node)
        return intrinsic or not uses.isdisjoint(self.built)

    def _string_parts(self, node: nodes.Node) -> tuple[bool, set[str]]:
        """(whether ``node`` builds a string itself, the variables whose strings it may pass on)."""
        uses: set[str] = set()
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, nodes.Concat):
                return True, uses
            if isinstance(n, nodes.Add | nodes.Mul | nodes.Mod) and (
                self._const_str(n.left) or self._const_str(n.right)
            ):
                return True, uses
            if isinstance(n, nodes.Filter) and n.name in STRING_BUILDING_FILTERS:
                return True, uses
            if isinstance(n, nodes.Call) and isinstance(n.node, nodes.Getattr):
                if n.node.attr in STRING_BUILDING_METHODS:
                    return True, uses
            if isinstance(n, nodes.Name):
                uses.add(n.name)
            if isinstance(n, nodes.Getattr) and isinstance(n.node, nodes.Name):
                uses.add(f"{n.node.name}.{n.attr}")
            if isinstance(n, nodes.Compare | nodes.Test | nodes.Not) or (
                isinstance(n, nodes.Filter) and n.name in NUMERIC_FILTERS
            ):
                continue  # a number or a boolean, whatever it was computed from
            if isinstance(n, nodes.CondExpr):
                stack.extend(x for x in (n.expr1, n.expr2) if x is not None)
                continue
            stack.extend(n.iter_child_nodes())
        return False, uses

    def _collect_strings(self, template: nodes.Template) -> None:
        """Find variables holding built or constant strings (set, set blocks, loops, macro arguments)."""
        macros = {m.name: [a.name for a in m.args] for m in template.find_all(nodes.Macro)}
        sources: list[tuple[list[str], nodes.Node | None]] = []
        for n in template.find_all((nodes.Assign, nodes.AssignBlock, nodes.For, nodes.Call)):
            if isinstance(n, nodes.AssignBlock):
                sources.append((_names(n.target), None))  # {% set x %}...{% endset %} renders a string
            elif isinstance(n, nodes.For):
                sources.append((_names(n.target), n.iter))
            elif isinstance(n, nodes.Assign):
                value = n.node
                if isinstance(value, nodes.Call) and _is_name(value.node, "namespace"):
                    sources += [([f"{t}.{kw.key}" for t in _names(n.target)], kw.value) for kw in value.kwargs]
                    sources += [(_names(n.target), arg) for arg in value.args]
                else:
                    sources.append((_names(n.target), value))
            elif isinstance(n, nodes.Call) and isinstance(n.node, nodes.Name) and n.node.name in macros:
                params = macros[n.node.name]
                sources += [([p], arg) for p, arg in zip(params, n.args, strict=False)]
                sources += [([kw.key], kw.value) for kw in n.kwargs if kw.key in params]
            elif isinstance(n, nodes.Call) and isinstance(n.node, nodes.Getattr) and n.node.attr in MUTATING_METHODS:
                self.mutated.update(_names(n.node.node))
        # Constant strings first (they decide whether `u + c` builds a string), then built strings; each
        # spreads along assignments (b = a) through a worklist, so the order of the {% set %}s is irrelevant.
        _spread(self.str_names, [(names, _alias(v), v is not None and _is_str(self.fold(v))) for names, v in sources])
        edges = []
        for names, source in sources:
            intrinsic, uses = (True, set()) if source is None else self._string_parts(source)
            edges.append((names, uses, intrinsic))
        _spread(self.built, edges)

    # -- the walk ---------------------------------------------------------------------------------------
    def walk(self, template: nodes.Template) -> None:
        """Collect the template's own variable and macro-argument names, then visit every node."""
        for n in template.find_all(nodes.Name):
            if n.ctx in ("store", "param"):
                self.local_names.add(n.name)
        for m in template.find_all(nodes.Macro):
            self.local_names.update(a.name for a in m.args)
        self._collect_strings(template)
        self.visit(template)

    def visit(self, node: nodes.Node) -> None:
        """Dispatch ``node`` to its ``visit_<NodeClass>`` method, then visit its children."""
        self.visited += 1
        if self.visited % 4096 == 0:
            self.ctx.check_time()
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is not None:
            method(node)
        for child in node.iter_child_nodes():
            self.visit(child)

    def visit_Assign(self, node: nodes.Assign) -> None:  # noqa: N802 - dispatch on node class name
        """Remember ``{% set name = <constant> %}`` so later uses of ``name`` fold."""
        if isinstance(node.target, nodes.Name):
            value = self.fold(node.node)
            if value is not None and node.target.name not in self.mutated:
                self.consts[node.target.name] = value
            else:
                self.consts.pop(node.target.name, None)  # no longer the constant it may have been

    def visit_For(self, node: nodes.For) -> None:  # noqa: N802
        """Loop variables shadow constants of the same name."""
        for name in _names(node.target):
            self.consts.pop(name, None)

    def visit_Getattr(self, node: nodes.Getattr) -> None:  # noqa: N802
        """Judge ``x.attr``, and attributes of Jinja globals that lead to Python objects."""
        self.judge_name(node.attr, node, "attribute")
        base = node.node
        if isinstance(base, nodes.Name) and base.name in GADGETS and base.name not in self.local_names:
            self.hit(SSTI_SUSPICIOUS, node, f"attribute '{node.attr}' of the global '{base.name}'")

    def visit_Getitem(self, node: nodes.Getitem) -> None:  # noqa: N802
        """Judge ``x['key']``: Jinja's getitem falls back to getattr."""
        value = self.fold(node.arg)
        if isinstance(value, str):
            self._consume(node.arg)
            self.judge_name(value, node, "subscript")
        elif value is None and self.builds_string(node.arg):
            self.hit(COMPUTED_LOOKUP, node, "subscript key is a string built at render time")

    def visit_Filter(self, node: nodes.Filter) -> None:  # noqa: N802
        """Judge ``|format`` printf strings and attribute-taking filters."""
        if node.name == "format" and node.node is not None:
            self._judge_printf(node, node.node)
        self._judge_callable_filter(node)

    def visit_Mod(self, node: nodes.Mod) -> None:  # noqa: N802
        """Judge ``'%c' % n`` printf strings."""
        self._judge_printf(node, node.left)

    def _judge_printf(self, node: nodes.Node, fmt_node: nodes.Node) -> None:
        fmt = self.fold(fmt_node)
        if isinstance(fmt, str) and re.search(r"%[-+ #0-9.]*c", fmt):
            self.hit(SSTI_SUSPICIOUS, node, "builds characters from code points with '%c' formatting")

    def visit_Test(self, node: nodes.Test) -> None:  # noqa: N802
        """Judge tests that take attribute names like filters do."""
        self._judge_callable_filter(node)

    def _judge_callable_filter(self, node: nodes.Filter | nodes.Test) -> None:
        name = node.name
        if name == "attr" and node.args:
            self.judge_computed(node, node.args[0], "|attr name")
        if name in ("map", "select", "reject") and len(node.args) >= 2 and self.fold(node.args[0]) == "attr":
            self.judge_computed(node, node.args[1], f"{name}('attr') name")
        if name in ATTRIBUTE_FILTERS:
            for kw in node.kwargs:
                if kw.key == "attribute":
                    self.judge_computed(node, kw.value, f"{name}(attribute=) attribute path")
            position = ATTRIBUTE_FILTERS[name]
            if position is not None and len(node.args) > position:
                self.judge_computed(node, node.args[position], f"{name}() attribute path")
        inner = getattr(node, "node", None)
        gadget = isinstance(inner, nodes.Name) and inner.name in GADGETS and inner.name not in self.local_names
        generator = isinstance(inner, nodes.Filter) and inner.name in GENERATOR_FILTERS
        if name == "string" and (generator or gadget):
            self.hit(SSTI_SUSPICIOUS, node, "turns an object's representation into a string (character harvesting)")

    def visit_Call(self, node: nodes.Call) -> None:  # noqa: N802
        """Judge method and global function calls, and dunder-spelling keyword arguments."""
        func = node.node
        if isinstance(func, nodes.Getitem):
            self.hit(COMPUTED_LOOKUP, node, "calls the result of a subscript")
            key = self.fold(func.arg)
            if isinstance(key, str) and key in DANGEROUS_CALLS:
                self.hit(SSTI_DANGEROUS, node, f"calls '{key}()' through a subscript")
        elif not isinstance(func, nodes.Getattr | nodes.Name):
            self.hit(COMPUTED_LOOKUP, node, f"calls the result of an expression ({type(func).__name__})")
        if isinstance(func, nodes.Getattr):
            method = func.attr
            if method in ("format", "format_map"):
                fmt = self.fold(func.node)
                if isinstance(fmt, str) and FORMAT_TRAVERSAL.search(fmt):
                    self.hit(SSTI_DANGEROUS, node, "str.format field traverses attributes or items")
            if method in DANGEROUS_CALLS:
                self.hit(SSTI_DANGEROUS, node, f"calls '{method}()'")
            elif method not in BENIGN_METHODS and not method.startswith("_") and method not in PY_INTERNALS:
                self.hit(UNUSUAL_CALL, node, f"calls method '{method}()'")
        elif (
            isinstance(func, nodes.Name)
            and func.name in DANGEROUS_CALLS | DANGEROUS_NAMES
            and func.name not in self.local_names
        ):
            self.hit(SSTI_DANGEROUS, node, f"calls the global '{func.name}()'")
        for kw in node.kwargs:
            if FRAGMENT.search(kw.key):
                self.hit(SSTI_SUSPICIOUS, node, f"keyword argument '{kw.key}' spells a dunder fragment")

    def visit_Name(self, node: nodes.Name) -> None:  # noqa: N802
        """Judge free names that no chat template defines (dunders, web globals, builtins)."""
        if node.ctx != "load" or node.name in self.local_names:
            return
        if DUNDER.match(node.name):
            self.hit(SSTI_INTERNALS, node, f"global '{node.name}' is a Python internal")
        elif node.name in WEB_GLOBALS:
            self.hit(SSTI_SUSPICIOUS, node, f"references the web-framework global '{node.name}'")
        elif node.name in DANGEROUS_NAMES:
            self.hit(SSTI_SUSPICIOUS, node, f"references the Python builtin/module name '{node.name}'")

    def visit_Const(self, node: nodes.Const) -> None:  # noqa: N802
        """Judge string literals not already judged as attribute names."""
        if not isinstance(node.value, str) or id(node) in self.consumed:
            return
        text = node.value
        if DUNDER.match(text):
            self.hit(SSTI_DANGEROUS, node, f"string literal '{text}' names a Python internal")
        elif FORMAT_DUNDER.search(text):
            self.hit(SSTI_DANGEROUS, node, "string literal is a format string reaching private attributes")
        elif len(text) <= 64 and FRAGMENT.search(text):
            self.hit(SSTI_SUSPICIOUS, node, f"string literal {text!r} holds a dunder fragment")

    def visit_Import(self, node: nodes.Import) -> None:  # noqa: N802
        """Flag template imports/includes, which read other templates through the loader."""
        self.hit(SSTI_SUSPICIOUS, node, "imports another template (read through the loader's environment)")

    visit_FromImport = visit_Import  # noqa: N815
    visit_Include = visit_Import  # noqa: N815
    visit_Extends = visit_Import  # noqa: N815


def _names(target: nodes.Node) -> list[str]:
    """Variable names an assignment target binds (``ns.attr`` for namespace fields)."""
    if isinstance(target, nodes.Name):
        return [target.name]
    if isinstance(target, nodes.NSRef):
        return [f"{target.name}.{target.attr}"]
    if isinstance(target, nodes.Tuple | nodes.List):
        return [n for item in target.items for n in _names(item)]
    return []


def _is_name(node: nodes.Node, name: str) -> bool:
    return isinstance(node, nodes.Name) and node.name == name


def _is_str(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and any(isinstance(v, str) for v in value))


def _alias(node: nodes.Node | None) -> set[str]:
    """The variable ``node`` names, when it is just a variable (``b = a``, ``b = ns.a``)."""
    if isinstance(node, nodes.Name):
        return {node.name}
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        return {f"{node.node.name}.{node.attr}"}
    return set()


def _spread(marked: set[str], edges: list[tuple[list[str], set[str], bool]]) -> None:
    """Mark the targets of every edge that holds by itself or uses a marked variable, to a fixed point."""
    users: dict[str, list[list[str]]] = {}
    todo: list[str] = []
    for targets, uses, holds in edges:
        if holds:
            todo.extend(targets)
        for name in uses:
            users.setdefault(name, []).append(targets)
    while todo:
        name = todo.pop()
        if name in marked:
            continue
        marked.add(name)
        for targets in users.get(name, ()):
            todo.extend(t for t in targets if t not in marked)
