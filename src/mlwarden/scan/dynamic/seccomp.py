"""The sandbox's seccomp filters: syscalls no model load needs are refused before they reach the kernel.

Two classic-BPF programs, both compiled on the host (libseccomp through ``pyseccomp``, plus a short hand-written
prefix) and handed over through pipes:

* :func:`sandbox_program` — given to bubblewrap's ``--seccomp``, so it applies to the process bwrap executes and
  everything it starts (strace, when the run is traced, and the runner under it). It answers ``ENOSYS`` to other
  ABIs (x32, i386) and to every syscall numbered above the last one :mod:`.trace` classifies, ``ENOSYS`` to
  ``clone3`` (its flags live in memory a filter cannot read; the C library falls back to ``clone``), and
  ``SIGSYS`` (``SECCOMP_RET_TRAP``) to :data:`FORBIDDEN`, to ``clone`` with any namespace flag and to a
  ``personality`` change other than the few the C library uses. In a traced run strace itself needs ``ptrace``
  and ``process_vm_readv``: those (:data:`TRACER_NEEDS`) are then left out here and refused by the second one.
* :func:`runner_program` — :data:`TRACER_NEEDS` only; the runner installs it on itself (:func:`install`, from a
  descriptor) before the framework is imported, so the model cannot ptrace while its tracer can.

Why ``SIGSYS`` and not ``EPERM``: strace runs with ``--seccomp-bpf`` (its own filter returns
``SECCOMP_RET_TRACE``) and an ``ERRNO`` action of a later filter takes precedence without a stop, so a refused
call would never appear in the trace. A trap is delivered as a signal strace prints with the syscall's name
(``--- SIGSYS {... si_syscall=__NR_ptrace ...} ---``), which :mod:`.trace` turns into a ``sandbox.refused``
event (MLW-DYN-013). The call never runs, tracer or not; unless the model installed a ``SIGSYS`` handler the
process dies (no core dump: ``RLIMIT_CORE`` is 0), and the run is also reported as ended early.
"""

from __future__ import annotations

import struct

#: refused everywhere (and reported): what no model load needs, mostly ways out of or into the kernel
FORBIDDEN = (
    # other processes' memory, namespaces and mounts
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # kernel programming, keys, performance counters, page-fault handling
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # the machine itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "iopl",
    "ioperm",
    "modify_ldt",
    "syslog",
    "vhangup",
    "lookup_dcookie",
    "open_by_handle_at",
    "name_to_handle_at",
    "fanotify_init",
    "uselib",
)
#: what strace needs on its tracee: refused by the runner's own filter when the run is traced
TRACER_NEEDS = ("ptrace", "process_vm_readv", "process_vm_writev")
#: clone flags that create namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET)
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
#: personality() arguments allowed (as Docker's default profile: Linux, 32-bit, UNAME26, and the query)
_PERSONALITY_KEEP = 0x0020008
_PERSONALITY_QUERY = 0xFFFFFFFF

_AUDIT_ARCH_X86_64 = 0xC000003E
_NR_PERSONALITY = 135
_RET_ALLOW = 0x7FFF0000
_RET_TRAP = 0x00030000
_RET_ERRNO = 0x00050000
_ENOSYS = 38


def _prefix(last_classified: int) -> bytes:
    """ENOSYS for other ABIs and unclassified numbers, SIGSYS for personality changes; then on to libseccomp's."""
    ld_abs, jeq, jge, ja, ret, and_k = 0x20, 0x15, 0x35, 0x05, 0x06, 0x54
    # index: instruction (jump offsets are relative to the next instruction)
    program = [
        (ld_abs, 0, 0, 4),  # 0: seccomp_data.arch
        (jeq, 0, 8, _AUDIT_ARCH_X86_64),  # 1: else -> 10 (ENOSYS)
        (ld_abs, 0, 0, 0),  # 2: seccomp_data.nr
        (jge, 6, 0, last_classified + 1),  # 3: -> 10 (ENOSYS); also every x32 number (bit 30 set)
        (jeq, 0, 6, _NR_PERSONALITY),  # 4: else -> 11 (libseccomp's program)
        (ld_abs, 0, 0, 16),  # 5: args[0], low 32 bits (personality takes an unsigned int)
        (jeq, 4, 0, _PERSONALITY_QUERY),  # 6: -> 11
        (and_k, 0, 0, ~_PERSONALITY_KEEP & 0xFFFFFFFF),  # 7
        (jeq, 2, 0, 0),  # 8: only allowed bits -> 11
        (ret, 0, 0, _RET_TRAP),  # 9
        (ret, 0, 0, _RET_ERRNO | _ENOSYS),  # 10
        (ja, 0, 0, 0),  # 11: (falls through to what follows)
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def _compiled(denied: tuple[str, ...], *, clone: bool) -> bytes:
    """The libseccomp part: SIGSYS for ``denied`` (and namespace-creating clones), ENOSYS for clone3."""
    import tempfile

    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError) as exc:  # RuntimeError: the package is there, libseccomp.so.2 is not
        from mlwarden.scan.dynamic.sandbox import SandboxUnavailable

        raise SandboxUnavailable(
            f"the sandbox's seccomp filter needs libseccomp and its Python binding ({exc}): install the Debian "
            "package libseccomp2 and `pip install pyseccomp` (`make setup` does both). Use --static-only to skip "
            "dynamic analysis."
        ) from exc

    flt = sc.SyscallFilter(sc.ALLOW)
    for name in denied:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) >= 0:  # (a name this libseccomp does not know: no such call)
            flt.add_rule(sc.TRAP, name)
    if clone:
        for flag in CLONE_NAMESPACE_FLAGS:
            flt.add_rule(sc.TRAP, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        flt.add_rule(sc.ERRNO(_ENOSYS), "clone3")
    with tempfile.TemporaryFile() as fh:
        flt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


_CACHE: dict[tuple[str, bool], bytes] = {}


def sandbox_program(*, traced: bool, last_classified: int) -> bytes:
    """The program bubblewrap installs (``--seccomp``); see the module's docstring."""
    cache_key = ("sandbox", traced)
    if cache_key not in _CACHE:
        denied = tuple(n for n in FORBIDDEN if not (traced and n in TRACER_NEEDS))
        _CACHE[cache_key] = _prefix(last_classified) + _compiled(denied, clone=True)
    return _CACHE[cache_key]


def runner_program() -> bytes:
    """The program the runner installs on itself in a traced run: what strace needs, refused to the model."""
    cache_key = ("runner", True)
    if cache_key not in _CACHE:
        _CACHE[cache_key] = _compiled(TRACER_NEEDS, clone=False)
    return _CACHE[cache_key]


def install(fd: int) -> None:
    """Read a BPF program from ``fd`` (closing it) and install it on this process (runs inside the sandbox).

    Uses ``prctl(PR_SET_SECCOMP)`` (not the traced ``seccomp`` syscall) through ctypes, then forgets ctypes again
    so that a model importing it is still seen importing it.
    """
    import os
    import sys

    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if not data:
        return
    before = set(sys.modules)
    import ctypes

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(data, len(data))
    prog = _Prog(len(data) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0)  # (bubblewrap set it already)
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot install the seccomp filter: {os.strerror(err)}")
    for name in set(sys.modules) - before:
        if name == "ctypes" or name.startswith("ctypes."):
            del sys.modules[name]
