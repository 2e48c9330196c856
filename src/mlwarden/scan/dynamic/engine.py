"""Dynamic analysis of one file: pick the framework, run the phases in the sandbox, judge the deviations."""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Confidence, Finding, Location, Rule, Severity, rule
from mlwarden.scan.dynamic import sandbox as sb
from mlwarden.scan.dynamic.adapters import REQUIRES
from mlwarden.scan.dynamic.events import PHASES, Event, PhaseRecord
from mlwarden.scan.dynamic.profiles import SENSITIVE_IMPORTS, Profile, key, load_profile, normalise
from mlwarden.scan.dynamic.records import verify
from mlwarden.scan.dynamic.trace import REFUSED, REFUSED_KIND, audit_events, syscall_events

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
    "code.introspect": "code.exec",  # a chat template reaching for interpreter internals (__globals__, eval ...)
    "process.signal": "process.exec",
    "file.list": "file.read",
}
for _alias, _target in _ALIASES.items():
    KIND_RULES[_alias] = KIND_RULES[_target]
KIND_RULES[REFUSED_KIND] = REFUSED  # a call the sandbox's seccomp filter refused (MLW-DYN-013)

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
DEFERRED = rule(
    "MLW-DYN-009",
    "Model left work running after loading",
    Severity.MEDIUM,
    cwe=506,
    description="After the last phase the model still had threads, timers or alarms of its own pending (what a "
    "long-running program would go on to execute). Their effects within the observation window are judged like any "
    "phase's; whatever was still pending when the window closed was not observed.",
    remediation="Inspect the model: loading a model has no reason to leave work scheduled.",
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

_DANGEROUS_IMPORTS = SENSITIVE_IMPORTS


@dataclass
class DynamicResult:
    """What one sandboxed run found."""

    framework: str | None
    findings: list[Finding] = field(default_factory=list)
    phases: list[PhaseRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    seconds: float = 0.0


def may_run(formats: list[tuple[tuple[str, ...], Format]]) -> bool:
    """Whether :func:`choose_framework` can pick a loader for a file with these layers, without reading the file.

    A remote object is downloaded for the sandbox only when this holds (a README or a config never runs).
    """
    if formats and formats[0][1] is Format.PICKLE:  # pickle, joblib or legacy torch: which one needs the bytes
        return True
    return choose_framework(Path(), formats) is not None


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


def _allowed_call_site(site: str, profile: Profile) -> bool:
    import fnmatch

    everywhere = (*profile.machinery, *profile.inherited)
    patterns = [p for allowed in (*profile.phases.values(), everywhere) for p in allowed if p.startswith("code.")]
    return any(
        fnmatch.fnmatchcase(f"{kind}:* by {site}", p) for kind in ("code.exec", "code.compile") for p in patterns
    )


def judge(events: list[Event], profile: Profile, chain: tuple[str, ...]) -> list[Finding]:
    """One finding per (rule, phase), listing every deviating event of that kind in that phase."""
    from mlwarden.scan.static.pickle import rules as pickle_rules

    grouped: dict[tuple[str, str], list[Event]] = defaultdict(list)
    findings: list[Finding] = []
    missing = {e.target for e in events if e.kind == "import.missing"}  # imports no finder found: they failed
    for event in events:
        if event.kind == "pickle.global":
            module, _, name = event.target.partition(":")
            module, name = pickle_rules.normalise(module, name)
            verdict = pickle_rules.judge(module, name, frozenset(), frozenset())
            if verdict.verdict is pickle_rules.Verdict.DANGEROUS and verdict.rule is not None:
                grouped[(verdict.rule.id, event.phase)].append(event)
            continue
        if event.kind == "code.disguised":
            # a code object built with an installed file's name: a disguise when that name is a call site the
            # profile lets evaluate code (types.coroutine and the like rebuild code under its own name: not judged)
            if _allowed_call_site(normalise(event.target), profile):
                grouped[(KIND_RULES["tamper"].id, event.phase)].append(event)
            continue
        if profile.allows(event, missing):
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


def run_sandboxed(path: Path, framework: str, limits: sb.SandboxLimits, *, traced: bool = True) -> sb.SandboxRun:
    """One cold sandboxed run of the runner over ``path`` (its folder bound read-only at its own path)."""
    resolved = path.resolve()
    binds = sb.model_binds([resolved.parent])
    inside = f"{binds[0][1]}/{resolved.name}"
    return sb.run_python(
        binds, ["mlwarden.scan.dynamic.runner", "--framework", framework, "--model", inside], limits, traced=traced
    )


#: phase records in the order a genuine runner writes them
_ORDER = (*PHASES, "teardown")


def chain_problems(records: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the order of a run's genuine phase records (empty: the runner went through them in order)."""
    problems: list[str] = []
    started: list[str] = []
    open_phase: str | None = None
    done = False
    for rec in records:
        kind = rec.get("type")
        if done and kind in ("phase", "done", "event"):
            problems.append(f"record after the final one: {kind}")
            continue
        if kind == "done":
            done = True
            if open_phase is not None:
                problems.append(f"final record while phase {open_phase} was still open")
        elif kind == "phase":
            name, status = str(rec.get("name")), str(rec.get("status"))
            if status == "start":
                if open_phase is not None or name not in _ORDER or name in started:
                    problems.append(f"phase {name} started out of order")
                elif started and _ORDER.index(name) < _ORDER.index(started[-1]):
                    problems.append(f"phase {name} started after {started[-1]}")
                started.append(name)
                open_phase = name
            elif name != open_phase:
                problems.append(f"phase {name} ended without having started")
            else:
                open_phase = None
    return problems


def _model_relative(events: list[Event], binds: list[tuple[str, str]]) -> list[Event]:
    """Targets inside the bound model folders become ``{model}/...`` (they are bound at their own host paths)."""
    insides = sorted({inside.rstrip("/") for _, inside in binds}, key=len, reverse=True)
    if not insides:
        return events

    def rewrite(text: str) -> str:
        if " by " in text:
            what, _, caller = text.rpartition(" by ")
            return f"{rewrite(what)} by {rewrite(caller)}"
        for inside in insides:
            if text == inside or text.startswith(inside + "/"):
                return "{model}" + text[len(inside) :]
        return text

    return [replace(e, target=rewrite(e.target)) if e.target else e for e in events]


def _fsdiff_events(records: list[dict[str, Any]]) -> list[Event]:
    """Files the run left changed in the writable mounts (outside its scratch space), seen by comparing them."""
    out: list[Event] = []
    for rec in records:
        if rec.get("type") != "fsdiff":
            continue
        for what in ("changed", "removed"):
            paths = rec.get(what)
            for p in paths if isinstance(paths, list) else []:
                path = str(p)
                kind = "file.write" if what == "changed" and not path.endswith("/") else "file.modify"
                path = path.rstrip("/") or "/"
                out.append(Event("teardown", kind, path, "fsdiff", f"{what} in a writable mount: {path}"))
    return out


def events_of(run: sb.SandboxRun) -> tuple[list[Event], list[PhaseRecord]]:
    """Phase-attributed events (audit hook, syscalls, file-system diff) and phase outcomes of one run."""
    records = _genuine(run)
    audit, phases = audit_events(records)  # (failed read attempts would differ between the two runs)
    events = audit + syscall_events(run.trace, sb.SANDBOX_TMP) + _fsdiff_events(records)
    if not run.traced:
        events = [replace(e, source="untraced") for e in events]
    return _model_relative(events, run.binds), phases


def _genuine(run: sb.SandboxRun) -> list[dict[str, Any]]:
    """The run's authenticated records (all records when the run had no key: a test's hand-made run)."""
    if not run.key:
        return list(run.records)
    if run.verified is None:
        records, verifier = verify(run.raw_records, run.key)
        run.verified, run.forged, run.forged_samples = records, verifier.forged, verifier.samples
    return list(run.verified)


def judge_run(
    run: sb.SandboxRun, framework: str, chain: tuple[str, ...], limits: sb.SandboxLimits, profile: Profile
) -> DynamicResult:
    """Findings of one run (cold or from the warm pool): deviations, limits reached, phases that failed."""
    result = DynamicResult(framework)
    events, phases = events_of(run)
    records = _genuine(run)
    result.events, result.phases, result.seconds = events, phases, run.seconds
    result.findings = judge(events, profile, chain)
    errors = [p for p in phases if p.status == "error"]
    full = _full_mounts(records)
    incomplete = True
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
    elif full or (errors and ("[Errno 28]" in errors[0].error or "No space left" in errors[0].error)):
        where = ", ".join(full) or errors[0].error[:200]
        result.findings.append(
            INCOMPLETE.finding(Location(chain), f"writable storage filled to its limit: {where}", limit="tmpfs_bytes")
        )
    elif errors:
        p = errors[0]
        result.findings.append(PHASE_ERROR.finding(Location(chain, None, p.name), p.error[:500], phase=p.name))
        incomplete = False
    elif any(p.status != "ok" for p in phases):
        tail = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        result.findings.append(
            INCOMPLETE.finding(Location(chain), f"sandboxed run ended early: {tail[0][:300]}", limit="sandbox")
        )
    else:
        incomplete = False
    _judge_channel(result, run, records, chain, incomplete)
    pending = [str(w) for rec in records if rec.get("type") == "pending" for w in rec.get("work") or []]
    if pending:
        result.findings.append(
            DEFERRED.finding(
                Location(chain, None, "teardown"),
                f"still pending {getattr(limits, 'quiesce_seconds', sb.QUIESCE_SECONDS):g}s after the last phase: "
                f"{'; '.join(pending[:5])}",
                phase="teardown",
                work=pending[:50],
            )
        )
    return result


def _full_mounts(records: list[dict[str, Any]]) -> list[str]:
    """Writable mounts the run filled (to within 64 KiB of their size)."""
    out = []
    for rec in records:
        mounts = rec.get("mounts") if rec.get("type") == "storage" else None
        for mount, usage in (mounts or {}).items() if isinstance(mounts, dict) else ():
            if isinstance(usage, list) and len(usage) == 2 and usage[1] and usage[0] >= usage[1] - (64 << 10):
                out.append(f"{mount} ({usage[0]} of {usage[1]} bytes)")
    return out


def _judge_channel(
    result: DynamicResult, run: sb.SandboxRun, records: list[dict[str, Any]], chain: tuple[str, ...], noted: bool
) -> None:
    """Forged or missing records on the event channel: a run whose reporting was interfered with is never clean."""
    tamper = KIND_RULES["tamper"]
    forged = run.forged
    if forged:
        samples = "; ".join(run.forged_samples[:2])
        result.findings.append(
            tamper.finding(
                Location(chain),
                f"{forged} record(s) on the event channel were not written by the runner (forged or replayed): "
                f"{samples}",
                forged=forged,
            )
        )
    problems = chain_problems(records) if run.key else []
    if problems:
        result.findings.append(
            tamper.finding(Location(chain), f"the runner's records are out of order: {'; '.join(problems[:3])}")
        )
    if run.key and not noted and not any(r.get("type") == "done" for r in records):
        result.findings.append(
            INCOMPLETE.finding(
                Location(chain), "the runner's final record is missing: its reporting stopped", limit="sandbox"
            )
        )


def merge_untraced(traced: DynamicResult, untraced: DynamicResult) -> DynamicResult:
    """Add what a second, untraced run showed (a payload that hides from the tracer acts there).

    Deviations only the untraced run had are reported with their own rules, marked as such, plus one
    MLW-DYN-008 finding saying the model behaved differently when it was not traced.
    """
    seen = {(f.rule_id, f.location.phase) for f in traced.findings}
    traced_keys = {key(e) for e in traced.events}
    extra = []
    for f in untraced.findings:
        if (f.rule_id, f.location.phase) in seen or f.rule_id == PHASE_ERROR.id:
            continue
        extra.append(replace(f, evidence=f"(untraced run) {f.evidence}"))
    deviations = [
        key(e)
        for e in untraced.events
        if key(e) not in traced_keys and any(key(e) in (f.detail("events", []) or []) for f in untraced.findings)
    ]
    only_untraced = [e for e in untraced.events if key(e) not in traced_keys]  # (the rest is already there)
    out = replace(traced, findings=list(traced.findings) + extra, events=list(traced.events) + only_untraced)
    if deviations:
        out.findings.append(
            KIND_RULES["tamper"].finding(
                Location(extra[0].location.chain if extra else untraced.findings[0].location.chain),
                "the model did things only when it was not traced (it detects the tracer): "
                + "; ".join(sorted(set(deviations))[:5]),
                events=sorted(set(deviations))[:50],
            )
        )
    out.seconds = traced.seconds + untraced.seconds
    return out


def analyse(
    path: Path,
    framework: str,
    chain: tuple[str, ...],
    limits: sb.SandboxLimits,
    profile_dir: Path | None = None,
    *,
    untraced: bool = True,
) -> DynamicResult:
    """Run ``path`` through ``framework``'s phases in the sandbox and judge what happened.

    It runs twice: traced (strace + audit hook) and, unless ``untraced=False``, untraced (audit hook and the
    file-system diff only: nothing there shows ``TracerPid``), and reports what either run showed.
    """
    if not framework_installed(framework):
        result = DynamicResult(framework)
        result.findings.append(
            UNAVAILABLE.finding(Location(chain), f"{REQUIRES[framework]} is not installed", framework=framework)
        )
        return result
    profile = load_profile(framework, profile_dir)
    result = judge_run(run_sandboxed(path, framework, limits), framework, chain, limits, profile)
    if not untraced:
        return result
    second = judge_run(run_sandboxed(path, framework, limits, traced=False), framework, chain, limits, profile)
    return merge_untraced(result, second)
