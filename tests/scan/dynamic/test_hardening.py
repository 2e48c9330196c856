"""The sandbox's hardening: a seccomp filter for what no model load needs, rlimits set without ``preexec_fn``, and
an unprivileged uid when mlwarden runs as root. Every payload is a harmless canary: it asks for a forbidden
syscall with arguments that would do nothing, or reads a file it must not be able to read.
"""

from __future__ import annotations

import ast
import os
import threading
from pathlib import Path

import pytest

from mlwarden.core.policy import SandboxSettings
from mlwarden.scan.dynamic import sandbox
from mlwarden.scan.dynamic.pool import analyse_many
from tests.scan.dynamic.conftest import finding_text, needs_sandbox, probe_pickle, run_probe

pytestmark = needs_sandbox
LIMITS = SandboxSettings(wall_seconds=60.0)
SRC = Path(__file__).resolve().parents[3] / "src" / "mlwarden"


def _body(lines: str) -> str:
    return "def _payload():\n" + "".join(f"    {line}\n" for line in lines.strip("\n").splitlines()) + "_payload()\n"


# --- 11. the seccomp filter ------------------------------------------------------------------------------------

# name -> the ctypes call (x86_64 numbers; arguments that would do nothing even if the call ran)
FORBIDDEN_CALLS = {
    "ptrace": "libc.syscall(101, 0, 0, 0, 0)",  # PTRACE_TRACEME
    "unshare": "libc.syscall(272, 0x10000000)",  # CLONE_NEWUSER (os.unshare is Python 3.12+)
    "mount": "libc.syscall(165, b'none', b'/tmp', b'tmpfs', 0, None)",
    "bpf": "libc.syscall(321, 0, None, 0)",
    "keyctl": "libc.syscall(250, 0, 0, 0, 0)",
    "perf_event_open": "libc.syscall(298, None, 0, -1, -1, 0)",
    "userfaultfd": "libc.syscall(323, 0)",
    "init_module": "libc.syscall(175, None, 0, b'')",
    "clone": "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",  # CLONE_NEWUSER | SIGCHLD
    "process_vm_readv": "libc.syscall(310, 1, None, 0, None, 0, 0)",
}


@pytest.mark.parametrize("name", sorted(FORBIDDEN_CALLS))
def test_forbidden_syscall_is_refused_and_reported(name: str, tmp_path: Path) -> None:
    body = (
        "import ctypes, json\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"rc = {FORBIDDEN_CALLS[name]}\n"
        "raise RuntimeError('PROBE-RESULT:' + json.dumps({'rc': rc, 'errno': ctypes.get_errno()}))\n"
    )
    result, seen = run_probe(tmp_path / "model", _body(body), LIMITS)
    assert seen is None, f"{name} returned to the model: {seen}"  # SIGSYS: the call never ran, the process died
    refused = [f for f in result.findings if f.rule_id == "MLW-DYN-013"]
    assert refused, [f"{f.rule_id} {f.evidence[:120]}" for f in result.findings]
    assert refused[0].location.phase == "deserialize"
    assert f"sandbox.refused:{name}" in finding_text(refused[0]), finding_text(refused[0])


def test_forbidden_syscall_is_refused_in_the_warm_pool(tmp_path: Path) -> None:
    body = "import ctypes\nctypes.CDLL(None).syscall(101, 0, 0, 0, 0)\n"
    path = probe_pickle(tmp_path / "model", _body(body))
    result = analyse_many([path], "pickle", LIMITS)[path]
    refused = [f for f in result.findings if f.rule_id == "MLW-DYN-013"]
    assert refused, [f.evidence for f in result.findings]
    assert "sandbox.refused:ptrace" in finding_text(refused[0])


def test_what_models_do_need_still_works(tmp_path: Path) -> None:
    body = (
        "import ctypes, json, os, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "persona = libc.personality(0xFFFFFFFF)\n"  # the query the C library makes is no change
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"  # clone3 -> ENOSYS -> clone
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(7)\n"
        "status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
        "raise RuntimeError('PROBE-RESULT:' + json.dumps({'persona': persona, 'child': status}))\n"
    )
    result, seen = run_probe(tmp_path / "model", _body(body), LIMITS)
    assert seen is not None, result.phases
    assert seen["child"] == 7
    assert seen["persona"] >= 0
    assert not [f for f in result.findings if f.rule_id == "MLW-DYN-013"]


# --- 12. rlimits without preexec_fn ------------------------------------------------------------------------------


def test_no_subprocess_call_uses_preexec_fn() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and any(k.arg == "preexec_fn" for k in node.keywords):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == [], "preexec_fn can deadlock a multi-threaded caller: " + ", ".join(offenders)


def test_limits_are_in_force_inside_while_the_caller_has_threads(tmp_path: Path) -> None:
    stop = threading.Event()
    busy = [threading.Thread(target=stop.wait, daemon=True) for _ in range(4)]
    for t in busy:
        t.start()
    limits = SandboxSettings(wall_seconds=60.0, cpu_seconds=37, memory_bytes=3 << 30, file_size_bytes=5 << 20)
    body = (
        "import json\n"
        "rows = {}\n"
        "for line in open('/proc/self/limits').read().splitlines()[1:]:\n"
        "    name, soft, hard = line[:26].strip(), line[26:47].strip(), line[47:68].strip()\n"
        "    rows[name] = [soft, hard]\n"
        "raise RuntimeError('PROBE-RESULT:' + json.dumps(rows))\n"
    )
    try:
        assert threading.active_count() > 4
        result, seen = run_probe(tmp_path / "model", _body(body), limits)
    finally:
        stop.set()
    assert seen is not None, result.phases
    assert seen["Max cpu time"] == ["37", "42"]
    assert seen["Max address space"] == [str(3 << 30)] * 2
    assert seen["Max file size"] == [str(5 << 20)] * 2
    assert seen["Max core file size"] == ["0", "0"]
    assert seen["Max processes"][0] != "unlimited"


# --- 13. an unprivileged uid ------------------------------------------------------------------------------------

as_root = pytest.mark.skipif(os.getuid() != 0, reason="the sandbox keeps the caller's uid unless it is root")


@as_root
def test_root_runs_the_sandbox_as_an_unprivileged_uid(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    secret = model / "root-only.txt"
    secret.write_text("mlwarden canary: root only")
    secret.chmod(0o600)
    body = (
        "import json, os\n"
        f"model = {str((model / 'probe.pkl').resolve())!r}\n"
        "seen = {'uid': os.getuid(), 'gid': os.getgid(), 'euid': os.geteuid(), 'groups': os.getgroups()}\n"
        "for name, path in (('secret', " + repr(str(secret.resolve())) + "), ('shadow', '/etc/shadow'),\n"
        "                   ('model', model)):\n"
        "    try:\n"
        "        with open(path, 'rb') as fh:\n"
        "            seen[name] = len(fh.read(1 << 20))\n"
        "    except OSError as exc:\n"
        "        seen[name] = exc.errno\n"
        "caps = ('CapEff', 'CapPrm', 'CapBnd')\n"
        "seen['caps'] = [l.split()[1] for l in open('/proc/self/status') if l.startswith(caps)]\n"
        "raise RuntimeError('PROBE-RESULT:' + json.dumps(seen))\n"
    )
    path = probe_pickle(model, _body(body))
    path.chmod(0o600)  # as the loader's private copy: root's alone
    result, seen = run_probe(model, _body(body), LIMITS)
    assert seen is not None, result.phases
    assert seen["uid"] == seen["euid"] == sandbox.SANDBOX_UID != 0
    assert seen["gid"] == sandbox.SANDBOX_GID != 0
    assert seen["secret"] == 13  # EACCES: root's file next to the model stays root's
    assert seen["shadow"] in (0, 13)  # masked by /dev/null (empty), or refused
    assert seen["model"] > 13  # the model itself is readable (bytes read, not an errno)
    assert seen["caps"] == ["0000000000000000"] * 3  # permitted, effective, bounding
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)  # the original was not made readable


@as_root
def test_model_in_a_private_folder_is_readable_only_through_its_copy(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "neighbour.txt").write_text("root only")
    body = (
        "import json, os\n"
        "here = os.path.dirname(" + repr(str((private / "probe.pkl").resolve())) + ")\n"
        "raise RuntimeError('PROBE-RESULT:' + json.dumps(sorted(os.listdir(here))))\n"
    )
    path = probe_pickle(private, _body(body))
    path.chmod(0o600)
    staged = sandbox.stage([(str(private), str(private))], [str(path)])
    try:
        assert staged.folder is not None
        assert os.stat(staged.folder).st_mode & 0o777 == 0o700  # no other local user gets in
        copy = Path(staged.binds[0][0]) / "probe.pkl"
        assert copy.stat().st_mode & 0o777 == 0o640
        assert copy.stat().st_gid == sandbox.SANDBOX_GID
    finally:
        staged.cleanup()
    assert not Path(staged.binds[0][0]).exists()
    result, seen = run_probe(private, _body(body), LIMITS)
    assert seen == ["probe.pkl"], result.phases  # the model, not its root-only neighbour


@as_root
def test_warm_pool_reads_a_root_only_model(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    body = "import os\nraise RuntimeError('PROBE-RESULT:' + str(os.getuid()))\n"
    path = probe_pickle(private, _body(body))
    path.chmod(0o600)
    result = analyse_many([path], "pickle", LIMITS, untraced=False)[path]
    errors = [p.error for p in result.phases if "PROBE-RESULT:" in p.error]
    assert errors, result.phases
    assert errors[0].endswith(f"PROBE-RESULT:{sandbox.SANDBOX_UID}")
