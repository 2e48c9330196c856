"""The sandbox: bubblewrap namespaces, rlimits, a wall clock, and strace watching from outside.

Every run gets new user, pid, ipc, uts, cgroup and network namespaces (no network at all — a connection to
127.0.0.1 inside reaches the sandbox's own empty loopback, never the host's), a read-only view of just the
system, the Python installation and the model's folder, a private tmpfs as the only writable place, an emptied
environment, all capabilities dropped, and rlimits on CPU time, address space, file size and core dumps. The
whole process tree lives in the sandbox's pid namespace and dies with it.

If bubblewrap (or strace) is missing or cannot create namespaces, :class:`SandboxUnavailable` is raised:
mlwarden never falls back to running a model unsandboxed.
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlwarden.core.errors import MlwardenError
from mlwarden.core.policy import SandboxSettings
from mlwarden.scan.dynamic.trace import TRACED

#: syscalls the tracer records (everything else runs untraced thanks to --seccomp-bpf)
TRACED_SYSCALLS = TRACED  # what trace.syscall_events turns into events; everything else runs untraced
SANDBOX_DIR = "/sandbox/model"
SANDBOX_TMP = "/sandbox/tmp"  # the only writable place; /tmp itself is read-only so writes there stand out


class SandboxUnavailable(MlwardenError):  # noqa: N818 - a condition the user must act on
    """The sandbox cannot be created here; dynamic analysis refuses to run unsandboxed."""


SandboxLimits = SandboxSettings  # the policy's [sandbox] table is exactly the run's limits


@dataclass
class SandboxRun:
    """Raw outcome of one run: audit records, strace lines, and how it ended."""

    records: list[dict[str, object]] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    stderr: str = ""


def _which(name: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        raise SandboxUnavailable(
            f"{name} is not installed: dynamic analysis needs it (Debian package '{name}'; `make setup` installs "
            "it). Use --static-only to skip dynamic analysis."
        )
    return path


def python_roots() -> set[str]:
    """Directories the interpreter, its standard library, installed packages and mlwarden itself live in.

    Not every ``sys.path`` entry: the current directory or ``PYTHONPATH`` may be the user's home (``~/.ssh``).
    """
    paths = sysconfig.get_paths()
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, paths["stdlib"], paths["purelib"], paths["platlib"]}
    import mlwarden

    roots.add(str(Path(mlwarden.__file__).resolve().parents[1]))  # editable installs live outside prefix
    return roots | {os.path.realpath(r) for r in roots}


def _python_roots() -> list[str]:
    """The outermost of :func:`python_roots` (binding a parent covers its children)."""
    roots = python_roots()
    # Keep the outermost directories only (binding a parent covers its children).
    out: list[str] = []
    for root in sorted({os.path.realpath(r) for r in roots}):
        if not any(root == o or root.startswith(o.rstrip("/") + "/") for o in out):
            out.append(root)
    return out


def build_command(model_dir: Path, argv: list[str], events_fd: int, trace_fd: int, limits: SandboxLimits) -> list[str]:
    """The bwrap + strace command line for running ``argv`` (a Python command) in the sandbox."""
    bwrap, strace = _which("bwrap"), _which("strace")
    cmd = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("bin", "sbin", "lib", "lib64", "lib32"):
        p = Path("/") / name
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), f"/{name}"]
        elif p.is_dir():
            cmd += ["--ro-bind", str(p), f"/{name}"]
    cmd += ["--ro-bind", "/etc", "/etc"]
    for secret in ("/etc/shadow", "/etc/gshadow", "/etc/ssh", "/etc/ssl/private"):  # mask host secrets
        if os.path.isfile(secret):
            cmd += ["--ro-bind", "/dev/null", secret]
        elif os.path.isdir(secret):
            cmd += ["--tmpfs", secret]
    for root in _python_roots():
        cmd += ["--ro-bind", root, root]
    cmd += [
        "--ro-bind",
        str(model_dir),
        SANDBOX_DIR,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--dir",
        "/tmp",
        "--size",
        str(limits.tmpfs_bytes),
        "--tmpfs",
        SANDBOX_TMP,
        "--remount-ro",
        "/",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        SANDBOX_TMP,
        "--setenv",
        "TMPDIR",
        SANDBOX_TMP,
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        "--setenv",
        "KERAS_BACKEND",
        "torch",
        "--setenv",
        "OMP_NUM_THREADS",
        "1",
        "--setenv",
        "KERAS_HOME",
        f"{SANDBOX_TMP}/keras",
        "--setenv",
        "MPLCONFIGDIR",
        SANDBOX_TMP,
        "--chdir",
        SANDBOX_TMP,
        "--",
        strace,
        "--seccomp-bpf",
        "-f",
        "-qq",
        "-s",
        "256",
        "-e",
        "signal=none",
        "-e",
        f"trace={','.join(TRACED_SYSCALLS)}",
        "-o",
        f"/dev/fd/{trace_fd}",
        *argv,
    ]
    return cmd


def _limit(limits: SandboxLimits) -> None:  # runs in the child between fork and exec
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.getuid() != 0:  # the kernel does not apply RLIMIT_NPROC to uid 0; the pid namespace bounds it then
        running = sum(1 for p in os.listdir("/proc") if p.isdigit())
        resource.setrlimit(resource.RLIMIT_NPROC, (running + 256, running + 256))


def check_available() -> None:
    """Raise :class:`SandboxUnavailable` unless a trivial sandbox can be created here."""
    probe = subprocess.run(
        [_which("bwrap"), "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--", "/bin/true"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        msg = probe.stderr.decode(errors="replace").strip()[:300]
        raise SandboxUnavailable(
            f"bubblewrap cannot create namespaces here ({msg}); dynamic analysis refuses "
            "to run unsandboxed. Use --static-only."
        )
    _which("strace")


_AVAILABLE: list[bool] = []


def check_available_cached() -> None:
    """:func:`check_available`, probed once per process."""
    if not _AVAILABLE:
        check_available()
        _AVAILABLE.append(True)


def run_python(model_dir: Path, module_args: list[str], limits: SandboxLimits) -> SandboxRun:
    """Run ``python -I -m <module_args>`` in the sandbox with ``--events-fd`` appended; collect everything."""
    events_r, events_w = os.pipe()
    trace_r, trace_w = os.pipe()
    argv = [sys.executable, "-I", "-m", *module_args, "--events-fd", str(events_w), "--trace-fd", str(trace_w)]
    cmd = build_command(model_dir, argv, events_w, trace_w, limits)
    run = SandboxRun()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(events_w, trace_w),
            preexec_fn=lambda: _limit(limits),
        )  # noqa: PLW1509
    except OSError as exc:
        for fd in (events_r, events_w, trace_r, trace_w):
            os.close(fd)
        raise SandboxUnavailable(f"cannot start bubblewrap: {exc}") from exc
    os.close(events_w)
    os.close(trace_w)
    buffers = {events_r: bytearray(), trace_r: bytearray()}
    stderr = proc.stderr
    assert stderr is not None
    open_fds = [events_r, trace_r, stderr.fileno()]
    err = bytearray()
    deadline = started + limits.wall_seconds
    grace = False
    try:
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                run.timed_out = not grace
                break
            ready, _, _ = select.select(open_fds, [], [], min(remaining, 1.0))
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_fds.remove(fd)
                    if fd == events_r:  # the runner is gone: whatever it left behind gets a short grace
                        deadline = min(deadline, time.monotonic() + 0.5)
                        grace = True
                elif fd == stderr.fileno():
                    if len(err) < 64_000:
                        err += chunk
                else:
                    start = max(0, len(buffers[fd]) - 32)
                    buffers[fd] += chunk
                    if fd == events_r and not grace and b'"type": "done"' in buffers[fd][start:]:
                        # the runner finished; what it left behind (a detached child) gets a short grace
                        deadline = min(deadline, time.monotonic() + 0.5)
                        grace = True
                    if len(buffers[fd]) > 64 << 20:  # a model flooding the channel: stop listening
                        open_fds.remove(fd)
    finally:
        _kill_tree(proc)
        for fd in (events_r, trace_r):
            os.close(fd)
        stderr.close()
    run.returncode = proc.returncode
    run.seconds = time.monotonic() - started
    run.stderr = err.decode(errors="replace")[-4000:]
    run.records = _json_lines(bytes(buffers[events_r]))
    run.trace = bytes(buffers[trace_r]).decode(errors="replace").splitlines()
    return run


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill bwrap's whole session; the pid namespace takes every process inside with it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not take this long
        proc.kill()
        proc.wait()


def _json_lines(data: bytes) -> list[dict[str, object]]:
    import json

    out = []
    for line in data.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue  # partial last line of a killed run, or garbage written by the model
        if isinstance(value, dict):
            out.append(value)
    return out
