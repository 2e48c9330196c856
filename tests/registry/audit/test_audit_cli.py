"""``mlwarden audit verify|checkpoint|log|prove``: exit codes, messages and key handling."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from mlwarden.cli import main as cli
from mlwarden.registry.audit import AuditEvent, AuditLog
from mlwarden.registry.db import Database


@pytest.fixture(autouse=True)
def audit_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLWARDEN_HOME", str(tmp_path / "home"))


def fill(database: Database, n: int) -> None:
    log = AuditLog(database)
    with database.transaction() as session:
        for i in range(n):
            log.append(session, AuditEvent("alice", "register", f"model:m:{i}", i != 3, reason="" if i != 3 else "no"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_checkpoint_creates_keys_then_verify_passes(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fill(database, 12)
    code, out, err = run(capsys, "audit", "checkpoint", "--db", database.url)
    assert code == 0, err
    assert "created audit key" in err
    key = tmp_path / "home" / "keys" / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "home" / "keys" / "audit.pub").is_file()
    assert out.splitlines()[:2] == ["mlwarden.audit/v1", "12"]
    code, out, _ = run(capsys, "audit", "verify", "--db", database.url)
    assert code == 0
    assert "OK: 12 entries" in out
    assert "1/1 checkpoints verified" in out
    code, out, err = run(capsys, "audit", "checkpoint", "--db", database.url)  # reuses the key
    assert code == 0
    assert "created audit key" not in err


def test_verify_exits_1_and_names_an_edited_entry(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    fill(database, 12)
    assert run(capsys, "audit", "checkpoint", "--db", database.url)[0] == 0
    with database.transaction() as session:
        session.execute(text("UPDATE audit_entries SET subject = 'model:m:x' WHERE seq = 4"))
    code, out, _ = run(capsys, "audit", "verify", "--db", database.url)
    assert code == 1
    assert "edited: entry 4 " in out
    assert "TAMPERED" in out
    code, out, _ = run(capsys, "audit", "verify", "--db", database.url, "--format", "json")
    doc = json.loads(out)
    assert code == 1
    assert doc["ok"] is False
    assert [p["seq"] for p in doc["problems"] if p["kind"] == "edited"] == [4]
    code, out, _ = run(capsys, "audit", "prove", "4", "--db", database.url)
    assert code == 1
    assert "FAILED" in out


def test_prove_prints_and_checks_an_inclusion_proof(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    fill(database, 9)
    run(capsys, "audit", "checkpoint", "--db", database.url)
    code, out, _ = run(capsys, "audit", "prove", "5", "--db", database.url)
    assert code == 0
    assert "verified: entry 5 is included in the signed tree of size 9" in out
    assert sum(line.strip().startswith("proof[") for line in out.splitlines()) == 4
    code, _, err = run(capsys, "audit", "prove", "9", "--db", database.url)
    assert code == 2
    assert "not covered by the latest checkpoint" in err


def test_log_lists_the_newest_entries(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    fill(database, 6)
    code, out, _ = run(capsys, "audit", "log", "--db", database.url, "--limit", "3")
    lines = out.splitlines()
    assert code == 0
    assert len(lines) == 3
    assert lines[0].split()[0] == "3"
    assert "REFUSED" in lines[0]
    assert "(no)" in lines[0]
    code, out, _ = run(capsys, "audit", "log", "--db", database.url, "--limit", "0", "--format", "json")
    entries = json.loads(out)
    assert [e["seq"] for e in entries] == list(range(6))
    assert entries[3]["allowed"] is False
    assert len(entries[0]["leaf_hash"]) == 64


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("audit", "verify"), "audit public key"),
        (("audit", "verify", "--public-key", "/nonexistent/audit.pub"), "does not exist"),
        (("audit", "prove", "0"), "audit public key"),
        (("audit",), "choose an action"),
        (("audit", "log", "--limit", "-1"), "--limit"),
    ],
)
def test_errors_exit_2_with_one_line(
    database: Database, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    fill(database, 2)
    code, _, err = run(capsys, *argv, *(("--db", database.url) if len(argv) > 1 else ()))
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_a_key_readable_by_others_is_refused(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fill(database, 2)
    run(capsys, "audit", "checkpoint", "--db", database.url)
    key = tmp_path / "home" / "keys" / "audit.key"
    key.chmod(0o644)
    code, _, err = run(capsys, "audit", "checkpoint", "--db", database.url)
    assert code == 2
    assert "chmod 600" in err


def test_a_missing_database_is_an_error_not_a_new_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    code, _, err = run(capsys, "audit", "log", "--db", url)
    assert code == 2
    assert "registry init" in err
