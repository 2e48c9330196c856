"""``mlwarden retire`` and ``mlwarden archive``: the whole round trip through the command line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mlwarden.cli.main import main
from mlwarden.registry.states import State
from tests.registry.helpers import ADMIN, World, world


@pytest.fixture
def w(db_url: str, tmp_path: Path):
    with world(db_url, tmp_path) as built:
        yield built


def _common(w: World) -> list[str]:
    return ["--db", w.url, "--home", str(w.root / "home"), "--token", w.admin_token]


def test_retire_archive_extract_and_certificate(w: World, capsys: pytest.CaptureFixture[str]) -> None:
    version = w.approved()
    keys = w.root / "custodian"
    assert main(["archive", "keygen", "--private-key", f"{keys}.key", "--public-key", f"{keys}.pub"]) == 0
    code = main(
        ["retire", version.ref, "--mode", "archive", "--archive-dir", str(w.root / "vault"),
         "--recipient", f"{keys}.pub", "--reason", "superseded", *_common(w)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"retired {version.ref} (archive)" in out
    assert w.registry.get(ADMIN, version.ref).state is State.RETIRED
    archive = next((w.root / "vault").glob("*.mlwarc"))
    assert main(["archive", "extract", str(archive), "--private-key", f"{keys}.key", "-o", str(w.root / "out")]) == 0
    restored = w.root / "out" / "model" / version.artifact_name
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == version.files[0].digest
    certificate = w.root / "home" / "certificates" / f"fraud-{version.version}.retirement.json"
    registry_pub = w.root / "home" / "keys" / "registry.pub"
    capsys.readouterr()
    assert main(["archive", "certificate", str(certificate), "--public-key", str(registry_pub)]) == 0
    assert '"mode": "archive"' in capsys.readouterr().out
    assert main(["archive", "certificate", str(certificate), "--public-key", str(w.keys.public)]) == 1  # wrong key
    assert main(["archive", "certificate", str(certificate), "--public-key", f"{keys}.pub"]) == 2  # not a signing key


def test_retire_refusals_are_one_line(w: World, capsys: pytest.CaptureFixture[str]) -> None:
    version = w.approved()
    assert main(["retire", version.ref, "--mode", "archive", *_common(w)]) == 2
    err = capsys.readouterr().err
    assert "needs an archive folder" in err
    assert "Traceback" not in err
    assert main(["retire", "fraud:99", "--mode", "delete", *_common(w)]) == 2
    assert "fraud" in capsys.readouterr().err
    assert w.registry.get(ADMIN, version.ref).state is State.APPROVED
