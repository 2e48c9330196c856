"""Framework profiles: what each phase of loading a benign model normally does to the host.

A profile is a readable TOML file (``profiles/<framework>.toml``, shipped, reviewed and versioned; users can
learn their own with ``mlwarden profile learn``). For every phase it lists allowed event keys
``kind:target`` as shell-style patterns over *normalised* targets: ``{python}`` stands for the interpreter's
installation and package directories, ``{model}`` for the model's folder, ``{tmp}`` for the sandbox's private
scratch folder (``TMPDIR``), ``{home}`` for the home directory inside the sandbox. An event no pattern allows is
a deviation. Code evaluation (``code.exec``/``code.compile``/``code.construct``) is allowed only from named call
sites of the framework's own machinery (``... by {python}/<file>:<function>``), never from "anything installed".

A profile describes *capabilities*, not the module names a few samples happened to import: ``[capabilities]``
names classes of effects judged by what the target is (``import.installed``: importing any module installed under
the interpreter's own roots, or one no finder found); ``[machinery]`` lists the framework's own known call sites
(allowed in every phase, each with a comment saying why); ``include = ["common"]`` adds the standard library's
machinery shared by every framework (``profiles/common.toml``).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.machinery
import posixpath
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlwarden.core.errors import UsageError
from mlwarden.scan.dynamic.events import PHASES, Event
from mlwarden.scan.dynamic.sandbox import SANDBOX_DIR, SANDBOX_HOME, SANDBOX_TMP, python_roots

PROFILE_DIR = Path(__file__).with_name("profiles")
_TOML_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")

# Allowed in every framework's every phase: the interpreter reading itself and the machine's basics.
BASELINE: tuple[str, ...] = (
    "file.read:{python}",
    "file.read:{python}/*",
    "file.modify:/dev/shm/*",
    "file.write:{tmp}/*",  # the sandbox's private tmpfs (caches, temp files); it vanishes with the run
    "file.modify:{tmp}/*",
    "file.read:{mlwarden}/*",  # tracebacks of the runner read its own source
    "pickle.global:*",  # judged by the pickle allow/deny lists, not by profiles
    "file.read:/usr/*",
    "file.list:{python}",
    "file.read:/proc/*",
    "file.read:/sys/*",
    "file.read:/dev/*",
    "file.read:/etc/ld.so.cache",
    "file.read:/etc/localtime",
    "file.read:/etc/locale.alias",
    "file.read:/etc/nsswitch.conf",
    "file.read:/etc/passwd",
    "file.read:/etc/group",
    "file.read:/etc/host.conf",
    "file.read:/etc/gai.conf",
    "file.read:/etc/ssl/openssl.cnf",  # OpenSSL's configuration, read when hashlib/ssl initialise it
    "file.read:/etc/os-release",  # platform identification (onnxruntime at import; /usr/lib/os-release elsewhere)
    "file.read:/lib*",
    "file.read:{tmp}*",
    "file.read:{model}",
    "file.read:{model}/*",
    "file.read:/tmp",
    "file.list:{python}/*",
    "file.list:/usr/*",
    "file.list:/proc/*",
    "file.list:/sys/*",
    "file.list:{model}*",
    "file.list:{tmp}*",
    "file.list:/tmp",
    "file.list:.",
    "file.list:/dev*",
    "file.list:/",
    "native.load:{python}/*",
    "native.load:/usr/*",
    "native.load:lib*",
    "native.load:None",
    "native.symbol:*",
    "native.mmap:*",
    "process.env:*",
    "file.write:/dev/null",
    "file.write:/dev/shm/*",
    # the home directory is writable inside; caches and framework settings are where frameworks write
    "file.read:{home}/.cache/*",
    "file.write:{home}/.cache/*",
    "file.modify:{home}/.cache*",
    "file.read:{home}/.keras/*",
    "file.write:{home}/.keras/*",
    "file.modify:{home}/.keras*",
    "file.read:{home}/.config/matplotlib/*",
    "file.write:{home}/.config/matplotlib/*",
    "file.modify:{home}/.config",
    "file.modify:{home}/.config/matplotlib*",
)


#: also allowed after the last phase: the runner reading the writable mounts to see what changed in them (they
#: hold nothing of the host's: only what the run created, and bound folders, which are {model}/{python})
TEARDOWN: tuple[str, ...] = tuple(
    f"{kind}:{where}"
    for kind in ("file.read", "file.list")
    for where in ("/tmp", "/tmp/*", "{home}", "{home}/*", "/dev/shm", "/dev/shm/*")
)


def _roots() -> list[str]:
    return sorted(python_roots(), key=len, reverse=True)


_ROOTS = _roots()
# mlwarden's own code (the runner, the adapters) gets its own placeholder: an exec() called from the loader
# adapter is the model's doing, while one called from inside a framework package is the framework's.
_MLWARDEN = str(Path(__file__).resolve().parents[2])


def normalise(target: str) -> str:
    """Replace installation-specific prefixes with placeholders so profiles travel between machines."""
    if " by " in target:  # code events name their calling file: normalise both halves
        what, _, caller = target.rpartition(" by ")
        return f"{normalise(what)} by {normalise(caller)}"
    if target.startswith("/") and ("/." in target or "//" in target):
        target = posixpath.normpath(target)  # "{tmp}/../x" is not in the scratch space
    if target == _MLWARDEN or target.startswith(_MLWARDEN + "/"):
        return "{mlwarden}" + target[len(_MLWARDEN) :]
    if target.startswith(SANDBOX_DIR):
        return "{model}" + target[len(SANDBOX_DIR) :]
    for root in _ROOTS:
        if target == root or target.startswith(root.rstrip("/") + "/"):
            return "{python}" + target[len(root.rstrip("/")) :]
    if target == SANDBOX_TMP or target.startswith(SANDBOX_TMP + "/"):
        return "{tmp}" + target[len(SANDBOX_TMP) :]
    if target == SANDBOX_HOME or target.startswith(SANDBOX_HOME + "/"):
        return "{home}" + target[len(SANDBOX_HOME) :]
    return target


def key(event: Event) -> str:
    """The profile key of an event."""
    target = normalise(event.target)
    if event.kind.startswith("file.") and target and not target.startswith(("/", "<", "{")):
        target = "{tmp}/" + target  # a relative path: the sandbox's working directory is its tmpfs
    return f"{event.kind}:{target}"


#: capabilities a profile can grant (``[capabilities] allow``), judged by what the target *is*
CAPABILITIES: dict[str, str] = {
    "import.installed": "importing a module installed under the interpreter's own roots ({python}: built-in, "
    "standard library, site-packages) or one that no finder found (a failed probe: nothing ran); modules whose only "
    "purpose is processes, sockets, native code or running code (SENSITIVE_IMPORTS) only when an installed module's "
    "body imports them",
}

#: modules whose import is itself a capability (processes, network, native code, evaluating code): an import of one
#: that the model requested (not an installed module's own ``import`` statement) is a deviation
SENSITIVE_IMPORTS: tuple[str, ...] = (
    "os.system",
    "subprocess",
    "socket",
    "pty",
    "ctypes",
    "webbrowser",
    "urllib.request",
    "http.client",
    "requests",
    "ftplib",
    "smtplib",
    "telnetlib",
    "runpy",
    "code",
    "pdb",
    "shutil",
    "multiprocessing",
    "asyncio.subprocess",
    "importlib.util",
)


def sensitive(module: str) -> bool:
    """Whether importing ``module`` is itself a capability (see :data:`SENSITIVE_IMPORTS`)."""
    return any(module == s or module.startswith(s + ".") for s in SENSITIVE_IMPORTS)


def _search_path() -> list[str]:
    """``sys.path`` as the sandbox's isolated interpreter has it: only entries under the interpreter's roots."""
    roots = [r.rstrip("/") for r in _ROOTS]
    return [p for p in sys.path if p and any(p == r or p.startswith(r + "/") for r in roots)]


@functools.lru_cache(maxsize=8192)
def installed_module(name: str) -> bool:
    """Whether ``name``'s top-level package is built in, frozen or installed under the interpreter's roots.

    Resolved on the host with the path finder (no code runs, nothing the model did can influence it). Anything
    inside an installed package's folder is installed too (those folders are read-only in the sandbox); a module
    body executed from anywhere else is an exec event of its own, judged separately.
    """
    top = name.partition(".")[0]
    if not top or "/" in top or "\x00" in top:  # (sysconfig's _sysconfigdata__linux_x86_64-linux-gnu has dashes)
        return False
    if top in sys.builtin_module_names or importlib.machinery.FrozenImporter.find_spec(top) is not None:
        return True
    try:
        spec = importlib.machinery.PathFinder.find_spec(top, _search_path())
    except (ImportError, ValueError, OSError):
        return False
    if spec is None:
        return False
    places = [spec.origin] if spec.origin and spec.origin != "namespace" else []
    places += list(spec.submodule_search_locations or [])
    return bool(places) and all(normalise(p).startswith("{python}") for p in places if p)


@dataclass
class Profile:
    """Allowed event patterns per phase for one framework, plus capabilities and machinery for every phase."""

    framework: str
    phases: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    version: int = 1
    capabilities: list[str] = field(default_factory=list)
    machinery: list[str] = field(default_factory=list)  # allowed in every phase (the framework's own call sites)
    include: list[str] = field(default_factory=list)
    inherited: list[str] = field(default_factory=list)  # machinery of the included profiles (not serialised)

    def patterns(self, phase: str) -> tuple[str, ...]:
        """Every pattern that applies in ``phase`` (baseline, machinery, the phase's own)."""
        if phase == "teardown":  # deferred work: whatever some phase of the framework may do
            own: Iterable[str] = (p for allowed in self.phases.values() for p in allowed)
            return (*BASELINE, *TEARDOWN, *self.machinery, *self.inherited, *own)
        return (*BASELINE, *self.machinery, *self.inherited, *self.phases.get(phase, ()))

    def allows(self, event: Event, missing: frozenset[str] | set[str] = frozenset()) -> bool:
        """Whether ``event`` is allowed: baseline, capability, machinery or the profile's patterns for its phase.

        ``missing`` holds the module names no finder found in this run (the runner reports them).
        """
        if event.phase == "setup":
            return True  # the runner itself starting up, before the framework is touched
        if event.kind == "import.missing":
            return True  # an import that failed: nothing ran
        k = key(event)
        patterns = self.patterns(event.phase)
        if any(k == p or fnmatch.fnmatchcase(k, p) for p in patterns):
            return True
        if event.kind != "import":
            return False
        caller = normalise(event.caller) if event.caller else ""
        if caller and any(fnmatch.fnmatchcase(f"{k} by {caller}", p) for p in patterns):
            return True  # a sensitive import at a call site the profile names
        if "import.installed" not in self.capabilities:
            return False
        name = event.target
        if sensitive(name):
            return caller.startswith("{python}/") and caller.endswith(":<module>")
        parts = name.split(".")
        if any(".".join(parts[:i]) in missing for i in range(1, len(parts) + 1)):
            return True
        return installed_module(name)

    def to_toml(self) -> str:
        """Serialise (stable order, one pattern per line, so reviews read as diffs)."""
        lines = [
            f"# mlwarden dynamic-analysis profile for {self.framework}",
            f'framework = "{self.framework}"',
            f"version = {self.version}",
            f"description = {_q(self.description)}",
        ]
        if self.include:
            lines.append("include = [" + ", ".join(_q(i) for i in self.include) + "]")
        lines.append("")
        for table, values in (("capabilities", self.capabilities), ("machinery", self.machinery)):
            if values:
                lines += [f"[{table}]", "allow = [", *(f"    {_q(v)}," for v in sorted(set(values))), "]", ""]
        for phase in PHASES:
            lines.append(f"[phases.{phase}]")
            lines.append("allow = [")
            lines += [f"    {_q(p)}," for p in sorted(set(self.phases.get(phase, ())))]
            lines += ["]", ""]
        return "\n".join(lines)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_profile(framework: str, directory: Path | None = None, *, _seen: tuple[str, ...] = ()) -> Profile:
    """Load ``<framework>.toml`` from ``directory`` (default: the shipped profiles)."""
    import tomllib

    if not _TOML_KEY.match(framework):
        raise UsageError(f"invalid framework name {framework!r}")
    path = (directory or PROFILE_DIR) / f"{framework}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no profile for framework {framework!r} (looked for {path})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"profile {path} is unreadable: {exc}") from None
    phases = data.get("phases", {})
    if not isinstance(phases, dict) or any(p not in PHASES for p in phases):
        raise UsageError(f"profile {path}: [phases] may only contain {', '.join(PHASES)}")
    out: dict[str, list[str]] = {}
    for phase, body in phases.items():
        allow = body.get("allow", []) if isinstance(body, dict) else None
        if not isinstance(allow, list) or not all(isinstance(a, str) and ":" in a for a in allow):
            raise UsageError(f"profile {path}: phases.{phase}.allow must be a list of 'kind:pattern' strings")
        out[phase] = allow
    tables: dict[str, list[str]] = {}
    for table in ("capabilities", "machinery"):
        body = data.get(table, {})
        allow = body.get("allow", []) if isinstance(body, dict) else None
        if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
            raise UsageError(f"profile {path}: {table}.allow must be a list of strings")
        tables[table] = allow
    unknown = [c for c in tables["capabilities"] if c not in CAPABILITIES]
    if unknown:
        raise UsageError(
            f"profile {path}: unknown capabilities {', '.join(unknown)} (known: {', '.join(CAPABILITIES)})"
        )
    if any(":" not in m for m in tables["machinery"]):
        raise UsageError(f"profile {path}: machinery.allow must be a list of 'kind:pattern' strings")
    include = data.get("include", [])
    if not isinstance(include, list) or not all(isinstance(i, str) and _TOML_KEY.match(i) for i in include):
        raise UsageError(f"profile {path}: include must be a list of profile names")
    profile = Profile(
        str(data.get("framework", framework)),
        out,
        str(data.get("description", "")),
        int(data.get("version", 1)),
        tables["capabilities"],
        tables["machinery"],
        include,
    )
    for name in include:  # the included profile's machinery and capabilities (its folder first, then shipped)
        if name == framework or _seen and name in _seen:
            continue
        here = (directory or PROFILE_DIR) / f"{name}.toml"
        other = load_profile(name, directory if here.is_file() else None, _seen=(*_seen, framework))
        profile.inherited += [*other.machinery, *other.inherited]
    return profile


#: imports of a package collapse to ``import:<package>*`` once this many of its modules were seen
COLLAPSE_IMPORTS = 4


def generalise(keys: Iterable[str]) -> list[str]:
    """Patterns from observed keys, so a profile stays readable and is not tied to one model.

    Package-internal file reads are covered by the baseline; code evaluation keeps its call site (file and
    function) and drops only what was evaluated; tmpfs activity collapses to ``{tmp}/*``; imports of a package
    collapse to ``import:<package>*`` once several of its modules were seen (a lazily imported framework);
    everything else stays exact.
    """
    keys = list(keys)
    packages: dict[str, int] = {}
    for k in keys:
        if k.startswith("import:") and " by " not in k:
            top = k[len("import:") :].split(".")[0]
            packages[top] = packages.get(top, 0) + 1
    out: set[str] = set()
    for k in keys:
        if any(k == p or fnmatch.fnmatchcase(k, p) for p in BASELINE):
            continue
        if k.startswith("import:") and " by " not in k:
            top = k[len("import:") :].split(".")[0]
            if packages[top] >= COLLAPSE_IMPORTS:
                out.add(f"import:{top}*")
                continue
        kind, _, target = k.partition(":")
        if kind in ("file.read", "file.list", "native.load") and target.startswith("{python}/"):
            continue  # covered by the baseline
        if kind == "code.construct" and " by {python}/" not in target:
            out.add("code.construct:*")  # code objects built while unpickling (what they execute is judged)
            continue
        if kind in ("code.exec", "code.compile", "code.construct") and " by {python}/" in target:
            # code a framework library generates (namedtuple, dataclasses): allowed from that call site only
            # (file and function), never "by anything installed" (timeit, runpy, code evaluate what they are given)
            out.add(f"{kind}:* by {target.rpartition(' by ')[2]}")
            continue
        if kind in ("file.write", "file.modify", "file.read") and target.startswith("{tmp}/"):
            out.add(f"{kind}:{{tmp}}/*")
            continue
        out.add(k)
    return sorted(out)


def learn(framework: str, events_per_model: Iterable[Iterable[Event]], base: Profile | None = None) -> Profile:
    """A profile allowing everything the given benign runs did (extending ``base`` if given).

    The learned profile declares the ``import.installed`` capability and includes ``common`` (the standard
    library's machinery): only what those do not cover is written, generalised (see :func:`generalise`).
    """
    capabilities = sorted({*(base.capabilities if base else ()), "import.installed"})
    include = list(base.include) if base and base.include else ["common"]
    probe = Profile(framework, {}, capabilities=capabilities, machinery=list(base.machinery) if base else [])
    if "common" in include:
        try:
            probe.inherited = load_profile("common").machinery
        except UsageError:
            pass
    phases: dict[str, set[str]] = {p: set(base.phases.get(p, []) if base else []) for p in PHASES}
    for events in events_per_model:
        events = list(events)
        missing = {e.target for e in events if e.kind == "import.missing"}
        for event in events:
            if event.phase not in phases or event.kind == "code.disguised" or probe.allows(event, missing):
                continue  # (a disguised code object is judged by the call sites it imitates, never by a pattern)
            k = key(event)
            if event.kind == "import" and event.caller and normalise(event.caller).startswith("{python}/"):
                k = f"{k} by {normalise(event.caller)}"  # a sensitive import: allowed from that call site only
            phases[event.phase].add(k)
    description = base.description if base else f"learned from benign {framework} models"
    return Profile(
        framework,
        {p: generalise(v) for p, v in phases.items()},
        description,
        capabilities=capabilities,
        machinery=list(base.machinery) if base else [],
        include=include,
    )
