"""``mlwarden sign`` / ``verify`` / ``keys`` through the real entry point (sign_cmd registered for the test)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mlwarden.cli import main as cli_main
from tests.integrity.signing_helpers import build_model, build_pki, write_key_pair


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return build_model(tmp_path, "nested-folder")


def run(*args: str) -> int:
    return cli_main.main(list(args))


def test_generate_sign_verify(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("keys", "generate", "--private-key", "k.pem", "--public-key", "k.pub") == 0
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert run("sign", "key", "model", "--private-key", "k.pem", "--signature", "model.sig") == 0
    out = capsys.readouterr().out
    assert "signed model: 8 file(s)" in out
    assert "digest sha256:" in out
    assert run("verify", "key", "model", "--public-key", "k.pub", "--signature", "model.sig") == 0
    assert "verified model: 8 file(s)" in capsys.readouterr().out


def test_model_signing_option_spellings(model: Path) -> None:
    write_key_pair(Path("."), "k")
    assert run("sign", "key", "model", "--private_key", "k.pem", "--signature", "m.sig") == 0
    assert run("verify", "key", "model", "--public_key", "k.pub", "--signature", "m.sig") == 0


def test_tampered_model_exits_1_and_names_each_problem(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_key_pair(Path("."), "k")
    run("sign", "key", "model", "--private-key", "k.pem", "--signature", "m.sig")
    (model / "config.json").write_text("{}")
    (model / "extra.bin").write_text("x")
    capsys.readouterr()
    assert run("verify", "key", "model", "--public-key", "k.pub", "--signature", "m.sig") == 1
    err = capsys.readouterr().err
    assert "verification FAILED" in err
    assert "  - file added: extra.bin" in err
    assert "  - file changed: config.json (sha256 expected" in err


def test_wrong_key_exits_1(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_key_pair(Path("."), "k")
    write_key_pair(Path("."), "other")
    run("sign", "key", "model", "--private-key", "k.pem", "--signature", "m.sig")
    assert run("verify", "key", "model", "--public-key", "other.pub", "--signature", "m.sig") == 1
    assert "wrong key?" in capsys.readouterr().err


def test_truncated_signature_exits_1(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_key_pair(Path("."), "k")
    run("sign", "key", "model", "--private-key", "k.pem", "--signature", "m.sig")
    Path("m.sig").write_text(Path("m.sig").read_text()[:100])
    assert run("verify", "key", "model", "--public-key", "k.pub", "--signature", "m.sig") == 1
    assert "is not a valid signature bundle" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sign", "key", "model", "--private-key", "absent.pem", "--signature", "m.sig"), "does not exist"),
        (("sign", "key", "missing-model", "--private-key", "k.pem", "--signature", "m.sig"), "no such file or folder"),
        (("sign", "key", "model", "--private-key", "k.pub", "--signature", "m.sig"), "holds a public key"),
        (
            ("sign", "key", "model", "--private-key", "k.pem", "--signature", "m.sig", "--ignore-paths", "README.md"),
            "is not inside the model folder",
        ),
        (("sign", "key", "model", "--private-key", "k.pem"), "--signature"),
        (("verify", "key", "model", "--public-key", "k.pem", "--signature", "m.sig"), "holds a private key"),
        (("keys", "generate", "--private-key", "k.pem", "--public-key", "new.pub"), "already exists"),
    ],
)
def test_usage_errors_exit_2(
    model: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    write_key_pair(Path("."), "k")
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_ignore_paths_are_read_from_the_current_directory(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_key_pair(Path("."), "k")
    assert (
        run(
            "sign",
            "key",
            "model",
            "--private-key",
            "k.pem",
            "--signature",
            "m.sig",
            "--ignore-paths",
            "model/README.md",
            "model/tokenizer",
        )
        == 0
    )
    assert "6 file(s)" in capsys.readouterr().out
    (model / "README.md").write_text("edited")
    assert run("verify", "key", "model", "--public-key", "k.pub", "--signature", "m.sig") == 0


def test_password_file(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("pw").write_text("correct horse\n")
    Path("bad").write_text("battery staple\n")
    assert run("keys", "generate", "--private-key", "k.pem", "--public-key", "k.pub", "--password-file", "pw") == 0
    assert run("sign", "key", "model", "--private-key", "k.pem", "--signature", "m.sig", "--password-file", "pw") == 0
    assert run("sign", "key", "model", "--private-key", "k.pem", "--signature", "x.sig", "--password-file", "bad") == 2
    assert "wrong password" in capsys.readouterr().err
    assert not Path("x.sig").exists()


def test_certificate_commands(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = build_pki(tmp_path / "pki")
    assert (
        run(
            "sign",
            "certificate",
            "model",
            "--private-key",
            str(pki.leaf_key),
            "--signing-certificate",
            str(pki.leaf_cert),
            "--certificate-chain",
            str(pki.intermediate_cert),
            "--signature",
            "c.sig",
        )
        == 0
    )
    assert run("verify", "certificate", "model", "--signature", "c.sig", "--certificate-chain", str(pki.root_cert)) == 0
    assert "signed by O=mlwarden tests,CN=ca signer" in capsys.readouterr().out
    other = build_pki(tmp_path / "other", name="other")
    assert (
        run("verify", "certificate", "model", "--signature", "c.sig", "--certificate-chain", str(other.root_cert)) == 1
    )
    assert "does not chain to a trusted root" in capsys.readouterr().err
