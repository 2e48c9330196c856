"""Fixtures for proving the dynamic engine's containment: canaries outside the sandbox, a loopback listener.

Every test here runs real payloads inside bubblewrap, so the whole directory is skipped when bwrap or strace
is missing. A payload that escaped would leave a trace on the host that these fixtures look for: a file in
``canary_dir`` (under pytest's ``tmp_path``, i.e. under ``/tmp``, which the sandbox sees as an empty read-only
folder), a connection accepted by ``listener`` (a socket in the *host's* network namespace), or a process
still running after the scan (``no_survivors``).
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlwarden.core.findings import Finding
from mlwarden.core.policy import Policy, SandboxSettings
from mlwarden.scan.dynamic import engine as dyn
from mlwarden.scan.dynamic.events import PHASES
from mlwarden.scan.engine import scan_file
from mlwarden.scan.result import FileResult

HAVE_SANDBOX = shutil.which("bwrap") is not None and shutil.which("strace") is not None
needs_sandbox = pytest.mark.skipif(not HAVE_SANDBOX, reason="dynamic analysis needs bubblewrap and strace")


# --- host-side witnesses ---------------------------------------------------------------------------


@pytest.fixture
def canary_dir(tmp_path: Path) -> Path:
    """An empty folder on the host that no sandbox can write to (``/tmp`` is read-only and empty inside)."""
    path = tmp_path / "canary"
    path.mkdir()
    return path


@dataclass
class Listener:
    """A loopback TCP server in the host's network namespace that counts accepted connections."""

    port: int
    accepted: list[tuple[str, int]] = field(default_factory=list)

    @property
    def connections(self) -> int:
        """How many connections reached the host so far."""
        return len(self.accepted)


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A free loopback port, owned by the test, accepting in a background thread."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    state = Listener(srv.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            state.accepted.append(addr)
            conn.close()

    thread = threading.Thread(target=serve, name="canary-listener", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(timeout=5)
        srv.close()


def host_processes_with(marker: str) -> list[str]:
    """Command lines of host processes (other than this one) that mention ``marker``."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def no_survivors(marker: str, grace: float = 2.0) -> bool:
    """True when no host process mentions ``marker`` (allowing ``grace`` seconds for the kernel to reap)."""
    deadline = time.monotonic() + grace
    while host_processes_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def assert_contained(canary_dir: Path, listener: Listener | None = None, marker: str | None = None) -> None:
    """The three host-side checks: no canary file, no connection, no surviving process."""
    left = sorted(p.name for p in canary_dir.rglob("*") if "rmtree-target" not in p.parts)
    assert left == [], f"payload escaped the sandbox: {left}"
    if listener is not None:
        assert listener.connections == 0, f"payload reached the host's loopback: {listener.accepted}"
    assert no_survivors(marker or str(canary_dir)), host_processes_with(marker or str(canary_dir))


# --- running the engine ----------------------------------------------------------------------------


def scan_dynamic(path: Path, *, static: bool = False, policy: Policy | None = None) -> FileResult:
    """``scan_file`` in dynamic mode (optionally static too), with the default policy."""
    modes = ("static", "dynamic") if static else ("dynamic",)
    return scan_file(Path(path), policy or Policy(), modes=modes)


def scan_static(path: Path) -> FileResult:
    """The static scan alone (nothing runs)."""
    return scan_file(Path(path), Policy(), modes=("static",))


def dyn_findings(result: FileResult | list[Finding] | tuple[Finding, ...]) -> list[Finding]:
    """The findings of the dynamic engine (``MLW-DYN-*``)."""
    findings = result.findings if isinstance(result, FileResult) else result
    return [f for f in findings if f.rule_id.startswith("MLW-DYN-")]


def finding_text(finding: Finding) -> str:
    """Evidence plus every recorded event key (evidence shows five events; the details keep fifty)."""
    return finding.evidence + " " + " ".join(str(e) for e in finding.detail("events", []) or [])


def dyn_hits(result: FileResult, rule_id: str, phase: str | None = None) -> list[Finding]:
    """Dynamic findings of one rule, optionally in one phase."""
    return [f for f in dyn_findings(result) if f.rule_id == rule_id and (phase is None or f.location.phase == phase)]


def phase_status(result: FileResult) -> dict[str, str]:
    """``{phase: status}`` from the file's timeline."""
    return {name: status for name, status, _seconds, _events in result.timeline}


# --- probes: arbitrary Python run inside the sandbox through a pickle ------------------------------


class _Exec:
    """Pickles as ``builtins.exec(source)``; pickling never runs it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (self.source,)


def probe_pickle(folder: Path, source: str, name: str = "probe.pkl") -> Path:
    """Write a pickle that runs ``source`` when loaded (inside the sandbox only)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(pickle.dumps(_Exec(source), protocol=4))
    return path


PROBE_TAG = "PROBE-RESULT:"


def run_probe(
    folder: Path, source: str, limits: SandboxSettings | None = None
) -> tuple[dyn.DynamicResult, dict[str, object] | None]:
    """Run ``source`` in the sandbox (framework "pickle"); it may ``raise RuntimeError(PROBE_TAG + json)``.

    Returns the engine's result and the JSON object the probe reported through its phase error (None if it
    did not report).
    """
    import json

    path = probe_pickle(folder, source)
    result = dyn.analyse(path, "pickle", (str(path),), limits or SandboxSettings())
    for phase in result.phases:
        if PROBE_TAG in phase.error:
            payload = phase.error.split(PROBE_TAG, 1)[1]
            return result, json.loads(payload)
    return result, None


__all__ = [
    "HAVE_SANDBOX",
    "PHASES",
    "PROBE_TAG",
    "Listener",
    "assert_contained",
    "dyn_findings",
    "dyn_hits",
    "finding_text",
    "host_processes_with",
    "needs_sandbox",
    "no_survivors",
    "phase_status",
    "probe_pickle",
    "run_probe",
    "scan_dynamic",
    "scan_static",
]
