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
shows up as latency, not as a lower rate), one row per request, on asyncio with a bounded pool of keep-alive
connections and a minimal HTTP/1.1 writer (see ``_Connection``). Server
memory (RSS from /proc) is sampled every second; ``cpu_us_per_request`` is the CPU time (user + system, from
/proc) of the server process per answered request, and of the processes below it (the guard's monitor process).
Runs alternate bare/guard for ``--rounds`` rounds of
``--duration`` seconds each so that machine noise hits both alike.

With ``--wrk`` (or ``--wrk-only``) the same run also measures saturation throughput with wrk (``_wrk.py``):
bare, the guard with one worker (state in memory, then in Redis) and ``mlwarden serve --workers 2 --redis``,
one after another; targets: guard >= 0.8x bare, 2 workers above 1 (the machine's cores permitting).

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _wrk

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "bench-out"
N_FEATURES = 8
#: Clients sharing the load (each with its own token, rate bucket and extraction state), as in front of a real
#: service; one client at 500 requests/s would (rightly) be throttled by the per-client limits.
CLIENTS = 100
#: Keep-alive connections of the load generator (requests wait for a free one, and that wait counts).
CONNECTIONS = 32
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


def build_registry(work: Path) -> tuple[str, list[str], Path]:
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
        for name, role in (("alice", "submitter"), ("bob", "approver"), ("svc", "deployer")):
            registry.create_user(root, name, [role])
        token = {n: registry.issue_token(root, n).token for n in ("alice", "bob", "svc")}
        clients = []
        for i in range(CLIENTS):
            registry.create_user(root, f"client{i}", ["viewer"])
            clients.append(registry.issue_token(root, f"client{i}", scope="model:fraud").token)
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
    return url, clients, model


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


def cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of ``pid`` itself and of every live process below it (the guard's monitor
    process, the workers of ``--workers N``); 0 for a process that is gone."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    below, todo = 0.0, list(children.get(pid, ()))
    while todo:
        current = todo.pop()
        below += times.get(current, 0.0)
        todo.extend(children.get(current, ()))
    return times.get(pid, 0.0), below


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


class _Connection:
    """One keep-alive HTTP/1.1 connection written by hand: httpx costs about a millisecond of CPU per request,
    which on a two-core machine would starve the servers being measured; this costs tens of microseconds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, host: str, path: str, body: bytes, token: str | None) -> tuple[int, bytes]:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return int(status_line.split()[1]), await self.reader.readexactly(length)


async def load(server: Server, tokens: list[str], rate: float, duration: float, rows: np.ndarray) -> dict[str, Any]:
    """Open-loop load: one request every 1/rate s for ``duration`` s, round-robin over the clients' tokens."""
    latencies: list[float] = []
    timeline: list[tuple[float, float, int, bool]] = []  # (due s, latency ms, status, flagged)
    statuses: dict[int, int] = {}
    errors = 0
    host = server.url.removeprefix("http://")
    address, port = host.split(":")
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(_Connection(*await asyncio.open_connection(address, int(port))))
    bodies = [json.dumps({"inputs": [row.tolist()]}).encode() for row in rows]

    async def one(i: int, due: float) -> None:
        nonlocal errors
        connection = await pool.get()  # waiting for a free connection counts: latency runs from the schedule
        try:
            token = tokens[i % len(tokens)] if tokens else None
            status, reply = await connection.post(host, "/v1/models/fraud/predict", bodies[i % len(bodies)], token)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            errors += 1
            connection = _Connection(*await asyncio.open_connection(address, int(port)))
            pool.put_nowait(connection)
            return
        latencies.append(time.perf_counter() - due)
        timeline.append((due - began, latencies[-1] * 1000, status, b'"flagged"' in reply))
        pool.put_nowait(connection)
        statuses[status] = statuses.get(status, 0) + 1
        if status != 200:
            errors += 1

    tasks = []
    total = int(rate * duration)
    began = time.perf_counter()
    for i in range(total):
        due = began + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, max(due, time.perf_counter()))))  # a late generator is not the server
    await asyncio.gather(*tasks)
    took = time.perf_counter() - began
    while not pool.empty():
        pool.get_nowait().writer.close()
    lat = np.array(latencies) * 1000
    return {
        "timeline": timeline,
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


def run(server: Server, tokens: list[str], rate: float, duration: float, rows: np.ndarray) -> dict[str, Any]:
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(server, stop), daemon=True)
    watcher.start()
    own, below = cpu_split(server.proc.pid)
    try:
        result = asyncio.run(load(server, tokens, rate, duration, rows))
    finally:
        stop.set()
        watcher.join()
    own_after, below_after = cpu_split(server.proc.pid)
    answered = max(1, result["answered"])
    result["cpu_us_per_request"] = {  # the server process; the processes below it (the guard's monitor process)
        "server": round((own_after - own) / answered * 1e6, 1),
        "children": round((below_after - below) / answered * 1e6, 1),
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (default 500)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run (default 60)")
    parser.add_argument("--rounds", type=int, default=1, help="bare/guard alternations (default 1)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first (default 5)")
    parser.add_argument("--wrk", action="store_true", help="also measure saturation with wrk: bare, guard, 2 workers")
    parser.add_argument(
        "--guard-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `mlwarden serve` (repeat; e.g. --guard-arg=--monitor --guard-arg=thread)",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="also write every request's (due s, latency ms, status, flagged) to bench-out/guard_load_timeline_*.json",
    )
    parser.add_argument("--wrk-only", action="store_true", help="only the wrk saturation runs (no open-loop runs)")
    parser.add_argument("--wrk-duration", type=float, default=15.0, help="seconds per wrk run (default 15)")
    parser.add_argument("--wrk-connections", type=int, default=32, help="wrk connections (default 32)")
    args = parser.parse_args()
    args.wrk = args.wrk or args.wrk_only
    if args.wrk and _wrk.available() is None:
        raise SystemExit("--wrk needs wrk (make system-deps installs Debian's)")
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlwarden-guard-bench-") as tmp:
        work = Path(tmp)
        url, client_tokens, model = build_registry(work)
        # Every request carries a row no client sent before: a client replaying its own queries is what PRADA
        # exists to notice, and would be (rightly) blocked.
        per_server = int(args.rate * (args.warmup + args.duration * args.rounds)) + 1
        pool = _data(per_server, 3)[0]
        cursor = {"bare": 0, "guard": 0}

        def take(name: str, seconds: float) -> np.ndarray:
            n = int(args.rate * seconds)
            start = cursor[name]
            cursor[name] += n
            return pool[start : start + n]

        env = {**os.environ, "MLWARDEN_TOKEN": (work / "service.token").read_text(), "PYTHONUNBUFFERED": "1"}
        policy = work / "policy.yaml"
        policy.write_text("", encoding="utf-8")  # the default policy: every check on
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
                *args.guard_arg,
            ],
            env,
            guard_port,
        )
        results: dict[str, list[dict[str, Any]]] = {"bare": [], "guard": []}
        saturation: dict[str, Any] = {}
        try:
            plan = ((bare, []), (guard, client_tokens)) if not args.wrk_only else ()
            for server, tokens in plan:
                run(server, tokens, args.rate, args.warmup, take(server.name, args.warmup)).pop("timeline")
                server.rss.clear()
            for _ in range(args.rounds):
                for server, tokens in plan:
                    result = run(server, tokens, args.rate, args.duration, take(server.name, args.duration))
                    timeline = result.pop("timeline")
                    if args.timeline:
                        name = f"guard_load_timeline_{server.name}_{len(results[server.name])}.json"
                        (OUT / name).write_text(json.dumps(timeline), encoding="utf-8")
                    result["flagged"] = sum(1 for *_, flagged in timeline if flagged)
                    rss = [r for _, r in server.rss]
                    result["rss_mib"] = {
                        "first": round(rss[0] / 2**20, 1) if rss else None,
                        "last": round(rss[-1] / 2**20, 1) if rss else None,
                        "max": round(max(rss) / 2**20, 1) if rss else None,
                    }
                    server.rss.clear()
                    results[server.name].append(result)
                    print(f"{server.name:>5}: {json.dumps(result)}", flush=True)
            if args.wrk:
                guard_argv = [str(Path(sys.executable).parent / "mlwarden"), "serve", "--model", "fraud@production"]
                guard_argv += ["--db", url, "--home", str(work / "home"), "--gates", str(work / "gates.toml")]
                guard_argv += ["--policy", str(policy), "--log-level", "error"]
                saturation = saturate(args, work, client_tokens, bare, guard, guard_argv, env)
        finally:
            for server in (bare, guard):
                server.proc.send_signal(signal.SIGINT)
                try:
                    server.proc.wait(20)
                except subprocess.TimeoutExpired:
                    server.proc.kill()
    summary = _summary(results) if results["bare"] else {}
    if saturation:
        summary["saturation"] = saturation["summary"]
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "args": vars(args),
        "results": results,
        "saturation": saturation,
        "summary": summary,
    }
    (OUT / "guard_load.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


def saturate(
    args: argparse.Namespace,
    work: Path,
    tokens: list[str],
    bare: Server,
    guard: Server,
    guard_argv: list[str],
    env: dict[str, str],
) -> dict[str, Any]:
    """wrk flat out against bare, the guard (1 worker, state in memory), the guard with its state in Redis, and
    the guard with ``--workers 2`` (state in Redis); one after another, each after a short unmeasured warm-up."""
    lua = _wrk.script(work / "load.lua", tokens, N_FEATURES)
    redis_port = _free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    runs: dict[str, dict[str, Any]] = {}
    try:
        for name, server, extra in (
            ("bare", bare, None),
            ("guard_1_worker", guard, None),
            ("guard_1_worker_redis", None, ["--redis", redis_url]),
            ("guard_2_workers_redis", None, ["--workers", "2", "--redis", redis_url]),
        ):
            started = None
            if server is None and extra is not None:
                port = _free_port()
                started = server = start(name, [*guard_argv, "--port", str(port), *extra], env, port)
            if server is None:
                raise RuntimeError(f"{name}: no server")
            try:
                _wrk.run(server.url, lua, duration=3, connections=args.wrk_connections)  # warm-up, not measured
                own, below = cpu_split(server.proc.pid)
                runs[name] = _wrk.run(server.url, lua, duration=args.wrk_duration, connections=args.wrk_connections)
                own_after, below_after = cpu_split(server.proc.pid)
                served = max(1, runs[name]["requests"])
                runs[name]["cpu_us_per_request"] = {
                    "server": round((own_after - own) / served * 1e6, 1),
                    "children": round((below_after - below) / served * 1e6, 1),
                }
                print(f"wrk {name:>22}: {json.dumps(runs[name])}", flush=True)
            finally:
                if started is not None:
                    started.proc.send_signal(signal.SIGINT)
                    try:
                        started.proc.wait(30)
                    except subprocess.TimeoutExpired:
                        started.proc.kill()
    finally:
        redis.terminate()
        redis.wait(10)
    rps = {n: r["requests_per_s"] for n, r in runs.items()}
    return {
        "runs": runs,
        "summary": {
            "requests_per_s": rps,
            "guard_vs_bare": round(rps["guard_1_worker"] / rps["bare"], 2),
            "redis_vs_memory_state": round(rps["guard_1_worker_redis"] / rps["guard_1_worker"], 2),
            "two_workers_vs_one": round(rps["guard_2_workers_redis"] / rps["guard_1_worker_redis"], 2),
            "throughput_target_guard_vs_bare": 0.8,
            "errors": {n: r["non_2xx"] + r["socket_errors"] for n, r in runs.items()},
            "p99_ms_at_saturation": {n: r["p99_ms"] for n, r in runs.items()},
            "cpu_us_per_request": {n: r["cpu_us_per_request"] for n, r in runs.items()},
        },
    }


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
