"""Framework profiles: what each phase of loading a benign model normally does to the host.

A profile is a readable TOML file (``profiles/<framework>.toml``, shipped, reviewed and versioned; users can
learn their own with ``mlwarden profile learn``). For every phase it lists allowed event keys
``kind:target`` as shell-style patterns over *normalised* targets: ``{python}`` stands for the interpreter's
installation and package directories, ``{model}`` for the model's folder, ``{tmp}`` for the sandbox's private
scratch folder (``TMPDIR``), ``{home}`` for the home directory inside the sandbox. An event no pattern allows is
a deviation. Code evaluation (``code.exec``/``code.compile``) is allowed only from named call sites of the
framework's own machinery (``... by {python}/<file>:<function>``), never from "anything installed".
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
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


@dataclass
class Profile:
    """Allowed event patterns per phase for one framework."""

    framework: str
    phases: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    version: int = 1

    def allows(self, event: Event) -> bool:
        """Whether ``event`` matches the baseline or the profile's patterns for its phase."""
        k = key(event)
        if event.phase == "teardown":  # deferred work: whatever some phase of the framework may do
            patterns = (*BASELINE, *TEARDOWN, *(p for allowed in self.phases.values() for p in allowed))
        else:
            patterns = (*BASELINE, *self.phases.get(event.phase, ()))
        if event.phase == "setup":
            return True  # the runner itself starting up, before the framework is touched
        return any(k == p or fnmatch.fnmatchcase(k, p) for p in patterns)

    def to_toml(self) -> str:
        """Serialise (stable order, one pattern per line, so reviews read as diffs)."""
        lines = [
            f"# mlwarden dynamic-analysis profile for {self.framework}",
            f'framework = "{self.framework}"',
            f"version = {self.version}",
            f"description = {_q(self.description)}",
            "",
        ]
        for phase in PHASES:
            lines.append(f"[phases.{phase}]")
            lines.append("allow = [")
            lines += [f"    {_q(p)}," for p in sorted(set(self.phases.get(phase, ())))]
            lines += ["]", ""]
        return "\n".join(lines)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_profile(framework: str, directory: Path | None = None) -> Profile:
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
    return Profile(
        str(data.get("framework", framework)), out, str(data.get("description", "")), int(data.get("version", 1))
    )


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
        if k.startswith("import:"):
            top = k[len("import:") :].split(".")[0]
            packages[top] = packages.get(top, 0) + 1
    out: set[str] = set()
    for k in keys:
        if any(k == p or fnmatch.fnmatchcase(k, p) for p in BASELINE):
            continue
        if k.startswith("import:"):
            top = k[len("import:") :].split(".")[0]
            if packages[top] >= COLLAPSE_IMPORTS:
                out.add(f"import:{top}*")
                continue
        kind, _, target = k.partition(":")
        if kind in ("file.read", "file.list", "native.load") and target.startswith("{python}/"):
            continue  # covered by the baseline
        if kind == "code.construct":
            out.add("code.construct:*")  # code objects built by libraries while unpickling (their effects are judged)
            continue
        if kind in ("code.exec", "code.compile") and " by {python}/" in target:
            # code a framework library generates (namedtuple, dataclasses): allowed from that call site only
            # (file and function), never "by anything installed" (timeit, runpy, code evaluate what they are given)
            out.add(f"{kind}:* by {target.rpartition(' by ')[2]}")
            continue
        if kind in ("file.write", "file.modify", "file.read") and target.startswith("{tmp}/"):
            out.add(f"{kind}:{{tmp}}/*")
            continue
        out.add(k)
    return sorted(out)


#: packages a framework imports lazily while loading models (numpy 1 pickles pull in ``numpy.core`` shims under
#: numpy 2, torch pulls in its serialisation helpers...): importing them in any phase is expected.
FRAMEWORK_PACKAGES: dict[str, tuple[str, ...]] = {
    "pickle": ("numpy",),
    "joblib": ("joblib", "sklearn", "scipy", "numpy"),
    "torch": ("torch", "numpy"),
    "torchscript": ("torch", "numpy"),
    "numpy": ("numpy",),
    "keras": ("keras", "numpy", "torch", "h5py"),
    "onnx": ("onnxruntime", "onnx", "numpy"),
    "jinja": ("jinja2", "markupsafe", "gguf", "numpy"),
}


def learn(framework: str, events_per_model: Iterable[Iterable[Event]], base: Profile | None = None) -> Profile:
    """A profile allowing everything the given benign runs did (extending ``base`` if given)."""
    own = {f"import:{package}*" for package in FRAMEWORK_PACKAGES.get(framework, ())}
    phases: dict[str, set[str]] = {p: set(base.phases.get(p, []) if base else []) | own for p in PHASES}
    for events in events_per_model:
        for event in events:
            if event.phase in phases:
                phases[event.phase].add(key(event))
    description = base.description if base else f"learned from benign {framework} models"
    return Profile(framework, {p: generalise(v) for p, v in phases.items()}, description)
