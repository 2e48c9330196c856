"""LLM proxy overhead: time to first byte of 100 concurrent streamed completions, through the proxy vs direct.

Target (issue 15): the proxy adds at most 5 ms to the time to first byte with 100 concurrent streams.

Three processes on 127.0.0.1: the small OpenAI-compatible upstream of the tests (``tests/serve/llm_upstream.py``,
uvicorn, one worker; each stream sends a role chunk, then ``--pieces`` pieces ``--delay`` s apart), ``mlwarden
serve --upstream`` in front of it with the default policy (registry token auth on a temporary SQLite registry,
rate limit, heuristic prompt screen, PII masking with the 128-character tail, leak check, budgets, audit), and
this load generator.

Fair by construction: **one** client measures both paths (a minimal HTTP/1.1 client on asyncio streams and
uvloop, see :class:`Client`: httpx's per-chunk cost made the generator the bottleneck of both paths); both paths
are **warmed** first with the measured concurrency (every client connection open, and the proxy's connections to
the upstream); the measured phases **alternate** between direct and proxied (bursts: ``--rounds`` rounds, the order
flipped each round; steady state: two halves of ``--seconds`` each), so a change in the machine's load hits both.
Two loads: a *burst* (``--streams`` streams started in the same instant on warm connections) and a *steady state*
(``--streams`` streams always in flight, staggered starts). The time to first byte is the time from sending the
request to the first body bytes of the SSE stream; p50, p95, p99 and max are reported for each path and the added
p50/p99 from the same run. The CPU each process used during each phase is reported as cores busy (CPU seconds per
second), so a saturated proxy, upstream or generator shows. The time to the first *content* through the proxy is
reported too: it also waits for the masking tail to fill (128 characters), by design.

Writes ``bench-out/llm_proxy.json``. Not a test: it reports, it never fails on a target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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


class Client:
    """A minimal HTTP/1.1 client on asyncio streams, with a pool of keep-alive connections per URL.

    The load generator runs on the same two cores as the proxy and the upstream: httpx costs about 0.1 ms of CPU
    per SSE chunk received (its h11 parser and anyio layers), which at 100 streams x 20 chunks/s is most of a core
    and made the generator the bottleneck of *both* paths. This client parses the status line and the chunked
    framing only, and looks for the first content bytes in what it reads; the same client measures both paths.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self.body = json.dumps(
            {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Tell me a long story."}]}
        ).encode()

    async def _connection(self, url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        idle = self.idle.setdefault(url, [])
        if idle:
            return (*idle.pop(), True)
        parts = httpx.URL(url)
        return (*await asyncio.open_connection(parts.host, parts.port), False)

    async def _send(self, url: str, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes, float]:
        """Send ``request``; the connection, the response head and the time it was sent (perf_counter)."""
        while True:
            reader, writer, reused = await self._connection(url)
            t0 = time.perf_counter()
            try:
                writer.write(request)
                return reader, writer, (await reader.readuntil(b"\r\n\r\n")).lower(), t0
            except (OSError, asyncio.IncompleteReadError):
                writer.close()
                if not reused:
                    raise
                # A keep-alive connection the server closed while it was idle (uvicorn: after 5 s): a new one.

    async def stream(self, url: str) -> tuple[float, float]:
        """One streamed completion: ``(time to first body byte, time to first content)`` in seconds."""
        path = httpx.URL(url).raw_path.decode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
        ).encode()
        first = content = float("nan")
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer, headers, t0 = await self._send(url, head + self.body)
            status = int(headers.split(b" ", 2)[1])
            if status != 200 or b"transfer-encoding: chunked" not in headers:
                ERRORS[f"{url} HTTP {status}"] = ERRORS.get(f"{url} HTTP {status}", 0) + 1
                writer.close()
                return first, content
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if first != first:
                    first = time.perf_counter() - t0
                if content != content and b'"content":"P' in data.replace(b'": "', b'":"'):
                    content = time.perf_counter() - t0
                if size == 0:
                    break
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:  # counted, not fatal
            key = f"{url} {type(exc).__name__}"
            ERRORS[key] = ERRORS.get(key, 0) + 1
            if writer is not None:
                writer.close()
            return float("nan"), float("nan")
        if b"connection: close" in headers:
            writer.close()
        else:
            self.idle[url].append((reader, writer))
        return first, content

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self.idle.values():
            for _, writer in idle:
                writer.close()


async def _one(client: Client, url: str, start: asyncio.Event) -> tuple[float, float]:
    await start.wait()
    return await client.stream(url)


async def _burst(client: Client, url: str, streams: int) -> list[tuple[float, float]]:
    """``streams`` streams started at the same instant (on the client's warm connections)."""
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one(client, url, start)) for _ in range(streams)]
    await asyncio.sleep(0.2)
    start.set()
    return list(await asyncio.gather(*tasks))


async def _steady(client: Client, url: str, streams: int, seconds: float) -> list[tuple[float, float]]:
    """Steady state: ``streams`` streams always in flight (each worker opens the next when one ends)."""
    results: list[tuple[float, float]] = []
    go = asyncio.Event()
    go.set()

    async def worker(i: int) -> None:
        await asyncio.sleep(i * 0.01)  # staggered start: arrivals spread, not one synchronised burst
        end = time.perf_counter() + seconds
        warm = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            first, content = await _one(client, url, go)
            if time.perf_counter() > warm:
                results.append((first, content))

    await asyncio.gather(*(worker(i) for i in range(streams)))
    return results


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of a process so far: ``pid`` from /proc, None for this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Phase:
    """Wall time and the CPU each process used during one measured phase (cores busy = CPU s / wall s)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.cpu: dict[str, float] = {}
        self.wall = 0.0

    def __enter__(self) -> Phase:
        self._t = time.perf_counter()
        self._c = {k: _cpu_seconds(p) for k, p in self.pids.items()}
        return self

    def __exit__(self, *_: object) -> None:
        self.wall += time.perf_counter() - self._t
        for k, p in self.pids.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + _cpu_seconds(p) - self._c[k]


async def _measure(
    args: argparse.Namespace, direct: str, proxy: str, token: str, pids: dict[str, int | None]
) -> tuple[dict[str, list[float]], dict[str, Phase]]:
    """Both paths through the same client, warmed the same way, at the same concurrency, alternating."""
    seen: dict[str, list[float]] = {}
    phases: dict[str, Phase] = {}
    client = Client(token)  # one client for both paths: the generator costs the same whichever path it measures
    try:
        for url in (direct, proxy):  # warm: every connection of the measured concurrency opened on both paths
            await _burst(client, url, args.streams)
        paths = (("direct", direct), ("proxy", proxy))
        for i in range(args.rounds):
            for name, url in paths if i % 2 == 0 else paths[::-1]:
                with phases.setdefault(f"burst_{name}", Phase(pids)):
                    results = await _burst(client, url, args.streams)
                seen.setdefault(f"burst_{name}", []).extend(r[0] for r in results)
                seen.setdefault(f"burst_{name}_content", []).extend(r[1] for r in results)
        for i in range(2):  # two alternating halves each, so a change in the machine's load hits both
            for name, url in paths if i % 2 == 0 else paths[::-1]:
                with phases.setdefault(f"steady_{name}", Phase(pids)):
                    results = await _steady(client, url, args.streams, args.seconds / 2)
                seen.setdefault(f"steady_{name}", []).extend(r[0] for r in results)
                seen.setdefault(f"steady_{name}_content", []).extend(r[1] for r in results)
    finally:
        client.close()
    return seen, phases


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    a = a[np.isfinite(a)]
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


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
            pids: dict[str, int | None] = {"proxy": procs[1].pid, "upstream": procs[0].pid, "client": None}
            try:  # the client on uvloop (a server dependency of mlwarden) when it is there: less CPU per chunk
                import uvloop

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            except ImportError:
                pass
            seen, phases = asyncio.run(_measure(args, direct, proxy, token, pids))
            own = _proxy_own_times(f"http://127.0.0.1:{proxy_port}")
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)  # a clean stop (the profile, if any, is written)
                p.wait(30)
    result: dict[str, Any] = {k: _stats(v) | {"n": len(v)} for k, v in seen.items()}
    for mode in ("burst", "steady"):
        p, d = result[f"{mode}_proxy"], result[f"{mode}_direct"]
        result[f"{mode}_added_first_byte_ms"] = {k: p[k] - d[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
    result["cores_busy"] = {k: {n: c / ph.wall for n, c in ph.cpu.items()} for k, ph in phases.items()}
    result["errors"] = ERRORS
    result["proxy_own"] = own
    result["load_average"] = os.getloadavg()
    print("the proxy's own view: " + ", ".join(f"{k} {v:.3f}" for k, v in own.items()))
    print(f"non-200 answers: {ERRORS or 'none'}")
    result["params"] = vars(args) | {"cpus": os.cpu_count()}
    print(f"{'':24} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for k, v in seen.items():
        r = result[k]
        print(f"{k:24} {len(v):6d} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}")
    print("cores busy during each phase (CPU seconds per second): " + "; ".join(
        f"{k}: " + ", ".join(f"{n} {v:.2f}" for n, v in cores.items()) for k, cores in result["cores_busy"].items()
    ))  # fmt: skip
    for mode in ("burst", "steady"):
        added = result[f"{mode}_added_first_byte_ms"]
        print(
            f"{mode}: added time to first byte p50 {added['p50_ms']:.2f} ms, p99 {added['p99_ms']:.2f} ms (target <= 5)"
        )
    load = ", ".join(f"{v:.2f}" for v in result["load_average"])
    print(f"load average at the end (1, 5, 15 min): {load}; {os.cpu_count()} CPU(s)")
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    (out / "llm_proxy.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
