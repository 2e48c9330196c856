"""``mlwarden register NAME URL`` records where the version came from: URL (redacted), pins, digests.

Real loopback servers only: the ranged HTTP server (with Basic auth, so the URL carries credentials) and the
hub-shaped endpoint for ``hf://``. The password must never reach the output, the database, the audit log or the
blob store; the recorded sha256 is the server's bytes, and a record that does not describe the registered files is
refused.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlwarden.cli.main import main
from mlwarden.integrity.hashing import hash_model
from mlwarden.registry.errors import BadInput
from mlwarden.registry.source import ModelSource, SourceFile
from tests.scan.remote_servers import Hub, RangeServer

COMMIT = "d" * 40
PASSWORD = "pw-s3cr3t-9f1c"  # a test credential the server checks, never a real secret
USER = "fetcher-7d2a"
MODEL = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01w\x94K\x01s."  # pickle of {"w": 1}: benign


class Run:
    """The CLI against one SQLite registry under ``tmp_path``, with the admin's token."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.db = tmp_path / "reg.db"
        self.home = tmp_path / "home"
        self.base = ["--db", f"sqlite:///{self.db}", "--home", str(self.home)]
        self.capsys = capsys
        self.output = ""
        self.last_out = ""
        assert self("registry", "init", "--admin", "root", auth=False)[0] == 0
        (tmp_path / "token").write_text(self.last_out.strip().splitlines()[-1])
        self.auth = ["--token-file", str(tmp_path / "token")]

    def __call__(self, *argv: str, auth: bool = True, base: bool = True) -> tuple[int, str, str]:
        self.capsys.readouterr()
        common = self.base if base else ["--db", f"sqlite:///{self.db}"]
        code = main([*argv, *common, *(self.auth if auth else [])])
        out, err = self.capsys.readouterr()
        self.output += out + err
        self.last_out = out
        return code, out, err


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MLWARDEN_TOKEN", raising=False)
    return Run(tmp_path, capsys)


@pytest.fixture
def http() -> Iterator[RangeServer]:
    server = RangeServer(files={"/releases/v1/model.pkl": MODEL}, auth=(USER, PASSWORD)).start()
    yield server
    server.stop()


def _everything_stored(tmp_path: Path) -> bytes:
    """Every byte the registry and the cache keep: the database (with its WAL), the blob store, the cache."""
    out = b""
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and path.name != "token":
            out += path.read_bytes()
    with sqlite3.connect(tmp_path / "reg.db") as connection:  # the rows as text, whatever the page layout
        out += "\n".join(connection.iterdump()).encode()
    return out


def test_register_from_http_records_the_redacted_url_etag_and_sha256(
    run: Run, http: RangeServer, tmp_path: Path
) -> None:
    host = http.url.removeprefix("http://")
    code, out, err = run("register", "from-http", f"http://{USER}:{PASSWORD}@{host}/releases/v1/model.pkl")
    assert (code, err) == (0, "")
    clean_url = f"http://{host}/releases/v1/model.pkl"
    assert f"from {clean_url}" in out
    code, out, _ = run("show", "from-http:1", "--format", "json")
    assert code == 0
    shown = json.loads(out)
    etag = http._etags[id(MODEL)]
    assert shown["source"] == {
        "url": clean_url,
        "files": 1,
        "etag": etag,
        "last_modified": "Sat, 05 Dec 2026 10:00:00 GMT",
        "sha256": hashlib.sha256(MODEL).hexdigest(),
    }
    assert shown["files"][0]["digest"] == hashlib.sha256(MODEL).hexdigest()  # the recorded bytes are the registered
    [attachment] = [a for a in shown["attachments"] if a["kind"] == "source"]
    assert attachment["details"] == shown["source"]
    code, text, _ = run("show", "from-http:1")
    assert f"source:       {clean_url}" in text
    assert f"etag:         {etag}" in text
    code, log, _ = run("audit", "log", "--format", "json", "-n", "0", auth=False, base=False)
    assert code == 0
    [event] = [e for e in json.loads(log) if e["action"] == "register"]
    assert event["details"]["source"] == shown["source"]
    assert event["digests"]["source"] == f"sha256:{attachment['digest']}"
    document = _document(tmp_path, attachment["digest"])
    [fetched] = document["files"]
    assert fetched["url"] == clean_url
    assert fetched["pins"]["etag"] == etag
    stored = _everything_stored(tmp_path)
    assert clean_url.encode() in stored
    for secret in (PASSWORD, USER):
        assert secret not in run.output
        assert secret.encode() not in stored


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RangeServer]:
    pytest.importorskip("huggingface_hub")
    files = {"pytorch_model.bin": MODEL, "config.json": b'{"model_type": "mlp"}'}
    server = RangeServer(hub=Hub("org/tiny", {COMMIT: files}, {"main": COMMIT})).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_value")
    yield server
    server.stop()


def test_register_from_the_hub_records_revision_and_commit(run: Run, hub: RangeServer, tmp_path: Path) -> None:
    code, out, err = run("register", "from-hub", "hf://org/tiny", "--framework", "torch")
    assert (code, err) == (0, "")
    assert f"from hf://org/tiny  @ main  commit {COMMIT}" in out
    shown = json.loads(run("show", "from-hub:1", "-f", "json")[1])
    assert shown["source"] == {"url": "hf://org/tiny", "files": 2, "revision": "main", "commit": COMMIT}
    text = run("show", "from-hub:1")[1]
    assert f"commit:       {COMMIT}" in text
    assert "files:        2 (per-file pins in the source attachment)" in text
    [attachment] = [a for a in shown["attachments"] if a["kind"] == "source"]
    stored = _everything_stored(tmp_path)
    assert b"hf_test_token_value" not in stored
    assert "hf_test_token_value" not in run.output
    document = _document(tmp_path, attachment["digest"])
    by_url = {f["url"]: f for f in document["files"]}
    model = by_url[f"hf://org/tiny@{COMMIT}/pytorch_model.bin"]
    assert model["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert model["pins"]["commit"] == COMMIT
    assert {f["digest"] for f in shown["files"]} == {f["sha256"] for f in document["files"]}


def _document(tmp_path: Path, digest: str) -> dict[str, Any]:
    """The stored source document: the blob whose bytes hash to ``digest`` (found, not assumed: the layout is the
    blob store's business)."""
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return dict(json.loads(path.read_bytes()))
    raise AssertionError(f"no blob {digest}")


def test_a_source_that_does_not_describe_the_files_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.pkl"
    model.write_bytes(MODEL)
    manifest = hash_model(model)
    other = ModelSource("https://u:p@h.example/m.pkl", (SourceFile("https://h.example/m.pkl", 3, "ab" * 32),))
    with pytest.raises(BadInput, match="does not describe the registered files"):
        other.checked(manifest.files)
    good = ModelSource(
        "https://u:p@h.example/m.pkl?X-Amz-Signature=abc",
        (SourceFile("https://h.example/m.pkl", len(MODEL), hashlib.sha256(MODEL).hexdigest(), {"etag": '"e"'}),),
    ).checked(manifest.files)
    assert good.url == "https://h.example/m.pkl?X-Amz-Signature=REDACTED"
    assert good.summary()["etag"] == '"e"'


def test_the_source_attachment_cannot_be_forged(run: Run, tmp_path: Path) -> None:
    model = tmp_path / "m.pkl"
    model.write_bytes(MODEL)
    assert run("register", "local", str(model))[0] == 0
    shown = json.loads(run("show", "local:1", "-f", "json")[1])
    assert shown["source"] is None  # registered from a local file: no source
    (tmp_path / "fake.json").write_text('{"url": "https://trusted.example/m.pkl"}')
    code, _, err = run("attach", "local:1", "source", str(tmp_path / "fake.json"))
    assert code == 2
    assert "records a version's source itself" in err
