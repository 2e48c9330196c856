"""Runs inside the sandbox: load one model phase by phase under a Python audit hook.

This module is executed as ``python -I -m mlwarden.scan.dynamic.runner`` inside bubblewrap. It imports only
the standard library before the audit hook is installed, then reports JSON lines on the file descriptor given
by ``--events-fd``: phase boundaries and audit events, each authenticated with the run's key (read from
``--key-fd`` and closed before the framework is imported; see :mod:`.records`). Each phase also touches a marker
path (``/.mlwarden-phase/<name>``) so that the syscall tracer outside can attribute native events to phases.

The hook writes an event *before* the audited operation runs, so a payload cannot hide what it is about to do;
it can at most stop later reporting, which the host sees as a broken record chain or a missing ``done``.
Everything the hook needs is bound when it is installed (a payload rebinding module globals, ``os.write`` or
``json.dumps`` does not reach it), and it never calls code of the model's objects (no ``repr``, no
``isinstance`` on them).

After the last phase the runner keeps watching (the ``teardown`` pseudo-phase): it waits until no thread the
model started is alive and no timer/alarm is pending, at most ``--quiesce-seconds``; then runs the ``atexit``
handlers and a garbage collection (``__del__``) under the hook; reports what is still pending, how full each
writable mount is, and what changed in them; and leaves with ``os._exit`` so nothing runs unobserved afterwards.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from mlwarden.scan.dynamic.records import Signer, read_key

# Audit events worth reporting, by prefix. Everything else (attribute access, frames, ...) is noise.
_INTERESTING = (
    "os.system",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "subprocess.Popen",
    "pty.spawn",
    "socket.connect",
    "socket.bind",
    "socket.sendto",
    "socket.sendmsg",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "urllib.Request",
    "http.client.connect",
    "ftplib.connect",
    "smtplib.connect",
    "webbrowser.open",
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.call_function",
    "os.remove",
    "os.rmdir",
    "os.rename",
    "os.chmod",
    "os.chown",
    "os.mkdir",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.putenv",
    "os.unsetenv",
    "shutil.rmtree",
    "shutil.copyfile",
    "shutil.move",
    "exec",
    "compile",
    "import",
    "open",
    "marshal.loads",
    "pickle.find_class",
    "sys.addaudithook",
    "builtins.input",
    "code.__new__",
    "function.__new__",
    "cpython.run_",
    "sys.setprofile",
    "sys.settrace",
    "os.listdir",
    "os.scandir",
    "glob.glob",
    "syslog.",
    "os.chdir",
    "mmap.__new__",
    "os.utime",
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
    "sys._current_frames",
    "mlwarden.template",
)
#: events that are reported as attempts to reach the monitoring itself
_TAMPER = ("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames")
# Frequent events that never matter, rejected before the prefix test.
_BORING = frozenset(
    {
        "object.__getattr__",
        "object.__setattr__",
        "object.__delattr__",
        "sys._getframe",
        "sys._getframemodulename",
        "builtins.id",
        "os.getxattr",
        "time.sleep",
        "array.__new__",
        "socket.__new__",
        "os.listxattr",
        "sqlite3.connect",
        "ctypes.cdata",
        "ctypes.addressof",
        "ctypes.get_errno",
        "ctypes.set_errno",
        "ctypes.string_at",
    }
)
_MAX_ARG = 300


MARK_ROOT = "/.mlwarden-phase"
_SAFE_TYPES = (str, int, float, bool, type(None))


class Reporter:
    """Writes authenticated JSON lines to the event descriptor."""

    def __init__(self, fd: int, prefixes: tuple[str, ...], signer: Signer | None = None) -> None:
        self.fd = fd
        self.phase = "setup"
        self.quiet_prefixes = prefixes  # read-only opens under these are the framework reading itself
        self._signer = signer if signer is not None else Signer(b"")
        self._write = os.write

    def send(self, record: dict[str, Any]) -> None:
        """Write one record (a failed write is the host's to notice: the chain then has a gap)."""
        try:
            self._write(self.fd, self._signer.line(record))
        except OSError:
            pass

    def start(self, phase: str) -> None:
        """Announce a phase and leave a marker for the syscall tracer."""
        self.phase = phase
        self.send({"type": "phase", "name": phase, "status": "start", "t": time.monotonic()})
        try:  # marker for the syscall tracer outside (mkdir is traced and fails on the read-only root)
            os.mkdir(f"{MARK_ROOT}/{phase}")
        except OSError:
            pass

    def end(self, phase: str, status: str, error: str = "") -> None:
        """Announce how a phase ended."""
        self.send({"type": "phase", "name": phase, "status": status, "error": error[:8000], "t": time.monotonic()})


def _short(value: Any) -> str:
    """A bounded text for an audit argument, without running any code of the model's objects."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        value = bytes(value[:_MAX_ARG])
        text = repr(value)
    elif kind is str:
        text = value
    elif kind in _SAFE_TYPES:
        text = repr(value)
    elif kind is tuple or kind is list:
        text = "(" + ", ".join(_short(v) for v in value[:8]) + ")"
    else:
        text = f"<{type.__dict__['__name__'].__get__(kind)} object>"
    return text if len(text) <= _MAX_ARG else text[: _MAX_ARG - 1] + "…"


_getframe = sys._getframe  # bound at import: a model rebinding sys._getframe cannot choose who the caller is
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _caller(getframe: Callable[[int], Any] = _getframe) -> str:
    """``file:function`` of the innermost Python frame outside this module (who asked for the exec/compile)."""
    frame = getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_code.co_name}" if frame is not None else "?"


_IMPORTLIB = os.path.dirname(os.__file__) + "/importlib/"


def _importer(getframe: Callable[[int], Any] = _getframe, machinery: str = _IMPORTLIB) -> str:
    """``file:function`` of the code that asked for an import: the import system's own frames are skipped."""
    frame = getframe(1)
    while frame is not None and (
        frame.f_code.co_filename == __file__
        or frame.f_code.co_filename.startswith("<frozen importlib")
        or frame.f_code.co_filename.startswith(machinery)
    ):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_code.co_name}" if frame is not None else "?"


def _describe(
    event: str,
    args: tuple[Any, ...],
    getcwd: Callable[[], str],
    quiet: tuple[str, ...] = (),
    _short: Callable[[Any], str] = _short,
    _caller: Callable[[], str] = _caller,
    write_flags: int = _WRITE_FLAGS,
    _importer: Callable[[], str] = _importer,
) -> tuple[str, str] | None:
    """Key and shortened arguments for an interesting event, or None to drop it.

    The helpers are default arguments: bound when this module is imported, before any model runs.
    """
    if event == "open":
        path, mode = args[0], args[1] if len(args) > 1 else None
        flags = args[2] if len(args) > 2 else 0
        writing = (type(mode) is str and any(c in mode for c in "wax+")) or (type(flags) is int and flags & write_flags)
        if type(path) is bytes:
            path = path.decode(errors="replace")
        if type(path) is str and writing and not path.startswith("/"):
            try:
                path = getcwd().rstrip("/") + "/" + path  # a relative write lands wherever the cwd is now
            except OSError:
                pass
        return _short(path), ("w" if writing else "r")
    if event == "import":
        return _short(args[0]), f"by {_importer()}"
    if event == "exec":
        code = args[0]
        if type(code).__name__ != "code":
            return f"<{_short(code)}> by {_caller()}", ""
        return f"{code.co_filename}:{code.co_name} by {_caller()}", ""
    if event == "compile":
        source, filename = (args + (None, None))[:2]
        return f"{_short(filename)} by {_caller()}", _short(source)[:120]
    if event == "pickle.find_class":
        return f"{_short(args[0])}:{_short(args[1])}", ""
    if event in _TAMPER:
        return event, f"by {_caller()}"
    if event == "code.__new__" and len(args) > 2 and type(args[1]) is str and args[1].startswith(quiet):
        # a code object claiming to be installed code: what it executes would pass as the framework's own
        return "code.disguised", f"{args[1]}:{_short(args[2])}"
    if event == "code.__new__" and len(args) > 2:  # code, filename, name, ...: who built it, and under which name
        return f"{_short(args[1])}:{_short(args[2])} by {_caller()}", _short(args[0])
    return _short(args[0]) if args else "", " ".join(_short(a) for a in args[1:4])


def install_hook(reporter: Reporter) -> None:
    """Install the audit hook (it can never be removed, which is the point).

    Everything it uses is bound here, so rebinding module globals or attributes later does not change it.
    """
    busy: set[int] = set()  # threads inside the hook (its own work is not reported; other threads' is)
    ident = threading.get_ident
    quiet = reporter.quiet_prefixes
    send = reporter.send
    seen: set[tuple[str, str, str]] = set()
    interesting, boring, tamper = _INTERESTING, _BORING, _TAMPER
    describe, getframe, getcwd, extract = _describe, sys._getframe, os.getcwd, traceback.extract_stack

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in boring or not event.startswith(interesting):
            return
        me = ident()
        if me in busy:
            return
        if event == "marshal.loads" and "importlib" in getframe(1).f_code.co_filename:
            return  # the import system loading .pyc files
        busy.add(me)
        try:
            described = describe(event, args, getcwd, quiet)
            if described is None:
                return
            target, extra = described
            if target == "code.disguised":
                event, target = "code.disguised", extra
            if event == "open" and extra == "r" and (target.startswith(quiet) or target.startswith("/proc/")):
                return
            if event == "exec" and target.startswith(quiet):
                return  # module bodies of installed packages being executed on import
            phase = reporter.phase
            key = (phase, event, target)
            if key in seen and event not in tamper:
                return
            seen.add(key)
            record: dict[str, Any] = {"type": "event", "phase": phase, "event": event, "target": target}
            record["extra"] = extra
            if event not in ("import", "open", "exec", "compile", "pickle.find_class"):
                record["stack"] = [f"{f.filename}:{f.lineno} {f.name}" for f in extract(limit=10)[:-2]]
            send(record)
        finally:
            busy.discard(me)

    sys.addaudithook(hook)
    sys.meta_path.append(_MissingFinder(reporter))


class _MissingFinder:
    """The last finder on ``sys.meta_path``: reached only when no other finder found a module (the import fails).

    It reports the name (``import.missing``: a failed probe for an optional dependency ran nothing) and finds
    nothing. A model that removes it only makes its failed imports look like ordinary ones (judged as such).
    """

    def __init__(self, reporter: Reporter) -> None:
        self._send, self._reporter = reporter.send, reporter
        self._seen: set[tuple[str, str]] = set()

    def find_spec(self, name: Any, path: Any = None, target: Any = None) -> None:
        """Report ``name`` once per phase; never find it."""
        if type(name) is str and (self._reporter.phase, name) not in self._seen:
            self._seen.add((self._reporter.phase, name))
            self._send({"type": "event", "phase": self._reporter.phase, "event": "import.missing", "target": name})
        return None


def _phase(reporter: Reporter, name: str, func: Callable[[], Any]) -> tuple[bool, Any]:
    reporter.start(name)
    try:
        value = func()
    except BaseException as exc:  # noqa: BLE001 - the model may raise anything; report it and stop
        reporter.end(name, "error", _error_text(exc))
        return False, None
    reporter.end(name, "ok")
    return True, value


def _error_text(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except BaseException:  # noqa: BLE001 - a model's exception whose __str__ raises
        return type(exc).__name__


# --- after the last phase: deferred work, storage, changes in the writable mounts ---------------------------


def _writable_mounts() -> list[str]:
    home = os.environ.get("HOME", "")
    return [m for m in dict.fromkeys(("/tmp", home, "/dev/shm")) if m and os.path.isdir(m)]


def fs_state(roots: list[str], skip: str) -> dict[str, tuple[int, int, int]]:
    """``path -> (inode, size, mtime_ns)`` of everything in the writable mounts, except ``skip`` (the scratch space).

    Folders on another device (bound model folders, Python roots) are not entered.
    """
    out: dict[str, tuple[int, int, int]] = {}
    for root in roots:
        try:
            dev = os.lstat(root).st_dev
        except OSError:
            continue
        stack = [root]
        while stack and len(out) < 20000:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                path = entry.path
                if path == skip or path.startswith(skip + "/"):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != dev:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    out[path + "/"] = (st.st_ino, 0, 0)  # a folder: whether it exists, not its mtime
                    stack.append(path)
                else:
                    out[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def storage(roots: list[str]) -> dict[str, list[int]]:
    """``mount -> [used bytes, size bytes]`` for each writable mount."""
    out = {}
    for root in roots:
        try:
            st = os.statvfs(root)
        except OSError:
            continue
        out[root] = [(st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize]
    return out


def pending_work(baseline: set[int]) -> list[str]:
    """Threads the model started that still live, and armed interval timers / alarms."""
    work = []
    for t in threading.enumerate():
        if t.ident in baseline or t is threading.current_thread():
            continue
        if t.is_alive():
            kind = "timer" if isinstance(t, threading.Timer) else ("daemon thread" if t.daemon else "thread")
            work.append(f"{kind} {t.name}")
    for name in ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"):
        if signal.getitimer(getattr(signal, name))[0] > 0:
            work.append(f"armed {name.lower()} (signal.alarm/setitimer)")
    return work


def teardown(reporter: Reporter, baseline: set[int], quiesce: float, before: dict[str, tuple[int, int, int]]) -> None:
    """Observe what the model left behind: deferred work, atexit handlers, finalizers, files, storage."""
    reporter.start("teardown")
    roots = _writable_mounts()
    high = storage(roots)
    deadline = time.monotonic() + quiesce
    try:
        while pending_work(baseline) and time.monotonic() < deadline:
            time.sleep(0.05)  # timers fire, threads run, alarms' handlers run in this (main) thread
        atexit._run_exitfuncs()  # what would run when the program exits, under the hook
        gc.collect()  # finalizers (__del__) of unreachable objects
        while pending_work(baseline) and time.monotonic() < deadline:
            time.sleep(0.05)
    except BaseException as exc:  # noqa: BLE001 - deferred code may raise anything
        reporter.send({"type": "teardown.error", "error": _error_text(exc)[:2000]})
    work = pending_work(baseline)
    if work:
        reporter.send({"type": "pending", "work": work[:50]})
    for mount, (used, size) in storage(roots).items():
        high[mount] = [max(used, high.get(mount, [0, size])[0]), size]
    reporter.send({"type": "storage", "mounts": high})
    after = fs_state(roots, os.environ.get("TMPDIR", "/nonexistent"))
    changed = sorted(p for p, st in after.items() if before.get(p) != st)
    removed = sorted(p for p in before if p not in after)
    if changed or removed:
        reporter.send({"type": "fsdiff", "changed": changed[:200], "removed": removed[:200]})
    reporter.end("teardown", "ok")


def main(argv: list[str] | None = None) -> int:
    """Entry point inside the sandbox."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--key-fd", type=int, default=None)
    parser.add_argument("--trace-fd", type=int, default=None)
    parser.add_argument("--seccomp-fd", type=int, default=None)
    parser.add_argument("--quiesce-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    key = read_key(args.key_fd) if args.key_fd is not None else b""
    if args.trace_fd is not None:  # the tracer's pipe: nothing in here may write fake trace lines into it
        try:
            os.close(args.trace_fd)
        except OSError:
            pass
    if args.seccomp_fd is not None:  # what strace needs, refused to the model (see seccomp.py): before any import
        from mlwarden.scan.dynamic.seccomp import install

        install(args.seccomp_fd)
    quiet = tuple(
        sorted(
            {p for p in (sys.prefix, sys.base_prefix, sys.exec_prefix) if p}
            | {p for p in sys.path if p and os.path.isdir(p)}
        )
    )
    reporter = Reporter(args.events_fd, quiet, Signer(key))
    del key

    from mlwarden.scan.dynamic.adapters import ADAPTERS

    adapter = ADAPTERS[args.framework]
    code = _run_phases(reporter, adapter, args.model, args.quiesce_seconds)
    reporter.send({"type": "done", "status": "ok" if code == 0 else "error"})
    return code


def _run_phases(reporter: Reporter, adapter: Any, model_path: str, quiesce: float = 3.0) -> int:
    """The four phases, then the teardown watch; the exit code says which phase failed (0: all ran)."""
    # The framework's own import is watched by the syscall tracer only: the model's bytes have not been read
    # yet, so nothing in it can run, and a Python-level hook would make importing torch several times slower.
    before = fs_state(_writable_mounts(), os.environ.get("TMPDIR", "/nonexistent"))  # still in "setup"
    ok, _ = _phase(reporter, "import", adapter.import_framework)
    if not ok:
        teardown(reporter, {t.ident for t in threading.enumerate() if t.ident is not None}, 0.0, before)
        return 3
    baseline = {t.ident for t in threading.enumerate() if t.ident is not None}
    install_hook(reporter)
    code = 4
    ok, obj = _phase(reporter, "deserialize", lambda: adapter.deserialize(model_path))
    if ok:
        code = 5
        ok, obj = _phase(reporter, "instantiate", lambda: adapter.instantiate(obj))
    if ok:
        code = 6
        ok, _ = _phase(reporter, "infer", lambda: adapter.infer(obj))
    teardown(reporter, baseline, quiesce, before)
    return 0 if ok else code


def _exit(code: int) -> None:
    """Leave without interpreter finalisation: nothing of the model's may run after the last report."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110 - a closed stream must not keep the process alive
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
