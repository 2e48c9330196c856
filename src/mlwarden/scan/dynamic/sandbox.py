"""The sandbox: bubblewrap namespaces, rlimits, a wall clock, and strace watching from outside.

Every run gets new user, pid, ipc, uts, cgroup and network namespaces (no network at all — a connection to
127.0.0.1 inside reaches the sandbox's own empty loopback, never the host's), a read-only view of just the
system, the Python installation and the model's folder, size-bounded private tmpfs mounts as the only writable
places, an environment of its own, all capabilities dropped, a seccomp filter refusing what no model load needs
(:mod:`.seccomp`), and rlimits on CPU time, address space, file size, processes and core dumps (set by
``prlimit``, never by a ``preexec_fn``). The whole process tree lives in the sandbox's pid namespace and dies with
it. When mlwarden runs as root, the sandbox runs as a dedicated unprivileged uid (:data:`DEDICATED_ID`) instead of
a user namespace that would map it back to root: no user namespace then, bwrap sets up the mounts as root and
``setpriv`` drops to that uid before anything of the model's runs.

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


#: the uid and gid the sandbox runs as when mlwarden runs as root: a dedicated id (in no /etc/passwd entry, not
#: nobody's 65534, which daemons and NFS share), so that inside the sandbox nothing owned by root — or by any other
#: user — is readable unless it is readable by everyone (see docs/dynamic.md, "Who the sandbox runs as")
DEDICATED_ID = 65533
#: whether runs drop to :data:`DEDICATED_ID` (mlwarden runs as root); otherwise they keep the caller's uid
DROPS_PRIVILEGES = os.getuid() == 0
SANDBOX_UID, SANDBOX_GID = (DEDICATED_ID, DEDICATED_ID) if DROPS_PRIVILEGES else (os.getuid(), os.getgid())


def _identity() -> tuple[str, str, str]:
    """User name, home directory and login shell of the uid the sandbox runs as (:data:`SANDBOX_UID`)."""
    uid = SANDBOX_UID
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
SANDBOX_TMP = f"/tmp/user/{SANDBOX_UID}"  # TMPDIR and the working directory: the private scratch space
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


def readable_inside(path: str, *, folder: bool = False) -> bool:
    """Whether the sandbox's uid may read ``path`` (a folder: enter it), judging by its owner, group and mode."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    need = 0o1 if folder else 0o4
    if st.st_uid == SANDBOX_UID:
        bits = st.st_mode >> 6
    elif st.st_gid == SANDBOX_GID:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & need == need


@dataclass
class Staging:
    """Model folders and files as the sandbox binds them once :func:`stage` gave its uid read access."""

    binds: list[tuple[str, str]]
    file_binds: list[tuple[str, str]] = field(default_factory=list)
    folder: str | None = None  # the private 0700 folder holding the copies (removed by :meth:`cleanup`)

    def cleanup(self) -> None:
        """Remove the copies."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def stage(binds: list[tuple[str, str]], files: list[str] | None) -> Staging:
    """Let the sandbox's uid read the model files it must load — those only, never their root-only neighbours.

    Nothing to do unless runs drop to :data:`DEDICATED_ID`. A model file the dedicated uid may not read (the
    loader's private copy is 0600, owned by root) is copied, readable by the sandbox's group only (0640,
    root:``SANDBOX_GID``), into a folder of mode 0700 that only root can enter — no other local user can read
    the copy — and bound read-only over the original's path. A model folder the dedicated uid may not enter is
    replaced by such a folder holding just the model files. Other files of the folder keep their own modes.
    ``files=None`` (a warm pool told only its folders): a folder the uid may not enter is replaced by a copy of
    the files in it (recursively) that its mode bits would let the uid read; nothing else is copied.
    """
    out = Staging(list(binds))
    if not DROPS_PRIVILEGES:
        return out
    try:
        _stage(out, files)
    except OSError as exc:
        out.cleanup()
        raise SandboxUnavailable(f"cannot give the sandbox read access to the model: {exc}") from exc
    return out


def _stage(out: Staging, files: list[str] | None) -> None:
    import tempfile

    for i, (host, inside) in enumerate(list(out.binds)):
        enter = readable_inside(host, folder=True)
        if files is None:
            todo = [] if enter else _readable_tree(host)
        else:
            mine = [f for f in files if os.path.dirname(os.path.realpath(f)) == os.path.realpath(host)]
            todo = [f for f in mine if not enter or not readable_inside(f)]
        if not todo:
            continue
        if out.folder is None:
            out.folder = tempfile.mkdtemp(prefix="mlwarden-sandbox-")  # 0700, root's
        target = os.path.join(out.folder, str(i))
        folders = {target}
        for f in todo:
            copy = os.path.join(target, os.path.relpath(os.path.realpath(f), os.path.realpath(host)))
            os.makedirs(os.path.dirname(copy), 0o700, exist_ok=True)
            folders.update(_between(target, os.path.dirname(copy)))
            shutil.copyfile(f, copy)
            os.chown(copy, 0, SANDBOX_GID)
            os.chmod(copy, 0o640)
            if enter:
                out.file_binds.append((copy, f"{inside}/{os.path.basename(f)}"))
        for folder in folders:
            os.chown(folder, 0, SANDBOX_GID)
            os.chmod(folder, 0o750)  # noqa: S103 - group-readable by the sandbox's gid only, inside a 0700 folder
        if not enter:
            out.binds[i] = (target, inside)


def _between(top: str, folder: str) -> list[str]:
    """``folder`` and its ancestors up to ``top`` (included)."""
    out = [folder]
    while folder != top and folder.startswith(top + "/"):
        folder = os.path.dirname(folder)
        out.append(folder)
    return out


def _readable_tree(root: str) -> list[str]:
    """Regular files under ``root`` whose own mode lets the sandbox's uid read them (links are not followed)."""
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and os.path.isfile(path) and readable_inside(path):
                out.append(path)
    return out


def _model_of(module_args: list[str], binds: list[tuple[str, str]]) -> list[str]:
    """The host path of the runner's ``--model`` (what :func:`stage` must make readable)."""
    if "--model" not in module_args or module_args.index("--model") + 1 >= len(module_args):
        return []
    inside = module_args[module_args.index("--model") + 1]
    for host, folder in binds:
        if inside.startswith(folder.rstrip("/") + "/"):
            return [os.path.join(host, inside[len(folder.rstrip("/")) + 1 :])]
    return []


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
    # mlwarden's own source root (editable installs live outside prefix): src/mlwarden/scan/dynamic/sandbox.py
    roots.add(str(Path(__file__).resolve().parents[3]))
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


def _parents(paths: list[str]) -> list[str]:
    """Every proper ancestor of ``paths`` that bwrap would create (not ``/``, system folders, the home), outer first."""
    skip = ("/usr", "/etc", "/proc", "/dev", "/sys", SANDBOX_HOME)
    out: set[str] = set()
    for path in paths:
        parent = os.path.dirname(os.path.normpath(path))
        while parent not in ("/", "") and not any(parent == s or parent.startswith(s + "/") for s in skip):
            out.add(parent)
            parent = os.path.dirname(parent)
    return sorted(out, key=lambda p: (p.count("/"), p))


def _namespaces() -> list[str]:
    """The namespace and capability options of bwrap.

    As root: no user namespace (bwrap maps the sandbox's uid to the caller's, whatever ``--uid`` says, and
    root-owned files would stay readable); bwrap sets up the mounts as root and keeps only what
    :func:`_drop_privileges` needs for the child.
    """
    if not DROPS_PRIVILEGES:
        return ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    out = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    out += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for cap in ("CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):  # (SETPCAP: to empty the bounding set)
        out += ["--cap-add", cap]
    return out


def _drop_privileges() -> list[str]:
    """As root: the child hands its writable mounts to the dedicated uid, then setpriv drops to it.

    Changing every uid away from 0 clears all capabilities; the bounding and inheritable sets are emptied, the
    supplementary groups cleared, and bwrap has set no_new_privs.
    """
    if not DROPS_PRIVILEGES:
        return []
    drop = f'chown {SANDBOX_UID}:{SANDBOX_GID} "$HOME" "$TMPDIR" /dev/shm && exec "$@"'
    out = ["/bin/sh", "-c", drop, "sh", _which("setpriv"), f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}"]
    return [*out, "--bounding-set=-all", "--inh-caps=-all", "--clear-groups", "--"]


def build_command(
    binds: list[tuple[str, str]],
    argv: list[str],
    trace_fd: int | None,
    limits: SandboxLimits,
    *,
    extra_traced: tuple[str, ...] = (),
    seccomp_fd: int | None = None,
    cpu_limit: bool = True,
    file_binds: list[tuple[str, str]] | tuple[()] = (),
) -> list[str]:
    """The prlimit + bwrap (+ strace when ``trace_fd`` is given) command line for running ``argv`` in the sandbox.

    ``binds`` are the model folders, ``(host, inside)`` as :func:`model_binds` places them.
    """
    bwrap = _which("bwrap")
    size = str(int(limits.tmpfs_bytes))
    cmd = [*limit_command(limits, cpu=cpu_limit), bwrap, *_namespaces(), "--ro-bind", "/usr", "/usr"]
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
    if DROPS_PRIVILEGES:  # bwrap makes the folders leading to a mount 0700, root's: the sandbox's uid must pass
        for folder in _parents([SANDBOX_HOME, *_python_roots(), *(b[1] for b in binds), *(b[1] for b in file_binds)]):
            cmd += ["--perms", "0755", "--dir", folder]
    cmd += ["--perms", "0700", "--dir", SANDBOX_TMP, "--size", size, "--perms", "0700", "--tmpfs", SANDBOX_HOME]
    for root in _python_roots():
        cmd += ["--ro-bind", root, root]
    for host, inside in sorted(binds, key=lambda b: len(b[1])):
        cmd += ["--ro-bind", host, inside]
    for host, inside in file_binds:  # a model file the sandbox's uid may read, over the one it may not
        cmd += ["--ro-bind", host, inside]
    cmd += ["--remount-ro", "/", "--clearenv"]
    for name, value in sandbox_env().items():
        cmd += ["--setenv", name, value]
    cmd += ["--chdir", SANDBOX_TMP, "--", *_drop_privileges()]
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
            "signal=SIGSYS",  # a call the seccomp filter refused, with its name (see seccomp.py)
            "-e",
            f"trace={','.join(dict.fromkeys((*TRACED_SYSCALLS, *extra_traced)))}",
            "-o",
            f"/dev/fd/{trace_fd}",
        ]
    return cmd + argv


def limit_command(limits: SandboxLimits, *, cpu: bool = True) -> list[str]:
    """``prlimit ... --``: the rlimits the sandbox starts with, set by util-linux's prlimit before it execs bwrap.

    Not a ``preexec_fn``: the caller may have other threads (the guard's), and CPython documents that running
    Python between fork and exec can then deadlock. CPU time, address space, file size, no core dumps, and a
    bound on processes (RLIMIT_NPROC counts per real uid; the kernel does not apply it to uid 0, so it bites once
    the sandbox runs as its own uid, see :data:`SANDBOX_UID`). ``cpu=False`` for the warm pool's server, whose
    children set their own CPU limit after ``fork`` (CPU time counts from zero there).
    """
    cmd = [_which("prlimit")]
    if cpu:
        cmd.append(f"--cpu={int(limits.cpu_seconds)}:{int(limits.cpu_seconds) + 5}")
    cmd += [f"--as={int(limits.memory_bytes)}", f"--fsize={int(limits.file_size_bytes)}", "--core=0"]
    running = sum(1 for p in os.listdir("/proc") if p.isdigit())
    cmd += [f"--nproc={running + 256}", "--"]
    return cmd


def check_available() -> None:
    """Raise :class:`SandboxUnavailable` unless a trivial sandbox can be created here."""
    probe = subprocess.run(  # noqa: S603 - a fixed probe command
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
    _which("prlimit")
    if DROPS_PRIVILEGES:
        _which("setpriv")
    seccomp_program()  # libseccomp and its binding (raises SandboxUnavailable without them)


_AVAILABLE: list[bool] = []


def check_available_cached() -> None:
    """:func:`check_available`, probed once per process."""
    if not _AVAILABLE:
        check_available()
        _AVAILABLE.append(True)


def seccomp_program(traced: bool = True) -> bytes:
    """The program bubblewrap's ``--seccomp`` installs (see :mod:`.seccomp`).

    ENOSYS for syscalls the tracer cannot name and for other ABIs; SIGSYS for what no model load needs.
    """
    from mlwarden.scan.dynamic.seccomp import sandbox_program

    return sandbox_program(traced=traced, last_classified=LAST_CLASSIFIED)


def runner_seccomp_program() -> bytes:
    """The program the runner installs on itself in a traced run (what strace needs, refused to the model)."""
    from mlwarden.scan.dynamic.seccomp import runner_program

    return runner_program()


def trace_pipe() -> tuple[int, int]:
    """The pipe strace writes to: strace reopens ``/dev/fd/N``, so the sandbox's uid must own it."""
    r, w = os.pipe()
    if DROPS_PRIVILEGES:
        os.fchown(w, SANDBOX_UID, SANDBOX_GID)
    return r, w


def key_pipe(key: bytes) -> int:
    """A pipe holding ``key``; returns its read end (the runner reads it once and closes it)."""
    r, w = os.pipe()
    os.write(w, key)
    os.close(w)
    return r


def _spawn(cmd: list[str], passed: tuple[int, ...], staged: Staging) -> subprocess.Popen[bytes]:
    """Start the sandbox (its own session; limits come from prlimit in ``cmd``, not from a ``preexec_fn``)."""
    try:
        return subprocess.Popen(  # noqa: S603 - our own bwrap command line, no shell
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=passed,
            start_new_session=True,
        )
    except OSError as exc:
        staged.cleanup()
        raise SandboxUnavailable(f"cannot start bubblewrap: {exc}") from exc


def run_python(  # noqa: C901 - start, pump the three pipes, enforce the clock, collect: one lifecycle
    binds: list[tuple[str, str]], module_args: list[str], limits: SandboxLimits, *, traced: bool = True
) -> SandboxRun:
    """Run ``python -I -m <module_args>`` in the sandbox with the descriptor options appended; collect everything.

    The runner gets a fresh secret key through a pipe (``--key-fd``) that it reads and closes before any model
    byte is read; every record it writes is authenticated with it (see :mod:`.records`).
    """
    programs = (seccomp_program(traced), runner_seccomp_program() if traced else b"")  # (before any descriptor)
    events_r, events_w = os.pipe()
    trace_r, trace_w = trace_pipe() if traced else (None, None)
    run = SandboxRun(key=secrets.token_bytes(32), traced=traced, binds=list(binds))
    key_r = key_pipe(run.key)
    argv = [sys.executable, "-I", "-m", *module_args, "--events-fd", str(events_w), "--key-fd", str(key_r)]
    quiesce = getattr(limits, "quiesce_seconds", QUIESCE_SECONDS)
    argv += ["--quiesce-seconds", str(quiesce)]
    runner_seccomp_r = None
    if trace_w is not None:
        runner_seccomp_r = key_pipe(programs[1])
        argv += ["--trace-fd", str(trace_w), "--seccomp-fd", str(runner_seccomp_r)]
    seccomp_r = key_pipe(programs[0])
    passed = tuple(fd for fd in (events_w, trace_w, key_r, seccomp_r, runner_seccomp_r) if fd is not None)
    started = time.monotonic()
    try:
        staged = stage(list(binds), _model_of(module_args, binds))
        cmd = build_command(staged.binds, argv, trace_w, limits, seccomp_fd=seccomp_r, file_binds=staged.file_binds)
        proc = _spawn(cmd, passed, staged)
    except SandboxUnavailable:
        for fd in (events_r, trace_r, *passed):
            if fd is not None:
                os.close(fd)
        raise
    for fd in passed:
        os.close(fd)
    buffers: dict[int, bytearray] = {events_r: bytearray()}
    if trace_r is not None:
        buffers[trace_r] = bytearray()
    stderr = proc.stderr
    if stderr is None:
        raise RuntimeError("the sandbox was started without a stderr pipe")
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
        staged.cleanup()
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
