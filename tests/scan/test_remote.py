"""Scanning models where they live: ranged HTTP, S3 (moto server on loopback), a hub-shaped tree for hf://.

Every server here is real and local: ``RangeServer`` (tests/scan/remote_servers.py) for HTTP and the Hub, moto's
``ThreadedMotoServer`` for S3. Ground truth is planted: the same sample files are scanned locally and remotely and
must get the same verdicts; byte counts are measured on the server side.
"""

from __future__ import annotations

import importlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlwarden
from mlwarden.cli.main import main
from mlwarden.core.policy import Limits, Policy
from mlwarden.report.jsonfmt import to_dict
from mlwarden.scan.engine import scan_remote
from mlwarden.scan.remote import RemoteError, redact, resolve
from mlwarden_samples import build_benign, build_malicious
from tests.scan.remote_servers import Hub, RangeServer, free_port

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]

#: Measured on the 32 MiB checkpoint below (8 random 1024x1024 float32 tensors): 97,229 bytes in 13 ranged reads,
#: 0.29 %, the same over HTTP and S3 (4 KiB blocks: the 64 KiB sniffing head, the central directory, data.pkl and one
#: block per tensor storage). The bound is generous; benchmarks/remote_transfer.py measures 1 GiB checkpoints.
FRACTION_BOUND = 0.02


def _verdict(report: mlwarden.ScanReport) -> tuple[int, list[str]]:
    return report.exit_code(), sorted({f.rule_id for f in report.findings})


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A benign torch state dict, a benign safetensors file and a canary torch zip whose data.pkl runs exec."""
    out = tmp_path_factory.mktemp("samples")
    benign = build_benign(out, only=["torch-state-dict", "safetensors"])
    bad = build_malicious(out, out / "canary", only=["torch-zip-data-pkl"])
    picked = {
        "benign.pt": next(s.path for s in benign if s.family == "torch-state-dict"),
        "benign.safetensors": next(s.path for s in benign if s.family == "safetensors" and s.path.is_file()),
        "evil.pt": bad[0].path,
    }
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save({f"layer{i}.weight": torch.randn(1024, 1024) for i in range(8)}, buf)  # 32 MiB of tensor bytes
    big = out / "big.pt"
    big.write_bytes(buf.getvalue())
    picked["big.pt"] = big
    return picked


@pytest.fixture
def http(samples: dict[str, Path]) -> Iterator[RangeServer]:
    server = RangeServer(files={f"/models/{name}": p.read_bytes() for name, p in samples.items()}).start()
    yield server
    server.stop()


# --- HTTP -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["benign.pt", "benign.safetensors", "evil.pt"])
def test_http_verdict_equals_local_scan(http: RangeServer, samples: dict[str, Path], name: str) -> None:
    remote = mlwarden.scan(f"{http.url}/models/{name}")
    local = mlwarden.scan(samples[name])
    assert _verdict(remote) == _verdict(local)
    assert [fmt for _, fmt in remote.files[0].formats] == [fmt for _, fmt in local.files[0].formats]
    assert (remote.exit_code() == 1) == (name == "evil.pt")


def test_http_large_checkpoint_reads_a_small_fraction_and_records_provenance(
    http: RangeServer, samples: dict[str, Path]
) -> None:
    size = samples["big.pt"].stat().st_size
    report = mlwarden.scan(f"{http.url}/models/big.pt")
    result = report.files[0]
    assert report.exit_code() == 0
    assert result.error is None
    assert result.remote is not None
    sent = http.sent()  # measured by the server: every body byte it sent
    assert sent == result.remote.bytes_read
    assert sent / size < FRACTION_BOUND, f"{sent} of {size} bytes ({sent / size:.2%})"
    assert result.remote.requests == sum(1 for m, _, _ in http.log if m == "GET")
    etag = next(v for k, v in _headers(http, "/models/big.pt").items() if k == "ETag")
    assert result.remote.etag == etag
    again = mlwarden.scan(f"{http.url}/models/big.pt").files[0].remote
    assert again is not None
    assert again.read_digest == result.remote.read_digest
    data = to_dict(report)
    assert data["files"][0]["remote"]["bytes_read"] == sent
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, json.loads((ROOT / "docs" / "report-schema.json").read_text(encoding="utf-8")))


def _headers(server: RangeServer, path: str) -> dict[str, str]:
    import requests

    return dict(requests.head(server.url + path, timeout=5).headers)


def test_http_missing_object_is_a_clear_error(http: RangeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["scan", f"{http.url}/models/absent.pt", "--static-only", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no such object" in err
    assert "Traceback" not in err


def test_http_credentials_never_appear_in_output(samples: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    server = RangeServer(files={"/evil.pt": samples["evil.pt"].read_bytes()}, auth=("alice", "pw-s3cr3t")).start()
    try:
        host = server.url.removeprefix("http://")
        code = main(["scan", f"http://alice:pw-s3cr3t@{host}/evil.pt", "-f", "json", "--no-progress"])
        out, err = capsys.readouterr()
        assert code == 1  # the credentials were used: the canary was read and found
        assert "static analysis only" in err  # no mode flag: the default static + dynamic becomes static, said so
        assert json.loads(out)["modes"] == ["static"]
        assert json.loads(out)["files"][0]["path"] == f"http://{host}/evil.pt"
        assert "pw-s3cr3t" not in out + err
        assert "alice" not in out + err
        wrong = main(["scan", f"http://alice:pw-wr0ng@{host}/evil.pt", "--static-only", "--no-progress"])
        out, err = capsys.readouterr()
        assert wrong == 2
        assert "access refused" in err
        assert "pw-wr0ng" not in out + err
    finally:
        server.stop()


def test_redact_strips_userinfo_and_query_values() -> None:
    url = "https://u:p@host.example/m.pt?X-Amz-Signature=abc&X-Amz-Credential=key"
    assert redact(url) == "https://host.example/m.pt?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED"


def test_http_object_replaced_mid_scan_fails_instead_of_mixing_versions(
    http: RangeServer, samples: dict[str, Path]
) -> None:
    (item,) = resolve(f"{http.url}/models/benign.pt")
    http.files["/models/benign.pt"] = samples["evil.pt"].read_bytes()  # replaced after its metadata was read
    result = scan_remote(item, Policy())
    assert result.error is not None
    assert "changed during the scan" in result.error
    assert result.findings == ()


def test_max_file_size_applies_to_the_remote_size_before_reading(http: RangeServer) -> None:
    policy = Policy(limits=Limits(max_file_size=1024))
    report = mlwarden.scan(f"{http.url}/models/big.pt", policy)
    assert [f.rule_id for f in report.findings] == ["MLW-GEN-001"]
    assert [m for m, _, _ in http.log] == ["HEAD"]  # metadata only, no body byte


def test_redirect_to_another_host_is_refused(http: RangeServer) -> None:
    http.redirects["/models/moved.pt"] = f"http://localhost:{http.httpd.server_address[1]}/models/benign.pt"
    with pytest.raises(RemoteError, match="redirected to another host"):
        resolve(f"{http.url}/models/moved.pt")
    http.redirects["/models/moved.pt"] = "/models/benign.pt"  # same host: followed
    (item,) = resolve(f"{http.url}/models/moved.pt")
    assert item.size == len(http.files["/models/benign.pt"])


# --- S3 (moto server) -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(samples: dict[str, Path]) -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback; boto (and s3fs) reach it through AWS_ENDPOINT_URL and dummy keys."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    etags = {}
    for name, path in samples.items():
        etags[name] = client.put_object(Bucket="models", Key=f"team/{name}", Body=path.read_bytes())["ETag"]
    client.create_bucket(Bucket="versioned")
    client.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    put = client.put_object(Bucket="versioned", Key="m.pt", Body=samples["benign.pt"].read_bytes())
    etags["versioned"] = put["VersionId"]
    yield etags
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_s3_prefix_verdicts_equal_local_and_record_etags(s3: dict[str, str], samples: dict[str, Path]) -> None:
    report = mlwarden.scan("s3://models/team")
    by_name = {Path(r.path).name: r for r in report.files}
    assert sorted(by_name) == sorted(samples)
    for name, result in by_name.items():
        local = mlwarden.scan(samples[name])
        assert sorted({f.rule_id for f in result.findings}) == sorted({f.rule_id for f in local.findings}), name
        assert result.remote is not None
        assert result.remote.etag == s3[name].strip('"')
    assert by_name["evil.pt"].findings
    assert report.exit_code() == 1
    big = by_name["big.pt"].remote
    assert big is not None
    assert big.bytes_read / samples["big.pt"].stat().st_size < FRACTION_BOUND


def test_s3_version_id_is_recorded(s3: dict[str, str]) -> None:
    result = mlwarden.scan("s3://versioned/m.pt").files[0]
    assert result.error is None
    assert result.remote is not None
    assert result.remote.version_id == s3["versioned"]


def test_s3_missing_object_is_a_clear_error(s3: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "s3://models/team/absent.pt", "--static-only", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no such object" in err
    assert "testing-secret" not in err


# --- Hugging Face Hub (hub-shaped local endpoint) ---------------------------------------------------------------

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


@pytest.fixture
def hub(samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RangeServer]:
    pytest.importorskip("huggingface_hub")
    files_a = {"pytorch_model.bin": samples["benign.pt"].read_bytes(), "config.json": b'{"model_type": "mlp"}'}
    files_b = {**files_a, "pytorch_model.bin": samples["evil.pt"].read_bytes()}
    repo = Hub("org/tiny", {COMMIT_A: files_a, COMMIT_B: files_b}, {"main": COMMIT_A, "evil": COMMIT_B})
    server = RangeServer(hub=repo).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_value")
    yield server
    server.stop()


def test_hf_scan_pins_the_commit_and_matches_local(
    hub: RangeServer, samples: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["scan", "hf://org/tiny", "-f", "json", "--static-only", "--no-progress"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert code == 0
    files = {f["path"]: f for f in data["files"]}
    model = files[f"hf://org/tiny@{COMMIT_A}/pytorch_model.bin"]
    assert model["remote"]["commit"] == COMMIT_A
    assert model["remote"]["revision"] == "main"
    import hashlib

    assert model["remote"]["sha256"] == hashlib.sha256(samples["benign.pt"].read_bytes()).hexdigest()
    assert "hf_test_token_value" not in out + err
    # the token goes to the two endpoints mlwarden calls (huggingface_hub may also GET /api/agent-harnesses itself)
    ours = [a for a in hub.auth_seen if "/api/models/" in a or "/resolve/" in a]
    assert len(ours) >= 3
    assert all(a.endswith(" Bearer hf_test_token_value") for a in ours)
    bad = mlwarden.scan("hf://org/tiny@evil/pytorch_model.bin")
    assert _verdict(bad) == _verdict(mlwarden.scan(samples["evil.pt"]))
    assert bad.files[0].remote is not None
    assert bad.files[0].remote.commit == COMMIT_B


def test_hf_branch_moving_mid_scan_cannot_change_what_is_read(hub: RangeServer) -> None:
    items = resolve("hf://org/tiny/pytorch_model.bin")
    assert hub.hub is not None
    hub.hub.branches["main"] = COMMIT_B  # main now points at the malicious commit
    result = scan_remote(items[0], Policy())
    assert result.error is None
    assert result.findings == ()
    assert all(f"/resolve/{COMMIT_A}/" in path for m, path, _ in hub.log if "/resolve/" in path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("hf://org/absent", "no such repository"),
        ("hf://org/tiny@nope", "no revision"),
        ("hf://org/tiny/absent.bin", "no file 'absent.bin'"),
        ("hf://datasets/org/tiny", "only model repositories"),
    ],
)
def test_hf_missing_repository_or_revision(hub: RangeServer, url: str, message: str) -> None:
    with pytest.raises(RemoteError, match=message):
        resolve(url)


@pytest.mark.skipif(
    os.environ.get("MLWARDEN_TEST_REAL_HUB") != "1",
    reason="optional: opt-in, set MLWARDEN_TEST_REAL_HUB=1 (reaches the real hub; never in CI)",
)
def test_real_hub_opt_in() -> None:  # pragma: no cover - never runs in CI
    report = mlwarden.scan("hf://hf-internal-testing/tiny-random-bert")
    assert not report.errors
    commits = {r.remote.commit for r in report.files if r.remote is not None}
    assert len(commits) == 1
    assert len(commits.pop() or "") == 40


def test_sarif_points_at_the_url_of_a_remote_file(http: RangeServer) -> None:
    from mlwarden.report.sarif import artifact_location

    url = f"{http.url}/models/evil.pt"
    assert artifact_location(url) == {"uri": url}
    assert artifact_location("models/evil.pt")["uri"] == "models/evil.pt"  # local paths unchanged


def test_server_gone_mid_scan_is_an_error_not_a_finding(
    samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    remote_http = importlib.import_module("mlwarden.scan.remote_http")  # mlwarden.scan is also the function

    sleeps: list[float] = []
    monkeypatch.setattr(remote_http.time, "sleep", sleeps.append)
    server = RangeServer(files={"/m.pt": samples["benign.pt"].read_bytes()}).start()
    (item,) = resolve(f"{server.url}/m.pt")
    server.stop()  # metadata was read; every ranged GET now fails to connect
    result = scan_remote(item, Policy())
    assert result.error is not None
    assert "ConnectionError after 3 retries" in result.error
    assert result.findings == ()
    assert sleeps == [0.5, 1.0, 2.0]  # the documented retry budget, with back-off


def test_s3_object_replaced_mid_scan_fails(
    s3: dict[str, str], samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    remote = importlib.import_module("mlwarden.scan.remote")
    monkeypatch.setattr(remote.time, "sleep", lambda _s: None)
    client = boto3.client("s3")
    client.put_object(Bucket="models", Key="swap/m.pt", Body=samples["benign.pt"].read_bytes())
    (item,) = resolve("s3://models/swap/m.pt")
    client.put_object(Bucket="models", Key="swap/m.pt", Body=samples["evil.pt"].read_bytes())
    result = scan_remote(item, Policy())
    assert result.error is not None
    assert "changed during the scan" in result.error  # the ETag read before the scan no longer matches
    assert result.findings == ()  # the replacement's canary is not reported as if it were the pinned object


def test_any_fsspec_url_memory_prefix(samples: dict[str, Path]) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for name in ("benign.pt", "evil.pt"):
        fs.pipe(f"/fsspec-test/nested/{name}", samples[name].read_bytes())
    try:
        report = mlwarden.scan("memory://fsspec-test")
        by_name = {Path(r.path).name: r for r in report.files}
        assert sorted(by_name) == ["benign.pt", "evil.pt"]  # listed recursively, regular files only
        for name, result in by_name.items():
            local = mlwarden.scan(samples[name])
            assert sorted({f.rule_id for f in result.findings}) == sorted({f.rule_id for f in local.findings})
        assert by_name["evil.pt"].findings
        assert not by_name["benign.pt"].findings
    finally:
        fs.rm("/fsspec-test", recursive=True)
