"""The guard's commands through the real command line: serve (a process on loopback), baseline, monitor report,
forensics verify. Errors are one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mlwarden.cli.main import main
from mlwarden.integrity.signing import sign_model
from mlwarden.monitor.baseline import Baseline
from mlwarden.monitor.forensics import ForensicMaterial, write_bundle
from mlwarden.monitor.history import History
from mlwarden.monitor.runtime import Monitor, MonitorConfig
from tests.serve.world import World, opened_world, tabular_data, train_sklearn

DRIVER = "import sys\nfrom mlwarden.cli import main as cli\nsys.exit(cli.main(sys.argv[1:]))\n"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with opened_world(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path) as w:
        yield w


def _registry_args(world: World) -> list[str]:
    return [
        "--db",
        f"sqlite:///{world.root.parent / 'registry.db'}",
        "--home",
        str(world.root / "home"),
        "--gates",
        str(world.root / "gates.toml"),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_runs_as_a_process_and_stops_cleanly(world: World, tmp_path: Path) -> None:
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    carol = world.user("carol", "viewer")
    port = _free_port()
    env = {**os.environ, "MLWARDEN_TOKEN": world.tokens["dave"]}
    argv = [
        sys.executable,
        "-c",
        DRIVER,
        "serve",
        "--model",
        "fraud@production",
        "--port",
        str(port),
        *_registry_args(world),
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "mlwarden serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        row = {"inputs": tabular_data(1, 3)[0].tolist()}
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/fraud/predict",
            json=row,
            headers={"Authorization": f"Bearer {carol}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert "serving fraud:1" in err.decode()
    assert "Traceback" not in err.decode()
    # The allowed request was queued for a batched append; stopping the service flushed it.
    assert [e.actor for e in world.registry.audit().entries() if e.action == "guard.predict"] == ["carol"]


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "mlwarden serve did not start"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)


def test_serve_puts_metrics_on_their_own_listener(world: World, tmp_path: Path) -> None:
    """Outside security review, item 10: /metrics (model, version, digest) was open on the public port."""
    world.release("fraud", train_sklearn(tmp_path / "fraud.joblib", seed=1))
    port, metrics_port = _free_port(), _free_port()
    policy = tmp_path / "guard.yaml"
    policy.write_text("connections:\n  max_connections_per_ip: 8\n  header_timeout_s: 5\n", encoding="utf-8")
    env = {**os.environ, "MLWARDEN_TOKEN": world.tokens["dave"]}
    env.pop("MLWARDEN_METRICS_TOKEN", None)
    argv = [sys.executable, "-c", DRIVER, "serve", "--model", "fraud@production", "--port", str(port)]
    argv += ["--metrics-port", str(metrics_port), "--policy", str(policy), *_registry_args(world)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/healthz")
        public = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        private = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert public.status_code == 404
    assert private.status_code == 200
    assert "mlwarden_guard_serving_info" in private.text
    assert proc.returncode == 0, err.decode()  # one Ctrl-C stops both listeners
    assert f"metrics on 127.0.0.1:{metrics_port}" in err.decode()
    assert "Traceback" not in err.decode()


@pytest.mark.parametrize(
    ("extra", "env_token", "message"),
    [
        ([], None, "no API token: set MLWARDEN_TOKEN"),
        (["--policy", "/nonexistent/policy.yaml"], "dave", "cannot read it"),
        (["--poll", "0"], "dave", "--poll must be"),
        (["--metrics-token", "short"], "dave", "a metrics token has"),
        (["--port", "18080", "--metrics-port", "18080"], "dave", "--metrics-port must differ"),
    ],
)
def test_serve_refuses_bad_starts(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    env_token: str | None,
    message: str,
) -> None:
    monkeypatch.delenv("MLWARDEN_TOKEN", raising=False)
    if env_token:
        monkeypatch.setenv("MLWARDEN_TOKEN", world.tokens[env_token])
    assert main(["serve", "--model", "fraud@production", *_registry_args(world), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_serve_refuses_a_version_that_is_not_approved(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = train_sklearn(tmp_path / "m.joblib", seed=1)
    sign_model(model, world.key, tmp_path / "m.sig")
    world.registry.register(world.principals["alice"], "fresh", model, signature=tmp_path / "m.sig")
    monkeypatch.setenv("MLWARDEN_TOKEN", world.tokens["dave"])
    assert main(["serve", "--model", "fresh:1", *_registry_args(world)]) == 2
    assert "fresh:1 is received: only approved or deployed versions are served" in capsys.readouterr().err


def test_baseline_capture_attaches_and_show_prints(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = train_sklearn(tmp_path / "m.joblib", seed=1)
    sign_model(model, world.key, tmp_path / "m.sig")
    world.registry.register(world.principals["alice"], "fraud", model, signature=tmp_path / "m.sig")
    x = tabular_data(300, 9)[0]
    reference = tmp_path / "reference.csv"
    reference.write_text(
        ",".join(f"f{i}" for i in range(8)) + "\n" + "\n".join(",".join(str(v) for v in row) for row in x) + "\n"
    )
    monkeypatch.setenv("MLWARDEN_TOKEN", world.tokens["alice"])
    out = tmp_path / "b.json"
    assert (
        main(
            ["baseline", "capture", "fraud:1", "--reference", str(reference), "--out", str(out), *_registry_args(world)]
        )
        == 0
    )
    info = world.registry.resolve(world.principals["root"], "fraud:1")
    assert [a.kind.value for a in info.attachments if a.kind.value == "baseline"] == ["baseline"]
    capsys.readouterr()
    assert main(["baseline", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert '"n_reference": 300' in shown
    assert '"f7"' in shown
    assert (
        main(["baseline", "capture", "fraud:1", "--reference", str(tmp_path / "none.csv"), *_registry_args(world)]) == 2
    )


def test_monitor_report_writes_a_self_contained_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    baseline = Baseline.from_reference(rng.standard_normal((500, 3)), feature_names=["a", "b", "c"])
    now = [1000.0]
    config = MonitorConfig(window=200, min_rows=100, check_every=100, min_interval_s=0, history_every_s=1)
    monitor = Monitor(config, baseline, model="m", history=History(tmp_path / "h"), clock=lambda: now[0])
    for i in range(600):
        now[0] += 0.05
        shift = 1.5 if i > 300 else 0.0
        monitor.observe(rng.standard_normal((1, 3)) + shift, [0.9 - shift / 10], 0.002, False)
        if monitor.due():
            monitor.evaluate()
    out = tmp_path / "report.html"
    assert main(["monitor", "report", "--history", str(tmp_path / "h"), "-o", str(out)]) == 0
    html = out.read_text()
    assert html.count("<svg") >= 1 + 3 + 2  # drift over time, 3 distributions, charts
    assert "input-drift" in html
    assert 'src="http' not in html
    assert 'href="http' not in html
    assert main(["monitor", "report", "--history", str(tmp_path / "empty"), "-o", str(out)]) == 2
    assert "no monitor history" in capsys.readouterr().err


def test_forensics_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "guard.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    bundle = write_bundle(ForensicMaterial("m:1", "sha256:" + "00" * 32, None, {}, [], []), tmp_path, key)
    assert main(["forensics", "verify", str(bundle), "--key", str(public)]) == 0
    other = ec.generate_private_key(ec.SECP256R1())
    public.write_bytes(
        other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert main(["forensics", "verify", str(bundle), "--key", str(public)]) == 1
    assert "does NOT verify" in capsys.readouterr().err
    assert main(["forensics", "show", str(bundle)]) == 0
    assert '"model": "m:1"' in capsys.readouterr().out
