"""Dynamic analysis of one file: pick the framework, run the phases in the sandbox, judge the deviations."""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Confidence, Finding, Location, Rule, Severity, rule
from mlwarden.scan.dynamic import sandbox as sb
from mlwarden.scan.dynamic.adapters import REQUIRES
from mlwarden.scan.dynamic.events import Event, PhaseRecord
from mlwarden.scan.dynamic.profiles import Profile, key, load_profile, normalise
from mlwarden.scan.dynamic.trace import audit_events, syscall_events

_FIX = "Do not load this model outside a sandbox; report it to its publisher."


def _r(rid: str, title: str, sev: Severity, cwe: int | None, desc: str) -> Rule:
    return rule(rid, title, sev, cwe=cwe, description=desc, remediation=_FIX)


KIND_RULES: dict[str, Rule] = {
    "process.exec": _r(
        "MLW-DYN-001",
        "Model started a process while loading",
        Severity.CRITICAL,
        78,
        "A phase of loading the model executed a program or shell command.",
    ),
    "process.fork": _r(
        "MLW-DYN-001",
        "Model started a process while loading",
        Severity.CRITICAL,
        78,
        "A phase of loading the model executed a program or shell command.",
    ),
    "net.connect": _r(
        "MLW-DYN-002",
        "Model used the network while loading",
        Severity.HIGH,
        918,
        "A phase of loading the model opened a connection, resolved a name or sent a request.",
    ),
    "file.write": _r(
        "MLW-DYN-003",
        "Model wrote or changed files while loading",
        Severity.HIGH,
        73,
        "A phase of loading the model wrote, deleted, renamed or changed the mode of files.",
    ),
    "native.load": _r(
        "MLW-DYN-004",
        "Model loaded native code while loading",
        Severity.HIGH,
        829,
        "A phase of loading the model loaded a shared library its framework does not load.",
    ),
    "code.exec": _r(
        "MLW-DYN-005",
        "Model evaluated code while loading",
        Severity.HIGH,
        94,
        "A phase of loading the model compiled, executed or constructed Python code that the framework "
        "does not in that phase.",
    ),
    "import": _r(
        "MLW-DYN-006",
        "Model imported an unexpected module",
        Severity.MEDIUM,
        829,
        "A phase of loading the model imported a module the framework does not import in that phase.",
    ),
    "file.read": _r(
        "MLW-DYN-007",
        "Model read unexpected files while loading",
        Severity.MEDIUM,
        200,
        "A phase of loading the model read files outside the framework, the system and the model.",
    ),
    "tamper": _r(
        "MLW-DYN-008",
        "Model tampered with the interpreter's monitoring",
        Severity.HIGH,
        693,
        "A phase of loading the model installed audit/trace hooks or used ptrace.",
    ),
}
_ALIASES = {
    "net.bind": "net.connect",
    "net.resolve": "net.connect",
    "net.request": "net.connect",
    "file.modify": "file.write",
    "native.call": "native.load",
    "code.compile": "code.exec",
    "code.construct": "code.exec",
    "process.signal": "process.exec",
    "file.list": "file.read",
}
for _alias, _target in _ALIASES.items():
    KIND_RULES[_alias] = KIND_RULES[_target]

INCOMPLETE = rule(
    "MLW-DYN-010",
    "Dynamic analysis incomplete",
    Severity.MEDIUM,
    cwe=400,
    description="The sandboxed run hit its time or resource limit, or ended before every phase finished for a "
    "reason other than an ordinary loading error.",
    remediation="Raise the sandbox limits if the model is legitimately this heavy; inspect it otherwise.",
)
UNAVAILABLE = rule(
    "MLW-DYN-011",
    "Dynamic analysis not available",
    Severity.LOW,
    cwe=None,
    description="No loader for this format is installed here, so the model was not run; only static analysis applies.",
    remediation="Install the framework's extra (e.g. pip install 'mlwarden[torch]') and scan again.",
    confidence=Confidence.HIGH,
)
PHASE_ERROR = rule(
    "MLW-DYN-012",
    "Model failed to load in the sandbox",
    Severity.INFO,
    cwe=None,
    description="A phase raised an error (the model is corrupt, needs custom code, or its synthesised input did "
    "not fit). Events up to that point were still judged.",
    remediation="None needed if the model is yours.",
)

_DANGEROUS_IMPORTS = (
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


@dataclass
class DynamicResult:
    """What one sandboxed run found."""

    framework: str | None
    findings: list[Finding] = field(default_factory=list)
    phases: list[PhaseRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    seconds: float = 0.0


def choose_framework(path: Path, formats: list[tuple[tuple[str, ...], Format]]) -> str | None:
    """The framework that loads this file, from the static scan's view of its layers (None: no loader runs it)."""
    if not formats:
        return None
    top = formats[0][1]
    members = {chain[-1] for chain, _ in formats[1:] if len(chain) == 2}
    if top is Format.ZIP:
        if any(m.endswith("constants.pkl") for m in members) and any("/code/" in m for m in members):
            return "torchscript"
        if any(m.endswith("data.pkl") for m in members):
            return "torch"
        if {"config.json", "metadata.json"} <= members:
            return "keras"
        if members and all(m.endswith(".npy") for m in members):
            return "numpy"
        return None
    if top is Format.PICKLE:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"):
            return "torch"
        return "joblib" if b"joblib" in head else "pickle"
    compressed = {Format.GZIP, Format.BZIP2, Format.XZ, Format.LZMA, Format.ZLIB, Format.JOBLIB_ZF, Format.LZ4}
    if top in compressed:  # joblib decompresses, then unpickles; a compressed tar or zip is not a model
        inner = formats[1][1] if len(formats) > 1 else None
        return "joblib" if inner is Format.PICKLE else None
    table = {
        Format.NUMPY: "numpy",
        Format.HDF5: "keras",
        Format.ONNX: "onnx",
        Format.GGUF: "jinja",
        Format.TEMPLATE: "jinja",
        Format.HF_TOKENIZER_CONFIG: "jinja",
    }
    return table.get(top)


def framework_installed(framework: str) -> bool:
    """Whether the framework's package can be imported here (and so inside the sandbox)."""
    return importlib.util.find_spec(REQUIRES[framework]) is not None


def _deviation_rule(event: Event) -> Rule:
    rule_ = KIND_RULES.get(event.kind, KIND_RULES["code.exec"])
    if event.kind == "import" and event.target.startswith(_DANGEROUS_IMPORTS):
        return KIND_RULES["native.load"] if event.target.startswith("ctypes") else KIND_RULES["code.exec"]
    return rule_


def judge(events: list[Event], profile: Profile, chain: tuple[str, ...]) -> list[Finding]:
    """One finding per (rule, phase), listing every deviating event of that kind in that phase."""
    from mlwarden.scan.static.pickle import rules as pickle_rules

    grouped: dict[tuple[str, str], list[Event]] = defaultdict(list)
    findings: list[Finding] = []
    for event in events:
        if event.kind == "pickle.global":
            module, _, name = event.target.partition(":")
            module, name = pickle_rules.normalise(module, name)
            verdict = pickle_rules.judge(module, name, frozenset(), frozenset())
            if verdict.verdict is pickle_rules.Verdict.DANGEROUS and verdict.rule is not None:
                grouped[(verdict.rule.id, event.phase)].append(event)
            continue
        if profile.allows(event):
            continue
        grouped[(_deviation_rule(event).id, event.phase)].append(event)
    from mlwarden.core.findings import catalogue

    rules_by_id = catalogue()
    for (rule_id, phase), evs in sorted(grouped.items()):
        rule_ = rules_by_id[rule_id]
        shown = []
        for e in evs[:5]:
            text = f"{e.kind} {normalise(e.target)}" + (f" [{e.source}]" if e.source == "syscall" else "")
            shown.append(text)
        evidence = "; ".join(shown) + (f" (+{len(evs) - 5} more)" if len(evs) > 5 else "")
        stack = next((e.stack for e in evs if e.stack), ())
        findings.append(
            rule_.finding(
                Location(chain, None, phase),
                evidence,
                phase=phase,
                events=[key(e) for e in evs[:50]],
                stack=list(stack),
            )
        )
    return findings


def run_sandboxed(path: Path, framework: str, limits: sb.SandboxLimits) -> sb.SandboxRun:
    """One cold sandboxed run of the runner over ``path`` (its folder bound read-only)."""
    resolved = path.resolve()
    return sb.run_python(
        resolved.parent,
        ["mlwarden.scan.dynamic.runner", "--framework", framework, "--model", f"{sb.SANDBOX_DIR}/{resolved.name}"],
        limits,
    )


def events_of(run: sb.SandboxRun) -> tuple[list[Event], list[PhaseRecord]]:
    """Phase-attributed events (audit hook and syscalls) and phase outcomes of one run."""
    audit, phases = audit_events(run.records)
    return audit + syscall_events(run.trace), phases


def judge_run(
    run: sb.SandboxRun, framework: str, chain: tuple[str, ...], limits: sb.SandboxLimits, profile: Profile
) -> DynamicResult:
    """Findings of one run (cold or from the warm pool): deviations, limits reached, phases that failed."""
    result = DynamicResult(framework)
    events, phases = events_of(run)
    result.events, result.phases, result.seconds = events, phases, run.seconds
    result.findings = judge(events, profile, chain)
    errors = [p for p in phases if p.status == "error"]
    if run.timed_out:
        result.findings.append(
            INCOMPLETE.finding(
                Location(chain), f"wall-clock limit of {limits.wall_seconds}s reached", limit="wall_seconds"
            )
        )
    elif errors and errors[0].error.startswith("MemoryError"):
        p = errors[0]
        result.findings.append(
            INCOMPLETE.finding(
                Location(chain, None, p.name), f"memory limit reached: {p.error[:300]}", limit="memory_bytes"
            )
        )
    elif errors:
        p = errors[0]
        result.findings.append(PHASE_ERROR.finding(Location(chain, None, p.name), p.error[:500], phase=p.name))
    elif any(p.status != "ok" for p in phases):
        tail = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        result.findings.append(
            INCOMPLETE.finding(Location(chain), f"sandboxed run ended early: {tail[0][:300]}", limit="sandbox")
        )
    return result


def analyse(
    path: Path, framework: str, chain: tuple[str, ...], limits: sb.SandboxLimits, profile_dir: Path | None = None
) -> DynamicResult:
    """Run ``path`` through ``framework``'s phases in the sandbox and judge what happened."""
    if not framework_installed(framework):
        result = DynamicResult(framework)
        result.findings.append(
            UNAVAILABLE.finding(Location(chain), f"{REQUIRES[framework]} is not installed", framework=framework)
        )
        return result
    profile = load_profile(framework, profile_dir)
    return judge_run(run_sandboxed(path, framework, limits), framework, chain, limits, profile)
