"""Learn framework profiles from benign models: run each in the sandbox and keep what it did."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from mlwarden.core.policy import SandboxSettings
from mlwarden.scan.dynamic import sandbox as sb
from mlwarden.scan.dynamic.engine import choose_framework, events_of, run_sandboxed
from mlwarden.scan.dynamic.events import Event
from mlwarden.scan.dynamic.profiles import Profile, learn


def observe(path: Path, framework: str, limits: SandboxSettings) -> tuple[list[Event], bool]:
    """Events of one sandboxed run and whether every phase finished."""
    events, phases = events_of(run_sandboxed(path, framework, limits))
    return events, all(p.status == "ok" for p in phases)


def files_for(framework: str, paths: Iterable[Path]) -> list[Path]:
    """The files among ``paths`` that ``framework`` loads (by content, as the scanner decides)."""
    from mlwarden.core.policy import Policy
    from mlwarden.scan.engine import expand, scan_file

    out = []
    for f in expand(paths):
        result = scan_file(f, Policy())
        formats = [(chain, _fmt(fmt)) for chain, fmt in result.formats]
        if choose_framework(f, formats) == framework:
            out.append(f)
    return out


def _fmt(value: str):  # type: ignore[no-untyped-def]
    from mlwarden.artifacts.sniff import Format

    return Format(value)


def learn_from(
    framework: str,
    paths: Iterable[Path],
    limits: SandboxSettings,
    base: Profile | None = None,
    progress: Callable[[Path, bool], None] | None = None,
) -> tuple[Profile, int]:
    """A profile from every benign file of ``framework`` under ``paths``; returns it and how many runs fed it."""
    sb.check_available_cached()
    runs = []
    for f in files_for(framework, paths):
        events, complete = observe(f, framework, limits)
        if progress is not None:
            progress(f, complete)
        runs.append(events)
    return learn(framework, runs, base), len(runs)
