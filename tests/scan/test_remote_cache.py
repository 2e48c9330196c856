"""Dynamic analysis of remote models: the private, content-addressed download cache (``remote_cache.py``).

The objects are served by the loopback ``RangeServer`` (tests/scan/remote_servers.py), which logs every request and
the body bytes it sent: "downloaded once" and "refused before downloading" are measured on the server side. The
malicious sample is a testkit canary (``os.system('touch <canary>')`` in a pickle): its canary file lives under the
test's tmp dir, which the sandbox cannot write, and must never appear.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlwarden.cli.main import main
from mlwarden.core.findings import Severity
from mlwarden.core.policy import Limits, Policy
from mlwarden.scan.engine import scan_paths
from mlwarden.scan.remote import RemoteError, RemoteFile, resolve
from mlwarden.scan.remote_cache import RemoteCache
from mlwarden_samples import build_malicious
from tests.scan.dynamic.conftest import assert_contained, needs_sandbox
from tests.scan.remote_servers import RangeServer

BIG = 1 << 30


def _blob(seed: int, size: int = 40_000) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


@pytest.fixture
def canary_dir(tmp_path: Path) -> Path:
    """An empty host folder the sandbox cannot write to: a file here means a payload escaped."""
    path = tmp_path / "canary"
    path.mkdir()
    return path


@pytest.fixture
def server() -> Iterator[RangeServer]:
    srv = RangeServer(files={f"/m/{name}": _blob(i) for i, name in enumerate(("a.bin", "b.bin", "c.bin"))}).start()
    yield srv
    srv.stop()


def _gets(server: RangeServer) -> list[tuple[str, str, int]]:
    return [entry for entry in server.log if entry[0] == "GET"]


def test_downloads_once_then_reuses_the_same_pinned_copy(server: RangeServer, tmp_path: Path) -> None:
    cache = RemoteCache(tmp_path / "cache", chunk=16 * 1024)
    data = server.files["/m/a.bin"]
    (item,) = resolve(f"{server.url}/m/a.bin")
    first = cache.fetch(item, BIG)
    assert first.downloaded
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    assert first.path.name == first.sha256  # content-addressed
    assert first.path.read_bytes() == data
    assert len(_gets(server)) == 3  # 40,000 bytes in 16 KiB ranged reads
    assert sum(n for _, _, n in _gets(server)) == len(data)
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600

    server.log.clear()
    (again,) = resolve(f"{server.url}/m/a.bin")  # a new scan: metadata only (HEAD)
    second = RemoteCache(tmp_path / "cache").fetch(again, BIG)
    assert not second.downloaded
    assert (second.path, second.sha256) == (first.path, first.sha256)
    assert _gets(server) == []  # not one byte downloaded again
    assert [m for m, _, _ in server.log] == ["HEAD"]


def test_new_version_behind_the_same_url_is_downloaded_again(server: RangeServer, tmp_path: Path) -> None:
    cache = RemoteCache(tmp_path / "cache")
    first = cache.fetch(resolve(f"{server.url}/m/a.bin")[0], BIG)
    server.files["/m/a.bin"] = _blob(99)  # a new ETag: a new pin
    second = cache.fetch(resolve(f"{server.url}/m/a.bin")[0], BIG)
    assert second.downloaded
    assert second.sha256 == hashlib.sha256(_blob(99)).hexdigest() != first.sha256


def test_object_changed_after_resolving_is_an_error_and_nothing_is_kept(server: RangeServer, tmp_path: Path) -> None:
    cache = RemoteCache(tmp_path / "cache")
    (item,) = resolve(f"{server.url}/m/a.bin")
    server.files["/m/a.bin"] = _blob(7)
    with pytest.raises(RemoteError, match="changed during the scan.*before the download"):
        cache.fetch(item, BIG)
    assert _gets(server) == []
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []


def test_object_changed_mid_download_is_an_error_and_no_partial_copy_remains(
    server: RangeServer, tmp_path: Path
) -> None:
    cache = RemoteCache(tmp_path / "cache", chunk=8 * 1024)
    (item,) = resolve(f"{server.url}/m/a.bin")
    real_fetch = item.fetch

    def fetch_then_replace(start: int, end: int) -> bytes:
        data = real_fetch(start, end)
        server.files["/m/a.bin"] = _blob(8)  # replaced after the first range: If-Match fails on the next one
        return data

    moving = RemoteFile(item.display, item.size, fetch_then_replace, item.pins, item.verify)
    with pytest.raises(RemoteError, match="changed"):
        cache.fetch(moving, BIG)
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_declared_sha256_must_match_the_downloaded_bytes(server: RangeServer, tmp_path: Path) -> None:
    (item,) = resolve(f"{server.url}/m/a.bin")
    lying = RemoteFile(item.display, item.size, item.fetch, {**item.pins, "sha256": "0" * 64}, item.verify)
    with pytest.raises(RemoteError, match="the store declares 0000"):
        RemoteCache(tmp_path / "cache").fetch(lying, BIG)
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []


def test_size_bounds_refuse_before_any_byte_is_downloaded(server: RangeServer, tmp_path: Path) -> None:
    (item,) = resolve(f"{server.url}/m/a.bin")  # size from HEAD: 40,000
    with pytest.raises(RemoteError, match="max_file_size"):
        RemoteCache(tmp_path / "c1").fetch(item, 39_999)
    with pytest.raises(RemoteError, match="more than the remote cache holds"):
        RemoteCache(tmp_path / "c2", max_bytes=39_999).fetch(item, BIG)
    assert _gets(server) == []
    assert RemoteCache(tmp_path / "c3", max_bytes=40_000).fetch(item, 40_000).downloaded  # the bounds are inclusive


def test_least_recently_used_copy_is_evicted_to_stay_under_the_bound(server: RangeServer, tmp_path: Path) -> None:
    cache = RemoteCache(tmp_path / "cache", max_bytes=100_000)  # room for two 40,000-byte copies
    url = server.url + "/m/{}.bin"
    a = cache.fetch(resolve(url.format("a"))[0], BIG)
    b = cache.fetch(resolve(url.format("b"))[0], BIG)
    assert not cache.fetch(resolve(url.format("a"))[0], BIG).downloaded  # a is now the most recently used
    c = cache.fetch(resolve(url.format("c"))[0], BIG)
    assert c.downloaded
    assert a.path.exists()
    assert c.path.exists()
    assert not b.path.exists()
    assert cache.total_bytes() == 80_000 <= cache.max_bytes
    assert cache.fetch(resolve(url.format("b"))[0], BIG).downloaded  # evicted: downloaded again
    assert not a.path.exists()  # a (used before c) made room this time


def test_cache_reuse_rehashes_and_drops_a_damaged_copy(server: RangeServer, tmp_path: Path) -> None:
    cache = RemoteCache(tmp_path / "cache")
    first = cache.fetch(resolve(f"{server.url}/m/a.bin")[0], BIG)
    first.path.write_bytes(b"tampered" + first.path.read_bytes()[8:])
    again = cache.fetch(resolve(f"{server.url}/m/a.bin")[0], BIG)
    assert again.downloaded
    assert again.path.read_bytes() == server.files["/m/a.bin"]


def test_default_folder_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert RemoteCache().directory == tmp_path / "xdg" / "mlwarden" / "remote"


# --- dynamic analysis of a remote model, end to end ----------------------------------------------------------


@needs_sandbox
def test_remote_canary_is_caught_by_dynamic_analysis_of_the_cached_copy(
    tmp_path: Path, canary_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (evil,) = build_malicious(tmp_path / "samples", canary_dir, only=["pickle-posix-system"])
    evil_bytes = evil.path.read_bytes()
    benign_bytes = pickle.dumps({"weights": [0.5] * 16, "epoch": 2}, protocol=4)
    srv = RangeServer(files={"/m/evil.pkl": evil_bytes, "/m/benign.pkl": benign_bytes}).start()
    try:
        cache = RemoteCache(tmp_path / "cache")
        report = scan_paths([f"{srv.url}/m/evil.pkl", f"{srv.url}/m/benign.pkl"], modes=("static", "dynamic"),
                            cache=cache)  # fmt: skip
        bad, good = report.files
        assert bad.framework == good.framework == "pickle"
        assert bad.remote is not None
        assert good.remote is not None
        assert bad.remote.cached_sha256 == hashlib.sha256(evil_bytes).hexdigest()
        assert good.remote.cached_sha256 == hashlib.sha256(benign_bytes).hexdigest()
        assert bad.remote.etag is not None
        assert bad.remote.read_digest is not None
        dyn = [f for f in bad.findings if f.rule_id.startswith("MLW-DYN") and f.severity >= Severity.MEDIUM]
        assert any(f.location.phase == "deserialize" for f in dyn), dyn
        assert [f for f in good.findings if f.severity >= Severity.MEDIUM] == []
        assert all(status == "ok" for _, status, *_ in good.timeline), good.timeline
        assert report.exit_code() == 1
        assert_contained(canary_dir)

        # the CLI: --dynamic on a URL runs static in place + dynamic on the cached copy, reusing it (no download)
        srv.log.clear()
        static_only = scan_paths([f"{srv.url}/m/evil.pkl"], modes=("static",))
        static_bytes = srv.sent()
        srv.log.clear()
        code = main(["scan", f"{srv.url}/m/evil.pkl", "--dynamic", "--cache-dir", str(tmp_path / "cache"),
                     "-f", "json", "--no-progress"])  # fmt: skip
        out, err = capsys.readouterr()
        assert code == 1
        assert static_only.exit_code() == 1
        doc = json.loads(out)
        assert doc["modes"] == ["static", "dynamic"]
        assert doc["files"][0]["remote"]["cached_sha256"] == hashlib.sha256(evil_bytes).hexdigest()
        assert any(f["rule_id"].startswith("MLW-DYN") for f in doc["files"][0]["findings"])
        assert srv.sent() == static_bytes  # only the static ranged reads: the copy was reused
        assert "downloaded into" in err
        jsonschema = pytest.importorskip("jsonschema")
        root = Path(__file__).resolve().parents[2]
        jsonschema.validate(doc, json.loads((root / "docs" / "report-schema.json").read_text(encoding="utf-8")))
        assert_contained(canary_dir)
    finally:
        srv.stop()


@needs_sandbox
def test_remote_object_over_max_file_size_is_a_finding_and_never_downloaded(
    server: RangeServer, tmp_path: Path
) -> None:
    policy = Policy(limits=Limits(max_file_size=1024))
    cache = RemoteCache(tmp_path / "cache")
    report = scan_paths([f"{server.url}/m/a.bin"], policy, modes=("static", "dynamic"), cache=cache)
    (result,) = report.files
    assert result.error is None
    assert [f.detail("limit") for f in result.findings] == ["max_file_size"]
    assert result.framework is None
    assert result.remote is not None
    assert result.remote.cached_sha256 is None
    assert _gets(server) == []
    assert cache.total_bytes() == 0


@needs_sandbox
def test_dynamic_downloads_only_what_a_loader_would_run(tmp_path: Path) -> None:
    """``--dynamic`` over a repository: a README and a config are scanned in place and never downloaded (no
    loader runs them); a pickle is (which of pickle, joblib or torch loads it needs its bytes)."""
    files = {
        "/m/README.md": b"# a model card\n" * 200,
        "/m/config.json": json.dumps({"model_type": "bert", "hidden_size": 8}).encode(),
        "/m/model.pkl": pickle.dumps({"weights": [0.5] * 16}, protocol=4),
    }
    srv = RangeServer(files=files).start()
    try:
        cache = RemoteCache(tmp_path / "cache")
        report = scan_paths([f"{srv.url}{p}" for p in files], modes=("static", "dynamic"), cache=cache)
        by_name = {r.path.rsplit("/", 1)[1]: r for r in report.files}
        assert by_name["README.md"].remote is not None
        assert by_name["README.md"].remote.cached_sha256 is None
        assert by_name["config.json"].remote is not None
        assert by_name["config.json"].remote.cached_sha256 is None
        assert by_name["model.pkl"].remote is not None
        assert by_name["model.pkl"].remote.cached_sha256 == hashlib.sha256(files["/m/model.pkl"]).hexdigest()
        assert cache.total_bytes() == len(files["/m/model.pkl"])
    finally:
        srv.stop()


# --- mlwarden.load(URL) ------------------------------------------------------------------------------------------


def test_load_of_a_url_goes_through_the_cache_and_the_same_checks(
    tmp_path: Path, canary_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlwarden
    from mlwarden.core.errors import UnsafeModelError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (evil,) = build_malicious(tmp_path / "samples", canary_dir, only=["pickle-posix-system"])
    planted = {"weights": [0.25, 0.5], "epoch": 3}
    srv = RangeServer(files={"/m/ok.pkl": pickle.dumps(planted, protocol=4), "/m/evil.pkl": evil.path.read_bytes()})
    srv.start()
    try:
        assert mlwarden.load(f"{srv.url}/m/ok.pkl", dynamic=False) == planted
        blobs = tmp_path / "xdg" / "mlwarden" / "remote" / "blobs"
        assert [p.name for p in blobs.iterdir()] == [hashlib.sha256(pickle.dumps(planted, protocol=4)).hexdigest()]
        srv.log.clear()
        assert mlwarden.load(f"{srv.url}/m/ok.pkl", dynamic=False) == planted
        assert _gets(srv) == []  # the second load reused the cached copy

        with pytest.raises(UnsafeModelError) as caught:
            mlwarden.load(f"{srv.url}/m/evil.pkl", dynamic=False)
        assert f"{srv.url}/m/evil.pkl" in str(caught.value)  # the URL, not the cache path, is shown
        assert any(f.severity >= Severity.HIGH for f in caught.value.findings)
        assert list(canary_dir.iterdir()) == []  # refused before anything was unpickled

        with pytest.raises(RemoteError, match="no such object"):
            mlwarden.load(f"{srv.url}/m/absent.pkl", dynamic=False)
    finally:
        srv.stop()


# --- a URL as a local path: registry register -------------------------------------------------------------------


def test_relative_names_keep_the_layout_below_the_common_folder() -> None:
    from mlwarden.scan.remote_cache import _relative_names

    hub = ["hf://org/m@abc/config.json", "hf://org/m@abc/onnx/model.onnx", "hf://org/m@abc/onnx/model.onnx_data"]
    assert _relative_names(hub) == [("config.json",), ("onnx", "model.onnx"), ("onnx", "model.onnx_data")]
    assert _relative_names(["https://h/a/b/model.pt?X-Sig=REDACTED"]) == [("model.pt",)]
    with pytest.raises(RemoteError, match="not a safe relative file name"):
        _relative_names(["s3://b/p/x.bin", "s3://b/p/../y.bin"])


def test_registry_register_of_a_url_equals_registering_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MLWARDEN_TOKEN", raising=False)
    local = tmp_path / "local" / "model.pt"
    local.parent.mkdir()
    torch.manual_seed(0)
    torch.save({"linear.weight": torch.randn(2, 3)}, local)
    base = ["--db", f"sqlite:///{tmp_path / 'reg.db'}", "--home", str(tmp_path / "home")]
    assert main(["registry", "init", "--admin", "root", *base]) == 0
    (tmp_path / "token").write_text(capsys.readouterr().out.strip().splitlines()[-1])
    auth = [*base, "--token-file", str(tmp_path / "token")]
    srv = RangeServer(files={"/releases/v1/model.pt": local.read_bytes()}).start()
    try:
        assert main(["register", "from-url", f"{srv.url}/releases/v1/model.pt", *auth]) == 0
        remote_out = capsys.readouterr().out
        assert main(["register", "from-disk", str(local), *auth]) == 0
        local_out = capsys.readouterr().out
    finally:
        srv.stop()
    digest = local_out.split()[2]
    assert digest.startswith("sha256:")
    assert remote_out.split()[1:4] == ["from-url:1", digest, "(1"]  # same manifest digest: same name, same bytes
    assert sum(n for _, _, n in _gets(srv)) == local.stat().st_size  # downloaded once, whole
    assert list((tmp_path / "xdg" / "mlwarden" / "remote" / "tmp").iterdir()) == []  # the layout was removed
