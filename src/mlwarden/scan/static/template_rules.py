"""Chat-template rule declarations and the name tables the template walk consults.

The tables list what no benign chat template needs — interpreter internals, module objects, process/
file/import calls, Jinja gadget globals — and what benign templates do use (string/dict/list methods),
so that a reviewer sees what is flagged and how severe it is in one place. The walk that applies them
is in :mod:`mlwarden.scan.static.template_walk`.
"""

from __future__ import annotations

import re

from mlwarden.core.findings import Confidence, Severity, rule

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
COMPUTED_LOOKUP = rule(
    "MLW-TPL-007",
    "Chat template looks up names it builds at render time",
    Severity.HIGH,
    cwe=1336,
    description="A subscript key (or |attr name) is a string the template builds at render time from pieces "
    "(~, +, %, |format, |join, |replace, {% set %} blocks, or a variable or macro argument assigned such a "
    "string), or a value is called through a subscript or another expression (x[k](), (x|attr(n))()). Jinja's "
    "getitem falls back to getattr, so this reaches attributes the walk cannot name; benign chat templates "
    "index data by constants or by data (message[key] over a loop variable), which is not reported.",
    remediation=_REMEDIATION,
    confidence=Confidence.MEDIUM,
)

DUNDER = re.compile(r"^__\w+__$")
FRAGMENT = re.compile(r"__[A-Za-z]|[A-Za-z]__(?!\w)")
FORMAT_TRAVERSAL = re.compile(r"\{[^{}]*?(?:\.|\[)[^{}]*\}")
FORMAT_DUNDER = re.compile(r"\{[^{}]*?(?:\._|\[_)[^{}]*\}")

#: Attributes that are interpreter internals without dunder spelling.
PY_INTERNALS = frozenset(
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
MODULES = frozenset(
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
DANGEROUS_CALLS = frozenset(
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
DANGEROUS_NAMES = frozenset(
    {"os", "subprocess", "sys", "eval", "exec", "open", "getattr", "globals", "builtins", "importlib", "compile"}
)
#: Jinja/Flask globals that expose Python objects (their attributes lead to __globals__).
GADGETS = frozenset({"cycler", "joiner", "namespace", "lipsum", "range", "dict", "self"})
WEB_GLOBALS = frozenset({"request", "config", "url_for", "get_flashed_messages"})
#: Methods benign chat templates call (on strings, dicts, lists, loop, datetime).
BENIGN_METHODS = frozenset(
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
GENERATOR_FILTERS = frozenset({"select", "reject", "map", "selectattr", "rejectattr", "batch", "slice", "attr"})
#: Filters that take an attribute path (``attribute=`` keyword, or first positional for some).
ATTRIBUTE_FILTERS = {
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
#: Filters that build a string from their input and arguments (a key built with them is computed).
STRING_BUILDING_FILTERS = frozenset(
    {"format", "join", "replace", "reverse", "center", "indent", "wordwrap", "truncate", "urlencode", "xmlattr"}
)
#: String methods that build a new string from pieces (``'{}{}'.format(a, b)``, ``'_'.join(x)``).
STRING_BUILDING_METHODS = frozenset(
    {"format", "format_map", "join", "replace", "center", "ljust", "rjust", "zfill", "expandtabs", "translate"}
)
#: Filters with a number result: a key built under them is an index, not a name.
NUMERIC_FILTERS = frozenset({"length", "count", "int", "float", "abs", "round", "wordcount"})
#: Methods that mutate their object in place (a folded constant of that name is no longer known).
MUTATING_METHODS = frozenset(
    {"append", "extend", "insert", "pop", "update", "setdefault", "remove", "clear", "reverse", "sort"}
)
