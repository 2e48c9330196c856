"""Dynamic-analysis cost: a sandboxed scan vs loading the model bare, and the warm pool vs cold runs.

Part 1, one small PyTorch model (a full ``nn.Module`` saved with ``torch.save``), median of ``--rounds``:

* **bare**: ``python -c "import torch; m = torch.load(p, weights_only=False); m(x)"`` in a fresh interpreter,
  unsandboxed. This is what a careless user pays; the target is a dynamic scan within 1.3x of it.
* **cold CLI**: ``mlwarden scan --dynamic p`` (a fresh process: mlwarden's start-up, the sandbox, the
  framework's import inside it, the phases).
* **cold API**: ``engine.analyse`` called in a running process (the sandbox and the import, no CLI start-up).
* **warm**: ``WarmPool.analyse`` on an already started pool (what each further file costs).

Part 2, ``--models`` small PyTorch models (seeded MLPs of varied widths): every file analysed cold (one
sandbox each) vs all files in one :class:`~mlwarden.scan.dynamic.pool.WarmPool` (start-up included).

Wall time is measured by the parent. Peak RSS is ``ru_maxrss`` as reported by GNU ``/usr/bin/time -v`` for
the measured command: the largest single process of its tree (the sandboxed interpreter, in practice), not a
sum. Models are generated once under ``bench-out/dynamic/``. This script prints; it never asserts.

Run: ``.venv/bin/python benchmarks/dynamic.py [--rounds 5] [--models 100] [--cold-limit N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-out" / "dynamic"
PY = Path(sys.executable)
CLI = PY.parent / "mlwarden"
TIME = "/usr/bin/time"

BARE = "import sys, torch; m = torch.load(sys.argv[1], weights_only=False); m(torch.zeros(1, m[0].in_features))"

# Measured in a child process so its RSS and the sandboxes' are its own: prints one JSON object.
API = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from mlwarden.core.policy import SandboxSettings
    from mlwarden.scan.dynamic import engine
    from mlwarden.scan.dynamic.pool import WarmPool
    mode, files = sys.argv[1], [Path(p) for p in sys.argv[2:]]
    limits = SandboxSettings()
    times, flagged, t0 = [], 0, time.monotonic()
    if mode == "cold":
        for p in files:
            t = time.monotonic()
            r = engine.analyse(p, "torch", (str(p),), limits)
            times.append(time.monotonic() - t)
            flagged += any(f.severity >= f.severity.MEDIUM for f in r.findings)
        start = 0.0
    else:
        with WarmPool("torch", files[0].parent, limits) as pool:
            start = time.monotonic() - t0
            for p in files:
                t = time.monotonic()
                r = pool.analyse(p)
                times.append(time.monotonic() - t)
                flagged += any(f.severity >= f.severity.MEDIUM for f in r.findings)
    print(json.dumps({"total": time.monotonic() - t0, "start": start, "times": times, "flagged": flagged}))
    """
)


# Runs a command and samples its whole process tree every 20 ms (sandboxes are killed, not waited for, so
# rusage never sees them): prints {"hwm_kib": largest VmHWM of one process, "sum_kib": largest summed VmRSS}.
SAMPLER = textwrap.dedent(
    """
    import json, os, subprocess, sys, threading, time
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
    peak = {"hwm_kib": 0, "sum_kib": 0}
    def tree():
        kids = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    ppid = int(open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                kids.setdefault(ppid, []).append(int(name))
        out, todo = [], [proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += kids.get(pid, [])
        return out
    def sample():
        while proc.poll() is None:
            total = 0
            for pid in tree():
                try:
                    status = open(f"/proc/{pid}/status").read()
                except OSError:
                    continue
                fields = dict(l.split(":", 1) for l in status.splitlines() if ":" in l)
                hwm = int(fields.get("VmHWM", "0 kB").split()[0])
                total += int(fields.get("VmRSS", "0 kB").split()[0])
                peak["hwm_kib"] = max(peak["hwm_kib"], hwm)
            peak["sum_kib"] = max(peak["sum_kib"], total)
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()
    out, _ = proc.communicate()
    sys.stdout.write(out.decode())
    print(json.dumps(peak))
    """
)


def build_models(n: int) -> list[Path]:
    """``n`` small seeded torch MLPs (cached)."""
    folder = OUT / "models"
    paths = [folder / f"mlp_{i:03d}.pt" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        torch.manual_seed(i)
        width = 8 + (i % 8) * 8
        model = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.ReLU(), torch.nn.Linear(width, 4))
        torch.save(model, p)
    return paths


def run(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds and stdout of ``cmd`` (nothing else running alongside it)."""
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t
    if proc.returncode not in (0, 1):
        print(f"  ! {' '.join(cmd[:4])}... exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return wall, proc.stdout


def memory(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS in MiB of ``cmd``'s largest process and of its whole tree (separate, sampled run).

    The largest process is also taken from GNU time, which sees every process that was waited for.
    """
    proc = subprocess.run([TIME, "-v", str(PY), "-c", SAMPLER, *cmd], capture_output=True, text=True, check=False)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    peak = json.loads((proc.stdout.strip().splitlines() or ["{}"])[-1])
    largest = max(peak.get("hwm_kib", 0), int(m.group(1)) if m else 0)
    return largest / 1024, peak.get("sum_kib", 0) / 1024


def part1(model: Path, rounds: int) -> dict[str, dict[str, float]]:
    cmds = {
        "bare `python -c torch.load+forward`": [str(PY), "-c", BARE, str(model)],
        "cold CLI `mlwarden scan --dynamic`": [str(CLI), "scan", "--dynamic", "--no-progress", str(model)],
        "cold API `engine.analyse`": [str(PY), "-c", API, "cold", str(model)],
        "warm `WarmPool.analyse` (pool started)": [str(PY), "-c", API, "warm", str(model), str(model), str(model)],
    }
    walls: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(rounds):  # interleaved, so load on the machine hits every row alike
        for name, cmd in cmds.items():
            wall, out = run(cmd)
            if "API" in name:
                wall = json.loads(out)["times"][0]
            elif "warm" in name:
                wall = statistics.median(json.loads(out)["times"][1:])
            walls[name].append(wall)
    bare = statistics.median(walls[next(iter(cmds))])
    print(f"\n## 1. One small torch model ({model.name}, {model.stat().st_size} bytes), median of {rounds}\n")
    print("| run | wall s | x bare | peak RSS MiB, largest process | peak RSS MiB, process tree |")
    print("|---|---|---|---|---|")
    summary = {}
    for name, cmd in cmds.items():
        wall = statistics.median(walls[name])
        largest, tree = memory(cmd)
        summary[name] = {"wall": wall, "ratio": wall / bare, "rss_mib": largest, "tree_mib": tree}
        print(f"| {name} | {wall:.3f} | {wall / bare:.2f}x | {largest:.0f} | {tree:.0f} |")
    print(
        "\nThe API and warm rows time the analyse() call alone (no interpreter start-up); their RSS is the whole"
        " measuring process's. The tree column sums RSS over the processes alive at once (a forked child shares"
        " its pages with the pool's server, so this over-counts the warm pool)."
    )
    return summary


def part2(models: list[Path], cold_limit: int) -> dict[str, float]:
    cold_files = models[:cold_limit] if cold_limit else models
    _, out_c = run([str(PY), "-c", API, "cold", *map(str, cold_files)])
    cold = json.loads(out_c)
    _, out_w = run([str(PY), "-c", API, "warm", *map(str, models)])
    warm = json.loads(out_w)
    rss_c, tree_c = memory([str(PY), "-c", API, "cold", *map(str, models[:3])])
    rss_w, tree_w = memory([str(PY), "-c", API, "warm", *map(str, models)])
    per_cold = sum(cold["times"]) / len(cold["times"])
    per_warm_total = warm["total"] / len(models)
    per_warm_req = statistics.mean(warm["times"])
    print(f"\n## 2. {len(models)} small torch models: a cold run per file vs one warm pool\n")
    print("| mode | files | total s | per file s | x faster than cold | peak RSS MiB largest / tree | flagged |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| cold (one sandbox each) | {len(cold_files)} | {sum(cold['times']):.1f} | {per_cold:.3f} | 1.0x | "
        f"{rss_c:.0f} / {tree_c:.0f} | {cold['flagged']} |"
    )
    print(
        f"| warm pool, start-up included | {len(models)} | {warm['total']:.1f} | {per_warm_total:.3f} | "
        f"{per_cold / per_warm_total:.1f}x | {rss_w:.0f} / {tree_w:.0f} | {warm['flagged']} |"
    )
    print(
        f"| warm pool, requests only | {len(models)} | {sum(warm['times']):.1f} | {per_warm_req:.3f} | "
        f"{per_cold / per_warm_req:.1f}x | | |"
    )
    print(
        f"\nWarm pool start-up (sandbox + torch import, once): {warm['start']:.2f} s; request median "
        f"{statistics.median(warm['times']):.3f} s, max {max(warm['times']):.3f} s."
    )
    return {
        "cold_per_file": per_cold,
        "warm_per_file": per_warm_total,
        "warm_per_request": per_warm_req,
        "speedup": per_cold / per_warm_total,
        "cold_rss_mib": rss_c,
        "warm_rss_mib": rss_w,
        "cold_tree_mib": tree_c,
        "warm_tree_mib": tree_w,
        "warm_start": warm["start"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--cold-limit", type=int, default=0, help="analyse only the first N files cold (0: all)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    models = build_models(args.models)
    print(
        f"# Dynamic analysis benchmark — {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    one = part1(models[0], args.rounds)
    many = part2(models, args.cold_limit)
    OUT.mkdir(parents=True, exist_ok=True)
    (REPO / "bench-out" / "dynamic.json").write_text(json.dumps({"single": one, "bulk": many}, indent=1) + "\n")


if __name__ == "__main__":
    main()
