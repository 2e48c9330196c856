"""Turn raw sandbox output (audit records and strace lines) into phase-attributed :class:`Event` values."""

from __future__ import annotations

import re
from collections.abc import Iterable

from mlwarden.scan.dynamic.events import PHASES, Event, PhaseRecord

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+|\?)(?P<rest>.*)$")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')
_PHASE_MARK = re.compile(r'"/\.mlwarden-phase/(\w+)"')
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_MARKER = "/.mlwarden-phase/"

# Syscalls by the event kind they become; the sandbox traces exactly these (sandbox.TRACED_SYSCALLS).
EXEC_SYSCALLS = ("execve", "execveat")
NET_SYSCALLS = ("connect", "bind", "sendto")
OPEN_SYSCALLS = ("openat", "open", "creat")
FILE_MODIFY_SYSCALLS = (
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "chmod",
    "fchmodat",
    "symlink",
    "symlinkat",
    "link",
    "linkat",
)
TRACED = (*EXEC_SYSCALLS, *NET_SYSCALLS, *OPEN_SYSCALLS, *FILE_MODIFY_SYSCALLS, "ptrace")

_AUDIT_KINDS: dict[str, str] = {
    "os.system": "process.exec",
    "os.exec": "process.exec",
    "os.spawn": "process.exec",
    "os.posix_spawn": "process.exec",
    "subprocess.Popen": "process.exec",
    "pty.spawn": "process.exec",
    "os.fork": "process.fork",
    "os.forkpty": "process.fork",
    "os.kill": "process.signal",
    "os.killpg": "process.signal",
    "socket.connect": "net.connect",
    "socket.sendto": "net.connect",
    "socket.sendmsg": "net.connect",
    "socket.bind": "net.bind",
    "socket.getaddrinfo": "net.resolve",
    "socket.gethostbyname": "net.resolve",
    "urllib.Request": "net.request",
    "http.client.connect": "net.request",
    "ftplib.connect": "net.request",
    "smtplib.connect": "net.request",
    "webbrowser.open": "net.request",
    "ctypes.dlopen": "native.load",
    "ctypes.dlsym": "native.symbol",
    "ctypes.call_function": "native.call",
    "os.remove": "file.modify",
    "os.rmdir": "file.modify",
    "os.rename": "file.modify",
    "os.chmod": "file.modify",
    "os.chown": "file.modify",
    "os.mkdir": "file.modify",
    "os.symlink": "file.modify",
    "os.link": "file.modify",
    "os.truncate": "file.modify",
    "shutil.rmtree": "file.modify",
    "shutil.copyfile": "file.write",
    "shutil.move": "file.modify",
    "os.putenv": "process.env",
    "os.unsetenv": "process.env",
    "exec": "code.exec",
    "compile": "code.compile",
    "marshal.loads": "code.construct",
    "code.__new__": "code.construct",
    "function.__new__": "code.construct",
    "cpython.run_": "code.exec",
    "import": "import",
    "pickle.find_class": "pickle.global",
    "sys.addaudithook": "tamper",
    "sys.setprofile": "tamper",
    "sys.settrace": "tamper",
    "os.listdir": "file.list",
    "os.scandir": "file.list",
    "glob.glob": "file.list",
    "os.chdir": "file.list",
    "mmap.__new__": "native.mmap",
}


def _audit_kind(name: str) -> str | None:
    for prefix, kind in _AUDIT_KINDS.items():
        if name == prefix or name.startswith(prefix):
            return kind
    return None


def audit_events(records: Iterable[dict[str, object]]) -> tuple[list[Event], list[PhaseRecord]]:
    """Events and phase outcomes from the runner's JSON records."""
    events: list[Event] = []
    starts: dict[str, float] = {}
    phases: dict[str, PhaseRecord] = {}
    for rec in records:
        kind = rec.get("type")
        if kind == "phase":
            name, status = str(rec.get("name")), str(rec.get("status"))
            t = rec.get("t")
            if status == "start":
                starts[name] = float(t) if isinstance(t, int | float) else 0.0
                phases[name] = PhaseRecord(name, "not-finished")
            else:
                begun = starts.get(name, 0.0)
                seconds = float(t) - begun if isinstance(t, int | float) else 0.0
                phases[name] = PhaseRecord(name, status, round(seconds, 4), str(rec.get("error", "")))
        elif kind == "event":
            name = str(rec.get("event", ""))
            mapped = _audit_kind(name)
            if mapped is None:
                continue
            target, extra = str(rec.get("target", "")), str(rec.get("extra", ""))
            if target.startswith(_MARKER):
                continue
            if name == "open":
                mapped = "file.write" if extra == "w" else "file.read"
            stack = rec.get("stack")
            events.append(
                Event(
                    str(rec.get("phase", "setup")),
                    mapped,
                    target,
                    "audit",
                    f"{name}({target}{', ' + extra if extra and name != 'open' else ''})",
                    tuple(str(s) for s in stack[-6:]) if isinstance(stack, list) else (),
                )
            )
    ordered = [phases.get(p, PhaseRecord(p, "not-reached")) for p in PHASES]
    return events, ordered


def syscall_events(lines: Iterable[str]) -> list[Event]:
    """Events from strace output; phases come from the runner's marker stat() calls."""
    phase = "setup"
    events: list[Event] = []
    execs = 0
    for line in lines:
        m = _LINE.match(line.strip())
        if m is None:
            continue
        call, args, ret = m.group("call"), m.group("args"), m.group("ret")
        mark = _PHASE_MARK.search(args) if call in ("mkdir", "mkdirat") else None
        if mark is not None:
            # Phases only move forward: a payload cannot mkdir() its way back into "setup" to hide later calls.
            wanted = mark.group(1)
            if wanted in PHASES and (phase not in PHASES or PHASES.index(wanted) > PHASES.index(phase)):
                phase = wanted
            continue
        strings = _STR.findall(args)
        target = strings[0] if strings else ""
        failed = ret.startswith("-")
        result = m.group("rest").strip()
        if call in EXEC_SYSCALLS:
            execs += 1
            if execs == 1 and not failed:
                continue  # the sandboxed interpreter itself
            argv = " ".join(_STR.findall(args.split("[", 1)[1])) if "[" in args else target
            events.append(Event(phase, "process.exec", argv[:300], "syscall", line.strip()[:400]))
        elif call in NET_SYSCALLS:
            if "AF_INET" not in args:
                continue  # unix sockets (nscd, logging) and netlink stay inside the sandbox
            addr = re.search(r'inet6?_(?:addr|pton)\((?:AF_INET6, )?"([^"]+)"\)', args)
            port = re.search(r"htons\((\d+)\)", args)
            where = f"{addr.group(1) if addr else '?'}:{port.group(1) if port else '?'}"
            events.append(
                Event(
                    phase,
                    "net.bind" if call == "bind" else "net.connect",
                    where,
                    "syscall",
                    f"{call}({where}) = {ret} {result}"[:400],
                )
            )
        elif call in OPEN_SYSCALLS:
            writing = call == "creat" or any(flag in args for flag in _WRITE_FLAGS)
            if not writing:
                if not failed:
                    events.append(Event(phase, "file.read", target, "syscall", ""))
                continue
            events.append(Event(phase, "file.write", target, "syscall", f"{call}({target}) = {ret} {result}"[:400]))
        elif call in FILE_MODIFY_SYSCALLS:
            events.append(Event(phase, "file.modify", target, "syscall", f"{call}({', '.join(strings[:2])}) = {ret}"))
        elif call == "ptrace":
            events.append(Event(phase, "tamper", "ptrace", "syscall", line.strip()[:400]))
    return events
