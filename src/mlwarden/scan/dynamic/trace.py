"""Turn raw sandbox output (audit records and strace lines) into phase-attributed :class:`Event` values."""

from __future__ import annotations

import re
from collections.abc import Iterable

from mlwarden.core.findings import Severity, rule
from mlwarden.scan.dynamic.events import PHASES, Event, PhaseRecord

_SIGSYS = re.compile(r"^(?P<pid>\d+)\s+--- SIGSYS \{.*\bsi_syscall=(?:__NR_)?(?P<call>\w+)")
#: event kind of a call the sandbox's seccomp filter refused (see seccomp.py); judged as MLW-DYN-013
REFUSED_KIND = "sandbox.refused"
_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+|\?)(?P<rest>.*)$")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')
_PHASE_MARK = re.compile(r'"/\.mlwarden-phase/(\w+)"')
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_MARKER = "/.mlwarden-phase/"

# x86_64 system calls by what they can do to the host. The classification is complete: every syscall of
# <asm/unistd_64.h> up to LAST_CLASSIFIED is either traced (one of the classes below) or listed in UNTRACED with
# the reason it cannot change anything outside the process (tests/scan/dynamic/test_syscalls.py checks this), and
# the sandbox refuses every syscall numbered above LAST_CLASSIFIED with ENOSYS (a seccomp filter; the tracer
# could not name them), so a newer kernel's fchmodat2 or setxattrat cannot slip past unseen.
EXEC_SYSCALLS = ("execve", "execveat")
NET_SYSCALLS = ("connect", "bind", "sendto", "sendmsg", "sendmmsg", "listen")
OPEN_SYSCALLS = ("openat", "open", "creat", "openat2", "open_by_handle_at")
FILE_MODIFY_SYSCALLS = (
    # create
    "mknod",
    "mknodat",
    "mkdir",
    "mkdirat",
    "symlink",
    "symlinkat",
    "link",
    "linkat",
    # remove, rename
    "unlink",
    "unlinkat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    # metadata
    "chmod",
    "fchmod",
    "fchmodat",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "utime",
    "utimes",
    "futimesat",
    "utimensat",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    # size (data written through write()/pwrite() needs a descriptor opened for writing: that open is traced)
    "truncate",
    "ftruncate",
    "fallocate",
)
PROCESS_SYSCALLS = (
    "clone",
    "clone3",
    "fork",
    "vfork",
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_send_signal",
    "pidfd_getfd",
    "process_vm_writev",
    "setns",
    "unshare",
)
#: changing the system itself, or bypassing the tracer (io_uring submits file operations without syscalls)
SYSTEM_SYSCALLS = (
    "ptrace",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "sethostname",
    "setdomainname",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "clock_adjtime",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "iopl",
    "ioperm",
    "bpf",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "io_uring_setup",
    "name_to_handle_at",
    "lookup_dcookie",
    "vhangup",
    "syslog",
    "add_key",
    "request_key",
    "keyctl",
    "fanotify_init",
    "fanotify_mark",
    "perf_event_open",
    "userfaultfd",
    "personality",
    "modify_ldt",
    "seccomp",
    "uselib",
    "nfsservctl",
)
CWD_SYSCALLS = ("chdir", "fchdir")  # so relative paths of later calls resolve to where they really point
TRACED = (
    *EXEC_SYSCALLS,
    *NET_SYSCALLS,
    *OPEN_SYSCALLS,
    *FILE_MODIFY_SYSCALLS,
    *PROCESS_SYSCALLS,
    *SYSTEM_SYSCALLS,
    *CWD_SYSCALLS,
)
#: the highest x86_64 syscall number the classification (and strace 6.1) covers; higher ones get ENOSYS
LAST_CLASSIFIED = 450
#: why each of these cannot change the host: reads and queries, memory and scheduling of the process itself,
#: I/O on descriptors whose opening is traced, waiting, signals to itself, ids within the user namespace
UNTRACED = frozenset(
    """
    read write close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction rt_sigprocmask
    rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select sched_yield mremap msync mincore madvise
    shmget shmat shmctl dup dup2 pause nanosleep getitimer alarm setitimer getpid sendfile socket accept recvfrom
    recvmsg shutdown getsockname getpeername socketpair setsockopt getsockopt exit wait4 uname semget semop
    semctl shmdt msgget msgsnd msgrcv msgctl fcntl flock fsync fdatasync getdents getcwd readlink umask
    gettimeofday getrlimit getrusage sysinfo times getuid getgid setuid setgid geteuid getegid setpgid getppid
    getpgrp setsid setreuid setregid getgroups setgroups setresuid getresuid setresgid getresgid getpgid setfsuid
    setfsgid getsid capget capset rt_sigpending rt_sigtimedwait rt_sigsuspend sigaltstack ustat statfs fstatfs
    sysfs getpriority setpriority sched_setparam sched_getparam sched_setscheduler sched_getscheduler
    sched_get_priority_max sched_get_priority_min sched_rr_get_interval mlock munlock mlockall munlockall
    _sysctl prctl arch_prctl setrlimit sync create_module get_kernel_syms query_module getpmsg putpmsg
    afs_syscall tuxcall security gettid readahead getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr
    time futex sched_setaffinity sched_getaffinity set_thread_area io_setup io_destroy io_getevents io_submit
    io_cancel get_thread_area epoll_create epoll_ctl_old epoll_wait_old remap_file_pages getdents64
    set_tid_address restart_syscall semtimedop fadvise64 timer_create timer_settime timer_gettime
    timer_getoverrun timer_delete clock_gettime clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl
    vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify
    mq_getsetattr waitid ioprio_set ioprio_get inotify_init inotify_add_watch inotify_rm_watch migrate_pages
    newfstatat readlinkat faccessat pselect6 ppoll set_robust_list get_robust_list splice tee sync_file_range
    vmsplice move_pages epoll_pwait signalfd timerfd_create eventfd timerfd_settime timerfd_gettime accept4
    signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev recvmmsg prlimit64 syncfs getcpu
    process_vm_readv kcmp sched_setattr sched_getattr getrandom memfd_create membarrier mlock2 copy_file_range
    preadv2 pwritev2 pkey_mprotect pkey_alloc pkey_free statx io_pgetevents rseq io_uring_enter
    io_uring_register pidfd_open close_range faccessat2 process_madvise epoll_pwait2 landlock_create_ruleset
    landlock_add_rule landlock_restrict_self memfd_secret process_mrelease futex_waitv set_mempolicy_home_node
    """.split()
)
# (mq_open/msgsnd/shm*: System V and POSIX IPC objects live in the sandbox's own ipc namespace; mq_* and shm
# files are in-namespace objects as well. copy_file_range/splice/sendfile move data between descriptors whose
# opening for writing is traced.)

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
    "os.utime": "file.modify",
    "gc.get_objects": "tamper",
    "gc.get_referrers": "tamper",
    "gc.get_referents": "tamper",
    "sys._current_frames": "tamper",
    "code.disguised": "code.disguised",
    "import.missing": "import.missing",
    "mlwarden.template": "code.introspect",
}


def _audit_kind(name: str) -> str | None:
    if name in _AUDIT_KINDS:
        return _AUDIT_KINDS[name]
    for prefix, kind in _AUDIT_KINDS.items():
        if name == prefix or name.startswith(prefix):
            return kind
    return None


def audit_events(records: Iterable[dict[str, object]], reads: bool = False) -> tuple[list[Event], list[PhaseRecord]]:
    """Events and phase outcomes from the runner's JSON records.

    Opens for writing always become ``file.write`` events; read-only opens only with ``reads`` (an untraced run:
    otherwise the tracer reports the reads that succeeded).
    """
    events: list[Event] = []
    starts: dict[str, float] = {}
    phases: dict[str, PhaseRecord] = {}
    current = "setup"  # events belong to the phase the genuine records say is running, whatever they claim
    for rec in records:
        kind = rec.get("type")
        if kind == "phase":
            name, status = str(rec.get("name")), str(rec.get("status"))
            if status == "start":
                current = name
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
            mapped = ("file.write" if rec.get("extra") == "w" else "file.read") if name == "open" else _audit_kind(name)
            if mapped == "file.read" and name == "open" and not reads:
                continue
            if mapped is None:
                continue
            target, extra = str(rec.get("target", "")), str(rec.get("extra", ""))
            if target.startswith(_MARKER):
                continue
            if name == "open":
                mapped = "file.write" if extra == "w" else "file.read"
            stack = rec.get("stack")
            caller = extra[3:] if name == "import" and extra.startswith("by ") else ""
            events.append(
                Event(
                    current,
                    mapped,
                    target,
                    "audit",
                    f"{name}({target}{', ' + extra if extra and name != 'open' else ''})",
                    tuple(str(s) for s in stack[-6:]) if isinstance(stack, list) else (),
                    caller,
                )
            )
    ordered = [phases.get(p, PhaseRecord(p, "not-reached")) for p in PHASES]
    return events, ordered


_FD_PATH = re.compile(r"^(?:AT_FDCWD|-?\d+)<(.*)>$")
_ORDER = (*PHASES, "teardown")


def _split_args(args: str) -> list[str]:
    """Top-level comma-separated arguments of a strace call (strings, braces and brackets kept whole)."""
    out, depth, cur, quoted, escape = [], 0, [], False, False
    for ch in args:
        if quoted:
            cur.append(ch)
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch in "{[(<":
            depth += 1
        elif ch in "}])>":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur).strip())
    return out


def _unquote(text: str) -> str | None:
    m = _STR.fullmatch(text.strip())
    return m.group(1) if m else None


def _fd_path(text: str) -> str | None:
    """The path strace -y printed for a descriptor argument (``3</tmp/x>``, ``AT_FDCWD</home/u>``)."""
    m = _FD_PATH.match(text.strip())
    return m.group(1) if m else None


def _join(base: str, rel: str) -> str:
    import posixpath

    return posixpath.normpath(posixpath.join(base, rel)) if base else rel


def _paths(call: str, parts: list[str], cwd: str) -> list[str]:
    """Absolute paths a file syscall acts on (``*at`` calls resolved against their directory descriptor)."""
    out: list[str] = []
    at = call.endswith(("at", "at2"))
    for i, part in enumerate(parts):
        text = _unquote(part)
        if text is None:
            continue
        if call in ("symlink", "symlinkat") and i == 0:
            continue  # a symlink's first string is its content, not a path it acts on
        base = _fd_path(parts[i - 1]) if at and i > 0 else None
        out.append(_join("/", text) if text.startswith("/") else _join(base if base is not None else cwd, text))
    if not out and parts:
        fd = _fd_path(parts[0])  # fchmod(3</path>, ...), ftruncate, fsetxattr, futimens = utimensat(3</p>, NULL)
        if fd is not None:
            out.append(fd)
    return out


_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")


def _joined(lines: Iterable[str]) -> Iterable[str]:
    """Lines with calls strace split in two (another process interleaved) joined again; unfinished ones end ``= ?``."""
    pending: dict[str, str] = {}
    for raw in lines:
        line = raw.rstrip()
        head = line.split(None, 1)[0] if line else ""
        if line.endswith(_UNFINISHED):
            pending[head] = line[: -len(_UNFINISHED)]
            continue
        resumed = _RESUMED.match(line)
        if resumed is not None:
            pid = resumed.group(1)
            line = pending.pop(pid, f"{pid} {resumed.group(2)}(") + resumed.group(3)
        yield line
    for line in pending.values():
        yield line + ") = ?"


def syscall_events(lines: Iterable[str], cwd: str = "") -> list[Event]:  # noqa: C901 - one branch per syscall family
    """Events from strace output; phases come from the runner's marker mkdir() calls.

    ``cwd`` is where processes start (the sandbox's working directory); ``chdir``/``fchdir`` and the
    ``AT_FDCWD</path>`` decoding of ``strace -y`` keep it current per process, so a relative path is judged by
    where it really points.
    """
    phase = "setup"
    events: list[Event] = []
    execs = 0
    cwds: dict[str, str] = {}
    for line in _joined(lines):
        m = _LINE.match(line.strip())
        if m is None:
            events += _refused(line, phase)
            continue
        pid, call, args, ret = m.group("pid"), m.group("call"), m.group("args"), m.group("ret")
        mark = _PHASE_MARK.search(args) if call in ("mkdir", "mkdirat") else None
        if mark is not None:
            # Phases only move forward: a payload cannot mkdir() its way back into "setup" to hide later calls.
            wanted = mark.group(1)
            if wanted in _ORDER and (phase not in _ORDER or _ORDER.index(wanted) > _ORDER.index(phase)):
                phase = wanted
            continue
        failed = ret.startswith("-")
        result = m.group("rest").strip()
        here = cwds.get(pid, cwd)
        at_cwd = re.search(r"AT_FDCWD<([^>]*)>", args)
        if at_cwd is not None:
            here = cwds[pid] = at_cwd.group(1)
        if call in CWD_SYSCALLS:
            if not failed:
                parts = _split_args(args)
                target = _unquote(parts[0]) if parts else None
                new = _fd_path(parts[0]) if call == "fchdir" and parts else (_join(here, target) if target else None)
                if new:
                    cwds[pid] = new
            continue
        if call in PROCESS_SYSCALLS:
            child = ret if ret.isdigit() and call in ("clone", "clone3", "fork", "vfork") else None
            if child is not None:
                cwds[child] = here  # a new process or thread starts where its parent is
            if call in ("clone", "clone3", "fork", "vfork"):
                continue  # processes are judged by what they execute and do, not by being created
            if call in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
                parts = _split_args(args)
                if parts and (parts[0] == pid or parts[-1] in ("0", "SIG_0")):
                    continue  # a signal to itself (abort, pthread_kill) or a liveness probe
            events.append(Event(phase, "process.signal", call, "syscall", line.strip()[:400]))
            continue
        strings = _STR.findall(args)
        target = strings[0] if strings else ""
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
            paths = _paths(call, _split_args(args), here)
            target = paths[0] if paths else target
            opened = _FD_PATH.match("0" + result) if not failed else None
            if opened is not None and opened.group(1).startswith("/"):
                target = opened.group(1)  # where it really landed (strace -y resolved symlinks on the way)
            writing = call == "creat" or any(flag in args for flag in _WRITE_FLAGS)
            if not writing:
                if not failed:
                    events.append(Event(phase, "file.read", target, "syscall", ""))
                continue
            events.append(Event(phase, "file.write", target, "syscall", f"{call}({target}) = {ret} {result}"[:400]))
        elif call in FILE_MODIFY_SYSCALLS:
            paths = _paths(call, _split_args(args), here)
            if not paths or paths[0].startswith(("/memfd:", "/dev/pts/")):
                continue  # an anonymous file, a pipe or socket: nothing on the host's file system
            shown = ", ".join(paths[:2])
            events.append(Event(phase, "file.modify", paths[0], "syscall", f"{call}({shown}) = {ret}"[:400]))
            if call in ("rename", "renameat", "renameat2", "link", "linkat") and len(paths) > 1:
                # the new name is what gets created
                events.append(Event(phase, "file.modify", paths[1], "syscall", f"{call}({shown}) = {ret}"[:400]))
        elif call in SYSTEM_SYSCALLS:
            events.append(Event(phase, "tamper", call, "syscall", line.strip()[:400]))
    return events


#: MLW-DYN-013: the sandbox's seccomp filter refused a syscall no model load needs
REFUSED = rule(
    "MLW-DYN-013",
    "Sandbox refused a forbidden syscall",
    Severity.HIGH,
    cwe=693,
    description="A phase of loading the model made a system call that no model load needs and the sandbox's "
    "seccomp filter refuses (ptrace, mount, unshare or a namespace-creating clone, bpf, keyctl, perf_event_open, "
    "userfaultfd, loading kernel modules, ...): an attempt to get out of the sandbox or at the kernel. The call "
    "did not run; the process received SIGSYS.",
    remediation="Do not load this model outside a sandbox; report it to its publisher.",
)


def _refused(line: str, phase: str) -> list[Event]:
    """A ``--- SIGSYS {... si_syscall=__NR_name ...} ---`` line: a call the seccomp filter refused (or nothing)."""
    refused = _SIGSYS.match(line.strip())
    if refused is None:
        return []
    return [Event(phase, REFUSED_KIND, refused.group("call"), "syscall", line.strip()[:400])]
