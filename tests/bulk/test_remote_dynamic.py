"""``bulk scan --dynamic`` on remote sources: each object is downloaded once into the worker's private cache and
that copy runs in the sandbox, exactly as ``mlwarden scan URL --dynamic``.

Served by the loopback ``RangeServer`` (tests/scan/remote_servers.py). The malicious object is a testkit canary
pickle (``os.system('touch <canary>')``); its canary file is under the test's tmp dir, which the sandbox cannot
write, and must never appear. Two workers share one cache folder (the cache locks itself across processes).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from mlwarden.bulk import BulkOptions, ResultStore, run_bulk
from mlwarden.bulk.worker import CacheSettings
from mlwarden.cli.main import main
from mlwarden_samples import build_malicious
from tests.scan.dynamic.conftest import assert_contained
from tests.scan.remote_servers import RangeServer

MODES = ("static", "dynamic")
BENIGN = pickle.dumps({"weights": [0.5] * 2000, "epoch": 2}, protocol=4)  # > 4 KiB: read in several ranges


def _needs_sandbox() -> None:
    from mlwarden.scan.dynamic.sandbox import SandboxUnavailable, check_available_cached

    try:
        check_available_cached()
    except SandboxUnavailable as exc:
        pytest.skip(f"optional: the dynamic sandbox is not available here: {exc}")


def _findings(doc: dict[str, object]) -> list[tuple[object, object]]:
    return sorted((f["rule_id"], f["severity"]) for f in doc["findings"])  # type: ignore[attr-defined]


def _gets(server: RangeServer) -> list[tuple[str, str, int]]:
    return [entry for entry in server.log if entry[0] == "GET"]


def test_remote_dynamic_rows_equal_scan_url_dynamic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_sandbox()
    canary = tmp_path / "canary"
    (evil,) = build_malicious(tmp_path / "samples", canary, only=["pickle-posix-system"])
    payloads = {"/m/evil.pkl": evil.path.read_bytes(), "/m/benign.pkl": BENIGN}
    srv = RangeServer(files=dict(payloads)).start()
    try:
        urls = [f"{srv.url}/m/evil.pkl", f"{srv.url}/m/benign.pkl"]
        listing = tmp_path / "urls.txt"
        listing.write_text("\n".join(urls) + "\n", encoding="utf-8")
        store = ResultStore.open(str(tmp_path / "r.db"))
        cache = CacheSettings(str(tmp_path / "cache"))
        options = BulkOptions(backend="process", workers=2, batch_size=1, modes=MODES, cache=cache)
        stats = run_bulk([f"@{listing}"], store, options=options)
        assert stats.counts == {"done": 2, "failed": 0, "timeout": 0}
        rows = {r["source"]: r for r in store.rows()}
        assert set(rows) == set(urls)  # the URL stays the source, not the cache path
        assert_contained(canary)

        for url, path in zip(urls, payloads, strict=True):
            [stored] = store.result(url)
            code = main(["scan", url, "--dynamic", "--cache-dir", str(tmp_path / "cli-cache"), "-f", "json",
                         "--no-progress"])  # fmt: skip
            cli = json.loads(capsys.readouterr().out)["files"][0]
            assert rows[url]["verdict"] == ("fail" if code == 1 else "pass")
            assert stored["dynamic"]["framework"] == cli["dynamic"]["framework"] == "pickle"
            assert [p["name"] for p in stored["dynamic"]["phases"]] == [p["name"] for p in cli["dynamic"]["phases"]]
            assert _findings(stored) == _findings(cli)
            sha = hashlib.sha256(payloads[path]).hexdigest()
            assert stored["remote"]["cached_sha256"] == cli["remote"]["cached_sha256"] == sha
            assert stored["remote"]["etag"] == cli["remote"]["etag"] == rows[url]["digest"]  # the store's pin
            assert stored["remote"]["read_digest"] == cli["remote"]["read_digest"]
        assert rows[urls[0]]["verdict"] == "fail"
        assert any(f["rule_id"].startswith("MLW-DYN") for f in store.result(urls[0])[0]["findings"])
        assert rows[urls[1]]["verdict"] == "pass"
        blobs = sorted(p.name for p in (tmp_path / "cache" / "blobs").iterdir())
        assert blobs == sorted(hashlib.sha256(b).hexdigest() for b in payloads.values())
        assert_contained(canary)

        srv.log.clear()
        again = run_bulk([f"@{listing}"], store, options=options)
        assert (again.skipped, again.dispatched) == (2, 0)
        assert _gets(srv) == []  # nothing downloaded, nothing read
        store.dispose()
    finally:
        srv.stop()


@dataclass
class _RefusesDownloads(RangeServer):
    """Serves ranged reads, but refuses a request for a whole object larger than one block (the download's)."""

    def _serve(self, h: BaseHTTPRequestHandler, data: bytes, extra: dict[str, str], body: bool) -> None:
        if len(data) > 4096 and h.headers.get("Range") == f"bytes=0-{len(data) - 1}":
            return self._send(h, 403, b"", {}, body)
        return super()._serve(h, data, extra, body)


def test_a_cache_refusal_or_a_failed_download_is_a_failed_row(tmp_path: Path) -> None:
    srv = _RefusesDownloads(files={"/m/benign.pkl": BENIGN}).start()
    try:
        url = f"{srv.url}/m/benign.pkl"
        store = ResultStore.open(str(tmp_path / "r.db"))
        small = CacheSettings(str(tmp_path / "small"), max_bytes=1024)  # smaller than the object
        options = BulkOptions(backend="process", workers=1, modes=MODES, cache=small)
        stats = run_bulk([url], store, options=options)
        assert stats.counts == {"done": 0, "failed": 1, "timeout": 0}
        (row,) = store.rows()
        assert (row["status"], row["verdict"]) == ("failed", "error")
        assert "more than the remote cache holds (1024)" in row["error"]
        assert sum(n for _, _, n in _gets(srv)) == len(BENIGN)  # the static pass's reads only: nothing downloaded

        roomy = CacheSettings(str(tmp_path / "c"))
        stats = run_bulk([url], store, options=replace(options, cache=roomy, retry_failed=True))
        assert stats.counts == {"done": 0, "failed": 1, "timeout": 0}
        rows = store.rows()
        assert len(rows) == 1  # the same source and pin: the failed row was replaced, not duplicated
        assert "access refused (HTTP 403)" in rows[0]["error"]
        assert list((tmp_path / "c" / "blobs").iterdir()) == []
        assert list((tmp_path / "c" / "tmp").iterdir()) == []  # the partial download was removed
        store.dispose()
    finally:
        srv.stop()
