"""Pickle rules and the verdict on one imported global: allowed, conditional, dangerous or unknown."""

from __future__ import annotations

import _compat_pickle
import enum
from dataclasses import dataclass

from mlwarden.core.findings import Confidence, Rule, Severity, rule
from mlwarden.scan.static.pickle import allowlist, denylist
from mlwarden.scan.static.pickle.denylist import Category

_FIX = (
    "Do not load this file. If it is your own model, re-save it as safetensors (weights only) or load it "
    "with torch.load(weights_only=True); otherwise obtain it from a trusted source."
)

CATEGORY_RULES: dict[Category, Rule] = {
    Category.COMMAND: rule(
        "MLW-PKL-100",
        "Pickle calls a command-execution function",
        Severity.CRITICAL,
        cwe=78,
        description="Unpickling imports a function that runs shell commands or external programs.",
        remediation=_FIX,
    ),
    Category.CODE: rule(
        "MLW-PKL-101",
        "Pickle evaluates code",
        Severity.CRITICAL,
        cwe=94,
        description="Unpickling imports a function that evaluates Python source or byte code.",
        remediation=_FIX,
    ),
    Category.INDIRECTION: rule(
        "MLW-PKL-102",
        "Pickle performs a dynamic lookup",
        Severity.HIGH,
        cwe=470,
        description="Unpickling imports a function that turns strings into callables (getattr, __import__, "
        "importlib, attrgetter ...), which reaches any function while naming none.",
        remediation=_FIX,
    ),
    Category.FILESYSTEM: rule(
        "MLW-PKL-103",
        "Pickle accesses the file system",
        Severity.HIGH,
        cwe=73,
        description="Unpickling imports a function that opens, writes or deletes files.",
        remediation=_FIX,
    ),
    Category.NETWORK: rule(
        "MLW-PKL-104",
        "Pickle accesses the network",
        Severity.HIGH,
        cwe=918,
        description="Unpickling imports a function that opens network connections or URLs.",
        remediation=_FIX,
    ),
    Category.DESERIALIZE: rule(
        "MLW-PKL-105",
        "Pickle deserialises embedded data",
        Severity.HIGH,
        cwe=502,
        description="Unpickling calls another deserialiser (pickle.loads, torch.load ...), hiding a second "
        "payload from scanners that read only the outer stream. Embedded bytes are analysed too.",
        remediation=_FIX,
    ),
    Category.NATIVE: rule(
        "MLW-PKL-106",
        "Pickle loads native code",
        Severity.CRITICAL,
        cwe=829,
        description="Unpickling imports ctypes/cffi or similar, which call arbitrary native functions.",
        remediation=_FIX,
    ),
    Category.PROCESS: rule(
        "MLW-PKL-107",
        "Pickle controls processes or threads",
        Severity.HIGH,
        cwe=94,
        description="Unpickling imports process/thread/signal control functions.",
        remediation=_FIX,
    ),
}

UNKNOWN_GLOBAL = rule(
    "MLW-PKL-110",
    "Pickle imports a global that is not on the allowlist",
    Severity.MEDIUM,
    cwe=502,
    description="The global is neither known safe nor known dangerous. Unpickling imports it and may call it; "
    "mlwarden cannot show that is harmless. Custom classes of your own code appear here too.",
    remediation="Check the named global. If it is your own trusted code, add it to [pickle].allow in the policy.",
    confidence=Confidence.MEDIUM,
)
UNRESOLVED = rule(
    "MLW-PKL-111",
    "Pickle calls a callable that cannot be resolved statically",
    Severity.HIGH,
    cwe=502,
    description="The callable comes from the copyreg extension registry (EXT1/2/4) or from a STACK_GLOBAL whose "
    "module/name are computed at load time, so no static list can judge it.",
    remediation=_FIX,
)
TRAVERSAL = rule(
    "MLW-PKL-112",
    "Pickle global reaches other objects through attribute traversal",
    Severity.CRITICAL,
    cwe=470,
    description="The global's name walks attributes (dotted or dunder names such as numpy.__builtins__ or "
    "pathlib.os.system), reaching objects other than the named one.",
    remediation=_FIX,
)
MUTATES_GLOBAL = rule(
    "MLW-PKL-113",
    "Pickle BUILD modifies an imported object",
    Severity.HIGH,
    cwe=915,
    description="A BUILD opcode sets attributes on an imported module-level object (not an instance the "
    "pickle created), which can redirect later lookups to dangerous callables.",
    remediation=_FIX,
)
POLICY_DENIED = rule(
    "MLW-PKL-114",
    "Pickle imports a global denied by policy",
    Severity.HIGH,
    cwe=502,
    description="The policy's [pickle].deny list names this global.",
    remediation=_FIX,
)
MALFORMED = rule(
    "MLW-PKL-120",
    "Pickle stream is malformed",
    Severity.LOW,
    cwe=20,
    description="The stream stops being a valid pickle at the given offset. The unpickler would stop at the same "
    "opcode, so everything before it (which was analysed) is what loading executes; nothing after it runs.",
    remediation="The file is corrupt or truncated; obtain an intact copy.",
    confidence=Confidence.HIGH,
)
READERS_DIFFER = rule(
    "MLW-PKL-122",
    "Pickle is read differently by CPython's two unpicklers",
    Severity.HIGH,
    cwe=436,
    description="At this opcode _pickle (C, what pickle.load and torch.load use) and pickle.py read the stream "
    "differently: an argument running past its FRAME, a new FRAME inside a frame, or a text number one of them "
    "refuses or reads as another value. No pickler writes this; it is how a payload is shown to one reader and "
    "hidden from another (scanners included). mlwarden analyses the C reading and refuses the file.",
    remediation=_FIX,
)
READER_LIMIT = rule(
    "MLW-PKL-123",
    "Pickle stream exceeds a bound of the scanner before the loader would stop",
    Severity.MEDIUM,
    cwe=400,
    description="The scanner stopped reading at this opcode because of one of its own bounds (an argument longer "
    "than it reads); the unpickler would read on, so the rest of the stream was not analysed.",
    remediation="Inspect the file by hand, or raise the bound if the file is trusted.",
)
TRAILING = rule(
    "MLW-PKL-121",
    "Data after the last pickle",
    Severity.LOW,
    cwe=20,
    description="Bytes follow the final STOP opcode and do not form another pickle. Loaders ignore them, but "
    "they may hide a second payload for a custom loader.",
    remediation="Check why the file carries trailing data.",
    confidence=Confidence.MEDIUM,
)
NOT_RESOLVED = rule(
    "MLW-PKL-116",
    "Pickle global is spelled like an allowed framework name but is not one",
    Severity.MEDIUM,
    cwe=502,
    description="The name falls under an allowlisted framework family (a class under sklearn, a function of "
    "torch.nn.functional ...), but the resolved table built from the framework itself does not admit it: it is "
    "a re-export of an object from elsewhere, a module, a callable instance, a class whose construction reaches "
    "files, processes or the network, or a name from a framework version mlwarden has not resolved.",
    remediation="Check what the name resolves to in the version that will load the file. If it is your own "
    "trusted code, add it to [pickle].allow in the policy.",
    confidence=Confidence.MEDIUM,
)
CUSTOM_CLASS = rule(
    "MLW-PKL-118",
    "Pickle references a custom class of the code that saved it",
    Severity.LOW,
    cwe=502,
    description="A class-like name from the training script (__main__) or from a package that is not installed "
    "here (the model's own code). Loading needs that code, and runs it: the class is only as trustworthy as the "
    "code the loading process imports. Without it, loading fails with an import error before anything runs.",
    remediation='If the class is your own trusted code, allow it: [pickle] allow = ["module.Class"] (or '
    '"package.*" for a package\'s classes) in the policy; mlwarden.load then checks it is defined there.',
    confidence=Confidence.MEDIUM,
)
CALLS_CAPABLE_CLASS = rule(
    "MLW-PKL-119",
    "Pickle calls a class whose constructor reaches files, processes, the network or code",
    Severity.HIGH,
    cwe=502,
    description="The class is data when unpickling rebuilds it (__new__ and its state), so importing it is "
    "allowed; but this pickle calls it (REDUCE, INST or OBJ), which runs its __init__, and that code reaches a "
    "capability (the resolved table names it).",
    remediation=_FIX,
)
EXHAUSTION = rule(
    "MLW-PKL-117",
    "Pickle asks an allowed callable for a huge allocation",
    Severity.HIGH,
    cwe=400,
    description="An allowed constructor (bytearray, bytes, range, a storage or array) is called with a size "
    "argument above the max_pickle_alloc limit: loading the file would exhaust memory or CPU (a denial of service "
    "through callables that are individually harmless).",
    remediation=_FIX,
)
OPAQUE_CALL = rule(
    "MLW-PKL-115",
    "Allowed helper called with arguments the scanner cannot verify",
    Severity.MEDIUM,
    cwe=502,
    description="A helper that is only safe with particular arguments (functools.partial, numpy ufunc "
    "reconstruction, nested loaders) was called with arguments that are not literal.",
    remediation="Inspect the file by hand before loading it.",
    confidence=Confidence.MEDIUM,
)


class Verdict(enum.Enum):
    """The verdict on one global."""

    ALLOWED = "allowed"
    CONDITIONAL = "conditional"  # safe or not depending on the call's arguments (see emulator)
    DANGEROUS = "dangerous"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Judgement:
    """A verdict, the rule to report it under (if any) and what matched."""

    verdict: Verdict
    rule: Rule | None
    matched: str


CONDITIONAL: frozenset[str] = frozenset(
    {
        "functools.partial",
        "_functools.partial",
        "numpy.core._ufunc_reconstruct",
        "numpy._core._ufunc_reconstruct",
        "numpy.core.umath._ufunc_reconstruct",
        "torch.storage._load_from_bytes",
    }
)

_ALIASES = {
    "__builtin__": "builtins",
    "exceptions": "builtins",
    "copy_reg": "copyreg",
    "cPickle": "pickle",
    "UserDict": "collections",
    "__main__.__builtins__": "builtins",
}


def normalise(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 names to Python 3 ones the way the unpickler does for protocol < 3."""
    key = (module, name)
    if key in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[key]
    module = _compat_pickle.IMPORT_MAPPING.get(module, _ALIASES.get(module, module))
    return module, name


def judge(module: str, name: str, allow: frozenset[str], deny: frozenset[str]) -> Judgement:
    """Judge one global. Order: policy deny, traversal, exact allowlist, conditional, denylist, allowlist."""
    full = f"{module}.{name}"
    if full in deny or any(full.startswith(d[:-1]) for d in deny if d.endswith(".*")):
        return Judgement(Verdict.DANGEROUS, POLICY_DENIED, full)
    parts = [*module.split("."), *name.split(".")]
    if (
        any(p.startswith("__") and p.endswith("__") and p not in ("__main__",) for p in name.split("."))
        and full not in allowlist.EXACT
        and full not in allow
    ):
        return Judgement(Verdict.DANGEROUS, TRAVERSAL, full)
    if full in allowlist.EXACT or full in allow:
        return Judgement(Verdict.ALLOWED, None, full)
    if full in CONDITIONAL:
        return Judgement(Verdict.CONDITIONAL, None, full)
    if "." not in name and _data_class(full):
        return Judgement(Verdict.ALLOWED, None, full)  # by what it can do, not by its module (http.HTTPStatus)
    hit = denylist.lookup(module, name)
    if hit is not None:
        category, matched = hit
        return Judgement(Verdict.DANGEROUS, CATEGORY_RULES[category], matched)
    if "." in name:
        # Dotted names are resolved with getattr: judge each attribute as a global of the one before.
        # pathlib.os.system reaches os.system: judge every attribute path as if it were a module path.
        first_attr = len(module.split("."))
        for i in range(first_attr, len(parts) - 1):
            hit = denylist.lookup(".".join(parts[i:-1]), parts[-1])
            if hit is not None:
                return Judgement(Verdict.DANGEROUS, TRAVERSAL, f"{full} (reaches {hit[1]})")
    if allowlist.is_allowed(module, name, allow):
        return Judgement(Verdict.ALLOWED, None, full)
    if allowlist.prefix_admits(module, name):
        return _unresolved_family_member(full)
    if _custom_class(module, name):
        return Judgement(Verdict.UNKNOWN, CUSTOM_CLASS, full)
    return Judgement(Verdict.UNKNOWN, UNKNOWN_GLOBAL, full)


# Class names whose objects run processes, threads, connections or files wherever they are imported from.
_CAPABILITY_CLASS_NAMES = frozenset(
    "Popen Thread Timer Process Pool ThreadPool ProcessPoolExecutor ThreadPoolExecutor Client Listener Connection "
    "Manager SyncManager NamedTemporaryFile TemporaryFile SpooledTemporaryFile TemporaryDirectory FileHandler "
    "RotatingFileHandler ZipFile TarFile Path PosixPath FileIO BufferedWriter TextIOWrapper CDLL PyDLL SSHClient "
    "Telnet FTP SMTP HTTPConnection HTTPSConnection Session Shelf Pickler Unpickler".split()
)


def _custom_class(module: str, name: str) -> bool:
    """A class-like name from ``__main__`` or from a package not installed here (the saver's own code)."""
    return name[:1].isupper() and saver_code(module, name)


def saver_code(module: str, name: str) -> bool:
    """Whether ``module.name`` belongs to the code that saved the model: ``__main__``, or a package not installed.

    Names of classes that run processes, threads, connections or files are never counted as such.
    """
    if not name.isidentifier() or name in _CAPABILITY_CLASS_NAMES:
        return False
    top = module.split(".")[0]
    if top == "__main__":
        return True
    if not all(part.isidentifier() for part in module.split(".")):
        return False
    import importlib.util

    try:
        return importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return False


def _data_class(full: str) -> bool:
    from mlwarden.scan.static.pickle.resolved import table

    return table().kind(full) in allowlist.DATA_KINDS


def _unresolved_family_member(full: str) -> Judgement:
    """A name spelled like an allowed family member that the resolved table does not admit: judge what it is."""
    from mlwarden.scan.static.pickle.resolved import table

    res = table().resolve(full)
    if res.home is not None:
        home_module, _, home_name = res.home.rpartition(".")
        hit = denylist.lookup(home_module, home_name)
        if hit is not None:
            return Judgement(Verdict.DANGEROUS, CATEGORY_RULES[hit[0]], f"{full} (resolves to {res.home})")
    return Judgement(Verdict.UNKNOWN, NOT_RESOLVED, f"{full} ({res.reason})")
