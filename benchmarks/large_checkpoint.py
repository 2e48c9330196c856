"""Large-file benchmark: static scan of a ~1 GiB PyTorch zip checkpoint, mlwarden vs the peers.

The checkpoint (64 float32 tensors of 2048x2048 = 4 Mi floats each, seeded, so byte-identical on every
run with the same torch) is generated once with ``torch.save`` and cached in ``bench-out/``. Each tool
then scans it in a fresh subprocess, three rounds, tools interleaved within a round; the medians of wall
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
from _peers import MLW_PY, OUT, PEERS, TOOLS, Run, machine, peer_versions, ratio, require_peers, \
    run_tool, save, table  # noqa: E402

N_TENSORS = 64
SHAPE = (2048, 2048)  # 4 Mi float32 = 16 MiB per tensor, 1 GiB in all
CKPT = OUT / "large" / f"state_dict_{N_TENSORS}x{SHAPE[0]}x{SHAPE[1]}_f32.pt"
TARGET_WALL_RATIO = 1.1
TARGET_RSS_MB = 60.0

_GENERATE = textwrap.dedent("""
    import os, sys, torch
    n, rows, cols, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    g = torch.Generator().manual_seed(20240601)
    sd = {f"layers.{i}.weight": torch.randn(rows, cols, generator=g, dtype=torch.float32) for i in range(n)}
    torch.save(sd, out + ".tmp")
    os.replace(out + ".tmp", out)
""")

_PROFILE = textwrap.dedent("""
    import cProfile, pstats, sys, time, tracemalloc
    from pathlib import Path
    from mlwarden.core.policy import Policy
    from mlwarden.scan.engine import scan_file
    path, policy = Path(sys.argv[1]), Policy()
    scan_file(path, policy)  # warm imports and caches so the profile shows the scan itself
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
        subprocess.run([str(MLW_PY), "-c", _GENERATE, str(N_TENSORS), str(SHAPE[0]), str(SHAPE[1]), str(CKPT)],
                       check=True)
    return CKPT


def warm_cache(path: Path) -> None:
    """Read the file once so every tool starts with it in the page cache (the machine has the RAM)."""
    with path.open("rb") as fh:
        while fh.read(1 << 24):
            pass


def main() -> int:
    """Generate, scan ``--rounds`` times interleaved, print medians and ratios, save the raw numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also profile mlwarden (cProfile, tracemalloc)")
    args = parser.parse_args()
    require_peers()
    versions = peer_versions()
    ckpt = ensure_checkpoint()
    size = ckpt.stat().st_size
    print(f"\n=== large checkpoint: {ckpt.name}, {size / 2**30:.2f} GiB — {machine()} — {versions} ===")
    warm_cache(ckpt)
    startup = {tool: run_tool(tool, []) for tool in TOOLS}
    runs: dict[str, list[Run]] = {tool: [] for tool in TOOLS}
    for _ in range(args.rounds):
        for tool in TOOLS:
            runs[tool].append(run_tool(tool, [ckpt]))
    med = {tool: {"wall": statistics.median(r.wall for r in rs), "rss": statistics.median(r.rss_mb for r in rs),
                  "scan": statistics.median(r.scan_seconds for r in rs)} for tool, rs in runs.items()}
    m = med["mlwarden"]
    rows = []
    for tool in TOOLS:
        last = runs[tool][-1].rows[0] if runs[tool][-1].rows else {"flagged": None, "error": "no result"}
        verdict = "error" if last["error"] else ("flagged" if last["flagged"] else "clean")
        if last.get("skipped"):
            verdict = "skipped"
        peer = tool in PEERS
        rows.append([tool, verdict, f"{med[tool]['wall']:.3f}", f"{med[tool]['scan']:.3f}",
                     f"{startup[tool].wall:.3f}", f"{med[tool]['rss']:.0f}", f"{startup[tool].rss_mb:.0f}",
                     ratio(m["wall"], med[tool]["wall"]) if peer else "",
                     ratio(m["rss"], med[tool]["rss"]) if peer else ""])
    print(table(["tool", "verdict", "wall s (median)", "scan s", "start-up s", "peak RSS MiB", "start-up RSS MiB",
                 "mlw/peer wall", "mlw/peer RSS"], rows))
    for tool in TOOLS:
        r = runs[tool][-1]
        if r.rows and r.rows[0]["error"]:
            print(f"  {tool} error: {r.rows[0]['error']}")
        if r.returncode:
            print(f"  ! {tool} exited {r.returncode}: {r.stderr_tail[-300:]}")
    ps = med["picklescan"]
    wall_ok = m["wall"] <= TARGET_WALL_RATIO * ps["wall"]
    rss_ok = m["rss"] <= TARGET_RSS_MB
    print(f"target mlwarden wall <= {TARGET_WALL_RATIO}x picklescan: {ratio(m['wall'], ps['wall'])} "
          f"-> {'met' if wall_ok else 'NOT met'}; peak RSS <= {TARGET_RSS_MB:.0f} MiB: {m['rss']:.0f} MiB "
          f"-> {'met' if rss_ok else 'NOT met'}")
    payload: dict[str, Any] = {"machine": machine(), "versions": versions, "file": str(ckpt), "size": size,
                               "rounds": args.rounds, "median": med, "startup": startup, "runs": runs,
                               "target": {"wall_ratio": TARGET_WALL_RATIO, "rss_mb": TARGET_RSS_MB,
                                          "wall_met": wall_ok, "rss_met": rss_ok}}
    print(f"raw numbers: {save('large_checkpoint', payload)}")
    if args.profile:
        print("\n--- mlwarden profile (separate process, not part of the timings above) ---", flush=True)
        subprocess.run([str(MLW_PY), "-c", _PROFILE, str(ckpt)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
