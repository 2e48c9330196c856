"""A log stripped of its checkpoints with rewritten rows must not verify (security review 2027-01, item 2).

Reported: ``audit verify`` passed after every checkpoint was deleted and old rows were rewritten with recomputed
leaf hashes. Now verify fails on a log with entries and no checkpoint, and on an unsigned tail beyond a bound;
``--against`` compares with a checkpoint published elsewhere (``audit publish --to``).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mlwarden.cli import main as cli
from mlwarden.registry.audit import AuditLog
from mlwarden.registry.audit.replay import leaf_from_row
from mlwarden.registry.db import Database

from .test_audit_cli import fill, run


@pytest.fixture(autouse=True)
def audit_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLWARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLWARDEN_AUDIT_MAX_UNSIGNED", raising=False)


def _rewrite_history(database: Database) -> None:
    """The attack: drop every checkpoint, edit an old row and recompute its stored leaf hash."""
    log = AuditLog(database)
    record = next(log.entries(2, 3))
    with database.transaction() as session:
        session.execute(text("DELETE FROM audit_checkpoints"))
        leaf = leaf_from_row(
            (
                record.seq,
                record.timestamp,
                "mallory",
                record.action,
                record.subject,
                record.allowed,
                record.reason,
                record.from_state,
                record.to_state,
                record.digests_json,
                record.details_json,
            )
        )
        session.execute(
            text("UPDATE audit_entries SET actor = 'mallory', leaf_hash = :leaf WHERE seq = 2"), {"leaf": leaf}
        )


def test_a_log_without_any_checkpoint_fails(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from mlwarden.registry.audit import CheckpointSigner

    CheckpointSigner.generate(tmp_path / "home" / "keys" / "audit.key")
    fill(database, 5)
    code, out, _ = run(capsys, "audit", "verify", "--db", database.url)
    assert code == 1
    assert "unsigned: 5 entries and no checkpoint" in out


def test_an_unsigned_tail_beyond_the_bound_fails(
    database: Database, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(database, 5)
    assert run(capsys, "audit", "checkpoint", "--db", database.url)[0] == 0
    fill(database, 5)
    assert run(capsys, "audit", "verify", "--db", database.url)[0] == 0
    code, out, _ = run(capsys, "audit", "verify", "--db", database.url, "--max-unsigned", "3")
    assert code == 1
    assert "5 entries after the last verified checkpoint (bound 3)" in out
    monkeypatch.setenv("MLWARDEN_AUDIT_MAX_UNSIGNED", "4")
    assert run(capsys, "audit", "verify", "--db", database.url)[0] == 1


def test_rewritten_history_fails_against_a_published_checkpoint(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fill(database, 12)
    assert run(capsys, "audit", "checkpoint", "--db", database.url)[0] == 0
    witness = tmp_path / "elsewhere" / "checkpoint.txt"
    witness.parent.mkdir()
    code, out, err = run(capsys, "audit", "publish", "--db", database.url, "--to", str(witness))
    assert code == 0, err
    assert witness.read_text().startswith("mlwarden.audit/v1\n12\n")
    assert run(capsys, "audit", "verify", "--db", database.url, "--against", str(witness))[0] == 0
    _rewrite_history(database)
    assert run(capsys, "audit", "checkpoint", "--db", database.url)[0] == 0  # the attacker re-signs (same key)
    code, out, _ = run(capsys, "audit", "verify", "--db", database.url, "--against", str(witness))
    assert code == 1
    assert "witness-mismatch" in out


@pytest.fixture
def witness_server(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def do_GET(self) -> None:
            body = received[-1] if received else b""
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/checkpoint", received
    finally:
        server.shutdown()
        server.server_close()


def test_publish_and_verify_over_http(
    database: Database, capsys: pytest.CaptureFixture[str], witness_server: tuple[str, list[bytes]]
) -> None:
    url, received = witness_server
    fill(database, 7)
    assert run(capsys, "audit", "checkpoint", "--db", database.url)[0] == 0
    assert run(capsys, "audit", "publish", "--db", database.url, "--to", url)[0] == 0
    assert received
    assert received[-1].startswith(b"mlwarden.audit/v1\n7\n")
    assert run(capsys, "audit", "verify", "--db", database.url, "--against", url)[0] == 0
    with database.transaction() as session:
        session.execute(text("DELETE FROM audit_checkpoints"))
        session.execute(text("DELETE FROM audit_entries WHERE seq >= 5"))
    code, out, _ = run(capsys, "audit", "verify", "--db", database.url, "--against", url)
    assert code == 1
    assert "truncated" in out


def test_every_writer_with_a_key_checkpoints_on_shutdown(database: Database, tmp_path: Path) -> None:
    from mlwarden.registry.audit import CheckpointSigner
    from mlwarden.registry.service import Registry

    home = tmp_path / "home"
    CheckpointSigner.generate(home / "keys" / "audit.key")
    registry = Registry.open(database.url, home=home)
    registry.bootstrap("root")
    registry.close()
    log = AuditLog(database)
    last = log.latest_checkpoint()
    assert last is not None
    assert last.tree_size == log.size()
    assert cli.main(["audit", "verify", "--db", database.url, "--max-unsigned", "0"]) == 0
