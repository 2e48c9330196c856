"""A warm pool for bulk dynamic scanning: one sandbox per framework imports it once and forks a child per model.

A cold dynamic run pays for a new sandbox and, above all, the framework's import (about 2 s for torch) on
every file. :class:`WarmPool` starts the sandbox once — the same bubblewrap + strace command as a cold run,
with the folders of the files to scan bound read-only — and runs :mod:`~mlwarden.scan.dynamic.pool_runner`
in it, which imports the framework once and then forks a fresh child per model.

What a cold run guarantees and the pool keeps, per model: no network; a read-only system and read-only
models; a private writable folder (the tmpfs is restored to its post-import content after every model);
rlimits on CPU, address space and file size; a wall clock; every process the model started is killed and
reaped before the next model starts (its process group, then a sweep of the pid namespace; if anything
survives the pool is torn down); and events are attributed to the model that caused them — audit records
carry the request id and only those of the request in flight are accepted, syscalls are attributed by the
pid strace prints (``clone``/``fork`` are traced so every descendant is known), and each request's trace is
closed by a marker only the server's pid can write. Differences from a cold run: the model sees the other
bound folders (read-only), and the import phase is observed once and reported with every model's result.

Each result is judged exactly as :func:`mlwarden.scan.dynamic.engine.analyse` judges a cold run: the audit
records and trace lines are those a cold run would have produced (import-phase prefix + the request's own).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from mlwarden.core.findings import Location
from mlwarden.scan.dynamic import engine as dyn
from mlwarden.scan.dynamic import sandbox as sb
from mlwarden.scan.dynamic.adapters import REQUIRES
from mlwarden.scan.dynamic.profiles import load_profile
from mlwarden.scan.dynamic.records import Verifier, derive

_PID = re.compile(r"^(\d+)\s")
_POOL_MARK = re.compile(r'mkdir(?:at)?\((?:AT_FDCWD, )?"/\.mlwarden-pool/(ready|\d+/start|\d+/end)"')
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
_UNFINISHED = " <unfinished ...>"
_CLONE = re.compile(r"\b(?:clone3?|v?fork)\b.*\)\s+=\s+(\d+)\s*$")
_EXTRA_TRACED = ("clone", "clone3", "fork", "vfork")  # so strace prints the pid of every new process
_MAX_RECORDS = 64 << 20  # bytes of audit records kept per request (a flooding model is cut off, not obeyed)
_GRACE = 30.0  # seconds the host waits beyond the per-request wall clock before declaring the pool dead
_STRAY = -1


class _TraceRouter:
    """Splits the single strace stream into the start-up prefix and per-request lines, by pid."""

    def __init__(self) -> None:
        self.server: int | None = None
        self.ready = False
        self.current: int | None = None
        self.owners: dict[int, int | str] = {}
        self.prefix: list[str] = []
        self.lines: dict[int, list[str]] = defaultdict(list)
        self.ended: set[int] = set()
        self.pending: dict[int, str] = {}

    def feed(self, line: str) -> None:
        """Route one strace line (joining a call strace split in two because another process interleaved)."""
        m = _PID.match(line)
        if m is None:
            return
        pid = int(m.group(1))
        if line.endswith(_UNFINISHED):
            self.pending[pid] = line[: -len(_UNFINISHED)]
            return
        resumed = _RESUMED.match(line)
        if resumed is not None:
            line = self.pending.pop(pid, f"{pid} {resumed.group(2)}(") + resumed.group(3)
        if self.server is None:
            self.server = pid  # the interpreter's execve is the first traced syscall
        owner: int | str
        if pid == self.server:
            mark = _POOL_MARK.search(line)
            if mark is not None:
                name = mark.group(1)
                if name == "ready":
                    self.ready = True
                elif name.endswith("/start"):
                    self.current = int(name.split("/")[0])
                else:
                    self._flush(int(name.split("/")[0]))
                return
            owner = "server"
        else:
            known = self.owners.get(pid)
            if known is None:  # its clone line is not printed yet: it belongs to whatever runs now
                known = "server" if not self.ready else (self.current if self.current is not None else _STRAY)
                self.owners[pid] = known
            owner = known
        child = _CLONE.search(line)
        if child is not None:
            spawned = int(child.group(1))
            self.owners[spawned] = (
                self.current if pid == self.server and self.ready and self.current is not None else owner
            )
            if pid == self.server and self.ready:
                return  # the server forking the request's child is not the model's doing
        if not self.ready:
            if owner == "server":
                self.prefix.append(line)
        elif isinstance(owner, int) and owner >= 0 and owner not in self.ended:
            self.lines[owner].append(line)

    def _flush(self, request: int) -> None:
        """Close the request: calls its killed processes never finished still count (result unknown)."""
        for pid in [p for p in self.pending if self.owners.get(p) == request]:
            self.lines[request].append(self.pending.pop(pid) + ") = ?")
        self.ended.add(request)
        self.current = None

    def take(self, request: int) -> list[str]:
        """The request's lines (and forget them)."""
        return self.lines.pop(request, [])


@dataclass
class _Request:
    id: int
    path: Path
    records: list[dict[str, object]] = field(default_factory=list)
    size: int = 0
    done: dict[str, object] | None = None
    child_pid: int | None = None
    verifier: Verifier | None = None


class WarmPool:
    """One sandbox that imports ``framework`` once and analyses many models, each in a fresh forked child.

    Use as a context manager::

        with WarmPool("torch", models_dir, policy.sandbox) as pool:
            result = pool.analyse(models_dir / "a.pt")

    ``root_dir`` (or each folder of a sequence) is bound read-only at its own path, as in a cold run. Every
    analysed file must lie under one of them. If the server dies (a payload killed it, or something outlived
    its request) the pool restarts for the next file. With ``traced=False`` no tracer runs (the second,
    untraced pass of :func:`analyse_many`).
    """

    def __init__(
        self,
        framework: str,
        root_dir: Path | Sequence[Path],
        limits: sb.SandboxLimits,
        profile_dir: Path | None = None,
        *,
        traced: bool = True,
        files: Sequence[Path] | None = None,
    ) -> None:
        roots = [Path(root_dir)] if isinstance(root_dir, str | os.PathLike) else [Path(r) for r in root_dir]
        if not roots:
            raise ValueError("WarmPool needs at least one folder to bind")
        resolved = [r.resolve() for r in roots]
        self.binds = [(Path(host), inside) for host, inside in sb.model_binds(resolved)]
        self.traced = traced
        self.framework = framework
        self.limits = limits
        self.profile = load_profile(framework, profile_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        # files the sandbox's uid must be able to read (see sandbox.stage); None: whatever their modes allow
        self.files = None if files is None else [str(Path(f).resolve()) for f in files]
        self._staged: sb.Staging | None = None
        self.starts = 0
        self._next_id = 0

    # --- life cycle ---------------------------------------------------------------------------------

    def __enter__(self) -> WarmPool:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the sandbox and wait for the framework's import phase.

        Raises:
            SandboxUnavailable: bubblewrap or strace is missing, or the sandbox died before importing.
        """
        self.close()
        programs = (sb.seccomp_program(self.traced), sb.runner_seccomp_program() if self.traced else b"")
        self._staged = sb.stage([(str(host), inside) for host, inside in self.binds], self.files)  # (before any fd)
        events_r, events_w = os.pipe()
        trace_r, trace_w = sb.trace_pipe() if self.traced else (None, None)
        control_r, control_w = os.pipe()
        self._master = secrets.token_bytes(32)
        key_r = sb.key_pipe(self._master)
        seccomp_r = sb.key_pipe(programs[0])
        runner_seccomp_r = sb.key_pipe(programs[1]) if trace_w is not None else None
        quiesce = getattr(self.limits, "quiesce_seconds", sb.QUIESCE_SECONDS)
        argv = [sys.executable, "-I", "-m", "mlwarden.scan.dynamic.pool_runner", "--framework", self.framework]
        argv += ["--events-fd", str(events_w), "--control-fd", str(control_r), "--key-fd", str(key_r)]
        argv += ["--quiesce-seconds", str(quiesce)]
        if trace_w is not None:
            argv += ["--trace-fd", str(trace_w), "--seccomp-fd", str(runner_seccomp_r)]
        binds, file_binds = self._staged.binds, self._staged.file_binds
        # bwrap and the server get the address-space and file-size limits (prlimit, no preexec_fn); each child
        # sets its own CPU limit after fork
        cmd = sb.build_command(
            binds,
            argv,
            trace_w,
            self.limits,
            extra_traced=_EXTRA_TRACED,
            seccomp_fd=seccomp_r,
            cpu_limit=False,
            file_binds=file_binds,
        )
        passed = tuple(
            fd for fd in (events_w, trace_w, control_r, key_r, seccomp_r, runner_seccomp_r) if fd is not None
        )
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - our own bwrap command line, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=passed,
                start_new_session=True,
            )
        except OSError as exc:
            self._staged.cleanup()
            for fd in (events_r, trace_r, control_w, *passed):
                if fd is not None:
                    os.close(fd)
            raise sb.SandboxUnavailable(f"cannot start bubblewrap: {exc}") from exc
        for fd in passed:
            os.close(fd)
        if self.proc.stderr is None:
            raise RuntimeError("the pool server was started without a stderr pipe")
        self._events, self._trace, self._control = events_r, trace_r, control_w
        self._err_fd = self.proc.stderr.fileno()
        self._buf: dict[int, bytes] = {events_r: b""}
        if trace_r is not None:
            self._buf[trace_r] = b""
        self._open = [*self._buf, self._err_fd]
        self._stderr = b""
        self._router = _TraceRouter()
        self._server_chain = Verifier(derive(self._master, "server"))
        self._import_records: list[dict[str, object]] = []
        self._ready: bool | None = None
        self._request: _Request | None = None
        self.starts += 1
        self._pump(
            lambda: self._ready is not None and (self._router.ready or not self.traced),
            time.monotonic() + self.limits.wall_seconds,
        )
        if self._ready is None:
            tail = self._stderr.decode(errors="replace").strip()[-500:]
            self.close()
            raise sb.SandboxUnavailable(f"the warm pool's sandbox did not start: {tail or 'no output'}")

    def close(self) -> None:
        """Stop the sandbox (its pid namespace takes every process inside with it)."""
        proc, self.proc = self.proc, None
        if proc is None:
            if self._staged is not None:
                self._staged.cleanup()
            return
        for fd in (self._control, self._events, self._trace):
            if fd is None:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        if self._staged is not None:
            self._staged.cleanup()
        if proc.stderr is not None:
            proc.stderr.close()

    # --- reading the sandbox's output ---------------------------------------------------------------

    def _pump(self, until: Callable[[], bool], deadline: float) -> bool:
        """Read the sandbox's output until ``until()`` holds; False on deadline or when the sandbox ended."""
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._open:
                return until()
            ready, _, _ = select.select(self._open, [], [], min(remaining, 1.0))
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self._open.remove(fd)
                    if fd in self._buf and self._buf[fd]:
                        self._lines(fd, b"\n")
                    continue
                if fd == self._err_fd:
                    self._stderr = (self._stderr + chunk)[-16000:]
                    continue
                self._lines(fd, chunk)
        return True

    def _lines(self, fd: int, chunk: bytes) -> None:
        data = self._buf[fd] + chunk
        *lines, self._buf[fd] = data.split(b"\n")
        for raw in lines:
            if fd == self._trace:
                self._router.feed(raw.decode(errors="replace"))
                continue
            if not raw.strip():
                continue
            record = self._server_chain.check(raw)
            req = self._request
            if record is None and req is not None and req.verifier is not None:
                record = req.verifier.check(raw)
                if record is None:
                    req.verifier.reject(raw)  # forged, replayed or out of order: counted against the request
                    continue
                if record.get("req") != req.id:
                    continue
                self._child_record(req, record, len(raw))
            elif record is not None:
                self._record(record)

    def _record(self, record: dict[str, object]) -> None:
        """A genuine record of the server itself."""
        kind = record.get("type")
        req = self._request
        if self._ready is None:  # starting: the import phase, reported once by the server
            if kind == "pool.ready":
                self._ready = bool(record.get("ok"))
            elif kind == "phase":
                self._import_records.append(record)
            return
        if kind == "pool.done" and req is not None and record.get("req") == req.id:
            req.done = record  # the server's comes last: the child is dead when it is written

    def _child_record(self, req: _Request, record: dict[str, object], size: int) -> None:
        """A genuine record of the request's child."""
        kind = record.get("type")
        if kind == "pool.child":
            req.child_pid = record.get("pid") if isinstance(record.get("pid"), int) else None  # type: ignore[assignment]
        elif kind != "pool.done" and req.size < _MAX_RECORDS:
            req.size += size
            req.records.append(record)

    # --- analysing -----------------------------------------------------------------------------------

    def _inside(self, path: Path) -> str:
        resolved = path.resolve()
        for host, inside in self.binds:
            if resolved.is_relative_to(host):
                return f"{inside}/{resolved.relative_to(host).as_posix()}"
        raise ValueError(f"{path} is not under the pool's folders ({', '.join(str(h) for h, _ in self.binds)})")

    def analyse(self, path: Path, chain: tuple[str, ...] | None = None) -> dyn.DynamicResult:
        """Analyse one file in a fresh child; same result shape and findings as a cold ``engine.analyse``."""
        chain = chain or (str(path),)
        inside = self._inside(Path(path))
        if self.proc is None or self._ready is None or (self._ready and self.proc.poll() is not None):
            self.start()
        started = time.monotonic()
        run = sb.SandboxRun()
        if not self._ready:  # the import phase failed: every model ends there, as in a cold run
            run.records = list(self._import_records)
            run.trace = list(self._router.prefix)
            run.returncode = 3
            return dyn.judge_run(run, self.framework, chain, self.limits, self.profile)
        self._next_id += 1
        req = self._request = _Request(self._next_id, Path(path))
        req.verifier = Verifier(derive(self._master, f"req:{req.id}"))
        limits = self.limits
        message = {
            "req": req.id,
            "model": inside,
            "wall": limits.wall_seconds,
            "cpu": limits.cpu_seconds,
            "memory": limits.memory_bytes,
            "fsize": limits.file_size_bytes,
        }
        try:
            os.write(self._control, (json.dumps(message) + "\n").encode())
        except OSError:
            pass  # the server is gone: reported below as an incomplete run
        quiesce = getattr(limits, "quiesce_seconds", sb.QUIESCE_SECONDS)
        finished = self._pump(
            lambda: req.done is not None and (req.id in self._router.ended or not self.traced),
            started + limits.wall_seconds + quiesce + _GRACE,
        )
        self._request = None
        done = req.done or {}
        run.records = self._import_records + req.records
        run.verified = list(run.records)  # both chains were checked as they arrived
        run.key = b"pool"  # (so the record chain is judged like a cold run's)
        run.traced = self.traced
        run.binds = [(str(host), inside) for host, inside in self.binds]
        if req.verifier is not None:
            run.forged, run.forged_samples = req.verifier.forged, req.verifier.samples
        run.trace = self._router.prefix + self._router.take(req.id) if self.traced else []
        run.seconds = time.monotonic() - started
        rc = done.get("returncode")
        run.returncode = rc if isinstance(rc, int) else None
        run.timed_out = bool(done.get("timed_out")) or (
            not finished and time.monotonic() - started >= limits.wall_seconds
        )
        run.stderr = str(done.get("stderr", "")) or self._stderr.decode(errors="replace")[-4000:]
        result = dyn.judge_run(run, self.framework, chain, limits, self.profile)
        survivors = done.get("survivors")
        if not finished or survivors:
            why = f"{survivors} process(es) outlived the model" if survivors else "the warm pool's sandbox died"
            if not run.timed_out:
                result.findings.append(dyn.INCOMPLETE.finding(Location(chain), why, limit="sandbox"))
            self.close()  # never reuse a sandbox whose state is in doubt
        return result


def analyse_many(
    paths: Iterable[Path],
    framework: str,
    limits: sb.SandboxLimits,
    profile_dir: Path | None = None,
    chains: dict[Path, tuple[str, ...]] | None = None,
    *,
    untraced: bool = True,
) -> dict[Path, dyn.DynamicResult]:
    """Analyse many files of one framework in one warm pool (their folders bound read-only).

    Falls back to :func:`engine.analyse` per file when the framework is not installed (it only reports
    that), so callers can use it unconditionally.
    """
    files = list(dict.fromkeys(Path(p) for p in paths))
    chains = chains or {}
    if not files:
        return {}
    if not dyn.framework_installed(framework) or REQUIRES.get(framework) is None:
        return {
            p: dyn.analyse(p, framework, chains.get(p, (str(p),)), limits, profile_dir, untraced=untraced)
            for p in files
        }
    folders = list(dict.fromkeys(p.resolve().parent for p in files))
    out: dict[Path, dyn.DynamicResult] = {}
    with WarmPool(framework, folders[0] if len(folders) == 1 else folders, limits, profile_dir, files=files) as pool:
        for p in files:
            out[p] = pool.analyse(p, chains.get(p, (str(p),)))
    if not untraced:
        return out
    # The second pass without a tracer: a payload that checks TracerPid acts here (see engine.analyse).
    roots = folders[0] if len(folders) == 1 else folders
    with WarmPool(framework, roots, limits, profile_dir, traced=False, files=files) as pool:
        for p in files:
            out[p] = dyn.merge_untraced(out[p], pool.analyse(p, chains.get(p, (str(p),))))
    return out
