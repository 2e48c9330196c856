"""Run a scan: expand paths, analyse every file (in parallel when there are many), apply the policy."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mlwarden._version import __version__
from mlwarden.artifacts.artifact import Artifact
from mlwarden.core.errors import UsageError
from mlwarden.core.findings import Finding, Location
from mlwarden.core.policy import Policy
from mlwarden.core.suppressions import Suppression, SuppressionUse, today
from mlwarden.scan.context import INCOMPLETE, ScanContext
from mlwarden.scan.remote import RemoteError, RemoteFile, is_remote, resolve
from mlwarden.scan.result import FileResult, ScanReport
from mlwarden.scan.suppressions import apply_suppressions, identities

if TYPE_CHECKING:
    from mlwarden.scan.dynamic.engine import DynamicResult
    from mlwarden.scan.remote_cache import RemoteCache

Progress = Callable[[FileResult], None]


def expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and directories (recursively, sorted, symlinked directories not followed).

    Raises:
        UsageError: a path does not exist. (Unreadable files are reported per file, not here.)
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if not p.exists() and not p.is_symlink():
            raise UsageError(f"no such file or directory: {p}")
        if p.is_dir():
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs.sort()
                for name in sorted(files):
                    child = Path(root) / name
                    if child not in seen:
                        seen.add(child)
                        out.append(child)
        elif p not in seen:
            seen.add(p)
            out.append(p)
    return out


def expand_targets(paths: Iterable[str | os.PathLike[str] | RemoteFile]) -> list[Path | RemoteFile]:
    """Like :func:`expand`, with ``scheme://`` URLs resolved to the remote objects they name (``docs/remote.md``).

    Raises:
        UsageError: a path does not exist; :class:`~mlwarden.scan.remote.RemoteError` for a URL that names nothing.
    """
    out: list[Path | RemoteFile] = []
    seen: set[str] = set()
    for raw in paths:
        found: list[Path | RemoteFile]
        if isinstance(raw, RemoteFile):
            found = [raw]
        elif is_remote(raw):
            found = list(resolve(str(raw)))
        else:
            found = list(expand([raw]))
        for item in found:
            key = item.display if isinstance(item, RemoteFile) else str(item)
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


def _apply_policy(findings: list[Finding], policy: Policy) -> tuple[Finding, ...]:
    out: list[Finding] = []
    for f in findings:
        override = policy.rules.get(f.rule_id)
        if override is not None:
            if not override.enabled:
                continue
            if override.severity is not None:
                f = f.with_severity(override.severity)
        out.append(f)
    return tuple(out)


def scan_file(path: Path, policy: Policy, modes: tuple[str, ...] = ("static",)) -> FileResult:
    """Analyse one file on disk (static, and dynamic when asked). Never raises for bad content.

    Raises:
        SandboxUnavailable: dynamic analysis was asked for and the sandbox cannot be created (it never falls
            back to running the model unsandboxed).
    """
    started = time.monotonic()
    display = str(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return FileResult(display, None, (), (), 0.0, error=f"{display}: not a regular file")
        artifact = Artifact.from_path(path, display)
    except OSError as exc:
        return FileResult(display, None, (), (), time.monotonic() - started, error=f"{display}: {exc.strerror or exc}")
    ctx = ScanContext(policy)
    too_big = st.st_size > policy.limits.max_file_size
    if too_big:
        ctx.report(
            INCOMPLETE.finding(
                artifact.location(),
                f"file is {st.st_size} bytes, max_file_size is {policy.limits.max_file_size}",
                limit="max_file_size",
            )
        )
    elif "static" in modes:
        ctx.descend(artifact)
    else:  # dynamic only: walk the layers (to pick the loader, e.g. inside a gzip) but report nothing static
        scratch = ScanContext(policy)
        scratch.descend(artifact)
        ctx.formats.extend(scratch.formats)
    framework: str | None = None
    timeline: tuple[tuple[str, str, float, int], ...] = ()
    if "dynamic" in modes and not too_big:
        framework, timeline = _dynamic(path, display, ctx, policy)
    formats = tuple((tuple(chain), fmt.value) for chain, fmt in ctx.formats)
    return FileResult(
        display,
        st.st_size,
        formats,
        _apply_policy(ctx.findings, policy),
        time.monotonic() - started,
        framework=framework,
        timeline=timeline,
    )


def scan_remote(
    item: RemoteFile, policy: Policy, modes: tuple[str, ...] = ("static",), cache: RemoteCache | None = None
) -> FileResult:
    """Statically analyse one remote object with ranged reads; the result carries its provenance.

    With ``"dynamic"`` in ``modes`` the object is also downloaded once into ``cache`` (a private, content-addressed
    :class:`~mlwarden.scan.remote_cache.RemoteCache`; the default one when ``None``) and that copy runs in the
    sandbox; the provenance then carries the copy's sha256 (``docs/remote.md``).

    A transport failure (object gone, refused, changed mid-scan) makes the file an error (exit 2), never a finding
    that could be mistaken for content: nothing reliable was analysed.
    """
    started = time.monotonic()
    ctx = ScanContext(policy)
    reader = None
    framework: str | None = None
    timeline: tuple[tuple[str, str, float, int], ...] = ()
    cached: str | None = None
    try:
        if item.size > policy.limits.max_file_size:
            ctx.report(
                INCOMPLETE.finding(
                    Location((item.display,)),
                    f"file is {item.size} bytes, max_file_size is {policy.limits.max_file_size}",
                    limit="max_file_size",
                )
            )
        else:
            artifact, reader = item.artifact()
            walk = ctx if "static" in modes else ScanContext(policy)  # dynamic only: the layers pick the loader
            walk.descend(artifact)
            if walk is not ctx:
                ctx.formats.extend(walk.formats)
            if reader.failure is not None:
                raise RemoteError(reader.failure)
            changed = item.verify() if item.verify is not None else None
            if changed is not None:
                raise RemoteError(changed)
            if "dynamic" in modes and _may_run(ctx):  # what no loader runs is not downloaded (README, config)
                from mlwarden.scan.remote_cache import RemoteCache

                copy = (cache or RemoteCache()).fetch(item, policy.limits.max_file_size)
                cached = copy.sha256
                framework, timeline = _dynamic(copy.path, item.display, ctx, policy)
    except RemoteError as exc:
        return FileResult(
            item.display,
            item.size,
            (),
            (),
            time.monotonic() - started,
            error=str(exc),
            remote=item.provenance(reader, cached),
        )
    formats = tuple((tuple(chain), fmt.value) for chain, fmt in ctx.formats)
    return FileResult(
        item.display,
        item.size,
        formats,
        _apply_policy(ctx.findings, policy),
        time.monotonic() - started,
        framework=framework,
        timeline=timeline,
        remote=item.provenance(reader, cached),
    )


def _may_run(ctx: ScanContext) -> bool:
    from mlwarden.scan.dynamic.engine import may_run

    return may_run(ctx.formats)


def _dynamic(
    path: Path, display: str, ctx: ScanContext, policy: Policy
) -> tuple[str | None, tuple[tuple[str, str, float, int], ...]]:
    """Run the sandboxed phases for ``path`` and add their findings to ``ctx``; returns the framework and timeline."""
    from mlwarden.scan.dynamic import engine as dyn
    from mlwarden.scan.dynamic.sandbox import check_available_cached

    framework = dyn.choose_framework(path, ctx.formats)
    if framework is None:
        return None, ()
    check_available_cached()
    profile_dir = Path(policy.sandbox.profile_dir) if policy.sandbox.profile_dir else None
    result = dyn.analyse(path, framework, (display,), policy.sandbox, profile_dir)
    for finding in result.findings:
        ctx.report(finding)
    return framework, _timeline(result)


def _timeline(result: DynamicResult) -> tuple[tuple[str, str, float, int], ...]:
    """(phase, status, seconds, events) per phase, as FileResult carries it."""
    counts: dict[str, int] = {}
    for event in result.events:
        counts[event.phase] = counts.get(event.phase, 0) + 1
    return tuple((p.name, p.status, p.seconds, counts.get(p.name, 0)) for p in result.phases)


def _scan_many(files: list[Path], policy: Policy, jobs: int, modes: tuple[str, ...]) -> Iterator[FileResult]:
    if jobs <= 1 or len(files) < 4:
        for f in files:
            yield scan_file(f, policy, modes)
        return
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, min(64, len(files) // (jobs * 8)))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(scan_file, files, [policy] * len(files), [modes] * len(files), chunksize=chunk)


#: from this many files on, dynamic analysis runs in warm pools (one framework import per pool, a fork per file)
POOL_MIN_FILES = 3


def _scan_pooled(files: list[Path], policy: Policy, jobs: int, modes: tuple[str, ...]) -> list[FileResult]:
    """Static pass for every file (in parallel), then the dynamic pass per framework in one warm pool each."""
    from dataclasses import replace

    from mlwarden.artifacts.sniff import Format
    from mlwarden.scan.dynamic import engine as dyn
    from mlwarden.scan.dynamic.pool import analyse_many

    first = ("static",) if "static" in modes else ("formats",)
    results = list(_scan_many(files, policy, jobs, first))
    groups: dict[str, list[int]] = {}
    for i, (path, result) in enumerate(zip(files, results, strict=True)):
        if result.error is not None or result.size is None or result.size > policy.limits.max_file_size:
            continue
        formats = [(chain, Format(fmt)) for chain, fmt in result.formats]
        framework = dyn.choose_framework(path, formats)
        if framework is not None:
            groups.setdefault(framework, []).append(i)
    profile_dir = Path(policy.sandbox.profile_dir) if policy.sandbox.profile_dir else None
    for framework, indexes in groups.items():
        chains: dict[Path, tuple[str, ...]] = {files[i]: (results[i].path,) for i in indexes}
        found = analyse_many([files[i] for i in indexes], framework, policy.sandbox, profile_dir, chains)
        for i in indexes:
            dyn_result = found[files[i]]
            findings = results[i].findings + _apply_policy(dyn_result.findings, policy)
            results[i] = replace(results[i], findings=findings, framework=framework, timeline=_timeline(dyn_result))
    return results


def scan_paths(
    paths: Iterable[str | os.PathLike[str] | RemoteFile],
    policy: Policy | None = None,
    *,
    jobs: int | None = None,
    progress: Progress | None = None,
    modes: tuple[str, ...] = ("static",),
    suppressions: Sequence[Suppression] = (),
    cache: RemoteCache | None = None,
) -> ScanReport:
    """Scan files and directories and return the report (see :func:`mlwarden.scan`).

    ``modes`` holds ``"static"`` and/or ``"dynamic"``. With ``"dynamic"`` the sandbox is probed once up front:
    :class:`~mlwarden.scan.dynamic.sandbox.SandboxUnavailable` is raised before any file is touched.
    ``suppressions`` (reviewed, see ``mlwarden/scan/suppressions.py``) mark findings after the analysis.
    Remote objects are analysed dynamically on a copy downloaded into ``cache`` (default: the user's private
    remote cache; :mod:`mlwarden.scan.remote_cache`).
    """
    paths = list(paths)
    if "dynamic" in modes:
        from mlwarden.scan.dynamic.sandbox import check_available_cached

        check_available_cached()
    policy = policy or Policy()
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    targets = expand_targets(paths)
    files = [t for t in targets if isinstance(t, Path)]
    before = identities(files) if any(s.digest is not None for s in suppressions) else {}
    jobs = jobs if jobs and jobs > 0 else (os.cpu_count() or 1)
    results: list[FileResult] = []
    if len(files) < len(targets):  # remote objects: one at a time, in this process (I/O bound, shared caches)
        for target in targets:
            result = (
                scan_remote(target, policy, modes, cache)
                if isinstance(target, RemoteFile)
                else scan_file(target, policy, modes)
            )
            results.append(result)
            if progress is not None:
                progress(result)
    elif "dynamic" in modes and len(files) >= POOL_MIN_FILES:
        results = _scan_pooled(files, policy, jobs, modes)
        for result in results:
            if progress is not None:
                progress(result)
    else:
        for result in _scan_many(files, policy, jobs, modes):
            results.append(result)
            if progress is not None:
                progress(result)
    uses: tuple[SuppressionUse, ...] = ()
    if suppressions:
        results, uses = apply_suppressions(results, suppressions, today(), before)
    return ScanReport(tuple(results), policy.fail_on, started_at, time.monotonic() - t0, __version__, modes, uses)
