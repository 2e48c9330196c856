"""The restricted unpickler: a pickle loader that imports only globals mlwarden's allowlist admits.

Static and dynamic analysis judge a file before it is loaded; this is the second, independent layer (the
PickleBall approach, CCS 2025). Whatever the analysis missed, loading a pickle can only call what
``find_class`` hands out, so handing out nothing but allowlisted globals (the built-in allowlist plus the
policy's ``[pickle].allow``) means a benign model loads in the host process and a hostile one stops at its
first unknown import, before anything runs.

Three more holes are closed here because the C unpickler cannot be hooked at those points, which is why this
builds on the pure-Python ``pickle._Unpickler``:

- opcodes that mutate an object (``BUILD``, ``SETITEM(S)``, ``APPEND(S)``, ``ADDITEMS``) are refused when
  their target is a global that ``find_class`` handed out (a class, function or module-level singleton):
  that would rewrite state of the host process, not of the loaded model;
- helpers that are only safe with some arguments are wrapped: numpy's ``_ufunc_reconstruct`` (an import by
  name) re-judges its target; ``torch.storage._load_from_bytes`` loads the nested pickle restricted too;
- joblib object arrays (a nested pickle stream) are read by a restricted unpickler as well.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from collections.abc import Callable
from typing import IO, Any

from mlwarden.artifacts.pickle_ops import c_float, c_index, c_int, c_long
from mlwarden.core.errors import UnsafeModelError
from mlwarden.core.findings import Location, Rule
from mlwarden.core.policy import Policy
from mlwarden.scan.static.pickle import allowlist, rules

_UFUNC = frozenset(
    {"numpy.core._ufunc_reconstruct", "numpy._core._ufunc_reconstruct", "numpy.core.umath._ufunc_reconstruct"}
)
_UFUNC_MODULES = frozenset({"numpy", "numpy.core.umath", "numpy._core.umath"})
_LOAD_FROM_BYTES = "torch.storage._load_from_bytes"

# Opcodes that change the object below them; a mark-based one finds its target just below the MARK.
_MUTATORS: dict[bytes, bool] = {  # opcode -> target is below a MARK
    pickle.BUILD: False,
    pickle.SETITEM: False,
    pickle.APPEND: False,
    pickle.SETITEMS: True,
    pickle.APPENDS: True,
    pickle.ADDITEMS: True,
}
_TARGET_DEPTH = {pickle.BUILD: 2, pickle.SETITEM: 3, pickle.APPEND: 2}


def _refuse(rule: Rule, display: str, evidence: str, details: dict[str, Any] | None = None) -> UnsafeModelError:
    """The error (with its one finding) for a refusal of the restricted loader."""
    finding = rule.finding(Location((display,), None, "load"), evidence, details=details)
    return UnsafeModelError(f"{display}: refused to load: {rule.id} {rule.title}: {evidence}", (finding,))


class _Restrictions:
    """The state every restricted unpickler shares: the policy's lists and the globals handed out so far."""

    def __init__(self, policy: Policy | None, display: str) -> None:
        policy = policy or Policy()
        self.policy = policy
        self.display = display
        self.allow = frozenset(policy.pickle.allow)
        self.deny = frozenset(policy.pickle.deny)
        self.handed: dict[int, object] = {}  # id -> object (kept alive so that ids stay unique)
        self.no_call: dict[int, str] = {}  # id of a class that is data only when rebuilt -> what its __init__ reaches

    def resolve(self, module: str, name: str) -> object:
        """Import ``module.name`` if the allowlist admits it; raise :class:`UnsafeModelError` otherwise."""
        if not isinstance(module, str) or not isinstance(name, str):
            raise _refuse(rules.UNRESOLVED, self.display, f"global with non-string name {module!r}.{name!r}")
        module, name = rules.normalise(module, name)
        full = f"{module}.{name}"
        judgement = rules.judge(module, name, self.allow, self.deny)
        if judgement.verdict is rules.Verdict.CONDITIONAL:
            obj = self._conditional(full)
        elif judgement.verdict is rules.Verdict.ALLOWED:
            obj = _import(module, name)
            self._check_resolved(module, name, obj)
        else:
            rule = judgement.rule or rules.UNKNOWN_GLOBAL
            raise _refuse(
                rule,
                self.display,
                f"the restricted unpickler refused global {full} ({judgement.verdict.value})",
                details={"global": full, "matched": judgement.matched},
            )
        self.handed[id(obj)] = obj
        entry = _table_entry(full)
        if isinstance(entry, list) and entry[0] == allowlist.RECONSTRUCT_ONLY:
            self.no_call[id(obj)] = entry[1]
        return obj

    def check_call(self, func: object) -> None:
        """Refuse calling a class that is data only when rebuilt (REDUCE/INST/OBJ run its ``__init__``)."""
        reaches = self.no_call.get(id(func))
        if reaches is not None:
            what = getattr(func, "__qualname__", repr(func))
            raise _refuse(
                rules.CALLS_CAPABLE_CLASS,
                self.display,
                f"the pickle calls {what}, whose __init__ reaches {reaches}",
                details={"global": str(what)},
            )

    def _check_resolved(self, module: str, name: str, obj: object) -> None:
        """Judge the object a name handed out resolves to in *this* process, not only its spelling.

        Exact entries were reviewed one by one. A name admitted by a family rule (a prefix, the resolved table, a
        policy wildcard) must be what it claims: a class or function whose ``__module__``/``__qualname__`` is the
        name itself, or a re-export of an object that is allowed in its own home. Module objects and callable
        instances (``partial``, ``attrgetter`` objects ...) are never handed out by a family rule.
        """
        full = f"{module}.{name}"
        if isinstance(obj, types.ModuleType):
            raise self._refusal(full, "it is a module object")
        if full in allowlist.EXACT or full in self.allow:
            return
        if not isinstance(obj, type) and not _is_function(obj):
            if callable(obj):
                raise self._refusal(full, f"it is a callable {type(obj).__module__}.{type(obj).__qualname__} instance")
            return  # a plain value (a singleton such as pandas.NA): constructing nothing, calling nothing
        home_module = getattr(obj, "__module__", None)
        home_name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        if not isinstance(home_module, str) or not isinstance(home_name, str):
            raise self._refusal(full, "it has no __module__/__qualname__ to judge it by")
        if (home_module, home_name) == (module, name):
            if allowlist.user_wildcard(module, name, self.allow) or allowlist.is_allowed(module, name, self.allow):
                return
        elif "<" not in home_name:
            home = rules.judge(home_module, home_name, self.allow, self.deny)
            if home.verdict is rules.Verdict.ALLOWED and not isinstance(obj, types.ModuleType):
                return
        raise self._refusal(full, f"it resolves to {home_module}.{home_name}, which is not allowed")

    def _refusal(self, full: str, why: str) -> UnsafeModelError:
        return _refuse(
            rules.NOT_RESOLVED,
            self.display,
            f"the restricted unpickler refused global {full}: {why}",
            details={"global": full},
        )

    def _conditional(self, full: str) -> object:
        if full in _UFUNC:
            return self._guarded_ufunc
        if full == _LOAD_FROM_BYTES:
            return self._guarded_load_from_bytes
        # functools.partial: every callable it could wrap came out of this find_class, so it is allowed too.
        module, _, name = full.rpartition(".")
        return _import(module, name)

    def _guarded_ufunc(self, module: str, name: str) -> object:
        if module not in _UFUNC_MODULES:
            raise _refuse(
                rules.CATEGORY_RULES[rules.Category.INDIRECTION],
                self.display,
                f"_ufunc_reconstruct({module!r}, {name!r}) imports outside numpy",
            )
        return self.resolve(module, name)

    def _guarded_load_from_bytes(self, data: bytes) -> object:
        import torch

        return torch.load(io.BytesIO(data), weights_only=False, pickle_module=pickle_module(self.policy, self.display))

    def check_target(self, target: object, opcode: bytes) -> None:
        """Refuse an opcode that would mutate a global handed out by ``find_class`` (host state)."""
        if id(target) in self.handed or isinstance(target, type | types.ModuleType):
            what = getattr(target, "__qualname__", type(target).__name__)
            raise _refuse(
                rules.MUTATES_GLOBAL,
                self.display,
                f"{pickle_opname(opcode)} would modify the imported global {what}",
                details={"global": str(what)},
            )


def _is_function(obj: object) -> bool:
    return isinstance(obj, types.FunctionType | types.BuiltinFunctionType) or type(obj).__name__ in (
        "cython_function_or_method",
        "fused_cython_function",
        "ufunc",
        "_ArrayFunctionDispatcher",
    )


def pickle_opname(opcode: bytes) -> str:
    """The opcode's name as ``pickletools`` spells it (for messages)."""
    for name in ("BUILD", "SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"):
        if getattr(pickle, name) == opcode:
            return name
    return repr(opcode)


def _import(module: str, name: str) -> object:
    __import__(module, level=0)
    obj: object = sys.modules[module]
    for part in name.split("."):  # dotted names reach here only when written out exactly in the allowlist
        obj = getattr(obj, part)
    return obj


def _guard(opcode: bytes, original: Callable[[Any], None]) -> Callable[[Any], None]:
    below_mark = _MUTATORS[opcode]

    def guarded(self: Any) -> None:
        if below_mark:
            outer = self.metastack[-1] if self.metastack else []
            target = outer[-1] if outer else None
        else:
            depth = _TARGET_DEPTH[opcode]
            target = self.stack[-depth] if len(self.stack) >= depth else None
        if target is not None:
            self._restrictions.check_target(target, opcode)
        original(self)

    return guarded


def _table_entry(full: str) -> object:
    from mlwarden.scan.static.pickle.resolved import table

    return table().entries.get(full)


def _load_reduce_checked(self: Any) -> None:
    self._restrictions.check_call(self.stack[-2])
    pickle._Unpickler.load_reduce(self)  # type: ignore[attr-defined]


def _load_int_c(self: Any) -> None:
    self.append(c_int(self.readline()[:-1]))


def _load_float_c(self: Any) -> None:
    self.append(c_float(self.readline()[:-1]))


def _load_long_c(self: Any) -> None:
    self.append(c_long(self.readline()[:-1]))


def _load_get_c(self: Any) -> None:
    index = c_index(self.readline()[:-1])
    try:
        self.append(self.memo[index])
    except KeyError:
        raise pickle.UnpicklingError(f"Memo value not found at index {index}") from None


def _load_put_c(self: Any) -> None:
    index = c_index(self.readline()[:-1])
    if index < 0:
        raise ValueError("negative PUT argument")
    self.memo[index] = self.stack[-1]


def guarded_dispatch(base: dict[int, Callable[[Any], None]]) -> dict[int, Callable[[Any], None]]:
    """A copy of an unpickler dispatch table whose mutating opcodes check their target first.

    Text numbers (INT, LONG, FLOAT, and GET/PUT indexes) are read as ``_pickle`` (the C unpickler that
    ``pickle.load``, ``torch.load`` and the sandbox run) reads them — up to a NUL byte, octal ``I010`` — not as
    ``pickle.py`` does: what this loads is what the analysis saw.
    Frames stay strict (``pickle.py`` refuses an argument that runs past its frame; the analysis reports it).
    """
    table = dict(base)
    for opcode in _MUTATORS:
        table[opcode[0]] = _guard(opcode, base[opcode[0]])
    table[pickle.REDUCE[0]] = _load_reduce_checked
    table[pickle.INT[0]] = _load_int_c
    table[pickle.FLOAT[0]] = _load_float_c
    table[pickle.LONG[0]] = _load_long_c
    table[pickle.GET[0]] = _load_get_c
    table[pickle.PUT[0]] = _load_put_c
    return table


class RestrictedUnpickler(pickle._Unpickler):
    """A ``pickle.Unpickler`` whose ``find_class`` admits only allowlisted globals.

    Example:
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps([1, 2]))).load()
        [1, 2]
    """

    dispatch = guarded_dispatch(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], *, policy: Policy | None = None, display: str = "<pickle>", **kw: Any) -> None:
        kw.setdefault("encoding", "latin1")  # Python 2 str: never fails, and is how numpy/joblib read its arrays
        super().__init__(file, **kw)
        self._restrictions = _Restrictions(policy, display)

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global, or raise :class:`UnsafeModelError` naming the rule it breaks."""
        return self._restrictions.resolve(module, name)

    def _instantiate(self, klass: Any, args: Any) -> None:
        """INST and OBJ call the class (unless it has no arguments and no ``__getinitargs__``): check it first."""
        if args or not isinstance(klass, type) or hasattr(klass, "__getinitargs__"):
            self._restrictions.check_call(klass)
        super()._instantiate(klass, args)  # type: ignore[misc]


def restricted_load(file: IO[bytes], policy: Policy | None = None, display: str = "<pickle>") -> Any:
    """Unpickle one object from ``file`` with the restricted unpickler."""
    return RestrictedUnpickler(file, policy=policy, display=display).load()


def restricted_loads(data: bytes, policy: Policy | None = None, display: str = "<pickle>") -> Any:
    """Unpickle one object from ``data`` with the restricted unpickler."""
    return restricted_load(io.BytesIO(data), policy, display)


def pickle_module(policy: Policy | None = None, display: str = "<pickle>") -> types.ModuleType:
    """A stand-in for the ``pickle`` module (``Unpickler``, ``load``) to pass as ``torch.load(pickle_module=...)``.

    torch subclasses ``pickle_module.Unpickler`` (to remap storage names) and calls our ``find_class`` through
    ``super()``, so every global of the checkpoint passes the allowlist.
    """
    mod = types.ModuleType("mlwarden_restricted_pickle")

    class Unpickler(RestrictedUnpickler):
        def __init__(self, file: IO[bytes], **kw: Any) -> None:
            super().__init__(file, policy=policy, display=display, **kw)

    def load(file: IO[bytes], **kw: Any) -> Any:
        return Unpickler(file, **kw).load()

    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    mod.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return mod
