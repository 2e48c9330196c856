"""LLM proxy overhead: time to first byte of 100 concurrent streamed completions, through the proxy vs direct.

Target (issue 15): the proxy adds at most 5 ms to the time to first byte with 100 concurrent streams.

Three processes on 127.0.0.1: the small OpenAI-compatible upstream of the tests (``tests/serve/llm_upstream.py``,
uvicorn, one worker; each stream sends a role chunk, then ``--pieces`` pieces ``--delay`` s apart), ``mlwarden
serve --upstream`` in front of it with the default policy (registry token auth on a temporary SQLite registry,
rate limit, heuristic prompt screen, PII masking with the 128-character tail, leak check, budgets, audit), and
this load generator (httpx, one connection per stream). Each round opens ``--streams`` streams at once against
the upstream directly, then through the proxy (alternating, ``--rounds`` rounds); the time to first byte is the
time until the first body bytes of the SSE stream arrive. The time to the first *content* through the proxy is
reported too: it also waits for the masking tail to fill (128 characters), by design.

Writes ``bench-out/llm_proxy.json``. Not a test: it reports, it never fails on a target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = """
import sys, uvicorn
from tests.serve.llm_upstream import Script, upstream_app
script = Script(chunks=["Piece of an answer, forty characters.. "] * int(sys.argv[2]), delay_s=float(sys.argv[3]))
uvicorn.run(upstream_app(script), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

# One client opens all the streams from one address with one token: lift the per-address connection cap (64 by
# default) and the per-client rate limit, which would otherwise refuse the load itself. Every check stays on.
POLICY = """
limits: {rate_per_s: 100000, burst: 100000}
connections: {max_connections_per_ip: 0}
"""

ERRORS: dict[str, int] = {}
METRICS_TOKEN = "benchmark-metrics-token-0123456789"  # noqa: S105 - a throw-away token for this run


def _proxy_own_times(base: str) -> dict[str, float]:
    """Mean time in the proxy before the upstream call, and upstream time to headers, from its /metrics."""
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("mlwarden_proxy_overhead_seconds", "mlwarden_proxy_upstream_seconds"):
            for part in ("_sum", "_count"):
                if line.startswith(name + part):
                    values[name + part] = values.get(name + part, 0.0) + float(line.rsplit(" ", 1)[1])
    out = {}
    for name in ("mlwarden_proxy_overhead_seconds", "mlwarden_proxy_upstream_seconds"):
        if values.get(name + "_count"):
            out[name.removeprefix("mlwarden_proxy_") + "_mean_ms"] = (
                1000 * values[name + "_sum"] / values[name + "_count"]
            )
    return out


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({proc.returncode})")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


def _registry(tmp: Path) -> tuple[str, str]:
    from mlwarden.registry.service import Registry

    url = f"sqlite:///{tmp / 'registry.db'}"
    registry = Registry.open(url, home=tmp / "home")
    root = registry.bootstrap("root").token
    admin = registry.authenticate(root)
    registry.create_user(admin, "bench", ["viewer"])
    token = registry.issue_token(admin, "bench").token
    registry.close()
    return url, token


async def _one(client: httpx.AsyncClient, url: str, token: str, start: asyncio.Event) -> tuple[float, float]:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Tell me a long story."}]}
    await start.wait()
    t0 = time.perf_counter()
    first = content = float("nan")
    try:
        async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
            if r.status_code != 200:
                ERRORS[f"{url} HTTP {r.status_code}"] = ERRORS.get(f"{url} HTTP {r.status_code}", 0) + 1
                return float("nan"), float("nan")
            async for piece in r.aiter_bytes():
                if first != first:
                    first = time.perf_counter() - t0
                if content != content and (b'"content":"P' in piece or b'"content": "P' in piece):
                    content = time.perf_counter() - t0
    except httpx.HTTPError as exc:  # counted and reported, not fatal: one reset must not lose the run
        key = f"{url} {type(exc).__name__}"
        ERRORS[key] = ERRORS.get(key, 0) + 1
        return float("nan"), float("nan")
    return first, content


async def _round(url: str, token: str, streams: int) -> tuple[list[float], list[float]]:
    """Burst: ``streams`` streams opened at the same instant."""
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = asyncio.Event()
        tasks = [asyncio.create_task(_one(client, url, token, start)) for _ in range(streams)]
        await asyncio.sleep(0.2)
        start.set()
        results = await asyncio.gather(*tasks)
    return [r[0] for r in results], [r[1] for r in results]


async def _steady(url: str, token: str, streams: int, seconds: float) -> tuple[list[float], list[float]]:
    """Steady state: ``streams`` streams always in flight (each worker opens the next when one ends)."""
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    results: list[tuple[float, float]] = []
    go = asyncio.Event()
    go.set()
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker(i: int) -> None:
            await asyncio.sleep(i * 0.01)  # staggered start: arrivals spread, not one synchronised burst
            end = time.perf_counter() + seconds
            warm = time.perf_counter() + 1.0
            while time.perf_counter() < end:
                first, content = await _one(client, url, token, go)
                if time.perf_counter() > warm:
                    results.append((first, content))

        await asyncio.gather(*(worker(i) for i in range(streams)))
    return [r[0] for r in results], [r[1] for r in results]


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    a = a[np.isfinite(a)]
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max())}


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pieces", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each steady-state run")
    parser.add_argument("--profile", metavar="FILE", help="run the proxy under cProfile, writing FILE")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLWARDEN_METRICS_TOKEN": METRICS_TOKEN}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        db, token = _registry(tmp)
        up_port, proxy_port = _port(), _port()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", UPSTREAM, str(up_port), str(args.pieces), str(args.delay)], cwd=ROOT, env=env
            )
        )
        upstream = f"http://127.0.0.1:{up_port}/v1"
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        cli = [
            sys.executable,
            *profile,
            "-m",
            "mlwarden.cli.main",
            "serve",
            "--upstream",
            upstream,
            "--api",
            "openai",
            "--db",
            db,
            "--home",
            str(tmp / "home"),
            "--policy",
            str(policy),
            "--port",
            str(proxy_port),
        ]
        procs.append(subprocess.Popen(cli, cwd=ROOT, env=env))
        try:
            _wait(f"http://127.0.0.1:{proxy_port}/healthz", procs[1])
            _wait(f"http://127.0.0.1:{up_port}/", procs[0])
            proxy = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
            direct = f"{upstream}/chat/completions"
            asyncio.run(_round(proxy, token, 5))  # warm up both
            asyncio.run(_round(direct, token, 5))
            seen: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name, url in (("direct", direct), ("proxy", proxy)):
                    firsts, contents = asyncio.run(_round(url, token, args.streams))
                    seen.setdefault(f"burst_{name}", []).extend(firsts)
                    seen.setdefault(f"burst_{name}_content", []).extend(contents)
            for name, url in (("direct", direct), ("proxy", proxy)):
                firsts, contents = asyncio.run(_steady(url, token, args.streams, args.seconds))
                seen[f"steady_{name}"] = firsts
                seen[f"steady_{name}_content"] = contents
            own = _proxy_own_times(f"http://127.0.0.1:{proxy_port}")
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)  # a clean stop (the profile, if any, is written)
                p.wait(30)
    result: dict[str, Any] = {k: _stats(v) | {"n": len(v)} for k, v in seen.items()}
    for mode in ("burst", "steady"):
        p, d = result[f"{mode}_proxy"], result[f"{mode}_direct"]
        result[f"{mode}_added_first_byte_ms"] = {k: p[k] - d[k] for k in ("p50_ms", "p95_ms")}
    result["errors"] = ERRORS
    result["proxy_own"] = own
    print("the proxy's own view: " + ", ".join(f"{k} {v:.3f}" for k, v in own.items()))
    print(f"non-200 answers: {ERRORS or 'none'}")
    result["params"] = vars(args) | {"cpus": os.cpu_count()}
    print(f"{'':24} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for k, v in seen.items():
        r = result[k]
        print(f"{k:24} {len(v):6d} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['max_ms']:8.2f}")
    for mode in ("burst", "steady"):
        added = result[f"{mode}_added_first_byte_ms"]
        print(
            f"{mode}: added time to first byte p50 {added['p50_ms']:.2f} ms, p95 {added['p95_ms']:.2f} ms (target <= 5)"
        )
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    (out / "llm_proxy.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
