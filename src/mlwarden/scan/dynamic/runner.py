"""Runs inside the sandbox: load one model phase by phase under a Python audit hook.

This module is executed as ``python -I -m mlwarden.scan.dynamic.runner`` inside bubblewrap. It imports only
the standard library before the audit hook is installed, then reports JSON lines on the file descriptor given
by ``--events-fd``: phase boundaries and audit events. Each phase also touches a marker path
(``/.mlwarden-phase/<name>``) so that the syscall tracer outside can attribute native events to phases.

The hook writes an event *before* the audited operation runs, so a payload cannot hide what it is about to do;
it can at most stop later reporting, which the host sees as a phase that never finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

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
)
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
        "gc.get_referrers",
        "sqlite3.connect",
        "ctypes.cdata",
        "ctypes.addressof",
        "ctypes.get_errno",
        "ctypes.set_errno",
        "ctypes.string_at",
    }
)
_MAX_ARG = 300


class Reporter:
    """Writes JSON lines to the event descriptor; deduplicates repeated events within a phase."""

    def __init__(self, fd: int, prefixes: tuple[str, ...]) -> None:
        self.fd = fd
        self.phase = "setup"
        self.seen: set[tuple[str, str, str]] = set()
        self.quiet_prefixes = prefixes  # read-only opens under these are the framework reading itself
        self.active = True

    def send(self, record: dict[str, Any]) -> None:
        """Write one JSON line (a failed write stops further reporting)."""
        try:
            os.write(self.fd, (json.dumps(record, default=repr) + "\n").encode())
        except OSError:
            self.active = False

    def start(self, phase: str) -> None:
        """Announce a phase and leave a marker for the syscall tracer."""
        self.phase = phase
        self.send({"type": "phase", "name": phase, "status": "start", "t": time.monotonic()})
        try:  # marker for the syscall tracer outside (mkdir is traced and fails on the read-only root)
            os.mkdir(f"/.mlwarden-phase/{phase}")
        except OSError:
            pass

    def end(self, phase: str, status: str, error: str = "") -> None:
        """Announce how a phase ended."""
        self.send({"type": "phase", "name": phase, "status": status, "error": error[:8000], "t": time.monotonic()})


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        value = value[:_MAX_ARG]
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= _MAX_ARG else text[: _MAX_ARG - 1] + "…"


def _caller() -> str:
    """File of the innermost Python frame outside this module (who asked for the exec/compile)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_code.co_filename if frame is not None else "?"


def _describe(event: str, args: tuple[Any, ...]) -> tuple[str, str] | None:
    """Key and shortened arguments for an interesting event, or None to drop it."""
    if event == "open":
        path, mode = args[0], args[1] if len(args) > 1 else None
        flags = args[2] if len(args) > 2 else 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        )
        return _short(path), ("w" if writing else "r")
    if event == "import":
        return _short(args[0]), ""
    if event == "exec":
        code = args[0]
        return f"{getattr(code, 'co_filename', '?')}:{getattr(code, 'co_name', '?')} by {_caller()}", ""
    if event == "compile":
        source, filename = (args + (None, None))[:2]
        return f"{_short(filename)} by {_caller()}", _short(source)[:120]
    if event == "pickle.find_class":
        return f"{args[0]}:{args[1]}", ""
    return _short(args[0]) if args else "", " ".join(_short(a) for a in args[1:4])


def install_hook(reporter: Reporter) -> None:
    """Install the audit hook (it can never be removed, which is the point)."""
    in_hook = False
    quiet = reporter.quiet_prefixes

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal in_hook
        if in_hook or not reporter.active or event in _BORING or not event.startswith(_INTERESTING):
            return
        if event == "marshal.loads" and "importlib" in sys._getframe(1).f_code.co_filename:
            return  # the import system loading .pyc files
        in_hook = True
        try:
            described = _describe(event, args)
            if described is None:
                return
            target, extra = described
            if event == "open" and extra == "r" and (target.startswith(quiet) or target.startswith("/proc/")):
                return
            if event == "exec" and target.startswith(quiet):
                return  # module bodies of installed packages being executed on import
            key = (reporter.phase, event, target)
            if key in reporter.seen:
                return
            reporter.seen.add(key)
            record: dict[str, Any] = {
                "type": "event",
                "phase": reporter.phase,
                "event": event,
                "target": target,
                "extra": extra,
            }
            if event not in ("import", "open", "exec", "compile", "pickle.find_class"):
                record["stack"] = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack(limit=10)[:-2]]
            reporter.send(record)
        finally:
            in_hook = False

    sys.addaudithook(hook)


def _phase(reporter: Reporter, name: str, func: Callable[[], Any]) -> tuple[bool, Any]:
    reporter.start(name)
    try:
        value = func()
    except BaseException as exc:  # noqa: BLE001 - the model may raise anything; report it and stop
        reporter.end(name, "error", f"{type(exc).__name__}: {exc}")
        return False, None
    reporter.end(name, "ok")
    return True, value


def main(argv: list[str] | None = None) -> int:
    """Entry point inside the sandbox."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--trace-fd", type=int, default=None)
    args = parser.parse_args(argv)
    if args.trace_fd is not None:  # the tracer's pipe: nothing in here may write fake trace lines into it
        try:
            os.close(args.trace_fd)
        except OSError:
            pass
    quiet = tuple(
        sorted(
            {p for p in (sys.prefix, sys.base_prefix, sys.exec_prefix) if p}
            | {p for p in sys.path if p and os.path.isdir(p)}
        )
    )
    reporter = Reporter(args.events_fd, quiet)

    from mlwarden.scan.dynamic.adapters import ADAPTERS

    adapter = ADAPTERS[args.framework]
    code = _run_phases(reporter, adapter, args.model)
    reporter.send({"type": "done", "status": "ok" if code == 0 else "error"})
    return code


def _run_phases(reporter: Reporter, adapter: Any, model_path: str) -> int:
    """The four phases; the exit code says which one failed (0: all ran)."""
    # The framework's own import is watched by the syscall tracer only: the model's bytes have not been read
    # yet, so nothing in it can run, and a Python-level hook would make importing torch several times slower.
    ok, _ = _phase(reporter, "import", adapter.import_framework)
    if not ok:
        return 3
    install_hook(reporter)
    ok, obj = _phase(reporter, "deserialize", lambda: adapter.deserialize(model_path))
    if not ok:
        return 4
    ok, model = _phase(reporter, "instantiate", lambda: adapter.instantiate(obj))
    if not ok:
        return 5
    ok, _ = _phase(reporter, "infer", lambda: adapter.infer(model))
    return 0 if ok else 6


if __name__ == "__main__":
    sys.exit(main())
