"""``mlwarden api serve`` options (the server itself runs in tests/api/test_server.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mlwarden.cli import api_cmd
from mlwarden.registry.db import URL_ENV


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlwarden", exit_on_error=False)
    api_cmd.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["api", "serve", *argv])


def test_defaults_listen_on_loopback() -> None:
    args = _parse()
    assert (args.host, args.port, args.max_upload, args.run) == ("127.0.0.1", 8765, None, api_cmd.run_serve)


@pytest.mark.parametrize(("text", "size"), [("500MiB", 500 << 20), ("2GiB", 2 << 30), ("4096", 4096)])
def test_max_upload_takes_sizes(text: str, size: int) -> None:
    assert _parse("--max-upload", text).max_upload == size


@pytest.mark.parametrize("argv", [("--max-upload", "lots"), ("--port", "70000"), ("--port", "http")])
def test_bad_values_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _parse(*argv)


def test_home_alone_puts_the_database_in_that_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert api_cmd._database_url(None, tmp_path) == f"sqlite:///{tmp_path / 'registry.db'}"
    assert api_cmd._database_url("sqlite:///elsewhere.db", tmp_path) == "sqlite:///elsewhere.db"
    assert api_cmd._database_url(None, None) is None
    monkeypatch.setenv(URL_ENV, "postgresql+psycopg://x@db/reg")
    assert api_cmd._database_url(None, tmp_path) is None, "the environment's URL wins over the home default"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False)],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert api_cmd._is_loopback(host) is loopback
