"""A writer killed with SIGKILL mid-burst loses nothing it reported committed; two writer processes never collide."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlwarden.registry.audit import AuditLog, CheckpointSigner
from mlwarden.registry.db import Database

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

#: The child: append events one transaction at a time; print each seq only after its commit returned.
WRITER = textwrap.dedent(
    """
    import sys
    from mlwarden.registry.audit import AuditEvent, AuditLog, CheckpointSigner
    from mlwarden.registry.db import open_database

    url, key, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    log = AuditLog(open_database(url, upgrade=False), CheckpointSigner.load(key), checkpoint_every=25)
    for i in range(count):
        event = AuditEvent(name, "deploy", f"model:{name}:{i}", True, digests={"m": "sha256:" + "ef" * 32},
                           details={"i": i, "pad": "x" * 200})
        record = log.append_now(event)
        sys.stdout.write(f"{record.seq}\\n")
        sys.stdout.flush()
    """
)


def start_writer(url: str, key: Path, name: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(key), name, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "audit.key"
    CheckpointSigner.generate(path)
    return path


@pytest.mark.parametrize("kill_after", [7, 160])
def test_sigkill_mid_burst_keeps_every_committed_event(database: Database, key: Path, kill_after: int) -> None:
    child = start_writer(database.url, key, "burst", 100_000)
    assert child.stdout is not None
    reported: list[int] = []
    try:
        for line in child.stdout:
            reported.append(int(line))
            if len(reported) == kill_after:
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        _, err = child.communicate(timeout=30)  # drains and closes both pipes
    assert child.returncode == -signal.SIGKILL, err
    assert reported == list(range(kill_after))

    signer = CheckpointSigner.load(key)
    log = AuditLog(database, signer)
    present = {r.seq for r in log.entries()}
    # Every event the writer reported committed survived. It may have committed a few more before the kill
    # landed (the parent reads its pipe behind it); those must be whole and gapless too.
    assert set(reported) <= present
    assert present == set(range(len(present)))
    report = log.verify(signer.public_key)
    assert report.ok, report.problems
    assert report.good_checkpoints == len(present) // 25
    log.checkpoint()  # the log carries on where the dead writer stopped
    after = log.verify(signer.public_key)
    assert after.ok
    assert after.unsigned_tail is None


def test_two_writer_processes_at_once_stay_gapless(database: Database, key: Path) -> None:
    children = [start_writer(database.url, key, name, 120) for name in ("alpha", "beta")]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err
        outputs.append([int(line) for line in out.split()])
    seqs = sorted(outputs[0] + outputs[1])
    assert seqs == list(range(240))  # each seq handed out exactly once
    signer = CheckpointSigner.load(key)
    log = AuditLog(database, signer)
    assert [r.seq for r in log.entries()] == seqs
    report = log.verify(signer.public_key)
    assert report.ok, report.problems
    assert report.good_checkpoints >= 240 // 25 - 1
