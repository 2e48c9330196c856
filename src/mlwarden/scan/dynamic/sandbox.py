"""The sandbox: bubblewrap namespaces, rlimits, a wall clock, and strace watching from outside.

Every run gets new user, pid, ipc, uts, cgroup and network namespaces (no network at all — a connection to
127.0.0.1 inside reaches the sandbox's own empty loopback, never the host's), a read-only view of just the
system, the Python installation and the model's folder, size-bounded private tmpfs mounts as the only writable
places, an environment of its own, all capabilities dropped, and rlimits on CPU time, address space, file size
and core dumps. The whole process tree lives in the sandbox's pid namespace and dies with it.

The inside is made to look like an ordinary host, so that a payload probing for a sandbox has little to go on:
the model's folder is bound read-only at its own host path, ``/tmp`` is a writable (size-bounded, sticky)
tmpfs with ``TMPDIR`` at ``/tmp/user/<uid>`` as pam_tmpdir sets it, the user's home directory exists and is
writable, ``/dev/shm`` is a bounded tmpfs, and the environment has the usual ``HOME``, ``USER``, ``LOGNAME``,
``PATH``, ``LANG``, ``TERM`` and ``SHELL``. What cannot be hidden from a traced process (strace is a ptrace
tracer: ``TracerPid`` in ``/proc/self/status``) is handled by running the model a second time untraced
(``traced=False``) and comparing; see docs/dynamic.md.

If bubblewrap (or strace) is missing or cannot create namespaces, :class:`SandboxUnavailable` is raised:
mlwarden never falls back to running a model unsandboxed.
"""

from __future__ import annotations

import os
import pwd
import resource
import secrets
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
from mlwarden.scan.dynamic.trace import LAST_CLASSIFIED, TRACED

#: syscalls the tracer records (everything else runs untraced thanks to --seccomp-bpf); see trace.CLASSES
TRACED_SYSCALLS = TRACED


def _identity() -> tuple[str, str, str]:
    """User name, home directory and login shell of the uid the sandbox runs as (bwrap keeps the uid)."""
    uid = os.getuid()
    try:
        entry = pwd.getpwuid(uid)
        user, home, shell = entry.pw_name, entry.pw_dir, entry.pw_shell
    except KeyError:
        user, home, shell = f"user{uid}", "", ""
    reserved = ("/", "/tmp", "/usr", "/etc", "/proc", "/dev", "/sys", "/bin", "/sbin", "/lib", "/lib64", "/var")
    if not home.startswith("/") or os.path.normpath(home) in reserved or home.startswith(("/tmp/", "/proc/")):
        home = "/root" if uid == 0 else f"/home/{user}"
    if not shell.startswith("/") or shell.endswith(("nologin", "false")):
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    return user, os.path.normpath(home), shell


SANDBOX_USER, SANDBOX_HOME, SANDBOX_SHELL = _identity()
SANDBOX_TMP = f"/tmp/user/{os.getuid()}"  # TMPDIR and the working directory: the private scratch space
#: writable mounts inside (each a tmpfs of at most ``tmpfs_bytes``); everything else is read-only
WRITABLE_MOUNTS = ("/tmp", SANDBOX_HOME, "/dev/shm")
#: where a model folder is bound when its own path cannot be used (it is "/", a system folder, the home...)
FALLBACK_MODEL_DIR = "/srv/models"
SANDBOX_DIR = FALLBACK_MODEL_DIR  # kept for callers that want "some model folder"; runs use model_binds()
#: seconds the runner keeps watching after the last phase for deferred work (threads, timers, alarms)
QUIESCE_SECONDS = 3.0
_RESERVED = frozenset(
    {"/", "/tmp", "/tmp/user", SANDBOX_TMP, SANDBOX_HOME, "/usr", "/etc", "/proc", "/dev", "/sys", "/srv"}
    | {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/var", "/run", "/home", "/srv/models"}
)


def sandbox_env(cwd: str = SANDBOX_TMP) -> dict[str, str]:
    """The environment inside: what a login shell on an ordinary host has, and nothing of the host's own."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": SANDBOX_HOME,
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "SHELL": SANDBOX_SHELL,
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        "TMPDIR": SANDBOX_TMP,
        "PWD": cwd,
        "OMP_NUM_THREADS": "1",
    }


def model_binds(folders: list[Path]) -> list[tuple[str, str]]:
    """``(host, inside)`` for each model folder: its own path when that is an ordinary folder, else a fallback."""
    out: list[tuple[str, str]] = []
    for i, folder in enumerate(folders):
        host = os.path.realpath(folder)
        ordinary = (
            host not in _RESERVED
            and not host.startswith(("/proc/", "/dev/", "/sys/", "/run/", "/srv/models/", SANDBOX_TMP + "/"))
            and not any(w == host or w.startswith(host.rstrip("/") + "/") for w in WRITABLE_MOUNTS)
        )
        inside = host if ordinary else (FALLBACK_MODEL_DIR if len(folders) == 1 else f"{FALLBACK_MODEL_DIR}/{i}")
        out.append((host, inside))
    return out


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
    key: bytes = b""  # the run's record key (see records.py); empty: records are not authenticated
    traced: bool = True
    binds: list[tuple[str, str]] = field(default_factory=list)
    raw_records: bytes = b""
    forged: int = 0  # lines on the event channel no genuine record chain accepted
    forged_samples: list[str] = field(default_factory=list)
    verified: list[dict[str, object]] | None = None  # the authenticated records, once checked


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


def build_command(
    binds: list[tuple[str, str]],
    argv: list[str],
    trace_fd: int | None,
    limits: SandboxLimits,
    *,
    extra_traced: tuple[str, ...] = (),
    seccomp_fd: int | None = None,
) -> list[str]:
    """The bwrap (+ strace when ``trace_fd`` is given) command line for running ``argv`` in the sandbox.

    ``binds`` are the model folders, ``(host, inside)`` as :func:`model_binds` places them.
    """
    bwrap = _which("bwrap")
    size = str(int(limits.tmpfs_bytes))
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
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
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
    # Every writable place is a tmpfs of bounded size: /dev itself is read-only (its device nodes still work),
    # /dev/shm, /tmp and the home directory are bounded by tmpfs_bytes each.
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    cmd += ["--size", size, "--perms", "01777", "--tmpfs", "/tmp", "--dir", "/tmp/user"]
    cmd += ["--perms", "0700", "--dir", SANDBOX_TMP, "--size", size, "--perms", "0700", "--tmpfs", SANDBOX_HOME]
    for root in _python_roots():
        cmd += ["--ro-bind", root, root]
    for host, inside in sorted(binds, key=lambda b: len(b[1])):
        cmd += ["--ro-bind", host, inside]
    cmd += ["--remount-ro", "/", "--clearenv"]
    for name, value in sandbox_env().items():
        cmd += ["--setenv", name, value]
    cmd += ["--chdir", SANDBOX_TMP, "--"]
    if trace_fd is not None:
        cmd += [
            _which("strace"),
            "--seccomp-bpf",
            "-f",
            "-qq",
            "-y",
            "-s",
            "256",
            "-e",
            "signal=none",
            "-e",
            f"trace={','.join(dict.fromkeys((*TRACED_SYSCALLS, *extra_traced)))}",
            "-o",
            f"/dev/fd/{trace_fd}",
        ]
    return cmd + argv


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


def seccomp_program() -> bytes:
    """A classic-BPF seccomp filter: ENOSYS for syscalls the tracer cannot name and for other ABIs (x32, i386).

    Every syscall the kernel offers to a x86_64 process is then either classified in :mod:`.trace` or refused.
    """
    import struct

    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, enosys = 0x7FFF0000, 0x00050000 | 38
    program = [
        (ld_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 0, 3, 0xC000003E),  # AUDIT_ARCH_X86_64, else refuse
        (ld_abs, 0, 0, 0),  # seccomp_data.nr
        (jge, 1, 0, LAST_CLASSIFIED + 1),  # also every x32 number (bit 30 set)
        (ret, 0, 0, allow),
        (ret, 0, 0, enosys),
    ]
    return b"".join(struct.pack("<HBBI", *insn) for insn in program)


def key_pipe(key: bytes) -> int:
    """A pipe holding ``key``; returns its read end (the runner reads it once and closes it)."""
    r, w = os.pipe()
    os.write(w, key)
    os.close(w)
    return r


def run_python(
    binds: list[tuple[str, str]], module_args: list[str], limits: SandboxLimits, *, traced: bool = True
) -> SandboxRun:
    """Run ``python -I -m <module_args>`` in the sandbox with the descriptor options appended; collect everything.

    The runner gets a fresh secret key through a pipe (``--key-fd``) that it reads and closes before any model
    byte is read; every record it writes is authenticated with it (see :mod:`.records`).
    """
    events_r, events_w = os.pipe()
    trace_r, trace_w = os.pipe() if traced else (None, None)
    run = SandboxRun(key=secrets.token_bytes(32), traced=traced, binds=list(binds))
    key_r = key_pipe(run.key)
    argv = [sys.executable, "-I", "-m", *module_args, "--events-fd", str(events_w), "--key-fd", str(key_r)]
    quiesce = getattr(limits, "quiesce_seconds", QUIESCE_SECONDS)
    argv += ["--quiesce-seconds", str(quiesce)]
    if trace_w is not None:
        argv += ["--trace-fd", str(trace_w)]
    seccomp_r = key_pipe(seccomp_program())
    cmd = build_command(binds, argv, trace_w, limits, seccomp_fd=seccomp_r)
    passed = tuple(fd for fd in (events_w, trace_w, key_r, seccomp_r) if fd is not None)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=passed,
            preexec_fn=lambda: _limit(limits),
        )  # noqa: PLW1509
    except OSError as exc:
        for fd in (events_r, trace_r, *passed):
            if fd is not None:
                os.close(fd)
        raise SandboxUnavailable(f"cannot start bubblewrap: {exc}") from exc
    for fd in passed:
        os.close(fd)
    buffers: dict[int, bytearray] = {events_r: bytearray()}
    if trace_r is not None:
        buffers[trace_r] = bytearray()
    stderr = proc.stderr
    assert stderr is not None
    open_fds = [*buffers, stderr.fileno()]
    err = bytearray()
    deadline = started + limits.wall_seconds + quiesce
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
                        # the runner says it finished (verified later); what it left behind gets a short grace
                        deadline = min(deadline, time.monotonic() + 0.5)
                        grace = True
                    if len(buffers[fd]) > 64 << 20:  # a model flooding the channel: stop listening
                        open_fds.remove(fd)
    finally:
        _kill_tree(proc)
        for fd in buffers:
            os.close(fd)
        stderr.close()
    run.returncode = proc.returncode
    run.seconds = time.monotonic() - started
    run.stderr = err.decode(errors="replace")[-4000:]
    run.raw_records = bytes(buffers[events_r])
    run.records = _json_lines(run.raw_records)
    if trace_r is not None:
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
