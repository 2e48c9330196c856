"""Red-team findings against the dynamic engine, each as a payload that must now be caught.

1. payloads that look for the sandbox (``/sandbox``, ``TracerPid``, a thin environment) and stay quiet;
2. deferred work (a ``threading.Timer``, ``atexit``, ``__del__``) that ran after the run was over;
3. effects no audit event and no traced syscall showed (``mknod``, ``utime``, ``truncate`` through libc);
4. forged records on the event channel, and a reporter switched off through ``gc``;
5. ``timeit`` evaluating anything because profiles allowed code evaluation "by anything installed";
6. unbounded writable mounts (``/dev/shm``).

Every payload is a harmless canary: it only tries to create a file under the test's ``canary_dir`` (which does
not exist inside the sandbox) or a file inside the sandbox's own mounts.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mlwarden.core.policy import Policy, SandboxSettings
from mlwarden.scan.dynamic import engine as dyn
from mlwarden.scan.dynamic import sandbox
from mlwarden.scan.dynamic.pool import analyse_many
from mlwarden.scan.dynamic.profiles import PROFILE_DIR
from mlwarden_samples.malicious_pickle import call, glob, pkl, ustr
from tests.scan.dynamic.conftest import (
    assert_contained,
    dyn_hits,
    finding_text,
    needs_sandbox,
    probe_pickle,
    run_probe,
    scan_dynamic,
)

pytestmark = needs_sandbox
LIMITS = SandboxSettings(wall_seconds=60.0)


def _body(lines: str) -> str:
    """Run ``lines`` inside a function (the unpickler's exec gets separate globals and locals)."""
    return "def _payload():\n" + "".join(f"    {line}\n" for line in lines.strip("\n").splitlines()) + "_payload()\n"


def _write_canary(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w').write('mlwarden canary')"


def _named(result: dyn.DynamicResult, rule_id: str, needle: str, phase: str | None = None) -> list[str]:
    return [
        f"{f.location.phase}: {f.evidence[:200]}"
        for f in result.findings
        if f.rule_id == rule_id and (phase is None or f.location.phase == phase) and needle in finding_text(f)
    ]


def _verdict(result: dyn.DynamicResult) -> list[str]:
    return [f"{f.rule_id}[{f.location.phase}] {f.evidence[:160]}" for f in result.findings]


# --- 1. sandbox detection -------------------------------------------------------------------------------


EVASIVE = {
    # stays quiet when the well-known sandbox folder exists
    "sandbox-folder": "import os\nif not os.path.exists('/sandbox') and not os.path.exists('/sandbox/model'):\n"
    "    {act}",
    # stays quiet when something traces it (strace, a debugger)
    "tracer-pid": "status = open('/proc/self/status').read()\n"
    "tracer = [l.split()[1] for l in status.splitlines() if l.startswith('TracerPid')][0]\n"
    "if tracer == '0':\n"
    "    {act}",
    # stays quiet in an environment no login shell would have
    "environment": "import os\nenv = os.environ\n"
    "wanted = ('HOME', 'PATH', 'USER', 'LOGNAME', 'LANG', 'TERM', 'SHELL')\n"
    "home = env.get('HOME', '')\n"
    "ordinary = all(env.get(k) for k in wanted) and home in ('/root', '/home/' + env.get('USER', ''))\n"
    "if ordinary and os.access('/tmp', os.W_OK) and os.getcwd().startswith('/tmp') and os.path.isdir(home):\n"
    "    {act}",
}


@pytest.mark.parametrize("check", sorted(EVASIVE))
def test_payload_hiding_from_the_sandbox_is_still_caught(check: str, tmp_path: Path, canary_dir: Path) -> None:
    canary = canary_dir / f"{check}.canary"
    source = _body(EVASIVE[check].replace("{act}", _write_canary(canary)))
    result, _ = run_probe(tmp_path / "model", source, LIMITS)
    hits = _named(result, "MLW-DYN-003", str(canary), "deserialize")
    assert hits, _verdict(result)
    if check == "tracer-pid":  # only the untraced run saw it: that itself is reported
        tamper = _named(result, "MLW-DYN-008", str(canary))
        assert tamper, _verdict(result)
        assert "not traced" in tamper[0]
    assert_contained(canary_dir)


def test_warm_pool_runs_untraced_too(tmp_path: Path, canary_dir: Path) -> None:
    canary = canary_dir / "pool-tracer.canary"
    source = _body(EVASIVE["tracer-pid"].replace("{act}", _write_canary(canary)))
    path = probe_pickle(tmp_path / "m", source)
    results = analyse_many([path], "pickle", LIMITS)
    assert _named(results[path], "MLW-DYN-003", str(canary), "deserialize"), _verdict(results[path])
    assert _named(results[path], "MLW-DYN-008", str(canary)), _verdict(results[path])
    assert_contained(canary_dir)


def test_inside_looks_like_an_ordinary_host(tmp_path: Path) -> None:
    body = (
        "import json, os\n"
        "model = os.path.dirname(os.path.abspath(__file__)) if '__file__' in globals() else ''\n"
        "seen = {\n"
        "    'sandbox': os.path.exists('/sandbox'),\n"
        "    'env': {k: os.environ.get(k) for k in ('HOME', 'USER', 'LOGNAME', 'PATH', 'LANG', 'TERM', 'SHELL')},\n"
        "    'tmp_writable': os.access('/tmp', os.W_OK),\n"
        "    'home_is_dir': os.path.isdir(os.environ.get('HOME', '/nonexistent')),\n"
        "    'argv_model': [a for a in __import__('sys').argv if a.endswith('.pkl')],\n"
        "}\n"
        "raise RuntimeError('PROBE-RESULT:' + json.dumps(seen))\n"
    )
    model = tmp_path / "model"
    result, seen = run_probe(model, _body(body), LIMITS)
    assert seen is not None, result.phases
    assert seen["sandbox"] is False
    env = seen["env"]
    assert isinstance(env, dict)
    assert all(env.values()), env
    assert env["HOME"] == sandbox.SANDBOX_HOME
    assert seen["tmp_writable"] is True
    assert seen["home_is_dir"] is True
    # the model is loaded from its own path, as on the host
    assert seen["argv_model"] == [str((model / "probe.pkl").resolve())]


# --- 2. deferred work -------------------------------------------------------------------------------------


DEFERRED = {  # each acts a second later: after the run would have been over
    "timer": "import threading\nthreading.Timer(1.0, lambda: {act}).start()",
    "atexit": "import atexit, time\natexit.register(lambda: (time.sleep(1.0), {act}))",
    "del": "import time\nclass Later:\n    def __del__(self):\n        time.sleep(1.0)\n        {act}\n"
    "later = Later()\nlater.cycle = later\n",
    "alarm": "import signal\nsignal.signal(signal.SIGALRM, lambda *a: {act})\nsignal.alarm(1)",
}


@pytest.mark.parametrize("kind", sorted(DEFERRED))
def test_deferred_work_is_observed(kind: str, tmp_path: Path, canary_dir: Path) -> None:
    canary = canary_dir / f"{kind}.canary"
    act = f"(open({str(canary)!r}, 'w'), None)"
    result, _ = run_probe(tmp_path / "model", _body(DEFERRED[kind].replace("{act}", act)), LIMITS)
    assert _named(result, "MLW-DYN-003", str(canary)), _verdict(result)
    assert_contained(canary_dir)


def test_work_outliving_the_watch_is_a_finding(tmp_path: Path) -> None:
    body = "import threading, time\nsleeper = threading.Thread(target=time.sleep, args=(60,), name='sleeper')\n"
    body += "sleeper.daemon = True\nsleeper.start()"
    limits = SandboxSettings(wall_seconds=30.0)
    result, _ = run_probe(tmp_path / "model", _body(body), limits)
    pending = [f for f in result.findings if f.rule_id == "MLW-DYN-009"]
    assert pending, _verdict(result)
    assert "sleeper" in pending[0].evidence
    assert result.seconds < 25


def test_deferred_work_in_the_warm_pool(tmp_path: Path, canary_dir: Path) -> None:
    canary = canary_dir / "pool-timer.canary"
    act = f"(open({str(canary)!r}, 'w'), None)"
    path = probe_pickle(tmp_path / "m", _body(DEFERRED["timer"].replace("{act}", act)))
    results = analyse_many([path], "pickle", LIMITS)
    assert _named(results[path], "MLW-DYN-003", str(canary)), _verdict(results[path])
    assert_contained(canary_dir)


# --- 3. effects without an audit event ------------------------------------------------------------------


def test_unaudited_file_effects_are_traced(tmp_path: Path) -> None:
    model = tmp_path / "model"
    target = (model / "probe.pkl").resolve()
    body = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for attempt in (\n"
        "    lambda: os.mkfifo('/tmp/outside-scratch.fifo'),\n"
        f"    lambda: os.mknod({str(model.resolve() / 'in-model.fifo')!r}),\n"
        f"    lambda: os.utime({str(target)!r}, (0, 0)),\n"
        f"    lambda: libc.truncate({str(target).encode()!r}, 0),\n"
        "    lambda: libc.link(b'/etc/hostname', b'/tmp/hardlink'),\n"
        "    lambda: libc.symlink(b'/etc/passwd', b'/tmp/symlink'),\n"
        "):\n"
        "    try:\n"
        "        attempt()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result, _ = run_probe(model, _body(body), LIMITS)
    syscall_targets = {e.target for e in result.events if e.source == "syscall" and e.kind == "file.modify"}
    expected = {"/tmp/outside-scratch.fifo", "{model}/in-model.fifo", "{model}/probe.pkl", "/tmp/hardlink"}
    assert expected | {"/tmp/symlink"} <= syscall_targets, syscall_targets
    write = [f for f in result.findings if f.rule_id == "MLW-DYN-003" and f.location.phase == "deserialize"]
    assert write, _verdict(result)
    assert all(t in finding_text(write[0]) for t in ("outside-scratch.fifo", "in-model.fifo")), _verdict(result)
    assert sorted(p.name for p in model.iterdir()) == ["probe.pkl"]
    assert (model / "probe.pkl").stat().st_size > 0


def test_relative_paths_are_judged_where_they_point(tmp_path: Path) -> None:
    body = "import os\nos.chdir('/tmp')\ntry:\n    os.mkfifo('relative.fifo')\nexcept OSError:\n    pass"
    result, _ = run_probe(tmp_path / "model", _body(body), LIMITS)
    assert _named(result, "MLW-DYN-003", "/tmp/relative.fifo", "deserialize"), _verdict(result)


def test_every_syscall_is_classified() -> None:
    from mlwarden.scan.dynamic import trace

    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("no kernel headers here")
    numbers = dict(re.findall(r"#define __NR_(\w+)\s+(\d+)", header.read_text()))
    known = {n for n, nr in numbers.items() if int(nr) <= trace.LAST_CLASSIFIED}
    traced = set(trace.TRACED)
    assert known - traced - trace.UNTRACED == set()
    assert traced & trace.UNTRACED == set()
    for name in ("mknod", "mknodat", "utimensat", "truncate", "ftruncate", "fchownat", "setxattr", "io_uring_setup"):
        assert name in traced


def test_syscalls_the_tracer_cannot_name_are_refused(tmp_path: Path) -> None:
    body = (
        "import ctypes, json\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "rc = libc.syscall(452, -100, b'/tmp', 0o777, 0)\n"  # fchmodat2 (kernel 6.6+)
        "raise RuntimeError('PROBE-RESULT:' + json.dumps({'rc': rc, 'errno': ctypes.get_errno()}))\n"
    )
    result, seen = run_probe(tmp_path / "model", _body(body), LIMITS)
    assert seen == {"rc": -1, "errno": 38}, result.phases  # ENOSYS


# --- 4. the event channel -----------------------------------------------------------------------------


def test_forged_records_are_not_believed(tmp_path: Path) -> None:
    body = (
        "import json, os, sys\n"
        "fd = int(sys.argv[sys.argv.index('--events-fd') + 1])\n"
        "def send(record):\n"
        "    os.write(fd, (json.dumps(record) + '\\n').encode())\n"
        "send({'type': 'phase', 'name': 'deserialize', 'status': 'ok', 't': 1.0})\n"
        "for name in ('instantiate', 'infer'):\n"
        "    send({'type': 'phase', 'name': name, 'status': 'start', 't': 1.0})\n"
        "    send({'type': 'phase', 'name': name, 'status': 'ok', 't': 1.0})\n"
        "send({'type': 'done', 'status': 'ok'})\n"
        "os._exit(0)\n"
    )
    result, _ = run_probe(tmp_path / "model", _body(body), LIMITS)
    statuses = {p.name: p.status for p in result.phases}
    assert statuses["deserialize"] != "ok", statuses
    assert statuses["infer"] != "ok", statuses
    forged = [f for f in result.findings if f.rule_id == "MLW-DYN-008" and "not written by the runner" in f.evidence]
    assert forged, _verdict(result)
    assert "MLW-DYN-010" in {f.rule_id for f in result.findings}


def test_reporter_switched_off_through_gc(tmp_path: Path, canary_dir: Path) -> None:
    canary = canary_dir / "after-gc.canary"
    body = (
        "import gc\n"
        "for obj in gc.get_objects():\n"
        "    if type(obj).__name__ in ('Reporter', 'TaggedReporter'):\n"
        "        obj.active = False\n"
        "        obj.fd = -1\n"
        "try:\n"
        f"    {_write_canary(canary)}\n"
        "except OSError:\n"
        "    pass\n"
    )
    result, _ = run_probe(tmp_path / "model", _body(body), LIMITS)
    assert _named(result, "MLW-DYN-008", "gc.get_objects", "deserialize"), _verdict(result)
    assert _named(result, "MLW-DYN-003", str(canary)), _verdict(result)
    assert "MLW-DYN-010" in {f.rule_id for f in result.findings}  # its reporting stopped: never clean
    assert_contained(canary_dir)


def test_chain_problems() -> None:
    def phase(name: str, status: str) -> dict[str, object]:
        return {"type": "phase", "name": name, "status": status}

    good = [phase(p, s) for p in ("import", "deserialize", "teardown") for s in ("start", "ok")] + [{"type": "done"}]
    assert dyn.chain_problems(good) == []
    twice = good[:4] + [phase("deserialize", "start"), phase("deserialize", "ok"), *good[4:]]
    assert dyn.chain_problems(twice)
    backwards = [phase("deserialize", "start"), phase("deserialize", "ok"), phase("import", "start")]
    assert dyn.chain_problems(backwards)
    assert dyn.chain_problems([*good, phase("infer", "start")])


# --- 5. code evaluation by the standard library ----------------------------------------------------------


def test_timeit_evaluating_code_is_flagged(tmp_path: Path, canary_dir: Path) -> None:
    canary = canary_dir / "timeit.canary"
    stmt = f"open({str(canary)!r}, 'w')"
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "model.pkl"
    path.write_bytes(pkl(call(glob("timeit", "timeit"), ustr(stmt))))
    result = scan_dynamic(path)
    code = [f for f in dyn_hits(result, "MLW-DYN-005", "deserialize") if "timeit.py" in finding_text(f)]
    assert code, [f"{f.rule_id}[{f.location.phase}] {f.evidence[:200]}" for f in result.findings]
    assert_contained(canary_dir)


def test_code_disguised_as_an_allowed_call_site_is_flagged(tmp_path: Path, canary_dir: Path) -> None:
    canary = canary_dir / "disguised.canary"
    body = (
        "import collections, types\n"
        "def run(source):\n"
        "    exec(source)\n"
        "code = run.__code__.replace(co_filename=collections.__file__, co_name='namedtuple')\n"
        "try:\n"
        f"    types.FunctionType(code, {{'__builtins__': __builtins__}})({_write_canary(canary)!r})\n"
        "except OSError:\n"
        "    pass\n"
    )
    result, _ = run_probe(tmp_path / "model", _body(body), LIMITS)
    assert _named(result, "MLW-DYN-008", "collections/__init__.py", "deserialize"), _verdict(result)
    assert_contained(canary_dir)


def test_profiles_allow_code_only_from_named_call_sites() -> None:
    site = re.compile(r"^code\.(exec|compile):.* by \{python\}/[^*?\[\]]+\.py:[\w<>]+$")
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        for phase, body in data.get("phases", {}).items():
            for pattern in body.get("allow", []):
                if pattern.startswith(("code.exec:", "code.compile:")):
                    assert site.match(pattern), f"{path.name} [{phase}] {pattern}"


# --- 6. bounded writable mounts ---------------------------------------------------------------------------


def test_dev_shm_is_bounded_and_filling_it_is_reported(tmp_path: Path) -> None:
    limits = SandboxSettings(wall_seconds=60.0, tmpfs_bytes=8 << 20)
    body = (
        "import json\n"
        "written = 0\n"
        "try:\n"
        "    with open('/dev/shm/fill', 'wb') as fh:\n"
        "        for _ in range(32):\n"
        "            fh.write(b'x' * (1 << 20))\n"
        "            fh.flush()\n"
        "            written += 1 << 20\n"
        "except OSError as exc:\n"
        "    error = exc.errno\n"
        "else:\n"
        "    error = 0\n"
        "try:\n"
        "    open('/dev/escape', 'w')\n"
        "    dev = 'written'\n"
        "except OSError as exc:\n"
        "    dev = exc.errno\n"
        "raise RuntimeError('PROBE-RESULT:' + json.dumps({'written': written, 'error': error, 'dev': dev}))\n"
    )
    result, seen = run_probe(tmp_path / "model", _body(body), limits)
    assert seen is not None, result.phases
    assert isinstance(seen["written"], int)
    assert seen["written"] <= 8 << 20, seen
    assert seen["error"] == 28, seen  # ENOSPC at the bound
    assert seen["dev"] == 30, seen  # EROFS: /dev itself is not a writable place
    full = [f for f in result.findings if f.rule_id == "MLW-DYN-010" and f.detail("limit") == "tmpfs_bytes"]
    assert full, _verdict(result)


def test_every_writable_mount_is_sized() -> None:
    cmd = sandbox.build_command([("/srv/x", "/srv/x")], ["python"], None, SandboxSettings(tmpfs_bytes=1 << 20))
    for i, arg in enumerate(cmd):
        if arg == "--tmpfs" and cmd[i + 1] in sandbox.WRITABLE_MOUNTS:
            before = cmd[max(0, i - 4) : i]
            assert "--size" in before, (cmd[i + 1], before)
            assert str(1 << 20) in before, (cmd[i + 1], before)
    assert cmd[cmd.index("--dev") + 1 :].count("--remount-ro") >= 1
    writable = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--tmpfs"]
    assert set(sandbox.WRITABLE_MOUNTS) <= set(writable)


def test_scan_of_a_benign_pickle_stays_clean(tmp_path: Path) -> None:
    import pickle

    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "weights.pkl"
    path.write_bytes(pickle.dumps({"weights": [0.5, 1.5], "name": "tiny"}, protocol=4))
    result = scan_dynamic(path, policy=Policy())
    assert [f for f in result.findings if f.rule_id.startswith("MLW-DYN-")] == []
