"""The registry CLI: init and bootstrap, users and tokens, the lifecycle, exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlwarden.cli import main as cli

from .helpers import dataset_manifest, make_keys, sign, torch_model


@pytest.fixture(autouse=True)
def _registry_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLWARDEN_TOKEN", raising=False)


class Cli:
    def __init__(self, db_url: str, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = ["--db", db_url, "--home", str(root / "home"), "--gates", str(root / "gates.toml")]
        self.capsys = capsys
        self.token_file = root / "cli-token"

    def __call__(self, *argv: str, token: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        # the common options belong to the leaf command: append them after the command words
        if token:  # a file, not --token: a token on the command line is visible in ps (and warned about)
            self.token_file.write_text(token)
        extra = [*self.base, *(["--token-file", str(self.token_file)] if token else [])]
        code = cli.main([*argv, *extra])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def setup(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Cli, dict[str, str], Path]:
    keys = make_keys(tmp_path / "keys")
    (tmp_path / "gates.toml").write_text(
        '[approve]\nscan_modes = ["static"]\ntrusted_keys = ["keys/release.pub"]\n'
        '[deploy]\nallowed_aliases = ["staging", "production"]\n'
    )
    run = Cli(db_url, tmp_path, capsys)
    code, out, _ = run("registry", "init", "--admin", "root")
    assert code == 0
    assert "registry ready" in out
    tokens = {"root": out.strip().splitlines()[-1]}
    for user, role in (("alice", "submitter"), ("bob", "approver"), ("carol", "deployer")):
        assert run("user", "add", user, "--role", role, token=tokens["root"])[0] == 0
        code, out, _ = run("token", "issue", user, "--expires", "1d", "--name", "test", token=tokens["root"])
        assert code == 0
        tokens[user] = out.strip()
    model = torch_model(tmp_path / "m" / "model.pt")
    sign(model, keys, tmp_path / "model.sig")
    dataset_manifest(tmp_path / "ds", keys)
    return run, tokens, tmp_path


def test_lifecycle_through_the_cli(setup: tuple[Cli, dict[str, str], Path]) -> None:
    run, tokens, root = setup
    code, out, err = run(
        "register", "fraud", str(root / "m" / "model.pt"), "--signature", str(root / "model.sig"),
        "--dataset-manifest", str(root / "ds" / "dataset.manifest.json"), token=tokens["alice"],
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("registered fraud:1 sha256:")
    code, out, _ = run("registry", "scan", "fraud:1", "--static-only", token=tokens["alice"])
    assert code == 0
    assert "PASS" in out
    assert "state scanned" in out
    code, _, err = run("approve", "fraud:1", token=tokens["alice"])
    assert code == 2
    assert "needs role approver or admin" in err
    assert len(err.strip().splitlines()) == 1
    assert run("approve", "fraud:1", "--comment", "ok", token=tokens["bob"])[:2] == (0, "fraud:1: approved\n")
    code, _, err = run("deploy", "fraud:1", "--alias", "canary", token=tokens["carol"])
    assert code == 1
    assert "allowed_aliases: alias 'canary' is not in: staging, production" in err
    code, out, _ = run("deploy", "fraud:1", "--alias", "production", token=tokens["carol"])
    assert (code, out) == (0, "fraud:1: deployed (aliases: production)\n")
    code, out, _ = run("show", "fraud@production", "--format", "json", token=tokens["bob"])
    shown = json.loads(out)
    assert (shown["ref"], shown["state"], shown["aliases"]) == ("fraud:1", "deployed", ["production"])
    assert {a["kind"] for a in shown["attachments"]} == {"signature", "dataset_manifest", "bom", "scan_report"}
    code, out, _ = run("show", "fraud:1", token=tokens["bob"])
    assert code == 0
    assert "digest:       sha256:" in out
    assert "fraud:1" in run("versions", "fraud", token=tokens["bob"])[1]
    assert "production->1" in run("models", token=tokens["bob"])[1]
    code, out, _ = run("quarantine", "fraud:1", "--reason", "alert", token=tokens["carol"])
    assert (code, out) == (0, "fraud:1: quarantined (aliases: production)\n")
    code, out, _ = run("release", "fraud:1", token=tokens["bob"])
    assert (code, out) == (0, "fraud:1: deployed (aliases: production)\n")
    code, _, err = run("rollback", "fraud", "--alias", "production", token=tokens["carol"])
    assert code == 2
    assert "no earlier version" in err


def test_gate_refusal_prints_every_failed_rule(setup: tuple[Cli, dict[str, str], Path]) -> None:
    run, tokens, root = setup
    assert run("register", "bare", str(root / "m" / "model.pt"), token=tokens["alice"])[0] == 0
    assert run("registry", "scan", "bare:1", "--static-only", token=tokens["alice"])[0] == 0
    code, _, err = run("approve", "bare:1", token=tokens["bob"])
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[0].startswith("mlwarden: refused: gate 'approve' refused bare:1")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["signature_required", "dataset_manifest_required"]


def test_tokens_through_the_cli(setup: tuple[Cli, dict[str, str], Path]) -> None:
    run, tokens, _ = setup
    code, out, _ = run("token", "list", token=tokens["root"])
    assert code == 0
    assert "alice" in out
    token_id = next(line.split()[0] for line in out.splitlines() if " alice " in line)
    assert run("token", "revoke", token_id, token=tokens["alice"])[0] == 0
    code, _, err = run("models", token=tokens["alice"])
    assert code == 2
    assert "was revoked" in err
    code, _, err = run("models", token="mlw_" + "x" * 43)
    assert code == 2
    assert "not recognised" in err
    code, _, err = run("models")
    assert code == 2
    assert "no API token" in err


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = Cli("postgresql+psycopg://nobody@127.0.0.1:9/none", tmp_path, capsys)
    (tmp_path / "gates.toml").write_text("")
    code, _, err = dead("models", token="mlw_" + "x" * 43)
    assert code == 2
    assert err.count("\n") == 1
    assert "unavailable" in err
    empty = Cli(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path, capsys)
    code, _, err = empty("models", token="mlw_" + "x" * 43)
    assert code == 2
    assert "mlwarden registry init" in err


def test_tokens_come_from_the_environment_or_a_file_and_argv_warns(
    setup: tuple[Cli, dict[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Security review 2027-01, item 6: ``--token`` on a command line is visible to every local user in ``ps``."""
    run, tokens, root = setup
    code, _, err = run("models", "--token", tokens["root"])
    assert code == 0
    assert "--token puts the token on the command line" in err
    token_file = root / "token"
    token_file.write_text(tokens["root"] + "\n")
    token_file.chmod(0o600)
    code, _, err = run("models", "--token-file", str(token_file))
    assert code == 0
    assert "warning" not in err
    monkeypatch.setenv("MLWARDEN_TOKEN", tokens["root"])
    code, _, err = run("models")
    assert code == 0
    assert "warning" not in err
