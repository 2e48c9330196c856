"""Hugging Face organisations and searches as bulk SOURCEs (``hf://ORG``, ``hf://?search=...``).

The Hub is the loopback ``RangeServer`` in hub mode (tests/scan/remote_servers.py), which answers
``GET /api/models`` as the Hub does for ``HfApi.list_models`` (filtering, ``limit``, ``expand=sha``, pagination by
``Link`` header: two repositories per page here, so every organisation listing takes several pages). The token
comes from the token file under ``HF_HOME``, not from the environment, and must reach every Hub request.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlwarden.bulk import BulkError, BulkOptions, ResultStore, expand_sources, run_bulk
from mlwarden.cli.main import main
from mlwarden.core.policy import Policy
from mlwarden.scan.engine import scan_remote
from mlwarden.scan.remote import resolve
from mlwarden_samples import build_malicious
from tests.scan.remote_servers import Hub, RangeServer, free_port

TOKEN = "hf_file_token_value"  # a test token for the loopback hub


def _commit(n: int) -> str:
    return f"{n:040x}"


def _weights(i: int) -> bytes:
    return pickle.dumps({"layer": i, "weights": [0.5] * (40 + i)}, protocol=4)


@pytest.fixture
def evil_bytes(tmp_path: Path) -> bytes:
    """A testkit canary pickle (static analysis only here: it is never loaded)."""
    (sample,) = build_malicious(tmp_path / "samples", tmp_path / "canary", only=["pickle-posix-system"])
    return sample.path.read_bytes()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, evil_bytes: bytes) -> Iterator[RangeServer]:
    """Three ``acme`` repositories (one with a malicious pickle, one with an older commit), one ``other``, and a
    ``flaky`` organisation whose second repository is listed at a commit it no longer has."""
    pytest.importorskip("huggingface_hub", reason="optional: huggingface_hub is not installed (mlwarden[remote])")
    config = b'{"model_type": "mlp"}'
    repos = [
        Hub(
            "acme/bert-tiny",
            {
                _commit(1): {"pytorch_model.bin": _weights(1)},
                _commit(2): {"pytorch_model.bin": _weights(2), "config.json": config},
            },
            {"main": _commit(2)},
            tags=("pytorch", "bert"),
            downloads=5,
        ),
        Hub(
            "acme/gpt-small",
            {_commit(3): {"model.pkl": evil_bytes, "config.json": config}},
            {"main": _commit(3)},
            tags=("pytorch",),
            downloads=50,
        ),
        Hub(
            "acme/bert-large",
            {_commit(4): {"weights.pkl": _weights(4), "README.md": b"# large\n", "config.json": config}},
            {"main": _commit(4)},
            tags=("jax", "bert"),
            downloads=20,
        ),
        Hub("other/bert-base", {_commit(5): {"model.pkl": _weights(5)}}, {"main": _commit(5)}, tags=("pytorch",)),
        Hub("flaky/ok", {_commit(6): {"model.pkl": _weights(6)}}, {"main": _commit(6)}),
        Hub("flaky/gone", {}, {"main": _commit(7)}),  # listed, but the commit cannot be read
    ]
    server = RangeServer(hubs=repos, page_size=2).start()
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(TOKEN, encoding="utf-8")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.stop()


def _acme_files() -> set[str]:
    return {
        f"hf://acme/bert-tiny@{_commit(2)}/pytorch_model.bin",
        f"hf://acme/bert-tiny@{_commit(2)}/config.json",
        f"hf://acme/gpt-small@{_commit(3)}/model.pkl",
        f"hf://acme/gpt-small@{_commit(3)}/config.json",
        f"hf://acme/bert-large@{_commit(4)}/weights.pkl",
        f"hf://acme/bert-large@{_commit(4)}/README.md",
        f"hf://acme/bert-large@{_commit(4)}/config.json",
    }


def _listings(server: RangeServer) -> list[str]:
    return [path for method, path, _ in server.log if method == "GET" and path.startswith("/api/models?")]


def test_org_source_scans_every_file_of_every_repo_pinned_and_resumes(hub: RangeServer, tmp_path: Path) -> None:
    store = ResultStore.open(str(tmp_path / "r.db"))
    options = BulkOptions(backend="process", workers=2, batch_size=3)
    stats = run_bulk(["hf://acme"], store, options=options)
    assert stats.counts == {"done": 7, "failed": 0, "timeout": 0}
    rows = {r["source"]: r for r in store.rows()}
    assert set(rows) == _acme_files()  # every file of every repository, each at main's commit
    for url, row in rows.items():
        local = scan_remote(resolve(url)[0], Policy())  # exactly as `mlwarden bulk scan hf://ORG/NAME@REV`
        assert local.remote is not None
        assert row["kind"] == "remote"
        assert row["rule_ids"] == sorted({f.rule_id for f in local.findings})
        assert row["digest"] == (local.remote.sha256 or local.remote.etag)
        [stored] = store.result(url)
        assert stored["remote"]["commit"] == url.split("@", 1)[1][:40]
    assert [u for u, r in rows.items() if r["verdict"] == "fail"] == [f"hf://acme/gpt-small@{_commit(3)}/model.pkl"]

    # the listing asked for the commits and was paged; the files were read at the listed commits; all with the token
    pages = _listings(hub)
    assert len(pages) == 2
    assert "author=acme" in pages[0]
    assert "expand=sha" in pages[0]
    assert "cursor=2" in pages[1]
    assert any(f"/api/models/acme/bert-tiny/revision/{_commit(2)}" in p for _, p, _ in hub.log)
    ours = [a for a in hub.auth_seen if "/api/models" in a or "/resolve/" in a]
    assert ours
    assert all(a.endswith(f" Bearer {TOKEN}") for a in ours)

    hub.log.clear()
    again = run_bulk(["hf://acme"], store, options=options)
    assert (again.planned, again.skipped, again.dispatched) == (0, 7, 0)
    assert [p for _, p, _ in hub.log if "/resolve/" in p] == []  # nothing was read again
    assert len(store.rows()) == 7
    store.dispose()


def test_search_sources_filter_the_listing(hub: RangeServer) -> None:
    def repos(source: str) -> set[str]:
        return {i.source.split("@", 1)[0] for i in expand_sources([source])}

    assert repos("hf://?search=bert") == {"hf://acme/bert-tiny", "hf://acme/bert-large", "hf://other/bert-base"}
    assert repos("hf://?search=bert&author=acme") == {"hf://acme/bert-tiny", "hf://acme/bert-large"}
    assert repos("hf://acme?search=bert&filter=pytorch") == {"hf://acme/bert-tiny"}
    assert repos("hf://?filter=pytorch&filter=bert") == {"hf://acme/bert-tiny"}
    assert repos("hf://?filter=pytorch&sort=downloads&limit=1") == {"hf://acme/gpt-small"}  # the most downloaded
    assert any("search=bert" in p and "author=acme" in p for p in _listings(hub))


def test_a_listing_cut_at_max_repos_says_so(hub: RangeServer) -> None:
    notes: list[str] = []
    items = expand_sources(["hf://acme"], max_repos=2, on_note=notes.append)
    assert {i.source.split("@", 1)[0] for i in items} == {"hf://acme/bert-tiny", "hf://acme/gpt-small"}
    assert notes == ["hf://acme: more than 2 model repositories; scanning the first 2 (raise --max-repos, or narrow "
                     "the source)"]  # fmt: skip
    assert "limit=3" in _listings(hub)[-1]  # one more than the bound: enough to know it was cut, no more

    notes.clear()
    sample = expand_sources(["hf://acme?limit=2"], max_repos=2, on_note=notes.append)
    assert len({i.source.split("@", 1)[0] for i in sample}) == 2
    assert notes == []  # a limit the user set is a sample, not a truncation


def test_cli_prints_the_truncation_note(hub: RangeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "r.db")
    code = main(["bulk", "scan", "hf://acme", "--max-repos", "1", "--results", db, "--backend", "process", "-q"])
    err = capsys.readouterr().err
    assert code == 0  # bert-tiny only: benign
    assert "mlwarden: note: hf://acme: more than 1 model repositories; scanning the first 1" in err


def test_a_repository_that_cannot_be_expanded_is_a_failed_row(hub: RangeServer, tmp_path: Path) -> None:
    store = ResultStore.open(str(tmp_path / "r.db"))
    stats = run_bulk(["hf://flaky"], store, options=BulkOptions(backend="process", workers=1))
    assert stats.counts == {"done": 1, "failed": 1, "timeout": 0}
    rows = {r["source"]: r for r in store.rows()}
    assert rows[f"hf://flaky/ok@{_commit(6)}/model.pkl"]["verdict"] == "pass"
    gone = rows[f"hf://flaky/gone@{_commit(7)}"]
    assert (gone["status"], gone["verdict"]) == ("failed", "error")
    assert "no revision" in gone["error"]
    store.dispose()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("hf://nobody", "no model repositories (unknown organisation 'nobody'"),
        ("hf://?search=zzz", "no model repositories (unknown query"),
        ("hf://acme?author=other", "either as hf://ORG or as author="),
        ("hf://?search=bert&limit=0", "limit must be a positive integer"),
        ("hf://?search=bert&sort=stars", "sort must be one of"),
        ("hf://?search=", "search= is empty"),
    ],
)
def test_bad_listing_is_a_clear_bulk_error(hub: RangeServer, source: str, message: str) -> None:
    with pytest.raises(BulkError) as caught:
        expand_sources([source])
    assert message in str(caught.value)


def test_an_endpoint_that_is_not_a_hub_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("huggingface_hub", reason="optional: huggingface_hub is not installed (mlwarden[remote])")
    server = RangeServer(files={}).start()  # a plain web server: /api/models is 404
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    try:
        db = str(tmp_path / "r.db")
        assert main(["bulk", "scan", "hf://acme", "--results", db, "--backend", "process", "-q"]) == 2
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert f"hf://acme: the Hub refused the listing (HTTP 404) at {server.url}" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_endpoint_that_is_down_is_one_line_after_the_retries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on the port: huggingface_hub retries (about 23 s of back-off), then one line, exit 2."""
    pytest.importorskip("huggingface_hub", reason="optional: huggingface_hub is not installed (mlwarden[remote])")
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    db = str(tmp_path / "r.db")
    assert main(["bulk", "scan", "hf://acme", "--results", db, "--backend", "process", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"mlwarden: error: hf://acme: cannot list models at {endpoint}: ConnectError, after huggingface_hub's retries"
    )
