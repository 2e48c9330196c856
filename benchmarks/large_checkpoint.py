"""Large-file benchmark: static scan of a ~1 GiB PyTorch zip checkpoint, mlwarden vs the peers.

The checkpoint (64 float32 tensors of 2048x2048 = 4 Mi floats each, seeded, so byte-identical on every
run with the same torch) is generated once with ``torch.save`` and cached in ``bench-out/``. Each tool
then scans it in a fresh subprocess, five rounds, tools interleaved within a round; the medians of wall
time and peak RSS are reported, with ratios mlwarden/peer. A start-up row per tool (the same runner
with no file) shows how much of each figure is interpreter + import cost.

The target we track is mlwarden <= 1.1x picklescan's wall time and <= 60 MiB peak RSS; this script
prints whether it was met and never fails on it. ``--profile`` additionally runs mlwarden's scan of the
file under cProfile and tracemalloc (in a separate process, not timed) to show where time and memory go.

Run: ``.venv/bin/python benchmarks/large_checkpoint.py [--rounds N] [--profile]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers import (
    MLW_PY,
    OUT,
    PEERS,
    TOOLS,
    Run,
    machine,
    peer_versions,
    ratio,
    require_peers,
    run_mlwarden_cli,
    run_tool,
    save,
    table,
)

N_TENSORS = 64
SHAPE = (2048, 2048)  # 4 Mi float32 = 16 MiB per tensor, 1 GiB in all
CKPT = OUT / "large" / f"state_dict_{N_TENSORS}x{SHAPE[0]}x{SHAPE[1]}_f32.pt"
TARGET_WALL_RATIO = 1.1
TARGET_RSS_MB = 60.0
CLI = "mlwarden scan (CLI)"

_GENERATE = textwrap.dedent("""
    import os, sys, torch
    n, rows, cols, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    g = torch.Generator().manual_seed(20240601)
    sd = {f"layers.{i}.weight": torch.randn(rows, cols, generator=g, dtype=torch.float32) for i in range(n)}
    torch.save(sd, out + ".tmp")
    os.replace(out + ".tmp", out)
""")

_PROFILE = textwrap.dedent("""
    import time
    t0 = time.perf_counter()
    import pydantic
    t1 = time.perf_counter()
    from mlwarden.core.policy import Policy
    t2 = time.perf_counter()
    from mlwarden.scan.engine import scan_file
    t3 = time.perf_counter()
    import cProfile, pstats, sys, tracemalloc
    from pathlib import Path
    path, policy = Path(sys.argv[1]), Policy()
    t4 = time.perf_counter()
    scan_file(path, policy)  # first scan also imports the handlers it needs
    t5 = time.perf_counter()
    scan_file(path, policy)
    t6 = time.perf_counter()
    print(f"import pydantic {t1 - t0:.3f} s; mlwarden.core.policy (pydantic models) {t2 - t1:.3f} s; "
          f"rest of the scan path {t3 - t2:.3f} s; first scan_file {t5 - t4:.3f} s; second {t6 - t5:.3f} s")
    prof = cProfile.Profile()
    t0 = time.perf_counter(); prof.enable(); scan_file(path, policy); prof.disable()
    print(f"scan_file under cProfile: {time.perf_counter() - t0:.2f} s")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(18)
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    tracemalloc.start(12)
    scan_file(path, policy)
    current, peak = tracemalloc.get_traced_memory()
    print(f"tracemalloc during one scan: peak {peak / 2**20:.1f} MiB (Python allocations only)")
    for stat in tracemalloc.take_snapshot().statistics("traceback")[:5]:
        print(f"  {stat.size / 2**20:.2f} MiB in {stat.count} blocks")
        for line in stat.traceback.format()[-6:]:
            print("    " + line)
""")


def ensure_checkpoint() -> Path:
    """Generate the cached checkpoint with ``torch.save`` unless it already exists."""
    if not CKPT.exists():
        CKPT.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating {CKPT} (once; cached) ...", flush=True)
        subprocess.run(
            [str(MLW_PY), "-c", _GENERATE, str(N_TENSORS), str(SHAPE[0]), str(SHAPE[1]), str(CKPT)], check=True
        )
    return CKPT


def warm_cache(path: Path) -> None:
    """Read the file once so every tool starts with it in the page cache (the machine has the RAM)."""
    with path.open("rb") as fh:
        while fh.read(1 << 24):
            pass


def main() -> int:
    """Generate, scan ``--rounds`` times interleaved, print medians and ratios, save the raw numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also profile mlwarden (cProfile, tracemalloc)")
    args = parser.parse_args()
    require_peers()
    versions = peer_versions()
    ckpt = ensure_checkpoint()
    size = ckpt.stat().st_size
    print(f"\n=== large checkpoint: {ckpt.name}, {size / 2**30:.2f} GiB — {machine()} — {versions} ===")
    warm_cache(ckpt)
    starts: dict[str, list[Run]] = {tool: [] for tool in TOOLS}
    runs: dict[str, list[Run]] = {tool: [] for tool in (*TOOLS, CLI)}
    for _ in range(args.rounds):
        for tool in TOOLS:
            starts[tool].append(run_tool(tool, []))
            runs[tool].append(run_tool(tool, [ckpt]))
        runs[CLI].append(run_mlwarden_cli([ckpt], jobs=1))
    startup = {
        tool: {"wall": statistics.median(r.wall for r in rs), "rss": statistics.median(r.rss_mb for r in rs)}
        for tool, rs in starts.items()
    }
    med = {
        tool: {
            "wall": statistics.median(r.wall for r in rs),
            "rss": statistics.median(r.rss_mb for r in rs),
            "scan": statistics.median(r.scan_seconds for r in rs),
        }
        for tool, rs in runs.items()
    }
    m = med["mlwarden"]
    rows = []
    for tool in (*TOOLS, CLI):
        last = runs[tool][-1].rows[0] if runs[tool][-1].rows else {"flagged": None, "error": "no result"}
        verdict = "error" if last["error"] else ("flagged" if last["flagged"] else "clean")
        if last.get("skipped"):
            verdict = "skipped"
        peer = tool in PEERS
        base = startup.get(tool)
        rows.append(
            [
                tool,
                verdict,
                f"{med[tool]['wall']:.3f}",
                f"{med[tool]['scan']:.3f}",
                f"{base['wall']:.3f}" if base else "",
                f"{med[tool]['rss']:.0f}",
                f"{base['rss']:.0f}" if base else "",
                ratio(m["wall"], med[tool]["wall"]) if peer else "",
                ratio(m["rss"], med[tool]["rss"]) if peer else "",
            ]
        )
    print(
        table(
            [
                "tool",
                "verdict",
                "wall s (median)",
                "scan s",
                "start-up s",
                "peak RSS MiB",
                "start-up RSS MiB",
                "mlw/peer wall",
                "mlw/peer RSS",
            ],
            rows,
        )
    )
    for tool in (*TOOLS, CLI):
        r = runs[tool][-1]
        if r.rows and r.rows[0]["error"]:
            print(f"  {tool} error: {r.rows[0]['error']}")
        if r.returncode:
            print(f"  ! {tool} exited {r.returncode}: {r.stderr_tail[-300:]}")
    ps = med["picklescan"]
    wall_ok = m["wall"] <= TARGET_WALL_RATIO * ps["wall"]
    rss_ok = m["rss"] <= TARGET_RSS_MB
    print(
        f"target mlwarden wall <= {TARGET_WALL_RATIO}x picklescan: {ratio(m['wall'], ps['wall'])} "
        f"-> {'met' if wall_ok else 'NOT met'}; peak RSS <= {TARGET_RSS_MB:.0f} MiB: {m['rss']:.0f} MiB "
        f"-> {'met' if rss_ok else 'NOT met'}"
    )
    print(
        f"scan only (start-up and import excluded) mlwarden/picklescan: {ratio(m['scan'], ps['scan'])}; "
        f"start-up alone (empty file list) mlwarden/picklescan: "
        f"{ratio(startup['mlwarden']['wall'], startup['picklescan']['wall'])}"
    )
    payload: dict[str, Any] = {
        "machine": machine(),
        "versions": versions,
        "file": str(ckpt),
        "size": size,
        "rounds": args.rounds,
        "median": med,
        "startup_median": startup,
        "runs": runs,
        "startup_runs": starts,
        "target": {"wall_ratio": TARGET_WALL_RATIO, "rss_mb": TARGET_RSS_MB, "wall_met": wall_ok, "rss_met": rss_ok},
    }
    print(f"raw numbers: {save('large_checkpoint', payload)}")
    if args.profile:
        print("\n--- mlwarden profile (separate process, not part of the timings above) ---", flush=True)
        subprocess.run([str(MLW_PY), "-c", _PROFILE, str(ckpt)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
