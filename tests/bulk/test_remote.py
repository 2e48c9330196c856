"""Remote sources: URLs in a list file, scanned statically by the workers with ranged reads, pinned by etag.

Served by the project's loopback ``RangeServer`` (tests/scan/remote_servers.py). The verdicts must equal a local
``scan_remote`` of the same URLs, the digest is the server's etag, and a re-run skips the objects whose etag is
unchanged but dispatches one that was replaced.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlwarden.bulk import BulkOptions, ResultStore, run_bulk
from mlwarden.core.policy import Policy
from mlwarden.scan.engine import scan_remote
from mlwarden.scan.remote import resolve
from tests.conftest import CORPUS
from tests.scan.remote_servers import RangeServer


@pytest.fixture
def server() -> Iterator[RangeServer]:
    malicious = CORPUS / "picklescan/data/malicious0.pkl"
    if not malicious.is_file():
        pytest.skip("../shared/corpus is not beside this checkout")
    files = {f"/m/ok{i}.pkl": pickle.dumps({"w": list(range(i))}) for i in range(3)}
    files["/m/bad.pkl"] = malicious.read_bytes()
    srv = RangeServer(files=files).start()
    yield srv
    srv.stop()


def test_remote_list_scanned_pinned_and_resumed(server: RangeServer, tmp_path: Path) -> None:
    urls = [f"{server.url}/m/{n}" for n in ("ok0.pkl", "ok1.pkl", "ok2.pkl", "bad.pkl")]
    listing = tmp_path / "urls.txt"
    listing.write_text("# remote models\n" + "\n".join(urls) + "\n", encoding="utf-8")
    store = ResultStore.open(str(tmp_path / "r.db"))
    options = BulkOptions(backend="process", workers=2, batch_size=2)
    stats = run_bulk([f"@{listing}"], store, options=options)
    assert stats.counts == {"done": 4, "failed": 0, "timeout": 0}
    rows = {r["source"]: r for r in store.rows()}
    assert set(rows) == set(urls)
    for url in urls:
        local = scan_remote(resolve(url)[0], Policy())
        assert rows[url]["kind"] == "remote"
        assert rows[url]["rule_ids"] == sorted({f.rule_id for f in local.findings})
        assert local.remote is not None
        assert rows[url]["digest"] == local.remote.etag
    assert [u for u, r in rows.items() if r["verdict"] == "fail"] == [urls[3]]

    server.files["/m/ok1.pkl"] = pickle.dumps({"w": "replaced"})  # a new object behind the same URL: new etag
    again = run_bulk([f"@{listing}"], store, options=options)
    assert (again.skipped, again.dispatched) == (3, 1)
    assert len([r for r in store.rows() if r["source"] == urls[1]]) == 2
    store.dispose()
