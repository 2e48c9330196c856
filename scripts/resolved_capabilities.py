"""Judge a class by what unpickling can make it do (used by scripts/build-resolved-allowlist, offline).

A pickle can reach a class's code only through the methods the unpickler (or the containers it builds) calls:
``__new__``/``__init__`` (NEWOBJ, REDUCE), ``__setstate__``/``__setattr__``/``__getattr__`` (BUILD),
``__setitem__``/``append``/``extend``/``add`` (SETITEMS, APPENDS, ADDITEMS), ``__call__`` (an instance used as a
callable), ``__hash__``/``__eq__`` (an instance used as a dict key), ``__del__`` (garbage collection). A class is
data when each of those is inherited from a builtin type, is Enum machinery, or is Python code whose calls
(followed through ``self.method()`` a few levels) reach no file, process, network, code or native capability.
"""

from __future__ import annotations

import ast
import builtins
import enum
import inspect
import textwrap
import types

REACHABLE = (
    "__new__",
    "__init__",
    "__setstate__",
    "__setattr__",
    "__getattr__",
    "__getattribute__",
    "__call__",
    "__setitem__",
    "__hash__",
    "__eq__",
    "__del__",
    "append",
    "extend",
    "add",
    "_missing_",
)
BUILTIN_BASES = tuple(
    t for t in vars(builtins).values() if isinstance(t, type) and t.__module__ == "builtins" and t is not type
)
# Dotted calls (by prefix) that give code a capability beyond building data.
CAPABILITIES: dict[str, str] = {
    "open": "filesystem",
    "io.open": "filesystem",
    "os": "os",
    "posix": "os",
    "_io": "filesystem",
    "_socket": "network",
    "_ssl": "network",
    "_posixsubprocess": "command",
    "builtins.open": "filesystem",
    "builtins.exec": "code",
    "builtins.eval": "code",
    "builtins.compile": "code",
    "builtins.__import__": "code",
    "shutil": "filesystem",
    "tempfile": "filesystem",
    "subprocess": "command",
    "multiprocessing": "process",
    "threading": "process",
    "_thread": "process",
    "signal": "process",
    "atexit": "process",
    "socket": "network",
    "ssl": "network",
    "urllib": "network",
    "http.client": "network",
    "exec": "code",
    "eval": "code",
    "compile": "code",
    "__import__": "code",
    "importlib": "code",
    "runpy": "code",
    "marshal": "code",
    "pickle": "deserialize",
    "globals": "code",
    "vars": "code",
    "ctypes": "native",
    "sys.modules": "code",
    "setattr": "indirection",
    "getattr": "indirection",
    "write_text": "filesystem",
    "write_bytes": "filesystem",
    "unlink": "filesystem",
    "mkdir": "filesystem",
    "touch": "filesystem",
}
_PURE_OS = ("os.path.join", "os.path.basename", "os.path.dirname", "os.fspath", "os.path.normpath", "os.fsdecode")


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _through_globals(name: str, namespace: dict[str, object]) -> str:
    """``_os.path.x`` -> ``os.path.x`` and ``system`` -> ``posix.system``: the root name as the module binds it."""
    root, _, rest = name.partition(".")
    obj = namespace.get(root)
    if isinstance(obj, types.ModuleType):
        real = obj.__name__
    elif obj is not None and getattr(obj, "__module__", None) and getattr(obj, "__qualname__", None):
        real = f"{obj.__module__}.{obj.__qualname__}"  # type: ignore[attr-defined]
    else:
        return name
    return f"{real}.{rest}" if rest else real


def _calls(fn: types.FunctionType) -> tuple[set[str], set[str]]:
    """(capabilities reached by calls in ``fn``, names of ``self.X(...)`` methods it calls)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return {"unreadable-source"}, set()
    caps: set[str] = set()
    own: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        name = _through_globals(name, fn.__globals__)
        if name.startswith("self.") and name.count(".") == 1:
            own.add(name[5:])
        if name in _PURE_OS:
            continue
        if name in ("getattr", "setattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            continue  # a constant attribute name is plain attribute access
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            cap = CAPABILITIES.get(".".join(parts[:i]))
            if cap is None and i == len(parts) and parts[-1] in CAPABILITIES and len(parts) > 1:
                cap = CAPABILITIES[parts[-1]] if parts[-1] in ("write_text", "write_bytes", "unlink", "touch") else None
            if cap is not None:
                caps.add(f"{cap}:{name}")
                break
    return caps, own


def _method_origin(cls: type, name: str) -> tuple[type | None, object]:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass, klass.__dict__[name]
    return None, None


#: What a pickle reaches without calling the class: NEWOBJ / copyreg._reconstructor run ``__new__`` only.
WITHOUT_INIT = tuple(m for m in REACHABLE if m != "__init__")


def capabilities(cls: type, depth: int = 3, methods: tuple[str, ...] = REACHABLE) -> list[str]:
    """Why ``cls`` is not data (empty list: it is), through ``methods`` and the ``self.X()`` calls they make."""
    found: set[str] = set()
    todo = [(m, depth) for m in methods]
    seen: set[str] = set()
    while todo:
        name, left = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        owner, attr = _method_origin(cls, name)
        if owner is None or owner in BUILTIN_BASES or owner is object:
            continue
        if owner.__module__ in ("enum", "abc", "typing", "collections.abc") or issubclass(owner, enum.EnumType):
            continue  # Enum/ABC machinery: member lookup and registration, no I/O
        fn = getattr(attr, "__func__", attr)
        if isinstance(fn, staticmethod | classmethod):
            fn = fn.__func__
        if not isinstance(fn, types.FunctionType):
            found.add(f"native:{owner.__qualname__}.{name}")
            continue
        caps, own = _calls(fn)
        found |= {f"{c} (in {owner.__qualname__}.{name})" for c in caps}
        if left > 0:
            todo.extend((m, left - 1) for m in own)
    return sorted(found)


def function_capabilities(fn: object) -> list[str]:
    """Why a function is not pure computation (empty list: it is): what its own body calls."""
    fn = getattr(fn, "__wrapped__", fn)
    if not isinstance(fn, types.FunctionType):
        return ["native:not Python source"]
    caps, _ = _calls(fn)
    return sorted(caps)


def is_enum(cls: type) -> bool:
    """An Enum subclass (members are looked up by value when unpickled)."""
    return isinstance(cls, enum.EnumType) and issubclass(cls, enum.Enum)
