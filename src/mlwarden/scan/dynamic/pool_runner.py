"""Runs inside the sandbox: a fork server that imports a framework once and loads many models, one child each.

Started by :class:`mlwarden.scan.dynamic.pool.WarmPool` as ``python -I -m mlwarden.scan.dynamic.pool_runner
--framework F --events-fd N --control-fd M`` under the same bubblewrap + strace command as a cold run. The
server reports the framework's import phase once (exactly as :mod:`~mlwarden.scan.dynamic.runner` does), then
reads one JSON request per line from the control descriptor. For each it forks a child that starts from the
pristine post-import state, so nothing one model did in Python can be seen by the next:

* the child gets a new session (its own process group), a private working/``TMPDIR`` folder under the
  sandbox's scratch space, fresh rlimits (CPU time counts from zero after ``fork``), no access to the control
  descriptor, and the audit hook (installed in the child only: a hook can never be removed);
* its records go straight to the events descriptor, tagged with the request id and authenticated with a key
  derived for that request only (the server's own key chain is dropped in the child before the model is
  touched), so a payload that kills the server cannot swallow what it already did, and cannot forge the server's
  ``pool.done``;
* after the last phase the child watches for deferred work exactly as a cold run does (``teardown``);
* the server waits with the per-request wall clock, SIGKILLs the child's process group, then sweeps the pid
  namespace for anything else (a payload's daemon that called ``setsid``) until only the server and its
  ancestors are left, restores the writable mounts to their post-import content, reports ``pool.done`` and
  touches the marker ``/.mlwarden-pool/<id>/end`` that tells the host every syscall of that request has been
  traced.

Modules the server imports for its own bookkeeping after the import phase are dropped from ``sys.modules`` in
the child, so a model importing them is seen exactly as in a cold run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from mlwarden.scan.dynamic.records import Signer, derive, read_key
from mlwarden.scan.dynamic.runner import Reporter, _phase, _writable_mounts, fs_state, install_hook, teardown

POOL_MARK = "/.mlwarden-pool"
_SNAPSHOT_CAP = 32 << 20  # bytes of post-import tmpfs content kept for restoring it after each request
_EXIT = {"deserialize": 4, "instantiate": 5, "infer": 6}


class TaggedReporter(Reporter):
    """A :class:`Reporter` whose records carry the request id they belong to."""

    def __init__(self, fd: int, prefixes: tuple[str, ...], request: int, signer: Signer | None = None) -> None:
        super().__init__(fd, prefixes, signer)
        self.request = request

    def send(self, record: dict[str, Any]) -> None:
        """Write one JSON line tagged with the request id."""
        record["req"] = self.request
        super().send(record)


def _mark(name: str) -> None:
    """A marker for the syscall tracer (mkdir is traced and fails on the read-only root)."""
    try:
        os.mkdir(f"{POOL_MARK}/{name}")
    except OSError:
        pass


def _ancestors() -> set[int]:
    """Pids of the server and every ancestor inside the pid namespace (the tracer and bwrap's init)."""
    keep = {os.getpid(), 1}
    pid = os.getpid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
                ppid = next(int(line.split()[1]) for line in fh if line.startswith("PPid:"))
        except (OSError, StopIteration, ValueError):
            break
        keep.add(ppid)
        pid = ppid
    return keep


def _others(keep: set[int]) -> list[int]:
    """Live (non-zombie) processes in the sandbox that are not the server or its ancestors."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in keep:
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            out.append(int(name))
    return out


def sweep(keep: set[int], signal_kill: int, rounds: int = 400) -> int:
    """SIGKILL everything but ``keep`` until nothing else lives; returns how many survived (0 normally)."""
    for _ in range(rounds):
        left = _others(keep)
        if not left:
            return 0
        for pid in left:
            try:
                os.kill(pid, signal_kill)
            except OSError:
                pass
        time.sleep(0.002)
    return len(_others(keep))


def snapshot(root: str) -> dict[str, bytes | None]:
    """Relative path -> content (None for folders) of a writable mount after the import phase.

    Folders on another device (bound model folders, Python roots under it) are not entered.
    """
    out: dict[str, bytes | None] = {}
    total = 0
    try:
        dev = os.lstat(root).st_dev
    except OSError:
        return out
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in list(dirs):
            try:
                if os.lstat(os.path.join(dirpath, d)).st_dev != dev:
                    dirs.remove(d)
                    out[os.path.normpath(os.path.join(rel, d))] = None
                    continue
            except OSError:
                continue
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in files:
            path = os.path.join(dirpath, f)
            try:
                if os.path.islink(path) or total > _SNAPSHOT_CAP:
                    continue
                with open(path, "rb") as fh:
                    data = fh.read(_SNAPSHOT_CAP)
            except OSError:
                continue
            total += len(data)
            out[os.path.normpath(os.path.join(rel, f))] = data
    return out


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            for entry in os.listdir(path):
                _remove(os.path.join(path, entry))
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def restore(root: str, snap: dict[str, bytes | None]) -> None:
    """Bring a writable mount back to ``snap``: remove what a request added, rewrite what it changed."""
    try:
        dev = os.lstat(root).st_dev
    except OSError:
        return
    for dirpath, dirs, files in os.walk(root, topdown=True):
        rel = os.path.relpath(dirpath, root)
        for name in list(dirs) + files:
            relname = os.path.normpath(os.path.join(rel, name))
            path = os.path.join(dirpath, name)
            try:
                other_device = os.lstat(path).st_dev != dev
            except OSError:
                continue
            if other_device:  # a mount point (a bound folder): never touched
                if name in dirs:
                    dirs.remove(name)
                continue
            if relname not in snap or (snap[relname] is None) != (os.path.isdir(path) and not os.path.islink(path)):
                _remove(path)
                if name in dirs:
                    dirs.remove(name)
    for relname, data in snap.items():
        path = os.path.join(root, relname)
        try:
            if data is None:
                os.makedirs(path, exist_ok=True)
                continue
            with open(path, "rb") as fh:
                same = fh.read(len(data) + 1) == data
        except OSError:
            same = False
        if not same and data is not None:
            try:
                with open(path, "wb") as fh:
                    fh.write(data)
            except OSError:
                pass


class Server:
    """The fork server's state: the adapter, the descriptors and what a child must start from."""

    def __init__(
        self, framework: str, events_fd: int, control_fd: int, quiet: tuple[str, ...], reporter: Reporter
    ) -> None:
        from mlwarden.scan.dynamic.adapters import ADAPTERS

        self.adapter = ADAPTERS[framework]
        self.events_fd = events_fd
        self.control_fd = control_fd
        self.quiet = quiet
        self.reporter = reporter  # the server's own (signed) records
        self.master: bytes | None = None  # the run's key: request keys are derived from it
        self.quiesce = 3.0
        self.threads: set[int] = set()
        self.baseline: set[str] = set()
        self.snap: dict[str, dict[str, bytes | None]] = {}
        self.keep: set[int] = set()
        self.limits: tuple[int, int, int] = (0, 0, 0)  # CPU seconds, address space, file size of each child

    def child(
        self, req: int, model: str, private: str, err_w: int, key: bytes, before: dict[str, tuple[int, int, int]]
    ) -> None:
        """The forked child: isolate, hook, run the three model phases and the teardown watch; never returns."""
        code = 70
        self.master = None  # the child signs with its request's key only
        self.reporter._signer.forget()  # (still reachable through the server's frames otherwise)
        self.reporter = None  # type: ignore[assignment]
        try:
            import resource  # imported by the server after the import phase; dropped from sys.modules below

            os.setsid()
            os.close(self.control_fd)
            os.dup2(err_w, 2)
            os.close(err_w)
            os.chdir(private)
            os.environ.update(TMPDIR=private, PWD=private)
            tempfile = sys.modules.get("tempfile")
            if tempfile is not None:
                tempfile.tempdir = private  # type: ignore[attr-defined]
            cpu, mem, fsize = self.limits
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            for name in set(sys.modules) - self.baseline:
                del sys.modules[name]  # the server's own imports: a model importing them must be seen
            reporter = TaggedReporter(self.events_fd, self.quiet, req, Signer(key))
            del key
            reporter.send({"type": "pool.child", "pid": os.getpid()})
            install_hook(reporter)
            adapter = self.adapter
            code = _EXIT["deserialize"]
            ok, obj = _phase(reporter, "deserialize", lambda: adapter.deserialize(model))
            if ok:
                code = _EXIT["instantiate"]
                ok, obj = _phase(reporter, "instantiate", lambda: adapter.instantiate(obj))
            if ok:
                code = _EXIT["infer"]
                ok, _ = _phase(reporter, "infer", lambda: adapter.infer(obj))
            teardown(reporter, self.threads, self.quiesce, before)
            reporter.send({"type": "done", "status": "ok" if ok else "error"})
            code = 0 if ok else code
        except BaseException:  # noqa: BLE001, S110 - anything escaping must still end in os._exit below
            pass
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:  # noqa: BLE001, S110 - a closed stream must not keep the child alive
                    pass
            os._exit(code)

    def serve(self, request: dict[str, Any]) -> None:
        """Run one request in a forked child and report how it ended."""
        import select
        import signal

        req, model = int(request["req"]), str(request["model"])
        wall = float(request["wall"])
        self.limits = (int(request["cpu"]), int(request["memory"]), int(request["fsize"]))
        _mark(f"{req}/start")
        private = f"{os.environ.get('TMPDIR', '/tmp')}/tmp{os.urandom(4).hex()}"
        os.mkdir(private, 0o700)
        err_r, err_w = os.pipe()
        key = derive(self.master or b"", f"req:{req}")
        before = fs_state(_writable_mounts(), private)  # by the server: not the request's doing
        wall += self.quiesce
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(err_r)
            self.child(req, model, private, err_w, key, before)
        del key
        os.close(err_w)
        pidfd = os.pidfd_open(pid)
        err = bytearray()
        watch = [pidfd, err_r]
        timed_out = False
        deadline = started + wall
        while pidfd in watch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select(watch, [], [], remaining)
            if err_r in ready:
                chunk = os.read(err_r, 1 << 16)
                if chunk:
                    err = (err + chunk)[-8000:]
                else:
                    watch.remove(err_r)
            if pidfd in ready:
                watch.remove(pidfd)
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                target()
            except OSError:
                pass
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
        survivors = sweep(self.keep, signal.SIGKILL)
        os.set_blocking(err_r, False)
        try:
            while chunk := os.read(err_r, 1 << 16):
                err = (err + chunk)[-8000:]
        except OSError:
            pass
        os.close(err_r)
        for root, snap in self.snap.items():
            restore(root, snap)
        returncode = os.waitstatus_to_exitcode(status)
        record = {
            "type": "pool.done",
            "req": req,
            "returncode": returncode,
            "timed_out": timed_out,
            "seconds": time.monotonic() - started,
            "stderr": err.decode(errors="replace")[-4000:],
            "survivors": survivors,
        }
        self.reporter.send(record)
        _mark(f"{req}/end")
        if survivors:
            raise SystemExit(9)  # something outlived its request: this pool can no longer be trusted


def main(argv: list[str] | None = None) -> int:
    """Entry point inside the sandbox."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", required=True)
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--key-fd", type=int, default=None)
    parser.add_argument("--trace-fd", type=int, default=None)
    parser.add_argument("--seccomp-fd", type=int, default=None)
    parser.add_argument("--quiesce-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    master = read_key(args.key_fd) if args.key_fd is not None else b""
    if args.trace_fd is not None:
        try:  # strace writes through its own descriptor; without this a model could forge trace lines
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
    reporter = Reporter(args.events_fd, quiet, Signer(derive(master, "server")))
    reporter.send({"type": "pool.hello", "pid": os.getpid()})
    server = Server(args.framework, args.events_fd, args.control_fd, quiet, reporter)
    server.master, server.quiesce = master, args.quiesce_seconds
    del master
    ok, _ = _phase(reporter, "import", server.adapter.import_framework)
    _mark("ready")  # the host's trace prefix (interpreter start-up and import phase) ends here
    server.baseline = set(sys.modules)
    import resource  # noqa: F401 - imported now so every child forks with the same modules
    import select  # noqa: F401
    import signal  # noqa: F401
    import threading

    server.keep = _ancestors()
    server.threads = {t.ident for t in threading.enumerate() if t.ident is not None}
    server.snap = {root: snapshot(root) for root in _writable_mounts()}
    reporter.send({"type": "pool.ready", "ok": ok})
    if not ok:
        return 3
    pending = b""
    while True:
        chunk = os.read(args.control_fd, 1 << 16)
        if not chunk:
            return 0  # the host closed the control pipe: shut down
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            server.serve(json.loads(line))


if __name__ == "__main__":
    sys.exit(main())
