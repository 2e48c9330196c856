"""Guard overhead under load: the tabular model behind ``mlwarden serve`` vs the same model served bare.

Target (issue 6): 500 requests/s for 60 s against the tabular model, guard on vs the bare model served without
checks, in the same run: 0 errors, added p99 latency <= 2 ms, memory flat over the run.

Both servers are uvicorn processes on 127.0.0.1 with one worker, serving the same joblib file:

* **bare**: ``benchmarks/_bare_server.py`` — FastAPI, ``joblib.load`` (trusted), ``predict_proba``, the same JSON
  shape; no token, no checks, no audit;
* **guard**: ``mlwarden serve`` with the default policy's checks (token auth, rate limit, schema, range, OOD,
  adversarial detectors, extraction, output rounding and PII filter, monitoring, audit of every decision) and
  a registry on a temporary SQLite file.

The load generator is open-loop (requests are sent on a fixed schedule whatever the answers, so a slow server
shows up as latency, not as a lower rate), one row per request, on asyncio + httpx with a bounded pool. Server
memory (RSS from /proc) is sampled every second. Runs alternate bare/guard for ``--rounds`` rounds of
``--duration`` seconds each so that machine noise hits both alike.

Writes ``bench-out/guard_load.json``. Not a test: it reports, it never fails on a target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "bench-out"
N_FEATURES = 8
P99_TARGET_MS = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.where(y[:, None] == 1, 1.0, -1.0) * np.linspace(0.5, 1.5, N_FEATURES) + rng.standard_normal((n, N_FEATURES))
    return x, y


def build_registry(work: Path) -> tuple[str, str, Path]:
    """A registry with a signed, scanned, baselined, approved and deployed model; (db url, service token, model)."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlwarden.integrity.keys import generate_key_pair
    from mlwarden.integrity.signing import sign_model
    from mlwarden.registry.service import Registry
    from mlwarden.serve.calibration import capture
    from mlwarden.serve.servable import load_servable

    x, y = _data(4000, 1)
    model = work / "fraud.joblib"
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y), model)
    generate_key_pair(work / "release.key", work / "release.pub")
    sign_model(model, work / "release.key", work / "fraud.sig")
    (work / "gates.toml").write_text(
        '[approve]\nscan_modes = ["static"]\nsignature_required = true\ntrusted_keys = ["release.pub"]\n'
        "dataset_manifest_required = false\nbaseline_required = true\n"
        '[deploy]\nsignature_required = true\ntrusted_keys = ["release.pub"]\n',
        encoding="utf-8",
    )
    url = f"sqlite:///{work / 'registry.db'}"
    registry = Registry.open(url, home=work / "home", gates=work / "gates.toml")
    try:
        root = registry.authenticate(registry.bootstrap("root").token)
        for name, role in (("alice", "submitter"), ("bob", "approver"), ("svc", "deployer"), ("load", "viewer")):
            registry.create_user(root, name, [role])
        token = {n: registry.issue_token(root, n).token for n in ("alice", "bob", "svc", "load")}
        alice, bob, svc = (registry.authenticate(token[n]) for n in ("alice", "bob", "svc"))
        info = registry.register(alice, "fraud", model, signature=work / "fraud.sig")
        registry.scan(alice, info.ref, modes=("static",))
        baseline = capture(load_servable(model), _data(1000, 2)[0], model_digest=info.digest)
        (work / "baseline.json").write_text(baseline.to_json(), encoding="utf-8")
        registry.attach(alice, info.ref, "baseline", work / "baseline.json")
        registry.approve(bob, info.ref)
        registry.deploy(svc, info.ref, "production")
    finally:
        registry.close()
    (work / "service.token").write_text(token["svc"], encoding="utf-8")
    return url, token["load"], model


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    rss: list[tuple[float, int]] = field(default_factory=list)

    def sample_rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def start(name: str, argv: list[str], env: dict[str, str], port: int) -> Server:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return Server(name, proc, url)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{name} server did not start in 120 s")


async def load(server: Server, token: str | None, rate: float, duration: float, rows: np.ndarray) -> dict[str, Any]:
    """Open-loop load: one request every 1/rate s for ``duration`` s; latencies of every answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server.url, headers=headers, limits=limits, timeout=10) as client:

        async def one(i: int) -> None:
            nonlocal errors
            body = {"inputs": [rows[i % len(rows)].tolist()]}
            began = time.perf_counter()
            try:
                answer = await client.post("/v1/models/fraud/predict", json=body)
            except httpx.HTTPError:
                errors += 1
                return
            latencies.append(time.perf_counter() - began)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.status_code != 200:
                errors += 1

        tasks = []
        total = int(rate * duration)
        began = time.perf_counter()
        for i in range(total):
            due = began + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        took = time.perf_counter() - began
    lat = np.array(latencies) * 1000
    return {
        "requests": total,
        "answered": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "achieved_rate": round(len(latencies) / took, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 3) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
        "max_ms": round(float(lat.max()), 3) if lat.size else None,
    }


def _watch(server: Server, stop: threading.Event) -> None:
    began = time.monotonic()
    while not stop.wait(1.0):
        try:
            server.rss.append((time.monotonic() - began, server.sample_rss()))
        except OSError:
            return


def run(server: Server, token: str | None, rate: float, duration: float, rows: np.ndarray) -> dict[str, Any]:
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(server, stop), daemon=True)
    watcher.start()
    try:
        result = asyncio.run(load(server, token, rate, duration, rows))
    finally:
        stop.set()
        watcher.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (default 500)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run (default 60)")
    parser.add_argument("--rounds", type=int, default=1, help="bare/guard alternations (default 1)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first (default 5)")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlwarden-guard-bench-") as tmp:
        work = Path(tmp)
        url, client_token, model = build_registry(work)
        rows = _data(5000, 3)[0]
        env = {**os.environ, "MLWARDEN_TOKEN": (work / "service.token").read_text(), "PYTHONUNBUFFERED": "1"}
        policy = work / "policy.yaml"
        policy.write_text(f"limits:\n  rate_per_s: {args.rate * 4}\n  burst: {int(args.rate * 4)}\n", encoding="utf-8")
        bare_port, guard_port = _free_port(), _free_port()
        bare = start(
            "bare", [sys.executable, str(HERE / "_bare_server.py"), str(model), str(bare_port)], env, bare_port
        )
        guard = start(
            "guard",
            [
                str(Path(sys.executable).parent / "mlwarden"),
                "serve",
                "--model",
                "fraud@production",
                "--db",
                url,
                "--home",
                str(work / "home"),
                "--gates",
                str(work / "gates.toml"),
                "--policy",
                str(policy),
                "--port",
                str(guard_port),
                "--log-level",
                "error",
            ],
            env,
            guard_port,
        )
        results: dict[str, list[dict[str, Any]]] = {"bare": [], "guard": []}
        try:
            for server, token in ((bare, None), (guard, client_token)):
                run(server, token, args.rate, args.warmup, rows)
                server.rss.clear()
            for _ in range(args.rounds):
                for server, token in ((bare, None), (guard, client_token)):
                    result = run(server, token, args.rate, args.duration, rows)
                    rss = [r for _, r in server.rss]
                    result["rss_mib"] = {
                        "first": round(rss[0] / 2**20, 1) if rss else None,
                        "last": round(rss[-1] / 2**20, 1) if rss else None,
                        "max": round(max(rss) / 2**20, 1) if rss else None,
                    }
                    server.rss.clear()
                    results[server.name].append(result)
                    print(f"{server.name:>5}: {json.dumps(result)}", flush=True)
        finally:
            for server in (bare, guard):
                server.proc.send_signal(signal.SIGINT)
                try:
                    server.proc.wait(20)
                except subprocess.TimeoutExpired:
                    server.proc.kill()
    summary = _summary(results)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "args": vars(args),
        "results": results,
        "summary": summary,
    }
    (OUT / "guard_load.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


def _summary(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def worst(name: str, key: str) -> float:
        return max(r[key] for r in results[name] if r[key] is not None)

    added = worst("guard", "p99_ms") - worst("bare", "p99_ms")
    return {
        "errors": {n: sum(r["errors"] for r in results[n]) for n in results},
        "p99_ms": {n: worst(n, "p99_ms") for n in results},
        "p50_ms": {n: worst(n, "p50_ms") for n in results},
        "added_p99_ms": round(added, 3),
        "p99_target_ms": P99_TARGET_MS,
        "p99_ratio_guard_vs_bare": round(worst("guard", "p99_ms") / worst("bare", "p99_ms"), 2),
        "guard_rss_growth_mib": round(
            max(r["rss_mib"]["last"] - r["rss_mib"]["first"] for r in results["guard"] if r["rss_mib"]["first"]), 1
        ),
    }


if __name__ == "__main__":
    raise SystemExit(main())
