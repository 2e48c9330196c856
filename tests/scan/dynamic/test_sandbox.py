"""The sandbox itself: what code running inside can and cannot reach, and how its limits end a run.

Each probe is a pickle whose ``__reduce__`` execs a short script inside the sandbox (framework "pickle");
the script reports what it saw by raising ``RuntimeError(PROBE-RESULT:<json>)``, which the runner passes
back as the deserialize phase's error. The host side then checks its own witnesses (listener, files,
processes) independently of what the probe claims.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mlwarden.cli.main import main as cli_main
from mlwarden.core.policy import Policy, SandboxSettings
from mlwarden.scan.dynamic import sandbox
from mlwarden.scan.dynamic.sandbox import SANDBOX_HOME, SANDBOX_TMP, SandboxUnavailable
from tests.scan.dynamic.conftest import (
    PROBE_TAG,
    Listener,
    host_processes_with,
    needs_sandbox,
    no_survivors,
    probe_pickle,
    run_probe,
    scan_dynamic,
)

pytestmark = needs_sandbox


def _script(body: str) -> str:
    """Wrap probe statements: they fill ``out``; the wrapper reports it through the phase error.

    The statements run inside a function so that their helpers close over ``out`` (``exec`` called from the
    unpickler gets separate globals and locals, where module-level helper functions would not see each other).
    """
    inner = (
        "import json, os, errno\n"
        "out = {}\n"
        "def attempt(label, fn):\n"
        "    try:\n"
        "        out[label] = fn()\n"
        "    except OSError as exc:\n"
        "        out[label] = errno.errorcode.get(exc.errno, type(exc).__name__)\n"
        "    except Exception as exc:\n"
        "        out[label] = type(exc).__name__\n"
        f"{body}\n"
        f"raise RuntimeError({PROBE_TAG!r} + json.dumps(out))\n"
    )
    return "def _probe():\n" + "".join(f"    {line}\n" for line in inner.splitlines()) + "_probe()\n"


# --- network -----------------------------------------------------------------------------------------


def test_no_network_host_loopback_unreachable(tmp_path: Path, listener: Listener) -> None:
    body = (
        "import socket\n"
        "attempt('interfaces', lambda: sorted(n for _, n in socket.if_nameindex()))\n"
        f"attempt('connect', lambda: socket.create_connection(('127.0.0.1', {listener.port}), 2) and 'connected')\n"
        "attempt('dns', lambda: socket.getaddrinfo('example.com', 80) and 'resolved')\n"
    )
    result, seen = run_probe(tmp_path / "model", _script(body))
    assert seen is not None, result.phases
    assert seen["interfaces"] == ["lo"]  # a fresh network namespace: loopback only, no route out
    assert seen["connect"] == "ECONNREFUSED"  # the sandbox's own loopback, where nothing listens
    assert seen["dns"] == "gaierror"
    assert listener.connections == 0
    targets = {e.target for e in result.events if e.kind == "net.connect"}
    assert f"127.0.0.1:{listener.port}" in targets  # the attempt itself is observed (by strace)
    assert {f.rule_id for f in result.findings} >= {"MLW-DYN-002"}


# --- filesystem --------------------------------------------------------------------------------------


def test_root_read_only_only_private_tmpfs_writable(tmp_path: Path) -> None:
    host_tmp_file = tmp_path / "host-visible.txt"
    host_tmp_file.write_text("host\n")
    model = tmp_path / "model"
    model_dir = str(model.resolve())
    body = (
        "def w(p):\n"
        "    with open(p, 'w') as fh:\n"
        "        fh.write('x')\n"
        "    return 'written'\n"
        f"attempt('sandbox_tmp', lambda: w({SANDBOX_TMP + '/probe.txt'!r}))\n"
        f"attempt('model_dir', lambda: w({model_dir + '/probe.txt'!r}))\n"
        "attempt('tmp', lambda: w('/tmp/probe.txt'))\n"
        "attempt('usr', lambda: w('/usr/probe.txt'))\n"
        "attempt('etc', lambda: w('/etc/probe.txt'))\n"
        "attempt('root', lambda: w('/probe.txt'))\n"
        "attempt('tmp_listing', lambda: os.listdir('/tmp'))\n"
        f"attempt('host_tmp_file', lambda: open({str(host_tmp_file)!r}).read())\n"
        "attempt('home', lambda: os.environ.get('HOME'))\n"
    )
    result, seen = run_probe(model, _script(body))
    assert seen is not None, result.phases
    assert seen["sandbox_tmp"] == "written"
    assert seen["tmp"] == "written"  # /tmp is an ordinary writable tmpfs inside (a read-only /tmp gives it away)
    for place in ("model_dir", "usr", "etc", "root"):
        assert seen[place] == "EROFS", (place, seen[place])
    # The host's /tmp (pytest's tmp_path, the canaries) is not there: only the scratch space and the mount points
    # of folders bound at their own paths (the model's, Python roots that happen to live under /tmp).
    from mlwarden.scan.dynamic.sandbox import python_roots

    mount_points = {Path(r).parts[2] for r in [*python_roots(), model_dir] if r.startswith("/tmp/")}
    mount_points |= {"user", "probe.txt"}  # the scratch space's parent, and what the probe itself wrote
    assert set(seen["tmp_listing"]) <= mount_points, seen["tmp_listing"]  # type: ignore[arg-type]
    assert seen["host_tmp_file"] == "ENOENT"
    assert seen["home"] == SANDBOX_HOME
    assert sorted(p.name for p in model.iterdir()) == ["probe.pkl"]  # the model folder is unchanged
    writes = {e.target for e in result.events if e.kind == "file.write"}
    assert {"/tmp/probe.txt", "{model}/probe.txt"} <= writes  # refused writes are still reported
    # a write outside the scratch space is a deviation even where it succeeded
    assert [f for f in result.findings if f.rule_id == "MLW-DYN-003" and "/tmp/probe.txt" in f.evidence]


def test_environment_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLWARDEN_SECRET", "xyz-secret-value")
    body = "attempt('env', lambda: dict(os.environ))\n"
    result, seen = run_probe(tmp_path / "model", _script(body))
    assert seen is not None, result.phases
    env = seen["env"]
    assert isinstance(env, dict)
    assert "MLWARDEN_SECRET" not in env
    assert not [k for k, v in env.items() if "xyz-secret-value" in v]
    # only what bwrap sets (--clearenv + --setenv: an ordinary login environment), plus what Python adds
    allowed = set(sandbox.sandbox_env()) | {"LC_CTYPE"}
    assert set(env) - allowed == set(), set(env) - allowed
    assert os.environ["MLWARDEN_SECRET"] == "xyz-secret-value"  # the host's own environment is intact


def test_host_secrets_and_processes_hidden(tmp_path: Path) -> None:
    body = (
        "attempt('shadow', lambda: open('/etc/shadow').read())\n"
        "attempt('ssh', lambda: os.listdir('/etc/ssh') if os.path.isdir('/etc/ssh') else 'absent')\n"
        "attempt('root_home', lambda: os.listdir('/root') if os.path.isdir('/root') else 'absent')\n"
        "def procs():\n"
        "    out = []\n"
        "    for p in os.listdir('/proc'):\n"
        "        if p.isdigit():\n"
        "            with open('/proc/' + p + '/cmdline', 'rb') as fh:\n"
        "                out.append(fh.read().replace(b'\\0', b' ').decode(errors='replace'))\n"
        "    return out\n"
        "attempt('processes', procs)\n"
    )
    result, seen = run_probe(tmp_path / "model", _script(body))
    assert seen is not None, result.phases
    assert seen["shadow"] in ("", "EACCES")  # masked with /dev/null (or unreadable)
    assert seen["ssh"] in ([], "absent")
    # /root exists inside only as far as a bound Python installation lives under it (e.g. pyenv)
    python_under_root = {Path(r).parts[2] for r in sandbox._python_roots() if r.startswith("/root/")}
    root_home = seen["root_home"]
    assert root_home in ("absent", "EACCES") or (isinstance(root_home, list) and set(root_home) <= python_under_root)
    processes = seen["processes"]
    assert isinstance(processes, list)
    assert len(processes) <= 6, processes  # bwrap, strace, the runner: the host's processes are invisible
    foreign = [p for p in processes if not (p.split()[0].endswith(("bwrap", "strace")) or "dynamic.runner" in p)]
    assert foreign == []  # nothing of the host (not this test process, not the host's init)


SYS_PATH_BOUND = (
    "sandbox._python_roots() binds every host sys.path directory into the sandbox, and profiles.normalise() maps "
    "them to {python} (reads of which the BASELINE allows). `python -m mlwarden` puts the current directory on "
    "sys.path (and PYTHONPATH adds more), so scanning from $HOME exposes the whole home directory (~/.ssh, tokens) "
    "to the model, and its reads pass as file.read:{python}/... Fix in src/mlwarden/scan/dynamic/sandbox.py "
    "_python_roots: bind only sys.prefix/base_prefix/exec_prefix, the sysconfig stdlib/purelib/platlib paths and "
    "the mlwarden package's own parent (the sandboxed interpreter runs with -I and never uses the rest); and use "
    "the same list in profiles._roots()."
)


def test_host_sys_path_directories_are_not_exposed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "home-like"
    secrets.mkdir()
    (secrets / "id_rsa").write_text("PRIVATE KEY\n")
    monkeypatch.syspath_prepend(str(secrets))  # what `cd ~ && python -m mlwarden scan ...` does
    body = f"attempt('secret', lambda: open({str(secrets / 'id_rsa')!r}).read())\n"
    result, seen = run_probe(tmp_path / "model", _script(body))
    assert seen is not None, result.phases
    assert seen["secret"] == "ENOENT"


# --- resource limits ---------------------------------------------------------------------------------


def test_cpu_spin_is_killed(tmp_path: Path) -> None:
    limits = SandboxSettings(cpu_seconds=2, wall_seconds=60)
    started = time.monotonic()
    result, seen = run_probe(tmp_path / "model", "while True:\n    pass\n", limits)
    elapsed = time.monotonic() - started
    assert seen is None
    assert elapsed < 30, f"RLIMIT_CPU should end the run after ~2 s of CPU, took {elapsed:.1f}s"
    statuses = {p.name: p.status for p in result.phases}
    assert statuses["deserialize"] == "not-finished"
    incomplete = [f for f in result.findings if f.rule_id == "MLW-DYN-010"]
    assert len(incomplete) == 1
    assert incomplete[0].detail("limit") == "sandbox"


def test_wall_clock_limit(tmp_path: Path) -> None:
    limits = SandboxSettings(wall_seconds=3)
    started = time.monotonic()
    result, _ = run_probe(tmp_path / "model", "import time\ntime.sleep(120)\n", limits)
    elapsed = time.monotonic() - started
    assert elapsed < 15
    incomplete = [f for f in result.findings if f.rule_id == "MLW-DYN-010"]
    assert len(incomplete) == 1
    assert incomplete[0].detail("limit") == "wall_seconds"
    assert "3" in incomplete[0].evidence


def test_memory_bomb_is_stopped(tmp_path: Path) -> None:
    limits = SandboxSettings(memory_bytes=1 << 30)
    started = time.monotonic()
    result, _ = run_probe(tmp_path / "model", "hog = bytearray(4 << 30)\nhog[-1] = 1\n", limits)
    assert time.monotonic() - started < 30
    deserialize = next(p for p in result.phases if p.name == "deserialize")
    assert deserialize.status == "error"
    assert deserialize.error.startswith("MemoryError")


MEMORY_IS_INFO = (
    "A memory bomb stopped by RLIMIT_AS surfaces as an ordinary phase error (MLW-DYN-012, INFO), so the scan passes; "
    "MLW-DYN-010's description covers 'hit its time or resource limit'. Fix in src/mlwarden/scan/dynamic/engine.py "
    "analyse(): when the first failed phase's error starts with 'MemoryError' (or the run was killed by SIGXCPU/"
    "SIGKILL), report INCOMPLETE with limit='memory_bytes' instead of (or besides) PHASE_ERROR."
)


def test_memory_bomb_fails_the_scan(tmp_path: Path) -> None:
    limits = SandboxSettings(memory_bytes=1 << 30)
    result, _ = run_probe(tmp_path / "model", "hog = bytearray(4 << 30)\n", limits)
    assert "MLW-DYN-010" in {f.rule_id for f in result.findings}


def test_file_size_limit(tmp_path: Path) -> None:
    limits = SandboxSettings(file_size_bytes=1 << 20)
    body = (
        "def big():\n"
        f"    with open({SANDBOX_TMP + '/big.bin'!r}, 'wb') as fh:\n"
        "        fh.write(b'x' * (4 << 20))\n"
        "    return 'written'\n"
        "attempt('big', big)\n"
    )
    result, seen = run_probe(tmp_path / "model", _script(body), limits)
    assert seen is not None, result.phases
    assert seen["big"] == "EFBIG"


# --- the whole process tree dies -----------------------------------------------------------------------


def _spawn_sleeper(marker: str) -> str:
    """A detached grandchild that would sleep for minutes (its command line carries ``marker``)."""
    return (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', "
        f"{marker!r}], start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL)\n"
    )


def test_wall_clock_kills_the_whole_tree(tmp_path: Path) -> None:
    marker = f"mlwarden-sleeper-{os.getpid()}-{time.monotonic_ns()}"
    limits = SandboxSettings(wall_seconds=4)
    started = time.monotonic()
    result, _ = run_probe(tmp_path / "model", _spawn_sleeper(marker) + "import time\ntime.sleep(300)\n", limits)
    assert time.monotonic() - started < 20
    assert "MLW-DYN-010" in {f.rule_id for f in result.findings}
    assert [e for e in result.events if e.kind == "process.exec" and marker in e.target]
    assert no_survivors(marker), host_processes_with(marker)


def test_detached_child_dies_with_a_finished_run(tmp_path: Path) -> None:
    """The payload returns at once, leaving a setsid'd sleeper behind: it must not outlive the scan."""
    marker = f"mlwarden-orphan-{os.getpid()}-{time.monotonic_ns()}"
    policy = Policy(sandbox=SandboxSettings(wall_seconds=8))
    result = scan_dynamic(probe_pickle(tmp_path / "model", _spawn_sleeper(marker)), policy=policy)
    assert "MLW-DYN-001" in {f.rule_id for f in result.findings}
    assert no_survivors(marker), host_processes_with(marker)


LINGERING_CHILD = (
    "A payload that leaves a detached child behind keeps `strace -f` (and so bwrap) alive after the runner has "
    "finished every phase, so run_python waits for the full wall clock (120 s by default) and the result is a "
    "spurious 'wall-clock limit reached' MLW-DYN-010 — a cheap way to make every scan slow. Fix in "
    "src/mlwarden/scan/dynamic/sandbox.py run_python: once the runner's 'done' record (or EOF on the events pipe) "
    "arrives, keep reading strace for a short grace period (~0.5 s), then _kill_tree; the lingering process is "
    "already on record as a process.exec/fork event."
)


def test_finished_run_does_not_wait_for_lingering_children(tmp_path: Path) -> None:
    marker = f"mlwarden-lingering-{os.getpid()}-{time.monotonic_ns()}"
    policy = Policy(sandbox=SandboxSettings(wall_seconds=15))
    started = time.monotonic()
    result = scan_dynamic(probe_pickle(tmp_path / "model", _spawn_sleeper(marker)), policy=policy)
    assert no_survivors(marker)
    assert time.monotonic() - started < 10
    assert "MLW-DYN-010" not in {f.rule_id for f in result.findings}


# --- no sandbox, no run ---------------------------------------------------------------------------------


def _without_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = sandbox.shutil.which

    def which(name: str, mode: int = os.F_OK | os.X_OK, path: str | None = None) -> str | None:
        return None if name == "bwrap" else real_which(name, mode, path)

    monkeypatch.setattr(sandbox.shutil, "which", which)
    monkeypatch.setattr(sandbox, "_AVAILABLE", [])


@pytest.mark.parametrize("flags", [["--dynamic"], []], ids=["dynamic", "default"])
def test_missing_bwrap_is_exit_2_with_one_line(
    flags: list[str],
    tmp_path: Path,
    canary_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = probe_pickle(tmp_path / "model", f"open({str(canary_dir / 'ran.canary')!r}, 'w').write('ran')\n")
    _without_bwrap(monkeypatch)

    code = cli_main(["scan", *flags, "--format", "json", str(path)])

    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("mlwarden: error: bwrap is not installed")
    assert "--static-only" in lines[0]
    assert captured.out == ""  # no partial report
    assert not (canary_dir / "ran.canary").exists()  # never falls back to running it unsandboxed


def test_missing_bwrap_static_only_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = probe_pickle(tmp_path / "model", "pass\n")
    _without_bwrap(monkeypatch)
    assert cli_main(["scan", "--static-only", "--format", "json", str(path)]) == 1  # builtins.exec: fails
    assert "MLW-PKL-101" in capsys.readouterr().out


def test_scan_file_raises_sandbox_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = probe_pickle(tmp_path / "model", "pass\n")
    _without_bwrap(monkeypatch)
    with pytest.raises(SandboxUnavailable, match="bwrap"):
        scan_dynamic(path)


def test_bwrap_that_cannot_create_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bwrap that exists but fails (e.g. user namespaces disabled) is just as unavailable."""
    real = sandbox._which
    monkeypatch.setattr(sandbox, "_which", lambda name: "/bin/false" if name == "bwrap" else real(name))
    monkeypatch.setattr(sandbox, "_AVAILABLE", [])
    with pytest.raises(SandboxUnavailable, match="refuses to run unsandboxed"):
        sandbox.check_available_cached()
    assert sandbox._AVAILABLE == []
